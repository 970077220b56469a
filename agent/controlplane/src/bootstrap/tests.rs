//! The bootstrap rule, checked exhaustively for n = 3 and 5 over every reachable state of
//! starts, wipes and partial answers, and shown to fail when the rule is weakened; the same for
//! the no-quorum fallback ([`fallback`]), including the old fallback that trusted only recorded
//! cluster IDs.

use std::collections::{BTreeSet, HashSet, VecDeque};

use super::*;

fn set(n: usize) -> MemberSet {
    let names: Vec<String> = (0..n).map(|i| format!("cp-{i}")).collect();
    MemberSet::new("lab", &names).expect("set")
}

#[test]
fn initial_cluster_is_the_same_string_everywhere_and_independent_of_order() {
    let a = MemberSet::new("lab", &["cp-2".into(), "cp-0".into(), "cp-1".into()]).expect("a");
    let b = MemberSet::new("lab", &["cp-0".into(), "cp-1".into(), "cp-2".into()]).expect("b");
    assert_eq!(a.initial_cluster(), b.initial_cluster());
    assert_eq!(a.digest(), b.digest());
    assert_eq!(
        a.initial_cluster(),
        "cp-0=https://cp-0.lab.kubedna:2380,cp-1=https://cp-1.lab.kubedna:2380,cp-2=https://cp-2.lab.kubedna:2380"
    );
    let other = MemberSet::new("lab", &["cp-0".into(), "cp-1".into(), "cp-3".into()]).expect("c");
    assert_ne!(a.digest(), other.digest());
    assert_eq!(
        MemberSet::new("lab", &["a".into(), "a".into()]),
        Err(MemberSetError::Duplicate("a".into()))
    );
}

fn answer(set: &MemberSet, from: &str, started: bool) -> StartedAnswer {
    StartedAnswer {
        from: from.into(),
        members_digest: set.digest(),
        started,
        cluster_id: None,
    }
}

#[test]
fn decisions_for_the_plain_cases() {
    let s = set(3);
    assert_eq!(
        decide("cp-0", &s, false, &[]).expect("d"),
        Decision::Wait { have: 0, need: 2 }
    );
    let one = [answer(&s, "cp-1", false)];
    assert_eq!(
        decide("cp-0", &s, false, &one).expect("d"),
        Decision::Wait { have: 1, need: 2 }
    );
    // Its own answer never counts.
    let own = [answer(&s, "cp-0", false), answer(&s, "cp-1", false)];
    assert_eq!(
        decide("cp-0", &s, false, &own).expect("d"),
        Decision::Wait { have: 1, need: 2 }
    );
    let two = [answer(&s, "cp-1", false), answer(&s, "cp-2", false)];
    assert_eq!(
        decide("cp-0", &s, false, &two).expect("d"),
        Decision::StartNew
    );
    let started = [answer(&s, "cp-1", false), answer(&s, "cp-2", true)];
    assert_eq!(
        decide("cp-0", &s, false, &started).expect("d"),
        Decision::Join { via: "cp-2".into() }
    );
    assert_eq!(decide("cp-0", &s, true, &[]).expect("d"), Decision::Resume);
    // Answers from a node with a different member list, or from outside the list, do not count.
    let mut foreign = answer(&s, "cp-1", false);
    foreign.members_digest = set(5).digest();
    let outsider = answer(&s, "cp-9", false);
    assert_eq!(
        decide(
            "cp-0",
            &s,
            false,
            &[foreign, outsider, answer(&s, "cp-2", false)]
        )
        .expect("d"),
        Decision::Wait { have: 1, need: 2 }
    );
    assert!(matches!(
        decide("cp-9", &s, false, &[]),
        Err(MemberSetError::NotMember(..))
    ));
}

/// A rule under test: given (me, set, my record, answers) → decision.
type Rule = fn(&str, &MemberSet, bool, &[StartedAnswer]) -> Decision;

/// Explores every reachable state of n nodes under the failure model of docs/control-plane.md.
/// A node may be wiped (it loses its record and its etcd data), or ask any subset of the others
/// and act on the rule's decision. The cluster is *formed* once a majority holds etcd data at
/// the same time; from then on the nodes holding its data are its *participants*, and a wiped
/// participant is *amnesiac* until it rejoins. The model allows losing records down to q−1
/// participants still holding data: then the cluster is stuck (no majority), and the danger the
/// rule guards against is an amnesiac node restarting as `new`, helping elect an empty leader
/// and overwriting the survivors' log. Losing more is outside the model (recovery is a restore).
/// Returns a violating trace if an amnesiac participant is ever told to start etcd as `new`.
fn explore(n: usize, rule: Rule) -> Option<String> {
    let s = set(n);
    let q = s.quorum() as u32;
    let names: Vec<String> = s.names().map(String::from).collect();
    // (holds data, participant, amnesiac, formed)
    type State = (u32, u32, u32, bool);
    let mut seen: HashSet<State> = HashSet::new();
    let mut queue: VecDeque<(State, String)> = VecDeque::from([((0, 0, 0, false), String::new())]);
    while let Some(((now, part, amnesiac, formed), trace)) = queue.pop_front() {
        if !seen.insert((now, part, amnesiac, formed)) {
            continue;
        }
        if formed && (now & part).count_ones() < q - 1 {
            continue; // more records lost than the argument allows: outside the model
        }
        for i in 0..n {
            let bit = 1u32 << i;
            let wiped = if part & bit != 0 {
                (now & !bit, part & !bit, amnesiac | bit, formed)
            } else {
                (now & !bit, part, amnesiac, formed)
            };
            queue.push_back((wiped, format!("{trace} wipe({i})")));
            let others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
            for mask in 0..(1u32 << others.len()) {
                let asked: Vec<usize> = others
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| mask & (1 << k) != 0)
                    .map(|(_, j)| *j)
                    .collect();
                let answers: Vec<StartedAnswer> = asked
                    .iter()
                    .map(|j| answer(&s, &names[*j], now & (1 << j) != 0))
                    .collect();
                let d = rule(&names[i], &s, now & bit != 0, &answers);
                let step = format!("{trace} ask({i}<-{asked:?})={d:?}");
                match d {
                    Decision::StartNew => {
                        if formed && amnesiac & bit != 0 {
                            return Some(step);
                        }
                        let now2 = now | bit;
                        let next = if formed {
                            (now2, part | bit, amnesiac, true)
                        } else if now2.count_ones() >= q {
                            (now2, now2, amnesiac, true)
                        } else {
                            (now2, part, amnesiac, false)
                        };
                        queue.push_back((next, step));
                    }
                    Decision::Join { .. } => {
                        let next = (
                            now | bit,
                            if formed { part | bit } else { part },
                            amnesiac & !bit,
                            formed,
                        );
                        queue.push_back((next, step));
                    }
                    Decision::Resume | Decision::Wait { .. } => {}
                }
            }
        }
    }
    None
}

fn the_rule(me: &str, s: &MemberSet, started: bool, answers: &[StartedAnswer]) -> Decision {
    decide(me, s, started, answers).expect("member")
}

/// The no-quorum fallback under test, and what a started member's answer carries.
#[derive(Clone, Copy)]
struct FallbackModel {
    rule: fn(&str, &MemberSet, &[StartedAnswer]) -> Fallback,
    /// Whether a member that formed reports it before it recorded the cluster ID (from its
    /// running etcd's own status). Without it, a formed member answers without a cluster ID
    /// until a separate `record` step.
    reports_from_status: bool,
}

/// Like [`explore`], with the fallback: a node told to join may find no quorum serving (a peer
/// port unreachable, say) at any time, and then acts on the fallback rule. A participant of a
/// formed cluster *knows* it formed once its etcd serves (it is ready only once its cluster
/// formed) and, in the model without status reports, only once it recorded the cluster ID.
/// Returns a violating trace if an amnesiac participant ever starts as `new` through either
/// rule.
fn explore_fallback(n: usize, model: FallbackModel) -> Option<String> {
    let s = set(n);
    let q = s.quorum() as u32;
    let names: Vec<String> = s.names().map(String::from).collect();
    // (holds data, participant, amnesiac, formed, knows formed)
    type State = (u32, u32, u32, bool, u32);
    let mut seen: HashSet<State> = HashSet::new();
    let mut queue: VecDeque<(State, String)> =
        VecDeque::from([((0, 0, 0, false, 0), String::new())]);
    while let Some(((now, part, amnesiac, formed, knows), trace)) = queue.pop_front() {
        if !seen.insert((now, part, amnesiac, formed, knows)) {
            continue;
        }
        if formed && (now & part).count_ones() < q - 1 {
            continue; // outside the model, as in `explore`
        }
        let start = |i: usize, now: u32, part: u32, knows: u32| -> State {
            let bit = 1u32 << i;
            let now2 = now | bit;
            let serving = if model.reports_from_status { bit } else { 0 };
            if formed {
                (now2, part | bit, amnesiac & !bit, true, knows | serving)
            } else if now2.count_ones() >= q {
                let all = if model.reports_from_status { now2 } else { 0 };
                (now2, now2, amnesiac, true, knows | all)
            } else {
                (now2, part, amnesiac, false, knows)
            }
        };
        for i in 0..n {
            let bit = 1u32 << i;
            let wiped = if part & bit != 0 {
                (
                    now & !bit,
                    part & !bit,
                    amnesiac | bit,
                    formed,
                    knows & !bit,
                )
            } else {
                (now & !bit, part, amnesiac, formed, knows & !bit)
            };
            queue.push_back((wiped, format!("{trace} wipe({i})")));
            if formed && now & part & bit != 0 && knows & bit == 0 {
                queue.push_back((
                    (now, part, amnesiac, formed, knows | bit),
                    format!("{trace} record({i})"),
                ));
            }
            let others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
            for mask in 0..(1u32 << others.len()) {
                let asked: Vec<usize> = others
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| mask & (1 << k) != 0)
                    .map(|(_, j)| *j)
                    .collect();
                let answers: Vec<StartedAnswer> = asked
                    .iter()
                    .map(|j| {
                        let mut a = answer(&s, &names[*j], now & (1 << j) != 0);
                        a.cluster_id = (knows & (1 << j) != 0).then(|| "c1".to_string());
                        a
                    })
                    .collect();
                let d = decide(&names[i], &s, now & bit != 0, &answers).expect("member");
                let step = format!("{trace} ask({i}<-{asked:?})={d:?}");
                match d {
                    Decision::StartNew => {
                        if formed && amnesiac & bit != 0 {
                            return Some(step);
                        }
                        queue.push_back((start(i, now, part, knows), step));
                    }
                    Decision::Join { .. } => {
                        // A quorum serves: join as a learner.
                        if formed {
                            let serving = if model.reports_from_status { bit } else { 0 };
                            queue.push_back((
                                (
                                    now | bit,
                                    part | bit,
                                    amnesiac & !bit,
                                    true,
                                    knows | serving,
                                ),
                                format!("{step} join"),
                            ));
                        }
                        // No quorum serves (or this node cannot reach it): the fallback.
                        match (model.rule)(&names[i], &s, &answers) {
                            Fallback::StartNew => {
                                let step = format!("{step} no-quorum=StartNew");
                                if formed && amnesiac & bit != 0 {
                                    return Some(step);
                                }
                                queue.push_back((start(i, now, part, knows), step));
                            }
                            Fallback::WaitForQuorum => {}
                        }
                    }
                    Decision::Resume | Decision::Wait { .. } => {}
                }
            }
        }
    }
    None
}

#[test]
fn the_fallback_never_lets_a_reinstalled_member_start_new_n3_n5() {
    let model = FallbackModel {
        rule: fallback,
        reports_from_status: true,
    };
    for n in [3, 5] {
        if let Some(trace) = explore_fallback(n, model) {
            panic!("n={n}: violation:{trace}");
        }
    }
}

/// Issue 16's hole, found by the model: members that formed but answer only from a recorded
/// cluster ID (the engine recorded it after its first linearizable read) look unformed in that
/// window, and the fallback lets an amnesiac member start as `new`.
#[test]
fn the_exploration_catches_the_fallback_on_recorded_ids_only() {
    let model = FallbackModel {
        rule: fallback,
        reports_from_status: false,
    };
    for n in [3, 5] {
        assert!(
            explore_fallback(n, model).is_some(),
            "n={n}: the old fallback went unnoticed"
        );
    }
}

/// And a fallback that ignores the answers' cluster IDs altogether is caught too.
#[test]
fn the_exploration_catches_a_fallback_that_always_starts_new() {
    let model = FallbackModel {
        rule: |_, _, _| Fallback::StartNew,
        reports_from_status: true,
    };
    for n in [3, 5] {
        assert!(explore_fallback(n, model).is_some(), "n={n}");
    }
}

#[test]
fn fallback_decisions_for_the_plain_cases() {
    let s = set(3);
    let mut formed = answer(&s, "cp-1", true);
    formed.cluster_id = Some("c1".into());
    assert_eq!(
        fallback("cp-0", &s, &[answer(&s, "cp-1", true)]),
        Fallback::StartNew
    );
    assert_eq!(
        fallback("cp-0", &s, &[formed.clone()]),
        Fallback::WaitForQuorum
    );
    // Its own answer, a foreign member list, or a member outside E never counts.
    let mut own = formed.clone();
    own.from = "cp-0".into();
    let mut foreign = formed.clone();
    foreign.members_digest = set(5).digest();
    let mut outsider = formed.clone();
    outsider.from = "cp-9".into();
    assert_eq!(
        fallback(
            "cp-0",
            &s,
            &[own, foreign, outsider, answer(&s, "cp-2", true)]
        ),
        Fallback::StartNew
    );
    // A later answer from the same member replaces its earlier one.
    assert_eq!(
        fallback("cp-0", &s, &[formed, answer(&s, "cp-1", true)]),
        Fallback::StartNew
    );
}

#[test]
fn no_reinstalled_member_of_a_started_majority_ever_starts_new_n3_n5() {
    for n in [3, 5] {
        if let Some(trace) = explore(n, the_rule) {
            panic!("n={n}: violation:{trace}");
        }
    }
}

/// The check is not vacuous: counting this node's own (possibly amnesiac) record as one of the
/// quorum, as a plain "majority of E says not started" rule would, is caught.
#[test]
fn the_exploration_catches_a_rule_that_counts_itself() {
    fn counts_itself(
        me: &str,
        s: &MemberSet,
        started: bool,
        answers: &[StartedAnswer],
    ) -> Decision {
        if started {
            return Decision::Resume;
        }
        if let Some(a) = answers.iter().find(|a| a.started) {
            return Decision::Join {
                via: a.from.clone(),
            };
        }
        let voters: BTreeSet<&str> = answers
            .iter()
            .map(|a| a.from.as_str())
            .chain([me])
            .collect();
        if voters.len() >= s.quorum() {
            Decision::StartNew
        } else {
            Decision::Wait {
                have: voters.len(),
                need: s.quorum(),
            }
        }
    }
    for n in [3, 5] {
        assert!(
            explore(n, counts_itself).is_some(),
            "n={n}: the weakened rule went unnoticed"
        );
    }
}
