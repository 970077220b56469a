//! The replacement's step machine. A replacement goes lease → fence → (control planes) remove
//! the etcd member → delete the Node → create the VM → wait Ready → release, and its
//! [`Progress`] is recorded in etcd under the leader term after every step. [`next_step`] is
//! pure: from the recorded progress and what the leader observes now it returns the one next
//! action. Every step first checks in the world whether it is already done, and every action
//! is idempotent, so a new leader resuming from the record (possibly one step behind what its
//! predecessor did) never repeats an effect that matters: the fence is confirmed before
//! anything is removed, a member is removed only under the quorum rule, and a VM is created
//! only when none of that name exists. It must never skip the fence, and never create while the
//! old VM still holds the name.

use serde::{Deserialize, Serialize};

use crate::guard::{removal_keeps_quorum, Voter};
use crate::provider::{Vm, VmStatus};
use crate::{NodeRole, Unix};

/// Where a replacement stands; the step names are recorded in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    Lease,
    Fence,
    RemoveMember,
    DeleteNode,
    CreateVm,
    WaitReady,
    Release,
}

/// How a replacement ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Replaced,
    Abandoned { why: String },
}

/// The record of one replacement, kept in etcd (`/kubedna/<cluster>/doctor/replacement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub node: String,
    pub role: NodeRole,
    /// The signals that judged the node dead, in words.
    pub signals: String,
    /// The VM being replaced (None if the provider already listed none).
    pub old_vm: Option<u64>,
    /// The new VM, once seen.
    #[serde(default)]
    pub new_vm: Option<u64>,
    pub step: StepName,
    /// When the current step was recorded.
    pub step_since: Unix,
    pub started: Unix,
    /// The leader term that last wrote this record.
    pub term: i64,
    #[serde(default)]
    pub outcome: Option<Outcome>,
}

impl Progress {
    pub fn start(
        node: &str,
        role: NodeRole,
        signals: &str,
        old_vm: Option<u64>,
        term: i64,
        now: Unix,
    ) -> Progress {
        Progress {
            node: node.to_string(),
            role,
            signals: signals.to_string(),
            old_vm,
            new_vm: None,
            step: StepName::Lease,
            step_since: now,
            started: now,
            term,
            outcome: None,
        }
    }

    /// The reason recorded in the maintenance lease.
    pub fn lease_reason(&self) -> String {
        format!("doctor: replace {}", self.node)
    }

    /// Whether the old VM is confirmed off (the point past which finishing is never worse than
    /// stopping).
    pub fn fenced(&self) -> bool {
        !matches!(self.step, StepName::Lease | StepName::Fence)
    }

    /// The record after `step` is applied at `now` under `term`. Only the recording steps
    /// change it.
    pub fn after(&self, step: &Step, term: i64, now: Unix) -> Progress {
        let mut p = self.clone();
        p.term = term;
        match step {
            Step::Advance { to } => {
                p.step = *to;
                p.step_since = now;
            }
            Step::RecordNewVm { vm } => {
                p.new_vm = Some(*vm);
                p.step = StepName::WaitReady;
                p.step_since = now;
            }
            Step::Finish { outcome } => {
                p.outcome = Some(outcome.clone());
                p.step = StepName::Release;
                p.step_since = now;
            }
            _ => {}
        }
        p
    }
}

/// The maintenance lease as the doctor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseView {
    Absent,
    /// Held for this replacement under the current term.
    Ours,
    /// Held for this replacement (same node and reason) under an earlier term or lease: a new
    /// leader takes it over.
    Resumable,
    /// Held by someone else (a patch reboot): wait.
    Other {
        holder: String,
        node: String,
        reason: String,
    },
}

/// The Node object of the node being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeObject {
    Absent,
    Present {
        ready: bool,
    },
    /// The API could not be asked.
    Unobserved,
}

/// What the leader observes now. `None` means that source could not be asked this pass.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub now: Unix,
    pub lease: &'a LeaseView,
    /// The provider's VMs of the cluster (every name; [`next_step`] picks the node's).
    pub vms: Option<&'a [Vm]>,
    /// etcd's members, with their health just probed.
    pub members: Option<&'a [Voter]>,
    pub node: NodeObject,
    /// How long the new VM has to become Ready (`doctor.nodeStartupSeconds`).
    pub startup_timeout: u64,
    /// The node shows a sign of life now (the mesh sees it alive, or its Node is Ready).
    pub came_back: bool,
}

/// The one next action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Take (or take over) the maintenance lease for this replacement.
    TakeLease,
    /// Record that the current step is done: progress moves to `to`.
    Advance { to: StepName },
    /// Power the old VM off and wait for the provider's action to finish.
    PowerOff { vm: u64 },
    /// Remove the node's etcd member (the quorum rule allowed it just now).
    RemoveMember { id: u64 },
    /// Delete the Node object.
    DeleteNode,
    /// Delete a VM (the old one, whose name the new one needs).
    DeleteVm { vm: u64 },
    /// Create the new VM: same name, role label, freshly rendered seed.
    CreateVm,
    /// Record the new VM's id; progress moves to waiting for it.
    RecordNewVm { vm: u64 },
    /// Nothing to do this pass.
    Wait { why: String },
    /// Record the outcome; progress moves to release.
    Finish { outcome: Outcome },
    /// Append to history, set the back-off, delete the progress record, release the lease.
    Release,
}

fn wait(why: impl Into<String>) -> Step {
    Step::Wait { why: why.into() }
}

/// Whether `m` is the etcd member of `node`: by name, or, for a member that never started
/// (no name yet), by its peer URL `https://<node>.<cluster>.kubedna:2380`.
pub fn member_of(m: &Voter, node: &str) -> bool {
    m.name == node
        || (m.name.is_empty()
            && m.peer_urls.iter().any(|u| {
                u.split("//")
                    .nth(1)
                    .is_some_and(|h| h.starts_with(&format!("{node}.")))
            }))
}

/// The next action for the replacement recorded in `p`, given `o`.
pub fn next_step(p: &Progress, o: &Observation<'_>) -> Step {
    if p.step != StepName::Release {
        match o.lease {
            LeaseView::Ours => {}
            LeaseView::Absent | LeaseView::Resumable => return Step::TakeLease,
            LeaseView::Other {
                holder,
                node,
                reason,
            } => {
                return wait(format!(
                    "the maintenance lease is held by {holder} for {node} ({reason})"
                ))
            }
        }
    }
    // Until the fence, a node that shows life again is left alone: the judgement that started
    // the replacement no longer holds (a new leader's own clocks may not have reached the
    // thresholds yet, so only a positive sign of life counts, not a weaker verdict).
    if matches!(p.step, StepName::Lease | StepName::Fence) && o.came_back {
        return Step::Finish {
            outcome: Outcome::Abandoned {
                why: format!("{} came back before it was fenced", p.node),
            },
        };
    }
    match p.step {
        StepName::Lease => Step::Advance {
            to: StepName::Fence,
        },
        StepName::Fence => fence(p, o),
        StepName::RemoveMember => remove_member(p, o),
        StepName::DeleteNode => match o.node {
            NodeObject::Unobserved => wait("the Kubernetes API could not be asked about the Node"),
            NodeObject::Absent => Step::Advance {
                to: StepName::CreateVm,
            },
            NodeObject::Present { .. } => Step::DeleteNode,
        },
        StepName::CreateVm => create(p, o),
        StepName::WaitReady => wait_ready(p, o),
        StepName::Release => Step::Release,
    }
}

fn fence(p: &Progress, o: &Observation<'_>) -> Step {
    let after = match p.role {
        NodeRole::ControlPlane => StepName::RemoveMember,
        NodeRole::Worker => StepName::DeleteNode,
    };
    let Some(vms) = o.vms else {
        return wait("the provider could not be asked whether the old VM is off; retrying");
    };
    let Some(old) = p.old_vm else {
        // The provider listed no VM of that name when the replacement started. One that shows
        // up now is unknown to this replacement: never create beside it, never take it for the
        // new one; judge the node again from scratch.
        if let Some(v) = vms.iter().find(|v| v.name == p.node) {
            return Step::Finish {
                outcome: Outcome::Abandoned {
                    why: format!(
                        "VM {} named {} appeared after the replacement started; judged again",
                        v.id, p.node
                    ),
                },
            };
        }
        return Step::Advance { to: after };
    };
    match vms.iter().find(|v| v.id == old).map(|v| v.status) {
        None | Some(VmStatus::Off) => Step::Advance { to: after },
        Some(VmStatus::Deleting) => wait(format!("VM {old} is being deleted")),
        Some(_) => Step::PowerOff { vm: old },
    }
}

fn remove_member(p: &Progress, o: &Observation<'_>) -> Step {
    let Some(members) = o.members else {
        return wait("etcd's member list or health could not be read; retrying");
    };
    let Some(m) = members.iter().find(|m| member_of(m, &p.node)) else {
        return Step::Advance {
            to: StepName::DeleteNode,
        };
    };
    if m.healthy {
        return wait(format!(
            "etcd member {:x} of {} still answers although its VM is off: not removing it; check which machine serves it",
            m.id, p.node
        ));
    }
    match removal_keeps_quorum(members, m.id) {
        Ok(()) => Step::RemoveMember { id: m.id },
        Err(refused) => wait(refused.to_string()),
    }
}

fn create(p: &Progress, o: &Observation<'_>) -> Step {
    let Some(vms) = o.vms else {
        return wait("the provider could not be asked for the cluster's VMs; retrying");
    };
    let named: Vec<&Vm> = vms.iter().filter(|v| v.name == p.node).collect();
    if let Some(old) = named.iter().find(|v| Some(v.id) == p.old_vm) {
        if old.status == VmStatus::Deleting {
            return wait(format!("the old VM {} is being deleted", old.id));
        }
        return Step::DeleteVm { vm: old.id };
    }
    match named.first() {
        Some(v) if v.status == VmStatus::Deleting => {
            wait(format!("VM {} of that name is being deleted", v.id))
        }
        Some(v) => Step::RecordNewVm { vm: v.id },
        None => Step::CreateVm,
    }
}

fn wait_ready(p: &Progress, o: &Observation<'_>) -> Step {
    let voter = match p.role {
        NodeRole::Worker => true,
        NodeRole::ControlPlane => o
            .members
            .is_some_and(|ms| ms.iter().any(|m| m.name == p.node && !m.learner)),
    };
    if o.node == (NodeObject::Present { ready: true }) && voter {
        return Step::Finish {
            outcome: Outcome::Replaced,
        };
    }
    let waited = o.now.saturating_sub(p.step_since);
    if waited >= o.startup_timeout {
        return Step::Finish {
            outcome: Outcome::Abandoned {
                why: format!(
                    "the new VM of {} did not become Ready within {}s",
                    p.node, o.startup_timeout
                ),
            },
        };
    }
    let what = match (o.node, voter) {
        (NodeObject::Present { ready: true }, false) => "its etcd member to become a voter",
        (NodeObject::Present { ready: false }, _) => "its Node to become Ready",
        _ => "its Node to register",
    };
    wait(format!(
        "{} is joining: waiting for {what} ({waited}s of {}s)",
        p.node, o.startup_timeout
    ))
}

#[cfg(test)]
#[path = "steps_tests.rs"]
mod tests;
