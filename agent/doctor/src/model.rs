//! Test-only: a small world (the provider's VMs, etcd's members, the Node object, the
//! maintenance lease, the progress record) and a driver that runs [`next_step`] against it the
//! way the duty does, with leader crashes injected between any two actions. It checks on every
//! action the order the doctor promises: nothing is removed before the fence is confirmed, the
//! old member is gone before the new node joins, and never two VMs of one name.

use crate::guard::Voter;
use crate::provider::{Vm, VmStatus};
use crate::steps::{next_step, LeaseView, NodeObject, Observation, Outcome, Progress, Step};
use crate::{NodeRole, Unix};

#[derive(Debug, Clone)]
pub struct World {
    pub node: String,
    pub role: NodeRole,
    pub vms: Vec<Vm>,
    pub next_id: u64,
    pub members: Vec<Voter>,
    pub node_object: NodeObject,
    /// The maintenance key: (node, term that holds it).
    pub lease: Option<(String, i64)>,
    pub progress: Option<Progress>,
    pub term: i64,
    pub now: Unix,
    pub creates: u32,
    /// Every effect, in order.
    pub log: Vec<String>,
    pub outcome: Option<Outcome>,
    /// Set by a test to make the provider unreachable for this many passes.
    pub provider_down_for: u32,
}

pub const STARTUP: u64 = 600;

fn voter(id: u64, name: &str, healthy: bool) -> Voter {
    Voter {
        id,
        name: name.into(),
        peer_urls: vec![format!("https://{name}.lab.kubedna:2380")],
        learner: false,
        healthy,
    }
}

impl World {
    /// Three control planes and two workers; `dead` has been powered off (its VM off, its etcd
    /// member unhealthy, its Node NotReady), and a replacement of it was just started by `term`.
    pub fn powered_off(dead: &str, role: NodeRole, term: i64) -> World {
        let names = ["cp-1", "cp-2", "cp-3", "w-1", "w-2"];
        let vms: Vec<Vm> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Vm {
                id: 100 + i as u64,
                name: n.to_string(),
                status: if *n == dead {
                    VmStatus::Off
                } else {
                    VmStatus::Running
                },
                labels: Default::default(),
            })
            .collect();
        let members = (1..=3)
            .map(|i| {
                let n = format!("cp-{i}");
                voter(i, &n, n != dead)
            })
            .collect();
        let old = vms.iter().find(|v| v.name == dead).map(|v| v.id);
        let now = 10_000;
        World {
            node: dead.into(),
            role,
            vms,
            next_id: 200,
            members,
            node_object: NodeObject::Present { ready: false },
            lease: None,
            progress: Some(Progress::start(
                dead,
                role,
                "vm=off for 30s",
                old,
                term,
                now,
            )),
            term,
            now,
            creates: 0,
            log: Vec::new(),
            outcome: None,
            provider_down_for: 0,
        }
    }

    fn old_vm(&self) -> Option<u64> {
        self.progress.as_ref().and_then(|p| p.old_vm)
    }

    /// The world moves on its own: a created VM boots, joins and becomes Ready.
    fn tick(&mut self) {
        let node = self.node.clone();
        let old = self.old_vm();
        let booted = self
            .vms
            .iter()
            .any(|v| v.name == node && Some(v.id) != old && v.status == VmStatus::Running);
        if !booted {
            return;
        }
        if self.role == NodeRole::ControlPlane {
            match self.members.iter_mut().find(|m| m.name == node) {
                None => {
                    // etcd refuses a second member with the same peer URL.
                    self.log.push(format!("member {node} added as learner"));
                    self.members.push(Voter {
                        learner: true,
                        ..voter(50, &node, true)
                    });
                    return;
                }
                Some(m) if m.learner => {
                    m.learner = false;
                    self.log.push(format!("member {node} promoted"));
                    return;
                }
                Some(m) => assert!(
                    m.healthy,
                    "the old member of {node} was still listed when the new node joined"
                ),
            }
        }
        if self.node_object != (NodeObject::Present { ready: true }) {
            self.node_object = NodeObject::Present { ready: true };
            self.log.push(format!("node {node} Ready"));
        }
    }

    /// A new leader: the next term; the old leader's lease key outlives it (until its TTL) unless
    /// `lease_expired`.
    pub fn crash_leader(&mut self, lease_expired: bool) {
        self.term += 1;
        if lease_expired {
            self.lease = None;
        }
        self.log.push(format!("leader crashed; term {}", self.term));
    }

    /// One pass: observe, decide, act. Returns the step taken (None once released).
    pub fn pass(&mut self) -> Option<Step> {
        let p = self.progress.clone()?;
        self.now += 10;
        let lease = match &self.lease {
            None => LeaseView::Absent,
            Some((n, t)) if *n == self.node && *t == self.term => LeaseView::Ours,
            Some((n, _)) if *n == self.node => LeaseView::Resumable,
            Some((n, _)) => LeaseView::Other {
                holder: "cp-1".into(),
                node: n.clone(),
                reason: "patch: reboot".into(),
            },
        };
        let provider_up = self.provider_down_for == 0;
        self.provider_down_for = self.provider_down_for.saturating_sub(1);
        let vms = self.vms.clone();
        let members = self.members.clone();
        let o = Observation {
            now: self.now,
            lease: &lease,
            vms: provider_up.then_some(&vms[..]),
            members: Some(&members[..]),
            node: self.node_object,
            startup_timeout: STARTUP,
            came_back: false,
        };
        let step = next_step(&p, &o);
        self.apply(&p, &step);
        self.tick();
        Some(step)
    }

    fn fenced(&self) -> bool {
        let old = self.old_vm();
        self.vms
            .iter()
            .find(|v| Some(v.id) == old)
            .is_none_or(|v| v.status == VmStatus::Off)
    }

    fn apply(&mut self, p: &Progress, step: &Step) {
        let node = self.node.clone();
        match step {
            Step::TakeLease => {
                assert!(
                    self.lease.as_ref().is_none_or(|(n, _)| *n == node),
                    "took a lease held for another node"
                );
                self.lease = Some((node, self.term));
            }
            Step::Advance { .. } | Step::RecordNewVm { .. } | Step::Finish { .. } => {
                assert!(self.lease_ours(), "recorded progress without the lease");
                if let Step::Finish { outcome } = step {
                    self.outcome = Some(outcome.clone());
                }
                self.progress = Some(p.after(step, self.term, self.now));
            }
            Step::PowerOff { vm } => {
                if let Some(v) = self.vms.iter_mut().find(|v| v.id == *vm) {
                    v.status = VmStatus::Off;
                }
                self.log.push(format!("vm {vm} powered off"));
            }
            Step::RemoveMember { id } => {
                assert!(
                    self.fenced(),
                    "member removed before the fence was confirmed"
                );
                self.members.retain(|m| m.id != *id);
                self.log.push(format!("member {node} removed"));
            }
            Step::DeleteNode => {
                assert!(self.fenced(), "Node deleted before the fence was confirmed");
                self.node_object = NodeObject::Absent;
                self.log.push(format!("node {node} deleted"));
            }
            Step::DeleteVm { vm } => {
                assert!(self.fenced(), "VM deleted before the fence was confirmed");
                self.vms.retain(|v| v.id != *vm);
                self.log.push(format!("vm {vm} deleted"));
            }
            Step::CreateVm => {
                assert!(
                    self.vms.iter().all(|v| v.name != node),
                    "created a second VM named {node}"
                );
                if self.role == NodeRole::ControlPlane {
                    assert!(
                        self.members.iter().all(|m| m.name != node),
                        "created the new control plane while its old member was still listed"
                    );
                }
                self.vms.push(Vm {
                    id: self.next_id,
                    name: node.clone(),
                    status: VmStatus::Running,
                    labels: Default::default(),
                });
                self.log.push(format!("vm {} created", self.next_id));
                self.next_id += 1;
                self.creates += 1;
            }
            Step::Wait { .. } => {}
            Step::Release => {
                self.progress = None;
                self.lease = None;
                self.log.push("released".into());
            }
        }
    }

    fn lease_ours(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|(n, t)| *n == self.node && *t == self.term)
    }

    /// Runs passes until released, crashing the leader after the passes listed in `crash_after`.
    /// Returns the steps taken.
    pub fn run(&mut self, crash_after: &[usize], lease_expires: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        for i in 0..200 {
            let Some(step) = self.pass() else {
                return steps;
            };
            steps.push(step);
            if crash_after.contains(&i) {
                self.crash_leader(lease_expires);
            }
        }
        panic!("no release after 200 passes: {:?}", steps.last());
    }
}
