//! Node metadata gossiped alongside membership.
//!
//! Owns [`NodeMeta`] (name, role, addresses, versions, lifecycle state) and the versioned
//! [`MetaRecord`] that carries it in custom broadcasts and anti-entropy. It must not decide
//! liveness: that is foca's and [`crate::lifeguard`]'s.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::security::KeyId;

/// What the node is for in the Kubernetes cluster (one type for every crate).
pub use kubedna_proto::NodeRole;

/// Where the node is in its life (DESIGN.md "The agent's job").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// The agent started and is preparing the host.
    Booting,
    /// The host is prepared; not yet in the Kubernetes cluster.
    Ready,
    /// Running `kubeadm init/join`.
    Joining,
    /// A Kubernetes node of the cluster.
    Member,
    /// Cordoned for maintenance (patch reboot).
    Maintenance,
    /// Shutting down on purpose: a following down is a leave, not a failure.
    Leaving,
}

impl NodeState {
    /// The lowercase word the CLI and the admin API show (`booting`, `ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Booting => "booting",
            NodeState::Ready => "ready",
            NodeState::Joining => "joining",
            NodeState::Member => "member",
            NodeState::Maintenance => "maintenance",
            NodeState::Leaving => "leaving",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metadata one node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The node (host) name.
    pub name: String,
    /// Control plane or worker.
    pub role: NodeRole,
    /// The node's addresses (the mesh address is the member's identity).
    pub addresses: Vec<IpAddr>,
    /// Version of kubedna-agent.
    pub agent_version: String,
    /// Version of the node image.
    pub image_version: String,
    /// Lifecycle state.
    pub state: NodeState,
}

/// A node's metadata at one version; a higher `(generation, version)` replaces a lower one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRecord {
    /// Whose metadata.
    pub id: NodeId,
    /// Bumped by the owner on every change.
    pub version: u64,
    /// The metadata.
    pub meta: NodeMeta,
    /// The ids of the packet keys the node accepts (public: they are in every packet header).
    /// A node makes a new key primary once every live member lists it (key rotation).
    pub keys: Vec<KeyId>,
}

impl MetaRecord {
    /// Whether this record should replace `other`, a record for the same address.
    pub fn newer_than(&self, other: &MetaRecord) -> bool {
        (self.id.generation, self.version) > (other.id.generation, other.version)
            && self.id.addr == other.id.addr
    }
}

#[cfg(test)]
mod state_words {
    use super::NodeState;

    #[test]
    fn each_state_shows_as_its_lowercase_word() {
        let cases = [
            (NodeState::Booting, "booting"),
            (NodeState::Ready, "ready"),
            (NodeState::Joining, "joining"),
            (NodeState::Member, "member"),
            (NodeState::Maintenance, "maintenance"),
            (NodeState::Leaving, "leaving"),
        ];
        for (state, word) in cases {
            assert_eq!(state.to_string(), word);
        }
    }
}
