use super::*;
use crate::verdict::DeadBy;

const NOW: Unix = 5_000;

type Backoffs = BTreeMap<String, Backoff>;

fn node(name: &str, role: NodeRole, verdict: Verdict) -> NodeView {
    NodeView {
        name: name.into(),
        role,
        verdict,
        signals: format!("{name}-signals"),
    }
}

const DEAD: Verdict = Verdict::Dead {
    by: DeadBy::Provider,
};

fn enabled() -> GuardConfig {
    GuardConfig {
        enabled: true,
        ..GuardConfig::default()
    }
}

fn situation<'a>(
    config: &'a GuardConfig,
    nodes: &'a [NodeView],
    backoff: &'a BTreeMap<String, Backoff>,
) -> Situation<'a> {
    Situation {
        config,
        leader: "cp-1",
        nodes,
        in_flight: None,
        paused: None,
        backoff,
        now: NOW,
    }
}

fn five(verdicts: [Verdict; 5]) -> Vec<NodeView> {
    ["cp-1", "cp-2", "cp-3", "w-1", "w-2"]
        .iter()
        .zip(verdicts)
        .map(|(n, v)| {
            let role = if n.starts_with("cp") {
                NodeRole::ControlPlane
            } else {
                NodeRole::Worker
            };
            node(n, role, v)
        })
        .collect()
}

#[test]
fn allowed_unhealthy_rounds_down() {
    for (pct, total, want) in [
        (40, 5, 2),
        (40, 6, 2),
        (40, 3, 1),
        (40, 2, 0),
        (40, 1, 0),
        (100, 4, 4),
        (0, 9, 0),
        (255, 4, 4),
    ] {
        assert_eq!(allowed_unhealthy(pct, total), want, "{pct}% of {total}");
    }
}

#[test]
fn decisions_by_table() {
    use Verdict::{Healthy as H, Suspect as S};
    let cfg = enabled();
    let none = BTreeMap::new();
    let mut backing = BTreeMap::new();
    backing.insert(
        "w-1".to_string(),
        Backoff {
            until: NOW + 10,
            failures: 1,
        },
    );
    let mut expired = BTreeMap::new();
    expired.insert(
        "w-1".to_string(),
        Backoff {
            until: NOW,
            failures: 1,
        },
    );
    let replace = |n: &str, role| Decision::Replace {
        node: n.into(),
        role,
        signals: format!("{n}-signals"),
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Vec<NodeView>, &Backoffs, Decision)> = vec![
        ("all healthy", five([H, H, H, H, H]), &none, Decision::Nothing),
        ("suspects only", five([H, S, H, S, H]), &none, Decision::Nothing),
        ("one dead worker", five([H, H, H, DEAD, H]), &none, replace("w-1", NodeRole::Worker)),
        ("one dead control plane", five([H, H, DEAD, H, H]), &none, replace("cp-3", NodeRole::ControlPlane)),
        ("two dead of five: one at a time, first by name", five([H, DEAD, H, DEAD, H]), &none, replace("cp-2", NodeRole::ControlPlane)),
        ("dead + suspect = 2 of 5: allowed", five([H, S, H, DEAD, H]), &none, replace("w-1", NodeRole::Worker)),
        ("backing off: the other dead one goes", five([H, H, DEAD, DEAD, H]), &backing, replace("cp-3", NodeRole::ControlPlane)),
        ("backing off, alone", five([H, H, H, DEAD, H]), &backing, Decision::Wait(WaitReason::BackingOff { node: "w-1".into(), until: NOW + 10 })),
        ("back-off over", five([H, H, H, DEAD, H]), &expired, replace("w-1", NodeRole::Worker)),
        ("the leader's own node", five([DEAD, H, H, H, H]), &none, Decision::Wait(WaitReason::OwnNode { node: "cp-1".into() })),
    ];
    for (name, nodes, backoff, want) in table {
        assert_eq!(decide(&situation(&cfg, &nodes, backoff)), want, "{name}");
    }
}

#[test]
fn too_many_unhealthy_waits_and_names_every_node_and_signal() {
    let cfg = enabled();
    let none = BTreeMap::new();
    let nodes = five([Verdict::Healthy, DEAD, DEAD, DEAD, Verdict::Healthy]);
    let d = decide(&situation(&cfg, &nodes, &none));
    let Decision::Wait(reason @ WaitReason::TooManyUnhealthy { .. }) = &d else {
        panic!("three of five dead must wait, got {d:?}");
    };
    let text = reason.to_string();
    for n in [
        "cp-2: cp-2-signals",
        "cp-3: cp-3-signals",
        "w-1: w-1-signals",
    ] {
        assert!(text.contains(n), "{text}");
    }
    assert!(text.contains("3 of 5") && text.contains("(2)"), "{text}");
    // Suspects count: two dead and one suspect is also three.
    let nodes = five([
        Verdict::Healthy,
        DEAD,
        DEAD,
        Verdict::Suspect,
        Verdict::Healthy,
    ]);
    assert!(matches!(
        decide(&situation(&cfg, &nodes, &none)),
        Decision::Wait(WaitReason::TooManyUnhealthy { .. })
    ));
}

#[test]
fn disabled_paused_and_in_flight() {
    let none = BTreeMap::new();
    let nodes = five([
        Verdict::Healthy,
        Verdict::Healthy,
        DEAD,
        Verdict::Healthy,
        Verdict::Healthy,
    ]);
    let off = GuardConfig::default();
    assert_eq!(
        decide(&situation(&off, &nodes, &none)),
        Decision::Wait(WaitReason::Disabled {
            dead: "cp-3".into()
        })
    );
    let cfg = enabled();
    let pause = Pause {
        by: "uid 0".into(),
        since: 7,
        reason: None,
    };
    let mut s = situation(&cfg, &nodes, &none);
    s.paused = Some(&pause);
    assert_eq!(
        decide(&s),
        Decision::Wait(WaitReason::Paused {
            by: "uid 0".into(),
            since: 7
        })
    );
    // In flight: continued even with another dead node; a pause holds it too.
    s.in_flight = Some(InFlight {
        node: "w-2",
        fenced: false,
    });
    assert!(matches!(
        decide(&s),
        Decision::Wait(WaitReason::Paused { .. })
    ));
    s.paused = None;
    assert_eq!(decide(&s), Decision::Continue { node: "w-2".into() });
    // Too many unhealthy: an unfenced replacement waits, a fenced one finishes.
    let many = five([Verdict::Healthy, DEAD, DEAD, DEAD, Verdict::Healthy]);
    s.nodes = &many;
    assert!(matches!(
        decide(&s),
        Decision::Wait(WaitReason::TooManyUnhealthy { .. })
    ));
    s.in_flight = Some(InFlight {
        node: "w-2",
        fenced: true,
    });
    assert_eq!(decide(&s), Decision::Continue { node: "w-2".into() });
}

#[test]
fn backoff_grows_twofold_per_failure_up_to_the_cap_and_resets_on_success() {
    let cfg = enabled();
    let b1 = backoff_after(None, false, &cfg, 0);
    assert_eq!((b1.until, b1.failures), (1200, 1));
    let b2 = backoff_after(Some(&b1), false, &cfg, 0);
    assert_eq!((b2.until, b2.failures), (2400, 2));
    let b3 = backoff_after(Some(&b2), false, &cfg, 0);
    assert_eq!((b3.until, b3.failures), (3600, 3), "capped");
    let ok = backoff_after(Some(&b3), true, &cfg, 100);
    assert_eq!((ok.until, ok.failures), (700, 0));
}

fn voter(id: u64, healthy: bool) -> Voter {
    Voter {
        id,
        name: format!("cp-{id}"),
        peer_urls: vec![],
        learner: false,
        healthy,
    }
}

#[test]
fn quorum_rule_by_table() {
    let learner = Voter {
        learner: true,
        ..voter(9, false)
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Vec<Voter>, u64, bool)> = vec![
        ("3 voters, remove the dead one", vec![voter(1, true), voter(2, true), voter(3, false)], 3, true),
        ("3 voters, two dead: refused", vec![voter(1, true), voter(2, false), voter(3, false)], 3, false),
        ("3 voters, remove a healthy one while another is dead: refused", vec![voter(1, true), voter(2, false), voter(3, true)], 3, false),
        ("5 voters, two dead, remove one", vec![voter(1, true), voter(2, true), voter(3, true), voter(4, false), voter(5, false)], 5, true),
        ("5 voters, three dead: refused", vec![voter(1, true), voter(2, true), voter(3, false), voter(4, false), voter(5, false)], 5, false),
        ("2 voters: removing the dead one leaves 1 of 1", vec![voter(1, true), voter(2, false)], 2, true),
        ("the last voter: never", vec![voter(1, false)], 1, false),
        ("a learner never counts", vec![voter(1, true), voter(2, true), voter(3, true), learner.clone()], 9, true),
        ("unknown member", vec![voter(1, true)], 7, false),
    ];
    for (name, members, remove, ok) in table {
        assert_eq!(removal_keeps_quorum(&members, remove).is_ok(), ok, "{name}");
    }
}
