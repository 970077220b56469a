//! Test-only: the scenarios as pure cases, through the tracker, the verdict, the guard
//! and the step machine, over simulated minutes observed every 5 s (the duty's pace).

use std::collections::BTreeMap;

use crate::guard::{decide, Decision, GuardConfig, NodeView, Situation, WaitReason};
use crate::model::World;
use crate::steps::{Outcome, Step};
use crate::verdict::{
    describe, judge, MeshState, Observed, ReadyState, Thresholds, Tracker, VmState,
};
use crate::{NodeRole, Unix};

const NAMES: [&str; 5] = ["cp-1", "cp-2", "cp-3", "w-1", "w-2"];
const T0: Unix = 1_700_000_000;

fn role(n: &str) -> NodeRole {
    if n.starts_with("cp") {
        NodeRole::ControlPlane
    } else {
        NodeRole::Worker
    }
}

const UP: Observed = Observed {
    mesh: MeshState::Alive,
    ready: ReadyState::Ready,
    ready_since: None,
    vm: VmState::Running,
};

/// The leader `leader` observes every node every 5 s for `secs`, `world(node, t)` giving what
/// it sees; returns every decision taken, in order, deduplicated.
fn watch(leader: &str, secs: u64, world: impl Fn(&str, u64) -> Observed) -> Vec<Decision> {
    let t = Thresholds::default();
    let cfg = GuardConfig {
        enabled: true,
        ..GuardConfig::default()
    };
    let backoff = BTreeMap::new();
    let mut tracker = Tracker::default();
    let mut decisions: Vec<Decision> = Vec::new();
    let mut elapsed = 0;
    while elapsed <= secs {
        let now = T0 + elapsed;
        let nodes: Vec<NodeView> = NAMES
            .iter()
            .map(|n| {
                let s = tracker.observe(n, world(n, elapsed), &t, now);
                NodeView {
                    name: n.to_string(),
                    role: role(n),
                    verdict: judge(s, &t, now),
                    signals: describe(s, now),
                }
            })
            .collect();
        let d = decide(&Situation {
            config: &cfg,
            leader,
            nodes: &nodes,
            in_flight: None,
            paused: None,
            backoff: &backoff,
            now,
        });
        let same_kind = decisions.last().is_some_and(|last| {
            std::mem::discriminant(last) == std::mem::discriminant(&d)
                && matches!((last, &d), (Decision::Nothing, _) | (Decision::Wait(_), _))
        });
        if !same_kind {
            decisions.push(d);
        }
        elapsed += 5;
    }
    decisions
}

#[test]
fn a_minority_partition_of_two_of_five_for_three_minutes_replaces_nothing() {
    // Seen from the majority (leader cp-1): cp-3 and w-2 cut off. The mesh says down after
    // ~5 s, their Nodes go Unknown after the node-monitor grace (40 s), the VMs run.
    let cut = |n: &str| n == "cp-3" || n == "w-2";
    let d = watch("cp-1", 180, |n, t| {
        if cut(n) && t >= 5 {
            Observed {
                mesh: MeshState::Down,
                ready: if t >= 40 {
                    ReadyState::Unknown
                } else {
                    ReadyState::Ready
                },
                ..UP
            }
        } else {
            UP
        }
    });
    assert_eq!(d, [Decision::Nothing]);
    // The same cut for just under 15 minutes (past the mesh and Node thresholds, short of
    // `hung`): the provider answering "running" keeps them suspect.
    let d = watch("cp-1", 899, |n, t| {
        if cut(n) && t >= 5 {
            Observed {
                mesh: MeshState::Down,
                ready: ReadyState::Unknown,
                ..UP
            }
        } else {
            UP
        }
    });
    assert_eq!(d, [Decision::Nothing]);
    // Seen from the minority side (a leader that kept its term a moment, cp-3 with w-2): three
    // nodes look gone at once, which maxUnhealthy refuses.
    let d = watch("cp-3", 600, |n, t| {
        if !cut(n) && t >= 5 {
            Observed {
                mesh: MeshState::Down,
                ready: ReadyState::Unobserved,
                ready_since: None,
                vm: VmState::Unobserved,
            }
        } else {
            UP
        }
    });
    assert!(
        d.iter()
            .all(|d| matches!(d, Decision::Nothing | Decision::Wait(_))),
        "{d:?}"
    );
}

#[test]
fn a_node_delayed_by_150ms_each_way_replaces_nothing() {
    // The mesh's probe timeout and suspicion window absorb the delay: the node is never even
    // suspect, and kubelet's status still arrives.
    let d = watch("cp-1", 3600, |_, _| UP);
    assert_eq!(d, [Decision::Nothing]);
}

#[test]
fn three_of_five_powered_off_at_once_waits_and_says_why() {
    let off = |n: &str| ["cp-2", "w-1", "w-2"].contains(&n);
    let d = watch("cp-1", 600, |n, t| {
        if off(n) && t >= 1 {
            Observed {
                mesh: MeshState::Down,
                ready: if t >= 40 {
                    ReadyState::Unknown
                } else {
                    ReadyState::Ready
                },
                ready_since: None,
                vm: VmState::Off,
            }
        } else {
            UP
        }
    });
    let Some(Decision::Wait(reason @ WaitReason::TooManyUnhealthy { unhealthy, .. })) = d.last()
    else {
        panic!("expected a maxUnhealthy wait, got {d:?}");
    };
    assert_eq!(unhealthy.len(), 3);
    let text = reason.to_string();
    assert!(
        text.contains("cp-2: mesh=down") && text.contains("vm=off"),
        "{text}"
    );
    assert!(
        !d.iter().any(|d| matches!(d, Decision::Replace { .. })),
        "nothing replaced: {d:?}"
    );
}

#[test]
fn one_powered_off_worker_is_replaced_after_the_provider_threshold() {
    let d = watch("cp-1", 120, |n, t| {
        if n == "w-1" && t >= 10 {
            Observed {
                mesh: MeshState::Down,
                ready: ReadyState::Ready,
                ready_since: None,
                vm: VmState::Off,
            }
        } else {
            UP
        }
    });
    // While the Node stays Ready in the leader's eyes (as it does until the node-monitor grace
    // passes), the veto holds the verdict at suspect, whatever the provider says...
    assert!(
        d.iter().all(|d| *d == Decision::Nothing),
        "a Ready Node vetoes: {d:?}"
    );
    // ...and once it is not Ready the provider's "off" decides.
    let d = watch("cp-1", 120, |n, t| {
        if n == "w-1" && t >= 10 {
            Observed {
                mesh: MeshState::Down,
                ready: if t >= 50 {
                    ReadyState::Unknown
                } else {
                    ReadyState::Ready
                },
                ready_since: None,
                vm: VmState::Off,
            }
        } else {
            UP
        }
    });
    assert!(
        matches!(d.last(), Some(Decision::Replace { node, role: NodeRole::Worker, signals }) if node == "w-1" && signals.contains("vm=off")),
        "{d:?}"
    );
}

#[test]
fn a_powered_off_control_plane_loses_its_member_then_a_new_one_is_added() {
    let mut w = World::powered_off("cp-2", NodeRole::ControlPlane, 11);
    w.run(&[], false);
    let removed = w.log.iter().position(|l| l == "member cp-2 removed");
    let added = w
        .log
        .iter()
        .position(|l| l == "member cp-2 added as learner");
    assert!(
        matches!((removed, added), (Some(r), Some(a)) if r < a),
        "{:?}",
        w.log
    );
    assert_eq!(w.members.iter().filter(|m| !m.learner).count(), 3);
}

#[test]
fn the_leaders_own_node_is_replaced_by_the_next_leader() {
    let dead_leader = |n: &str, t: u64| {
        if n == "cp-1" && t >= 1 {
            Observed {
                mesh: MeshState::Down,
                ready: if t >= 40 {
                    ReadyState::Unknown
                } else {
                    ReadyState::Ready
                },
                ready_since: None,
                vm: VmState::Off,
            }
        } else {
            UP
        }
    };
    // Its own view (were it still running): never itself.
    let d = watch("cp-1", 120, dead_leader);
    assert!(
        !d.iter().any(|d| matches!(d, Decision::Replace { .. })),
        "{d:?}"
    );
    // The next leader replaces it.
    let d = watch("cp-2", 120, dead_leader);
    assert!(
        matches!(d.last(), Some(Decision::Replace { node, .. }) if node == "cp-1"),
        "{d:?}"
    );
    // And a replacement left in flight by a leader that died is finished by the next one.
    let mut w = World::powered_off("w-2", NodeRole::Worker, 11);
    let steps = w.run(&[4], false);
    assert!(w.term == 12 && w.creates == 1, "{:?}", w.log);
    assert_eq!(w.outcome, Some(Outcome::Replaced));
    assert_eq!(
        steps[5],
        Step::TakeLease,
        "the new leader first takes the lease over"
    );
}
