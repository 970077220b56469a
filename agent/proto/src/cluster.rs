//! The cluster-wide views: `GET /v1/cluster/status` and `GET /v1/cluster/audit/records`. The
//! node a caller asks fans the request out over the mesh to every node it knows; each answer,
//! refusal or silence is one row, so no node is ever dropped from a view without a word. Data
//! only, like the rest of this crate.

use serde::{Deserialize, Serialize};

use crate::{AuditRecord, Leader, NodeRole};

/// How one node answered its part of a cluster-wide request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAnswer {
    /// It answered.
    Ok,
    /// The mesh shows it down, or it did not answer in time.
    Unreachable,
    /// Its own RBAC refused the caller's role (the refusal is in that node's audit log).
    Refused,
    /// It answered with an error, or its answer was not understood.
    Failed,
}

impl NodeAnswer {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAnswer::Ok => "ok",
            NodeAnswer::Unreachable => "unreachable",
            NodeAnswer::Refused => "refused",
            NodeAnswer::Failed => "failed",
        }
    }
}

/// `GET /v1/cluster/status`: one row per node, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusResponse {
    /// The node that fanned the request out.
    pub asked_by: String,
    pub nodes: Vec<ClusterStatusRow>,
}

/// One node's row of `kubedna status --cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusRow {
    /// Its node name (its mesh address while its metadata has not arrived).
    pub node: String,
    /// Its mesh address `IP:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub answer: NodeAnswer,
    /// Why it is not `ok`: the mesh's view, the timeout, or the node's refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What it said about itself, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeLine>,
}

/// What a node says about itself for the cluster view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLine {
    pub name: String,
    pub role: NodeRole,
    /// Lifecycle state: booting, ready, joining, member, maintenance, leaving.
    pub state: String,
    /// Formation phase, once the engine runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The leader as this node sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<Leader>,
    pub agent_version: String,
    pub image_version: String,
    /// Whether the node is in maintenance (patch reboot, drain).
    pub maintenance: bool,
    /// The engine's last error, cut to a few hundred characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `GET /v1/cluster/audit/records`: every node's records merged oldest first, and one row per
/// node saying how it answered and whether its chain holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAuditResponse {
    pub asked_by: String,
    pub nodes: Vec<ClusterAuditNode>,
    /// Oldest first; ties by node name, then sequence number.
    pub records: Vec<ClusterAuditRecord>,
    /// True when more records matched than `limit` (on a node, or merged); the newest are kept.
    pub truncated: bool,
}

/// One node's part of `kubedna audit list --cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAuditNode {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub answer: NodeAnswer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Records it sent.
    pub records: usize,
    /// Where its hash chain breaks, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_break: Option<ChainBreak>,
}

/// Where a node's audit chain does not hold: as the node's own full verification found it
/// (file and line), and/or as the asking node found it in the records received (sequence
/// number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The first received record that fails its own hash or its link to the one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The daily file and 1-based line where the node's own verification stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub reason: String,
}

/// One record of the merged list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAuditRecord {
    /// The node whose audit log holds it.
    pub node: String,
    /// False when this record fails its own hash or its link to the record before it.
    pub chain_ok: bool,
    pub record: AuditRecord,
}
