use super::*;
use crate::model::{World, STARTUP};

fn vm(id: u64, name: &str, status: VmStatus) -> Vm {
    Vm {
        id,
        name: name.into(),
        status,
        labels: Default::default(),
    }
}

fn member(id: u64, name: &str, healthy: bool, learner: bool) -> Voter {
    Voter {
        id,
        name: name.into(),
        peer_urls: vec![format!("https://{name}.lab.kubedna:2380")],
        learner,
        healthy,
    }
}

fn progress(step: StepName, role: NodeRole) -> Progress {
    let mut p = Progress::start("cp-3", role, "vm=off for 30s", Some(103), 7, 1000);
    p.step = step;
    p
}

struct Case {
    name: &'static str,
    step: StepName,
    role: NodeRole,
    lease: LeaseView,
    vms: Option<Vec<Vm>>,
    members: Option<Vec<Voter>>,
    node: NodeObject,
    now: Unix,
    came_back: bool,
    want: fn(&Step) -> bool,
}

fn healthy_cps() -> Vec<Voter> {
    vec![
        member(1, "cp-1", true, false),
        member(2, "cp-2", true, false),
        member(3, "cp-3", false, false),
    ]
}

fn base(name: &'static str, step: StepName, want: fn(&Step) -> bool) -> Case {
    Case {
        name,
        step,
        role: NodeRole::ControlPlane,
        lease: LeaseView::Ours,
        vms: Some(vec![vm(103, "cp-3", VmStatus::Off)]),
        members: Some(healthy_cps()),
        node: NodeObject::Present { ready: false },
        now: 1010,
        came_back: false,
        want,
    }
}

/// A case whose replacement started with no VM listed (`old_vm` None): marked by now 1011.
fn base_without_old(name: &'static str, step: StepName, want: fn(&Step) -> bool) -> Case {
    Case {
        now: 1011,
        ..base(name, step, want)
    }
}

#[test]
fn next_step_by_table() {
    let cases = vec![
        Case {
            lease: LeaseView::Absent,
            ..base("no lease yet: take it", StepName::Lease, |s| {
                *s == Step::TakeLease
            })
        },
        Case {
            lease: LeaseView::Resumable,
            ..base(
                "a new leader takes the lease over at any step",
                StepName::CreateVm,
                |s| *s == Step::TakeLease,
            )
        },
        Case {
            lease: LeaseView::Other {
                holder: "cp-1".into(),
                node: "w-2".into(),
                reason: "patch: reboot".into(),
            },
            ..base(
                "lease held for a patch reboot: wait",
                StepName::Lease,
                |s| matches!(s, Step::Wait { why } if why.contains("w-2") && why.contains("patch")),
            )
        },
        base("lease held: on to the fence", StepName::Lease, |s| {
            *s == Step::Advance {
                to: StepName::Fence,
            }
        }),
        Case {
            vms: Some(vec![vm(103, "cp-3", VmStatus::Running)]),
            ..base("running: power off", StepName::Fence, |s| {
                *s == Step::PowerOff { vm: 103 }
            })
        },
        Case {
            vms: Some(vec![vm(103, "cp-3", VmStatus::Unknown)]),
            ..base("failed state: power off too", StepName::Fence, |s| {
                *s == Step::PowerOff { vm: 103 }
            })
        },
        base(
            "off: a control plane goes on to its member",
            StepName::Fence,
            |s| {
                *s == Step::Advance {
                    to: StepName::RemoveMember,
                }
            },
        ),
        Case {
            role: NodeRole::Worker,
            vms: Some(vec![]),
            ..base("gone: a worker goes on to its Node", StepName::Fence, |s| {
                *s == Step::Advance {
                    to: StepName::DeleteNode,
                }
            })
        },
        Case {
            vms: None,
            ..base(
                "provider unreachable: never assume fenced",
                StepName::Fence,
                |s| matches!(s, Step::Wait { .. }),
            )
        },
        base(
            "member of the dead node: remove",
            StepName::RemoveMember,
            |s| *s == Step::RemoveMember { id: 3 },
        ),
        Case {
            members: Some(vec![
                member(1, "cp-1", true, false),
                member(2, "cp-2", false, false),
                member(3, "cp-3", false, false),
            ]),
            ..base(
                "would lose quorum: wait and say why",
                StepName::RemoveMember,
                |s| matches!(s, Step::Wait { why } if why.contains("majority")),
            )
        },
        Case {
            members: Some(vec![
                member(1, "cp-1", true, false),
                member(2, "cp-2", true, false),
                member(3, "cp-3", true, false),
            ]),
            ..base(
                "its member still answers: never remove",
                StepName::RemoveMember,
                |s| matches!(s, Step::Wait { why } if why.contains("still answers")),
            )
        },
        Case {
            members: Some(vec![
                member(1, "cp-1", true, false),
                member(2, "cp-2", true, false),
            ]),
            ..base("member gone already", StepName::RemoveMember, |s| {
                *s == Step::Advance {
                    to: StepName::DeleteNode,
                }
            })
        },
        Case {
            members: Some(vec![
                member(1, "cp-1", true, false),
                member(2, "cp-2", true, false),
                Voter {
                    name: String::new(),
                    ..member(3, "cp-3", false, false)
                },
            ]),
            ..base(
                "a member that never started is found by its peer URL",
                StepName::RemoveMember,
                |s| *s == Step::RemoveMember { id: 3 },
            )
        },
        base("Node present: delete", StepName::DeleteNode, |s| {
            *s == Step::DeleteNode
        }),
        Case {
            node: NodeObject::Absent,
            ..base("Node gone: create", StepName::DeleteNode, |s| {
                *s == Step::Advance {
                    to: StepName::CreateVm,
                }
            })
        },
        Case {
            node: NodeObject::Unobserved,
            ..base("API unreachable: wait", StepName::DeleteNode, |s| {
                matches!(s, Step::Wait { .. })
            })
        },
        base(
            "old VM holds the name: delete it first",
            StepName::CreateVm,
            |s| *s == Step::DeleteVm { vm: 103 },
        ),
        Case {
            vms: Some(vec![vm(103, "cp-3", VmStatus::Deleting)]),
            ..base("old VM being deleted: wait", StepName::CreateVm, |s| {
                matches!(s, Step::Wait { .. })
            })
        },
        Case {
            vms: Some(vec![vm(7, "cp-2", VmStatus::Running)]),
            ..base("no VM of that name: create", StepName::CreateVm, |s| {
                *s == Step::CreateVm
            })
        },
        Case {
            vms: Some(vec![vm(204, "cp-3", VmStatus::Initializing)]),
            ..base(
                "created by a leader that died before recording it: record",
                StepName::CreateVm,
                |s| *s == Step::RecordNewVm { vm: 204 },
            )
        },
        Case {
            vms: None,
            ..base(
                "provider unreachable: never create blind",
                StepName::CreateVm,
                |s| matches!(s, Step::Wait { .. }),
            )
        },
        Case {
            node: NodeObject::Present { ready: true },
            members: Some(vec![
                member(1, "cp-1", true, false),
                member(2, "cp-2", true, false),
                member(9, "cp-3", true, true),
            ]),
            ..base(
                "Ready but still a learner: wait",
                StepName::WaitReady,
                |s| matches!(s, Step::Wait { why } if why.contains("voter")),
            )
        },
        Case {
            node: NodeObject::Present { ready: true },
            members: Some(vec![
                member(1, "cp-1", true, false),
                member(2, "cp-2", true, false),
                member(9, "cp-3", true, false),
            ]),
            ..base("Ready and a voter: finish", StepName::WaitReady, |s| {
                *s == Step::Finish {
                    outcome: Outcome::Replaced,
                }
            })
        },
        Case {
            role: NodeRole::Worker,
            node: NodeObject::Present { ready: true },
            ..base("a worker needs only Ready", StepName::WaitReady, |s| {
                *s == Step::Finish {
                    outcome: Outcome::Replaced,
                }
            })
        },
        Case {
            node: NodeObject::Absent,
            now: 1000 + STARTUP,
            ..base(
                "not Ready in time: abandon",
                StepName::WaitReady,
                |s| matches!(s, Step::Finish { outcome: Outcome::Abandoned { why } } if why.contains("600s")),
            )
        },
        Case {
            lease: LeaseView::Absent,
            ..base(
                "release needs no lease (it may have expired)",
                StepName::Release,
                |s| *s == Step::Release,
            )
        },
        Case {
            came_back: true,
            vms: Some(vec![vm(103, "cp-3", VmStatus::Running)]),
            ..base(
                "came back before the fence: abandon, never power off",
                StepName::Fence,
                |s| matches!(s, Step::Finish { outcome: Outcome::Abandoned { why } } if why.contains("came back")),
            )
        },
        Case {
            came_back: true,
            ..base(
                "came back while waiting for the lease: abandon",
                StepName::Lease,
                |s| {
                    matches!(
                        s,
                        Step::Finish {
                            outcome: Outcome::Abandoned { .. }
                        }
                    )
                },
            )
        },
        Case {
            came_back: true,
            ..base(
                "past the fence a sign of life changes nothing (it was powered off)",
                StepName::DeleteNode,
                |s| *s == Step::DeleteNode,
            )
        },
        Case {
            vms: Some(vec![vm(222, "cp-3", VmStatus::Running)]),
            ..base_without_old(
                "no VM at the start, one of that name now: abandon",
                StepName::Fence,
                |s| matches!(s, Step::Finish { outcome: Outcome::Abandoned { why } } if why.contains("appeared")),
            )
        },
        Case {
            vms: Some(vec![]),
            ..base_without_old(
                "no VM at the start, none now: fenced",
                StepName::Fence,
                |s| {
                    *s == Step::Advance {
                        to: StepName::RemoveMember,
                    }
                },
            )
        },
        Case {
            vms: None,
            ..base_without_old(
                "no VM at the start, provider unreachable now: wait",
                StepName::Fence,
                |s| matches!(s, Step::Wait { .. }),
            )
        },
    ];
    for c in cases {
        let mut p = progress(c.step, c.role);
        if c.now == 1011 {
            p.old_vm = None;
        }
        let o = Observation {
            now: c.now,
            lease: &c.lease,
            vms: c.vms.as_deref(),
            members: c.members.as_deref(),
            node: c.node,
            startup_timeout: STARTUP,
            came_back: c.came_back,
        };
        let got = next_step(&p, &o);
        assert!((c.want)(&got), "{}: got {got:?}", c.name);
    }
}

#[test]
fn a_control_plane_replacement_removes_the_member_before_the_new_one_joins() {
    let mut w = World::powered_off("cp-3", NodeRole::ControlPlane, 7);
    w.run(&[], false);
    assert_eq!(
        w.log,
        [
            "member cp-3 removed",
            "node cp-3 deleted",
            "vm 102 deleted",
            "vm 200 created",
            "member cp-3 added as learner",
            "member cp-3 promoted",
            "node cp-3 Ready",
            "released",
        ]
    );
    assert_eq!(
        w.members.iter().filter(|m| !m.learner).count(),
        3,
        "3 voters again"
    );
    assert_eq!(w.outcome, Some(Outcome::Replaced));
}

#[test]
fn a_running_worker_is_fenced_first() {
    let mut w = World::powered_off("w-1", NodeRole::Worker, 7);
    w.vms.iter_mut().for_each(|v| v.status = VmStatus::Running);
    w.run(&[], false);
    assert_eq!(w.log[0], "vm 103 powered off");
    assert_eq!(w.creates, 1);
    assert_eq!(w.outcome, Some(Outcome::Replaced));
}

/// A new leader may take over after any action of the old one (its record one step behind the
/// world), with the old lease still held or expired: the replacement always ends with exactly
/// one new VM, the member removed once and the cluster whole, and the model's order checks hold.
#[test]
fn a_new_leader_resumes_after_a_crash_between_any_two_actions() {
    for role in [NodeRole::ControlPlane, NodeRole::Worker] {
        let node = if role == NodeRole::ControlPlane {
            "cp-3"
        } else {
            "w-1"
        };
        let plain = {
            let mut w = World::powered_off(node, role, 7);
            w.run(&[], false).len()
        };
        for crash in 0..plain {
            for expired in [false, true] {
                let mut w = World::powered_off(node, role, 7);
                w.run(&[crash], expired);
                let what = format!("{role} crash after pass {crash}, lease expired {expired}");
                assert_eq!(w.creates, 1, "{what}: {:?}", w.log);
                assert_eq!(w.outcome, Some(Outcome::Replaced), "{what}");
                assert!(w.term > 7, "{what}: the crash happened");
                if role == NodeRole::ControlPlane {
                    assert_eq!(w.members.iter().filter(|m| !m.learner).count(), 3, "{what}");
                    assert_eq!(
                        w.log.iter().filter(|l| l.contains("removed")).count(),
                        1,
                        "{what}"
                    );
                }
            }
        }
        // And a new leader every other pass (each spends one pass taking the lease over and
        // does one step): still one VM.
        let mut w = World::powered_off(node, role, 7);
        let every: Vec<usize> = (0..200).filter(|i| i % 2 == 1).collect();
        w.run(&every, false);
        assert_eq!(w.creates, 1, "{role} crash every other pass: {:?}", w.log);
        assert_eq!(w.outcome, Some(Outcome::Replaced));
    }
}

#[test]
fn provider_errors_change_nothing_half_way() {
    let mut w = World::powered_off("w-1", NodeRole::Worker, 7);
    w.vms.iter_mut().for_each(|v| v.status = VmStatus::Running);
    w.provider_down_for = 5;
    let steps = w.run(&[], false);
    // While the provider cannot be asked, every pass after the lease waits; nothing moved.
    assert_eq!(
        steps[..2],
        [
            Step::TakeLease,
            Step::Advance {
                to: StepName::Fence
            }
        ]
    );
    assert!(
        steps[2..5].iter().all(|s| matches!(s, Step::Wait { .. })),
        "{steps:?}"
    );
    assert_eq!(steps[5], Step::PowerOff { vm: 103 }, "{steps:?}");
    assert_eq!(w.creates, 1);
}

#[test]
fn the_step_machine_never_acts_without_the_lease() {
    let mut w = World::powered_off("cp-3", NodeRole::ControlPlane, 7);
    w.lease = Some(("w-2".into(), 3));
    for _ in 0..5 {
        assert!(matches!(w.pass(), Some(Step::Wait { .. })));
    }
    assert!(w.log.is_empty());
}
