//! The bootstrap rule. The member set E is the configured list of control-plane names; every
//! node computes the same `--initial-cluster` from it, so etcd can form only one cluster ID.
//! Before starting etcd as `new`, a node needs "not started" from q = ⌊n/2⌋+1 *other* members of E
//! whose E hashes to the same value as its own; any "started" answer means join instead. A member
//! records `started` durably before it first starts etcd, and answers from that record.
//!
//! [`fallback`] is the rule for the node told to join when no quorum of the cluster serves (a
//! staggered first boot, or an unreachable peer port): it may start as `new` only while no
//! started member reports a formed cluster, which a member reports from its recorded cluster ID
//! or, before it recorded one, from its running etcd's own status.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// The expected control-plane set, sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSet {
    cluster: String,
    names: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemberSetError {
    #[error("the control-plane list is empty: list every control-plane node name in cluster.controlPlanes.members")]
    Empty,
    #[error("the control-plane list names {0:?} twice")]
    Duplicate(String),
    #[error(
        "{0:?} is not in the control-plane list {1:?}; only listed nodes take part in bootstrap"
    )]
    NotMember(String, Vec<String>),
}

impl MemberSet {
    pub fn new(cluster: &str, names: &[String]) -> Result<Self, MemberSetError> {
        let mut set = BTreeSet::new();
        for n in names {
            if !set.insert(n.clone()) {
                return Err(MemberSetError::Duplicate(n.clone()));
            }
        }
        if set.is_empty() {
            return Err(MemberSetError::Empty);
        }
        Ok(MemberSet {
            cluster: cluster.to_string(),
            names: set,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// ⌊n/2⌋ + 1.
    pub fn quorum(&self) -> usize {
        self.names.len() / 2 + 1
    }

    /// Identifies E: nodes count only answers from nodes whose E is identical.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.cluster.as_bytes());
        for n in &self.names {
            h.update([0]);
            h.update(n.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// The peer URL of a member: by name, so it does not change when an address does.
    pub fn peer_url(&self, name: &str) -> String {
        format!("https://{name}.{}.kubedna:2380", self.cluster)
    }

    /// etcd's `--initial-cluster`: the same string on every member.
    pub fn initial_cluster(&self) -> String {
        self.names
            .iter()
            .map(|n| format!("{n}={}", self.peer_url(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcd's `--initial-cluster-token`.
    pub fn initial_cluster_token(&self) -> String {
        format!("kubedna-{}", self.cluster)
    }
}

/// A member's answer to "have you started etcd?", as carried over the mesh.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StartedAnswer {
    pub from: String,
    /// [`MemberSet::digest`] of the answering node's configured set.
    pub members_digest: String,
    pub started: bool,
    /// The etcd cluster ID, once the member knows it.
    pub cluster_id: Option<String>,
}

/// What the node may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// q other members agree nothing has started: record `started`, then start etcd as `new`.
    StartNew,
    /// Some member has started: this node must join the existing cluster (as a learner).
    Join { via: String },
    /// Not enough answers yet; the strings say who is still needed or why.
    Wait { have: usize, need: usize },
    /// This node already recorded `started`: restart etcd on its data, never as `new` again.
    Resume,
}

/// Decides from this node's durable record and the answers heard so far.
pub fn decide(
    me: &str,
    set: &MemberSet,
    i_started: bool,
    answers: &[StartedAnswer],
) -> Result<Decision, MemberSetError> {
    if !set.contains(me) {
        return Err(MemberSetError::NotMember(
            me.to_string(),
            set.names().map(String::from).collect(),
        ));
    }
    if i_started {
        return Ok(Decision::Resume);
    }
    let by_member = counted(me, set, answers);
    if let Some(a) = by_member.values().find(|a| a.started) {
        return Ok(Decision::Join {
            via: a.from.clone(),
        });
    }
    let have = by_member.len();
    // A set of one has no other member to ask: the single control plane forms alone. (A wiped
    // single control plane starts a new cluster: there is no other copy of the old one to keep.)
    if set.len() == 1 {
        return Ok(Decision::StartNew);
    }
    let need = set.quorum();
    if have >= need {
        Ok(Decision::StartNew)
    } else {
        Ok(Decision::Wait { have, need })
    }
}

/// The latest answer per member; answers from others only, with our E.
fn counted<'a>(
    me: &str,
    set: &MemberSet,
    answers: &'a [StartedAnswer],
) -> BTreeMap<&'a str, &'a StartedAnswer> {
    let digest = set.digest();
    let mut by_member: BTreeMap<&str, &StartedAnswer> = BTreeMap::new();
    for a in answers {
        if a.from != me && set.contains(&a.from) && a.members_digest == digest {
            by_member.insert(&a.from, a);
        }
    }
    by_member
}

/// What a node told to [`Decision::Join`] may do when no quorum of the cluster serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No started member reports a formed cluster: it is still forming (a staggered first
    /// boot, waiting for this node's member) and this node starts as `new` with E's initial
    /// cluster, exactly as a simultaneous boot would have.
    StartNew,
    /// A started member reports a formed cluster: wait for its quorum to come back, never `new`.
    WaitForQuorum,
}

/// Decides the no-quorum case from the answers heard (counted as [`decide`] counts them).
pub fn fallback(me: &str, set: &MemberSet, answers: &[StartedAnswer]) -> Fallback {
    if counted(me, set, answers)
        .values()
        .any(|a| a.started && a.cluster_id.is_some())
    {
        Fallback::WaitForQuorum
    } else {
        Fallback::StartNew
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod single {
    use super::*;

    #[test]
    fn a_single_control_plane_forms_alone_and_resumes_on_its_record() {
        let set = MemberSet::new("c", &["cp-1".to_string()]).expect("valid");
        assert_eq!(decide("cp-1", &set, false, &[]), Ok(Decision::StartNew));
        assert_eq!(decide("cp-1", &set, true, &[]), Ok(Decision::Resume));
    }
}
