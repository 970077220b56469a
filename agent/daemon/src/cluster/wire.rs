//! The messages of request kind [`crate::mesh::request_kind::CLUSTER_VIEW`], JSON in one mesh
//! datagram each. A view that does not fit one datagram (an audit list) is an export the asked
//! node keeps for [`EXPORT_TTL`] and the asker reads in chunks of [`CHUNK`] bytes.
//!
//! The asker names the caller and the role its own admin socket established; the asked node
//! applies its own route table to that role. Trust: only a holder of the cluster secret can
//! send a mesh request at all, and every such holder is a node of this cluster that runs as
//! root; a forged role gains nothing the secret's holder does not already have (it can read
//! the audit files directly). Only reads are served this way, never a change.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kubedna_proto::{AuditVerifyResponse, NodeLine, Role, Via};
use serde::{Deserialize, Serialize};

/// Bytes of export per chunk answer (the mesh carries at most 1200 bytes of payload).
pub const CHUNK: usize = 1024;
/// How long an export is kept for its chunks to be read.
pub const EXPORT_TTL: Duration = Duration::from_secs(60);
/// Exports kept at once per node; the oldest is dropped first.
pub const MAX_EXPORTS: usize = 16;
/// Largest export: the newest lines that fit are sent, the answer marked truncated (about
/// 18,000 records; the whole memory held by exports stays under 16 x this).
pub const MAX_EXPORT_BYTES: usize = 8 << 20;

/// Who asks, as the asking node's admin socket established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asker {
    /// The asking node's name.
    pub node: String,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub role: Role,
}

/// The filter of an audit export (the query of `GET /v1/audit/records`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub since: Option<DateTime<Utc>>,
    pub action: Option<String>,
    pub actor: Option<Via>,
    pub limit: usize,
}

impl AuditQuery {
    pub fn filter(&self) -> kubedna_audit::ListFilter {
        kubedna_audit::ListFilter {
            since: self.since,
            action: self.action.clone(),
            limit: self.limit,
            via: self.actor,
        }
    }

    pub fn from_filter(f: &kubedna_audit::ListFilter) -> Self {
        AuditQuery {
            since: f.since,
            action: f.action.clone(),
            actor: f.via,
            limit: f.limit,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewRequest {
    /// This node's line of `kubedna status --cluster`.
    Status(Asker),
    /// Prepare an export of matching audit lines; answered with [`ViewAnswer::Opened`].
    AuditOpen(Asker, AuditQuery),
    /// Bytes `offset..offset + CHUNK` of an export, answered raw (not JSON).
    AuditChunk { export: u64, offset: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewAnswer {
    Status(NodeLine),
    /// This node's RBAC refused the asker's role (and audited the refusal).
    Refused(String),
    Opened {
        export: u64,
        len: u64,
    },
}

/// What an audit export holds: the matching lines exactly as on disk, and the node's own
/// verification of its whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExport {
    pub lines: Vec<String>,
    pub truncated: bool,
    pub verify: Result<AuditVerifyResponse, String>,
}
