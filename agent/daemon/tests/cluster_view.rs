//! The cluster-wide views between two real agents on this host, over their real mesh: the
//! caller's role travels with the request and each node applies its own RBAC (a viewer is
//! refused the audit list by both, each refusal audited where it happened); an admin gets both
//! nodes' records merged in time order; a tampered record on the other node shows as a broken
//! chain with the node, file, line and sequence number (exit 5); a killed node is unreachable,
//! never dropped. Needs root like the other agent tests (CI runs as root).

mod common;

use std::time::{Duration, Instant};

use common::Agent;
use kubedna_proto::{ClusterAuditResponse, ClusterStatusResponse, NodeAnswer, PeersResponse, Via};

const VIEWER: u32 = 61110;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

fn agent(name: &str, port: u16, seed_port: u16) -> Agent {
    let extra = format!(
        "discovery:\n  port: {port}\n  seeds: [\"127.0.0.1:{seed_port}\"]\nrbac:\n  viewers:\n    uids: [{VIEWER}]\n"
    );
    let mut a = Agent::prepare(&extra, "  socketMode: \"0666\"\n");
    let text = std::fs::read_to_string(&a.config)
        .expect("config")
        .replace("name: n1", &format!("name: {name}"));
    std::fs::write(&a.config, text).expect("rename node");
    a.spawn();
    a.wait_notify("READY=1", Duration::from_secs(30));
    a
}

/// `kubedna -o json ARGS` as `uid` (0: root); (exit code, parsed answer).
fn view<T: serde::de::DeserializeOwned>(a: &Agent, uid: u32, args: &[&str]) -> (i32, T) {
    let mut cmd = a.kubedna();
    cmd.args(["-o", "json"]).args(args);
    if uid != 0 {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("cli");
    let parsed = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), parsed)
}

fn answers(nodes: impl Iterator<Item = (String, NodeAnswer)>) -> Vec<(String, NodeAnswer)> {
    nodes.collect()
}

#[test]
fn two_agents_each_apply_rbac_show_broken_chains_and_unreachable_nodes() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent tests need root (CI runs as root)"
    );
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = agent("view-a", pa, pb);
    let mut b = agent("view-b", pb, pa);

    // Both nodes answer a viewer's status; the rows name both.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status: ClusterStatusResponse = loop {
        let (code, s): (i32, ClusterStatusResponse) = view(&a, VIEWER, &["status", "--cluster"]);
        assert_eq!(code, 0);
        if s.nodes.len() == 2 && s.nodes.iter().all(|n| n.answer == NodeAnswer::Ok) {
            break s;
        }
        assert!(Instant::now() < deadline, "both nodes answer: {s:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.asked_by, "view-a");
    let names: Vec<&str> = status
        .nodes
        .iter()
        .filter_map(|n| n.status.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(names, ["view-a", "view-b"]);
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.status.as_ref().is_some_and(|s| s.name == n.node)),
        "each row is named by its node, even one the mesh knew only by address: {status:#?}"
    );

    // The audit rows are named by a's mesh: wait until its metadata for b arrived.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, p): (i32, PeersResponse) = view(&a, 0, &["peers"]);
        assert_eq!(code, 0);
        if p.peers.iter().any(|p| p.name.as_deref() == Some("view-b")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's mesh learns b's name: {p:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A viewer may not list audit records: refused by each node's own RBAC, each refusal in
    // that node's own log; b's says the caller came over the mesh, asked by a.
    let (code, r): (i32, ClusterAuditResponse) = view(&a, VIEWER, &["audit", "list", "--cluster"]);
    assert_eq!(code, 0);
    assert_eq!(
        answers(r.nodes.iter().map(|n| (n.node.clone(), n.answer))),
        vec![
            ("view-a".into(), NodeAnswer::Refused),
            ("view-b".into(), NodeAnswer::Refused)
        ]
    );
    assert!(
        r.nodes.iter().all(|n| n
            .message
            .as_deref()
            .is_some_and(|m| m.contains("needs role operator"))),
        "{r:#?}"
    );
    assert!(r.records.is_empty());
    let denied = b
        .records()
        .into_iter()
        .rev()
        .find(|x| x.action == "audit.list")
        .expect("b audited the refusal");
    assert_eq!((denied.caller.uid, denied.caller.via), (VIEWER, Via::Mesh));
    assert_eq!(denied.args["asked_by"], "view-a");
    assert_eq!(denied.result.status, 403);
    let denied = a
        .records()
        .into_iter()
        .rev()
        .find(|x| x.action == "audit.list")
        .expect("a audited the refusal");
    assert_eq!(
        (denied.caller.uid, denied.caller.via),
        (VIEWER, Via::Socket)
    );

    // Root (admin) gets both logs merged in time order, each record with its node; b's log is
    // made long enough (40 audited calls more) to travel in many chunks.
    for _ in 0..40 {
        let out = b
            .kubedna()
            .args(["log-level", "info"])
            .output()
            .expect("cli");
        assert!(out.status.success());
    }
    let (code, r): (i32, ClusterAuditResponse) = view(&a, 0, &["audit", "list", "--cluster"]);
    assert_eq!(code, 0, "{r:#?}");
    let b_row = r
        .nodes
        .iter()
        .find(|n| n.node == "view-b")
        .expect("b's row");
    assert_eq!(
        b_row.records,
        b.records().len(),
        "every record of b, across chunks"
    );
    assert!(b_row.records > 40);
    assert!(
        r.nodes
            .iter()
            .all(|n| n.answer == NodeAnswer::Ok && n.chain_break.is_none()),
        "{r:#?}"
    );
    for node in ["view-a", "view-b"] {
        assert!(
            r.records.iter().any(|x| x.node == node && x.chain_ok),
            "{node}: {r:#?}"
        );
    }
    let times: Vec<_> = r.records.iter().map(|x| x.record.time).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "time order");

    // A changed byte in b's first record: b's row shows the break by file, line and seq.
    let file = std::fs::read_dir(&b.audit_dir)
        .expect("b's audit dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .min()
        .expect("a daily file");
    let text = std::fs::read_to_string(&file).expect("read");
    let first = text.lines().next().expect("a record").to_string();
    let tampered = first.replacen("\"action\":\"", "\"action\":\"X", 1);
    assert_ne!(first, tampered);
    std::fs::write(&file, text.replacen(&first, &tampered, 1)).expect("tamper");
    let (code, r): (i32, ClusterAuditResponse) = view(&a, 0, &["audit", "list", "--cluster"]);
    assert_eq!(code, 5, "a broken chain exits 5");
    let row = r
        .nodes
        .iter()
        .find(|n| n.node == "view-b")
        .expect("b's row");
    let brk = row.chain_break.as_ref().expect("b's chain breaks");
    assert_eq!((brk.line, brk.seq), (Some(1), Some(1)), "{brk:?}");
    assert!(
        brk.file.as_deref().is_some_and(|f| f.ends_with(".jsonl")),
        "{brk:?}"
    );
    assert!(brk.reason.contains("does not match its hash"), "{brk:?}");
    assert!(r
        .records
        .iter()
        .any(|x| x.node == "view-b" && x.record.seq == 1 && !x.chain_ok));
    assert!(r
        .nodes
        .iter()
        .find(|n| n.node == "view-a")
        .is_some_and(|n| n.chain_break.is_none()));
    let table = a
        .kubedna()
        .args(["audit", "list", "--cluster"])
        .output()
        .expect("cli");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("BROKEN at") && table.contains("1!"),
        "{table}"
    );

    // b is killed: still a row, unreachable.
    b.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = b.wait();
    let started = Instant::now();
    let (_, s): (i32, ClusterStatusResponse) = view(&a, 0, &["status", "--cluster"]);
    assert_eq!(
        answers(s.nodes.iter().map(|n| (n.node.clone(), n.answer))),
        vec![
            ("view-a".into(), NodeAnswer::Ok),
            ("view-b".into(), NodeAnswer::Unreachable)
        ]
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the ask timeout"
    );
    let (_, r): (i32, ClusterAuditResponse) = view(&a, 0, &["audit", "list", "--cluster"]);
    assert_eq!(
        r.nodes
            .iter()
            .find(|n| n.node == "view-b")
            .map(|n| n.answer),
        Some(NodeAnswer::Unreachable)
    );
}
