//! Tables for the cluster views' decisions: whom to ask, RBAC per node, what a mesh outcome
//! means, and the merge of audit records with chain breaks shown, never dropped.

use std::net::SocketAddr;

use chrono::{TimeZone, Utc};
use kubedna_proto::{AuditBreak, AuditRecord, AuditResult, Caller, Via};

use super::*;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 70, i], 7946))
}

fn member(name: Option<&str>, i: u8, liveness: PeerLiveness, generation: u16) -> MemberView {
    MemberView {
        name: name.map(str::to_string),
        addr: addr(i),
        liveness,
        generation,
    }
}

#[test]
fn targets_by_table() {
    use PeerLiveness::{Alive, Down, Suspect};
    let ask = |i| Plan::Ask(addr(i));
    let down = || Plan::Unreachable("the mesh shows it down (failed or left); not asked".into());
    #[allow(clippy::type_complexity, reason = "a table")]
    let cases: Vec<(&str, Vec<MemberView>, Vec<(&str, Plan)>)> = vec![
        ("alone", vec![], vec![("cp-1", Plan::Local)]),
        (
            "alive, suspect and down peers: the down one is not asked",
            vec![
                member(Some("w-2"), 5, Down, 0),
                member(Some("cp-2"), 3, Alive, 0),
                member(Some("w-1"), 4, Suspect, 0),
            ],
            vec![
                ("cp-1", Plan::Local),
                ("cp-2", ask(3)),
                ("w-1", ask(4)),
                ("w-2", down()),
            ],
        ),
        (
            "a rejoined node: its live generation is asked, once",
            vec![
                member(Some("cp-2"), 3, Down, 0),
                member(Some("cp-2"), 9, Alive, 1),
            ],
            vec![("cp-1", Plan::Local), ("cp-2", ask(9))],
        ),
        (
            "our own earlier life is not another node",
            vec![member(Some("cp-1"), 2, Down, 0), member(None, 2, Alive, 3)],
            vec![("cp-1", Plan::Local)],
        ),
        (
            "a member without metadata yet is named by its address",
            vec![member(None, 7, Alive, 0)],
            vec![("198.18.70.7:7946", ask(7)), ("cp-1", Plan::Local)],
        ),
        (
            "two down generations: unreachable, at the newest address",
            vec![
                member(Some("w-1"), 4, Down, 0),
                member(Some("w-1"), 8, Down, 1),
            ],
            vec![("cp-1", Plan::Local), ("w-1", down())],
        ),
    ];
    for (name, members, want) in cases {
        let got: Vec<(String, Plan)> = targets("cp-1", Some(addr(2)), &members, &[])
            .into_iter()
            .map(|t| (t.node, t.plan))
            .collect();
        let want: Vec<(String, Plan)> = want.into_iter().map(|(n, p)| (n.to_string(), p)).collect();
        assert_eq!(got, want, "{name}");
    }
    let t = targets(
        "cp-1",
        Some(addr(2)),
        &[
            member(Some("w-1"), 4, Down, 0),
            member(Some("w-1"), 8, Down, 1),
        ],
        &[],
    );
    assert_eq!(
        t[1].address,
        Some(addr(8)),
        "the newest generation's address"
    );
    // Expected control planes: known ones once, an unknown one as a row of its own.
    let expected = ["cp-1".to_string(), "cp-2".to_string(), "cp-3".to_string()];
    let t = targets(
        "cp-1",
        Some(addr(2)),
        &[member(Some("cp-2"), 3, Alive, 0)],
        &expected,
    );
    let plans: Vec<(&str, bool)> = t
        .iter()
        .map(|t| (t.node.as_str(), matches!(t.plan, Plan::Unreachable(_))))
        .collect();
    assert_eq!(plans, [("cp-1", false), ("cp-2", false), ("cp-3", true)]);
    assert!(
        matches!(&t[2].plan, Plan::Unreachable(m) if m.contains("cluster.controlPlanes.members"))
    );
    assert_eq!(t[2].address, None);
}

#[test]
fn a_row_known_by_address_is_named_by_its_answer() {
    let by_addr = Target {
        node: addr(7).to_string(),
        address: Some(addr(7)),
        plan: Plan::Ask(addr(7)),
    };
    let named = Target {
        node: "w-1".into(),
        address: Some(addr(4)),
        plan: Plan::Ask(addr(4)),
    };
    let cases = [
        ("unnamed, answered", &by_addr, Some("w-7"), "w-7"),
        ("unnamed, no answer", &by_addr, None, "198.18.70.7:7946"),
        (
            "unnamed, empty name",
            &by_addr,
            Some(""),
            "198.18.70.7:7946",
        ),
        ("named: the mesh's name stays", &named, Some("other"), "w-1"),
        ("named, no answer", &named, None, "w-1"),
    ];
    for (name, t, answered, want) in cases {
        assert_eq!(row_name(t, answered), want, "{name}");
    }
}

#[test]
fn each_node_applies_its_own_route_table_to_the_role() {
    let cases = [
        ("status.get", Role::Viewer, true),
        ("audit.list", Role::Viewer, false),
        ("audit.list", Role::Operator, true),
        ("audit.list", Role::Admin, true),
        // Unknown here (a newer asker) or a change: nobody short of admin, and changes never.
        ("no.such.view", Role::Operator, false),
        ("config.reload", Role::Operator, false),
    ];
    for (action, role, allowed) in cases {
        let r = authorize(action, role);
        assert_eq!(r.is_ok(), allowed, "{action} as {role}: {r:?}");
        if let Err(m) = r {
            assert!(
                m.contains(action) && m.contains(&format!("has role {role}")),
                "{m}"
            );
        }
    }
    assert_eq!(needed_role("audit.list"), Role::Operator);
}

#[test]
fn mesh_outcomes_by_table() {
    let t = Duration::from_secs(2);
    let peer = addr(3);
    type Case = (
        Result<Vec<u8>, RequestError>,
        NodeAnswer,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (Ok(b"x".to_vec()), NodeAnswer::Ok, None),
        (
            Err(RequestError::Timeout {
                peer,
                kind: 3,
                timeout: t,
            }),
            NodeAnswer::Unreachable,
            Some("no answer over the mesh within 2 s"),
        ),
        (
            Err(RequestError::Stopped),
            NodeAnswer::Unreachable,
            Some("not running"),
        ),
        (
            Err(RequestError::Refused {
                peer,
                kind: 3,
                message: "boom".into(),
            }),
            NodeAnswer::Failed,
            Some("boom"),
        ),
        (
            Err(RequestError::TooLarge { len: 5000 }),
            NodeAnswer::Failed,
            Some("5000"),
        ),
    ];
    for (result, answer, message) in cases {
        let o = outcome(result, t);
        assert_eq!(o.answer(), answer);
        match (o.message(), message) {
            (None, None) => {}
            (Some(m), Some(w)) => assert!(m.contains(w), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

fn record(seq: u64, minute: u32, prev: &str) -> AuditRecord {
    let mut r = AuditRecord {
        seq,
        time: Utc
            .with_ymd_and_hms(2026, 11, 30, 12, minute, 0)
            .single()
            .expect("time"),
        caller: Caller {
            uid: 0,
            gid: 0,
            pid: None,
            user: None,
            via: Via::Agent,
        },
        role: None,
        action: format!("test.{seq}"),
        args: serde_json::json!({}),
        result: AuditResult {
            outcome: kubedna_proto::Outcome::Ok,
            status: 0,
            message: None,
        },
        prev: prev.into(),
        hash: String::new(),
    };
    r.hash = kubedna_audit::line_for(&r).1;
    r
}

/// Lines of a chain of `minutes.len()` records, the n-th at minute `minutes[n]`.
fn chain(minutes: &[u32]) -> Vec<String> {
    let mut prev = kubedna_audit::GENESIS.to_string();
    minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let r = record(i as u64 + 1, *m, &prev);
            let (line, hash) = kubedna_audit::line_for(&r);
            prev = hash;
            line
        })
        .collect()
}

fn verified() -> Result<AuditVerifyResponse, String> {
    Ok(AuditVerifyResponse {
        ok: true,
        files_checked: 1,
        records_checked: 3,
        head: None,
        first_break: None,
    })
}

fn answered(
    node: &str,
    lines: Vec<String>,
    verify: Result<AuditVerifyResponse, String>,
) -> NodeAudit {
    NodeAudit {
        node: node.into(),
        address: None,
        outcome: Outcome::Answered(AuditExport {
            lines,
            truncated: false,
            verify,
        }),
    }
}

#[test]
fn records_merge_in_time_order_with_every_node_named_and_none_dropped() {
    let nodes = vec![
        answered("cp-2", chain(&[1, 4, 6]), verified()),
        answered("cp-1", chain(&[2, 4, 5]), verified()),
        NodeAudit {
            node: "w-1".into(),
            address: Some(addr(4)),
            outcome: Outcome::Unreachable("no answer".into()),
        },
        NodeAudit {
            node: "w-2".into(),
            address: None,
            outcome: Outcome::Refused("audit.list needs role operator".into()),
        },
    ];
    let r = merge_audit("cp-1", nodes, 0);
    let order: Vec<(String, u64)> = r
        .records
        .iter()
        .map(|x| (x.node.clone(), x.record.seq))
        .collect();
    let want = [
        ("cp-2", 1),
        ("cp-1", 1),
        ("cp-1", 2),
        ("cp-2", 2),
        ("cp-1", 3),
        ("cp-2", 3),
    ];
    assert_eq!(
        order,
        want.map(|(n, s)| (n.to_string(), s)).to_vec(),
        "time, then node on a tie"
    );
    assert!(r.records.iter().all(|x| x.chain_ok));
    let rows: Vec<(&str, NodeAnswer, usize)> = r
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.answer, n.records))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("cp-1", NodeAnswer::Ok, 3),
            ("cp-2", NodeAnswer::Ok, 3),
            ("w-1", NodeAnswer::Unreachable, 0),
            ("w-2", NodeAnswer::Refused, 0)
        ]
    );
    assert_eq!(
        r.nodes[3].message.as_deref(),
        Some("audit.list needs role operator")
    );
    assert!(!r.truncated);
    // The limit keeps the newest, merged.
    let r = merge_audit(
        "cp-1",
        vec![
            answered("cp-2", chain(&[1, 4, 6]), verified()),
            answered("cp-1", chain(&[2, 4, 5]), verified()),
        ],
        2,
    );
    let kept: Vec<(String, u64)> = r
        .records
        .iter()
        .map(|x| (x.node.clone(), x.record.seq))
        .collect();
    assert_eq!(kept, vec![("cp-1".to_string(), 3), ("cp-2".to_string(), 3)]);
    assert!(r.truncated);
}

#[test]
fn a_broken_chain_is_shown_with_the_node_and_where() {
    let mut tampered = chain(&[1, 2, 3]);
    tampered[1] = tampered[1].replace("test.2", "test.X");
    let own_break = Ok(AuditVerifyResponse {
        ok: false,
        files_checked: 1,
        records_checked: 1,
        head: None,
        first_break: Some(AuditBreak {
            file: "/var/lib/kubedna/audit/audit-2026-11-30.jsonl".into(),
            line: 2,
            reason: "content does not match its hash".into(),
        }),
    });
    let r = merge_audit(
        "cp-1",
        vec![
            answered("cp-3", tampered.clone(), own_break),
            answered("cp-1", chain(&[5]), verified()),
        ],
        0,
    );
    let cp3 = r.nodes.iter().find(|n| n.node == "cp-3").expect("cp-3 row");
    let b = cp3.chain_break.as_ref().expect("a break");
    assert_eq!((b.seq, b.line), (Some(2), Some(2)));
    assert!(b
        .file
        .as_deref()
        .is_some_and(|f| f.ends_with("audit-2026-11-30.jsonl")));
    assert!(b.reason.contains("does not match its hash"), "{}", b.reason);
    // The bad record is shown, marked; the others stay good; the other node is unaffected.
    let marks: Vec<(String, u64, bool)> = r
        .records
        .iter()
        .map(|x| (x.node.clone(), x.record.seq, x.chain_ok))
        .collect();
    assert!(marks.contains(&("cp-3".into(), 2, false)), "{marks:?}");
    assert!(marks.contains(&("cp-3".into(), 3, true)), "{marks:?}");
    assert!(r
        .nodes
        .iter()
        .find(|n| n.node == "cp-1")
        .is_some_and(|n| n.chain_break.is_none()));
    // Only the asker's check sees it (a node that lies about its own verification).
    let r = merge_audit("cp-1", vec![answered("cp-3", tampered, verified())], 0);
    let b = r.nodes[0].chain_break.as_ref().expect("found by the asker");
    assert_eq!((b.seq, b.file.as_deref()), (Some(2), None));
    assert!(b.reason.starts_with("seq 2: "), "{}", b.reason);
    // A node that cannot verify its own chain says so.
    let r = merge_audit(
        "cp-1",
        vec![answered("cp-3", chain(&[1]), Err("disk".into()))],
        0,
    );
    assert!(r.nodes[0]
        .message
        .as_deref()
        .is_some_and(|m| m.contains("could not be verified: disk")));
}

#[test]
fn cut_keeps_short_text_and_marks_long_text() {
    assert_eq!(cut("abc", 3), "abc");
    assert_eq!(cut("abcd", 3), "abc…");
    assert_eq!(cut("ééé", 2), "éé…");
}

#[test]
fn an_export_keeps_the_newest_lines_that_fit() {
    let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: [(&[&str], usize, &[&str], bool); 5] = [
        (&["aaa", "bb", "c"], 100, &["aaa", "bb", "c"], false),
        (&["aaa", "bb", "c"], 5, &["bb", "c"], true),
        (&["aaa", "bb", "c"], 2, &["c"], true),
        (&["aaa", "bb", "c"], 1, &[], true),
        (&[], 0, &[], false),
    ];
    for (input, max, want, cut) in cases {
        assert_eq!(
            newest_within(lines(input), max),
            (lines(want), cut),
            "{input:?} in {max}"
        );
    }
}
