//! The agent's boundary to the host it runs on: files written atomically, the state directory
//! and its single-instance lock, systemd's notify protocol, and who is on the other end of a Unix
//! socket. Everything here touches the OS; the logic that decides what to do lives elsewhere.
//! Later: systemd and logind over D-Bus.

pub mod atomic;
pub mod creds;
pub mod images;
pub mod notify;
pub mod podnet;
pub mod prepare;
pub mod state;
pub mod systemd;

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the kernel's random source is available");
    hex::encode(buf)
}

pub(crate) fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    getrandom::fill(&mut buf).expect("the kernel's random source is available");
    u32::from_ne_bytes(buf)
}

/// An error and its sources on one line (the project's one formatter, re-exported for callers).
pub use kubedna_proto::error_chain;
