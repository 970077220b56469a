//! Who is calling: the kernel's SO_PEERCRED answer for a Unix socket peer, plus the user name
//! for the audit log. Credentials come from the kernel only, never from anything the client says.

use kubedna_proto::{Caller, Via};

/// The caller on the other end of a connected Unix socket, as the kernel saw it at connect time.
pub fn caller_from_peer(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
    Caller {
        uid,
        gid,
        pid,
        user: user_name(uid),
        via: Via::Socket,
    }
}

/// The agent itself, or a signal whose sender is unknown: uid and gid of the agent process.
pub fn caller_self(via: Via) -> Caller {
    let uid = nix::unistd::getuid().as_raw();
    Caller {
        uid,
        gid: nix::unistd::getgid().as_raw(),
        pid: None,
        user: user_name(uid),
        via,
    }
}

/// The user name of `uid`, if the host knows one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}
