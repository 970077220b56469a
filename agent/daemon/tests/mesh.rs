//! Two real agents on this host find each other through seeds, show each other in
//! `kubedna peers` and `kubedna status`, and a SIGTERM is seen by the other as a graceful leave
//! (state `leaving`, down), not a failure. Needs root like the other agent tests (CI runs as root).

mod common;

use std::time::{Duration, Instant};

use common::Agent;
use kubedna_proto::{PeerLiveness, PeersResponse, StatusResponse};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

fn agent(name: &str, port: u16, seed_port: u16) -> Agent {
    let extra = format!("discovery:\n  port: {port}\n  seeds: [\"127.0.0.1:{seed_port}\"]\n");
    let mut a = Agent::prepare(&extra, "");
    let text = std::fs::read_to_string(&a.config).expect("config");
    std::fs::write(
        &a.config,
        text.replace("name: n1", &format!("name: {name}")),
    )
    .expect("rename node");
    a.spawn();
    a.wait_notify("READY=1", Duration::from_secs(30));
    a
}

fn peers(a: &Agent) -> PeersResponse {
    let out = a
        .kubedna()
        .args(["peers", "-o", "json"])
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("peers json")
}

/// Polls `a`'s peers until `done` holds; panics with the last answer at the deadline.
fn await_peers(a: &Agent, what: &str, done: impl Fn(&PeersResponse) -> bool) -> PeersResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = peers(a);
        if done(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {p:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_agents_find_each_other_and_a_sigterm_is_a_graceful_leave() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent tests need root (CI runs as root)"
    );
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = agent("mesh-a", pa, pb);
    let mut b = agent("mesh-b", pb, pa);
    let seen = await_peers(&a, "a sees b alive with its metadata and an RTT", |p| {
        p.peers.iter().any(|x| {
            x.name.as_deref() == Some("mesh-b")
                && x.liveness == PeerLiveness::Alive
                && x.rtt_ms.is_some()
        })
    });
    let b_row = &seen.peers[0];
    assert_eq!(b_row.address, format!("127.0.0.1:{pb}"));
    assert_eq!(
        b_row.agent_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(seen.summary.mesh_address, Some(format!("127.0.0.1:{pa}")));

    let table = a.kubedna().arg("peers").output().expect("cli");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table.contains("mesh-b") && table.contains("alive"),
        "{table}"
    );
    let status = a
        .kubedna()
        .args(["status", "-o", "json"])
        .output()
        .expect("cli");
    let status: StatusResponse = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status.peers.map(|p| p.alive), Some(1));

    let started = Instant::now();
    let (code, stderr) = b.stop();
    assert!(code.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "leave bounded by the drain deadline"
    );
    assert!(stderr.contains("left the mesh"), "{stderr}");
    await_peers(&a, "a sees b's leave", |p| {
        p.peers.iter().any(|x| {
            x.name.as_deref() == Some("mesh-b")
                && x.liveness == PeerLiveness::Down
                && x.state.as_deref() == Some("leaving")
        })
    });
}
