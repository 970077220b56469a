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
    agent_with_grace(name, port, seed_port, None)
}

/// With `grace`, also a 1 s pause tolerance: a node cut off by its key hears no confirmation of
/// its suspicions, which then run to their maximum, 6 x the tolerance (30 s by default).
fn agent_with_grace(name: &str, port: u16, seed_port: u16, grace: Option<u64>) -> Agent {
    let mut extra = format!("discovery:\n  port: {port}\n  seeds: [\"127.0.0.1:{seed_port}\"]\n");
    if grace.is_some() {
        extra.push_str("mesh:\n  pauseToleranceSeconds: 1\n");
    }
    let mut a = Agent::prepare(&extra, "");
    let mut text = std::fs::read_to_string(&a.config)
        .expect("config")
        .replace("name: n1", &format!("name: {name}"));
    if let Some(grace) = grace {
        text = text.replace(
            "  name: test\n",
            &format!("  name: test\n  secretGraceSeconds: {grace}\n"),
        );
    }
    std::fs::write(&a.config, text).expect("rename node");
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

const NEXT_SECRET: &str = "fedcba9876543210fedcba9876543210-next";

/// Three agents seeded in a ring, with `grace` seconds of secret grace.
fn three(names: [&str; 3], grace: u64) -> Vec<Agent> {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    (0..3)
        .map(|i| agent_with_grace(names[i], ports[i], ports[(i + 1) % 3], Some(grace)))
        .collect()
}

/// Writes the next secret into `a`'s secret file and reloads over the API; returns `changed`.
fn rotate(a: &Agent) -> Vec<String> {
    std::fs::write(a.dir.path().join("cluster.secret"), NEXT_SECRET).expect("new secret");
    let out = a
        .kubedna()
        .args(["api", "POST", "/v1/config/reload", "--data", "{}"])
        .output()
        .expect("cli");
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!answer.contains(NEXT_SECRET) && !answer.contains(common::SECRET));
    let r: kubedna_proto::ReloadResponse = serde_json::from_str(&answer).expect("reload json");
    r.changed
}

fn all_alive(a: &Agent, n: usize) -> bool {
    let p = peers(a);
    p.peers.len() == n && p.peers.iter().all(|x| x.liveness == PeerLiveness::Alive)
}

/// Samples every agent's peers for `window`; panics if anyone is seen not alive.
fn never_down(agents: &[Agent], window: Duration, when: &str) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        for (i, a) in agents.iter().enumerate() {
            let p = peers(a);
            assert!(
                p.peers.iter().all(|x| x.liveness == PeerLiveness::Alive),
                "{when}: agent {i} sees a peer not alive: {p:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_cluster_secret_rotates_by_reload_one_node_at_a_time_without_false_deaths() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent tests need root"
    );
    let agents = three(["rot-a", "rot-b", "rot-c"], 600);
    for a in &agents {
        await_peers(a, "three agents converge", |p| {
            p.peers.len() == 2 && p.peers.iter().all(|x| x.liveness == PeerLiveness::Alive)
        });
    }
    for (i, a) in agents.iter().enumerate() {
        let changed = rotate(a);
        assert!(changed.contains(&"cluster".to_string()), "{changed:?}");
        let note = changed
            .iter()
            .find(|c| c.starts_with("cluster.secret"))
            .expect("rotation noted");
        assert!(
            note.contains("600 s") && note.contains("control-plane engine keeps"),
            "{note}"
        );
        never_down(
            &agents,
            Duration::from_secs(3),
            &format!("after rotating agent {i}"),
        );
    }
    never_down(&agents, Duration::from_secs(3), "after the rotation");
    for a in &agents {
        assert!(all_alive(a, 2));
        let audit = serde_json::to_string(&a.records()).expect("records");
        assert!(!audit.contains(NEXT_SECRET) && !audit.contains(common::SECRET));
        assert!(
            audit.contains("cluster.secret (mesh key"),
            "the rotation is audited"
        );
    }
    let mut agents = agents;
    for a in &mut agents {
        let (code, stderr) = a.stop();
        assert!(code.success(), "{stderr}");
        assert!(stderr.contains("mesh key rotation started"), "{stderr}");
        assert!(
            stderr.contains("sealing packets with the new key"),
            "{stderr}"
        );
        assert!(!stderr.contains(NEXT_SECRET) && !stderr.contains(common::SECRET));
    }
}

#[test]
fn a_node_left_with_the_old_secret_is_dropped_after_the_grace_period() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent tests need root"
    );
    let agents = three(["old-a", "old-b", "old-c"], 4);
    for a in &agents {
        await_peers(a, "three agents converge", |p| {
            p.peers.len() == 2 && p.peers.iter().all(|x| x.liveness == PeerLiveness::Alive)
        });
    }
    std::fs::write(agents[0].dir.path().join("cluster.secret"), NEXT_SECRET).expect("secret");
    // One by SIGHUP, one by the API: both take the reload path.
    agents[0].signal(nix::sys::signal::Signal::SIGHUP);
    rotate(&agents[1]);
    // Within the grace nobody is down: the rotated two keep sealing with the old key for old-c.
    never_down(&agents, Duration::from_secs(2), "during the grace");
    for a in &agents[..2] {
        await_peers(a, "the straggler is failed after the grace", |p| {
            p.peers.iter().any(|x| {
                x.name.as_deref() == Some("old-c")
                    && x.liveness == PeerLiveness::Down
                    && x.state.as_deref() != Some("leaving")
            }) && p
                .peers
                .iter()
                .any(|x| x.name.as_deref() != Some("old-c") && x.liveness == PeerLiveness::Alive)
        });
    }
    await_peers(&agents[2], "the straggler loses both", |p| {
        p.peers.iter().all(|x| x.liveness == PeerLiveness::Down)
    });
    // What an admin sees: the straggler seals with a key the others no longer accept, and each
    // side counts the other's packets as sealed with an unknown key.
    let straggler = peers(&agents[2]);
    let old_key = straggler.keys.as_ref().expect("keys").primary.clone();
    for a in &agents[..2] {
        await_peers(
            a,
            "the straggler's packets are counted as unknown key",
            |p| p.packets.is_some_and(|c| c.unknown_key > 0),
        );
        let keys = peers(a).keys.expect("keys");
        assert_eq!(keys.accepted, vec![keys.primary.clone()], "{keys:?}");
        assert_ne!(keys.primary, old_key, "{keys:?}");
    }
    await_peers(
        &agents[2],
        "the straggler counts the others' packets",
        |p| p.packets.is_some_and(|c| c.unknown_key > 0),
    );
    let mut agents = agents;
    let (_, stderr) = agents[0].stop();
    assert!(stderr.contains("grace period over"), "{stderr}");
}

/// Drops `discovery.seeds` from `a`'s config.
fn forget_seeds(a: &Agent) {
    let text = std::fs::read_to_string(&a.config).expect("config");
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("seeds:")).collect();
    std::fs::write(&a.config, kept.join("\n") + "\n").expect("config");
}

#[test]
fn restarted_agents_rejoin_as_themselves_from_the_saved_members_without_seeds() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent tests need root"
    );
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let mut a = agent("keep-a", pa, pb);
    let mut b = agent("keep-b", pb, pa);
    await_peers(&a, "a sees b", |p| {
        p.peers
            .iter()
            .any(|x| x.name.as_deref() == Some("keep-b") && x.liveness == PeerLiveness::Alive)
    });
    await_peers(&b, "b sees a", |p| {
        p.peers
            .iter()
            .any(|x| x.name.as_deref() == Some("keep-a") && x.liveness == PeerLiveness::Alive)
    });
    for x in [&mut a, &mut b] {
        let (code, stderr) = x.stop();
        assert!(code.success(), "{stderr}");
        forget_seeds(x);
    }
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(b.state_dir.join("mesh.json")).expect("b saved its mesh identity"),
    )
    .expect("json");
    assert_eq!(saved["address"], format!("127.0.0.1:{pb}"));
    assert_eq!(saved["generation"], 0);
    assert_eq!(
        saved["members"],
        serde_json::json!([format!("127.0.0.1:{pa}")])
    );

    // Neither has a seed now: only what they saved brings them together.
    for x in [&mut a, &mut b] {
        x.spawn();
        x.wait_notify("READY=1", Duration::from_secs(30));
    }
    let seen = await_peers(&a, "a finds b again, as b's next generation", |p| {
        p.peers.iter().any(|x| {
            x.name.as_deref() == Some("keep-b")
                && x.liveness == PeerLiveness::Alive
                && x.generation == 1
        })
    });
    assert!(
        seen.peers.iter().all(|x| x.generation <= 1),
        "one restart, one generation: {seen:#?}"
    );
    await_peers(&b, "b finds a again", |p| {
        p.peers.iter().any(|x| {
            x.name.as_deref() == Some("keep-a")
                && x.liveness == PeerLiveness::Alive
                && x.generation == 1
        })
    });
}
