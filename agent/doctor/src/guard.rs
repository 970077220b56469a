//! Whether a replacement may start or continue, and the etcd quorum rule. [`decide`] checks, in
//! order: enabled, not paused, one in flight (continued, unless too many nodes look unhealthy
//! and it has not fenced yet), `maxUnhealthy` (more than this share unhealthy means the leader
//! is more likely cut off than they are dead), back-off per node, and never the leader's own
//! node. [`removal_keeps_quorum`] refuses an etcd member removal that would leave the remaining
//! voters without a healthy majority. Pure: the caller observes, records and acts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::verdict::Verdict;
use crate::{NodeRole, Unix};

/// The guard's part of `doctor:` in agent.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardConfig {
    pub enabled: bool,
    /// Act only while at most this percentage of the nodes (rounded down) looks unhealthy.
    pub max_unhealthy_percent: u8,
    /// Back-off after a replacement of a node ends, doubled per consecutive failure.
    pub backoff: u64,
    pub backoff_max: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: false,
            max_unhealthy_percent: 40,
            backoff: 600,
            backoff_max: 3600,
        }
    }
}

/// One node as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub role: NodeRole,
    pub verdict: Verdict,
    /// The signals in words ([`crate::verdict::describe`]), for reasons and audit records.
    pub signals: String,
}

/// A node left alone until `until` (recorded in etcd, so a new leader honours it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub until: Unix,
    /// Consecutive replacements of this node that did not end Ready.
    pub failures: u32,
}

/// The back-off after a replacement of a node ended at `now`.
pub fn backoff_after(
    prev: Option<&Backoff>,
    succeeded: bool,
    cfg: &GuardConfig,
    now: Unix,
) -> Backoff {
    let failures = if succeeded {
        0
    } else {
        prev.map_or(0, |b| b.failures).saturating_add(1)
    };
    let factor = 1u64 << failures.min(16);
    Backoff {
        until: now
            + cfg
                .backoff
                .saturating_mul(factor)
                .min(cfg.backoff_max.max(cfg.backoff)),
        failures,
    }
}

/// An admin's pause (`kubedna doctor pause`), recorded in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub by: String,
    pub since: Unix,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The replacement in flight, as far as the guard cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight<'a> {
    pub node: &'a str,
    /// Whether its VM is already confirmed off: past that point finishing is never worse than
    /// stopping.
    pub fenced: bool,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub config: &'a GuardConfig,
    /// The leader's own node name.
    pub leader: &'a str,
    pub nodes: &'a [NodeView],
    pub in_flight: Option<InFlight<'a>>,
    pub paused: Option<&'a Pause>,
    pub backoff: &'a BTreeMap<String, Backoff>,
    pub now: Unix,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// Every node is healthy or suspect: nothing to do.
    Nothing,
    /// Go on with the replacement in flight.
    Continue { node: String },
    /// Start replacing `node`.
    Replace {
        node: String,
        role: NodeRole,
        signals: String,
    },
    /// Something is dead but a guard holds the doctor back.
    Wait(WaitReason),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum WaitReason {
    #[error("the doctor is disabled (doctor.enabled in agent.yaml); {dead} is dead and will not be replaced")]
    Disabled { dead: String },
    #[error("paused by {by} since {since}; `kubedna doctor resume` (admin) lets it go on")]
    Paused { by: String, since: Unix },
    #[error("{} of {total} nodes look unhealthy ({}), more than maxUnhealthy allows ({allowed}): this node is more likely cut off than they are dead; waiting for nodes to come back or for an operator", unhealthy.len(), unhealthy.join("; "))]
    TooManyUnhealthy {
        unhealthy: Vec<String>,
        total: usize,
        allowed: usize,
    },
    #[error("{node} is dead but backing off until {until} after an earlier replacement")]
    BackingOff { node: String, until: Unix },
    #[error("{node} is this leader's own node: the next leader replaces it")]
    OwnNode { node: String },
}

/// The nodes allowed to be unhealthy at once: `percent` of `total`, rounded down.
pub fn allowed_unhealthy(percent: u8, total: usize) -> usize {
    total * usize::from(percent.min(100)) / 100
}

/// One decision of the doctor for this pass.
pub fn decide(s: &Situation<'_>) -> Decision {
    let dead: Vec<&NodeView> = s
        .nodes
        .iter()
        .filter(|n| matches!(n.verdict, Verdict::Dead { .. }))
        .collect();
    if !s.config.enabled {
        return match dead.first() {
            Some(n) => Decision::Wait(WaitReason::Disabled {
                dead: n.name.clone(),
            }),
            None => Decision::Nothing,
        };
    }
    if let Some(p) = s.paused {
        if s.in_flight.is_some() || !dead.is_empty() {
            return Decision::Wait(WaitReason::Paused {
                by: p.by.clone(),
                since: p.since,
            });
        }
        return Decision::Nothing;
    }
    let unhealthy: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| n.verdict.unhealthy())
        .map(|n| format!("{}: {}", n.name, n.signals))
        .collect();
    let allowed = allowed_unhealthy(s.config.max_unhealthy_percent, s.nodes.len());
    let too_many = unhealthy.len() > allowed;
    let wait_too_many = || {
        Decision::Wait(WaitReason::TooManyUnhealthy {
            unhealthy: unhealthy.clone(),
            total: s.nodes.len(),
            allowed,
        })
    };
    if let Some(f) = s.in_flight {
        if too_many && !f.fenced {
            return wait_too_many();
        }
        return Decision::Continue {
            node: f.node.to_string(),
        };
    }
    if dead.is_empty() {
        return Decision::Nothing;
    }
    if too_many {
        return wait_too_many();
    }
    let mut held = None;
    for n in &dead {
        if n.name == s.leader {
            held.get_or_insert(WaitReason::OwnNode {
                node: n.name.clone(),
            });
            continue;
        }
        if let Some(b) = s.backoff.get(&n.name) {
            if b.until > s.now {
                held.get_or_insert(WaitReason::BackingOff {
                    node: n.name.clone(),
                    until: b.until,
                });
                continue;
            }
        }
        return Decision::Replace {
            node: n.name.clone(),
            role: n.role,
            signals: n.signals.clone(),
        };
    }
    held.map_or(Decision::Nothing, Decision::Wait)
}

/// One etcd member as the quorum rule needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: u64,
    pub name: String,
    /// Before the member started it has no name; its peer URL names the node.
    pub peer_urls: Vec<String>,
    pub learner: bool,
    /// Answered a health probe just now.
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumRefused {
    #[error("etcd member {id:x} is not in the member list")]
    Unknown { id: u64 },
    #[error("removing etcd member {id:x} would leave {healthy_after} healthy of {voters_after} voting members, below the majority of {needed}: bring members back first")]
    WouldLoseQuorum {
        id: u64,
        voters_after: usize,
        healthy_after: usize,
        needed: usize,
    },
}

/// May member `remove` go? Only if the voters left keep a healthy majority among themselves
/// (the same rule as `kubedna_controlplane::membership::removal_keeps_quorum`, checked again
/// there on the member list read just before the removal).
pub fn removal_keeps_quorum(members: &[Voter], remove: u64) -> Result<(), QuorumRefused> {
    let target = members
        .iter()
        .find(|m| m.id == remove)
        .ok_or(QuorumRefused::Unknown { id: remove })?;
    if target.learner {
        return Ok(());
    }
    let after: Vec<&Voter> = members
        .iter()
        .filter(|m| !m.learner && m.id != remove)
        .collect();
    let healthy_after = after.iter().filter(|m| m.healthy).count();
    let needed = after.len() / 2 + 1;
    if after.is_empty() || healthy_after < needed {
        return Err(QuorumRefused::WouldLoseQuorum {
            id: remove,
            voters_after: after.len(),
            healthy_after,
            needed,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
