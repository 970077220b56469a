//! The decisions of the cluster-wide views, as pure functions tested by table: which nodes to
//! ask and which are unreachable already ([`targets`]), whether a node's RBAC lets a role read a
//! view ([`authorize`]), what a mesh outcome means for a node's row ([`outcome`]), and how every
//! node's audit records become one list in time order with each node's chain state
//! ([`merge_audit`]). No I/O here: [`super`] asks the mesh and reads the disk.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use kubedna_audit::check_segment;
use kubedna_proto::{
    AuditVerifyResponse, ChainBreak, ClusterAuditNode, ClusterAuditRecord, ClusterAuditResponse,
    NodeAnswer, PeerLiveness, Role,
};

use super::wire::AuditExport;
use crate::api::ROUTES;
use crate::mesh::RequestError;

/// A mesh member as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its node name, once its metadata arrived.
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub liveness: PeerLiveness,
    pub generation: u16,
}

/// What to do about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// This node: answered without the mesh.
    Local,
    /// Ask it over the mesh at this address.
    Ask(SocketAddr),
    /// Do not ask: the mesh already knows it is down. The row says why.
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub address: Option<SocketAddr>,
    pub plan: Plan,
}

/// Every node of the view, sorted by name, this node first among equals: one target per node
/// name (a node that rejoined shows as several members, the old generations down; the live one
/// is asked). A node whose every member entry is down is unreachable without asking, so a
/// powered-off node costs no timeout once the failure detector has seen it. An expected control
/// plane (`cluster.controlPlanes.members`) the mesh does not know at all (never seen, or down so
/// long the mesh forgot it) is a row too, unreachable.
pub fn targets(
    self_name: &str,
    self_addr: Option<SocketAddr>,
    members: &[MemberView],
    expected: &[String],
) -> Vec<Target> {
    let mut by_node: BTreeMap<String, Vec<&MemberView>> = BTreeMap::new();
    for m in members {
        let node = m.name.clone().unwrap_or_else(|| m.addr.to_string());
        // Our own earlier lives, or ourselves by address.
        if node == self_name || Some(m.addr) == self_addr {
            continue;
        }
        by_node.entry(node).or_default().push(m);
    }
    let mut out = vec![Target {
        node: self_name.to_string(),
        address: self_addr,
        plan: Plan::Local,
    }];
    for (node, mut entries) in by_node {
        // Alive before suspect before down, then the newest generation.
        entries.sort_by_key(|m| {
            let rank = match m.liveness {
                PeerLiveness::Alive => 0,
                PeerLiveness::Suspect => 1,
                PeerLiveness::Down => 2,
            };
            (rank, std::cmp::Reverse(m.generation))
        });
        let best = entries[0];
        let plan = match best.liveness {
            PeerLiveness::Alive | PeerLiveness::Suspect => Plan::Ask(best.addr),
            PeerLiveness::Down => {
                Plan::Unreachable("the mesh shows it down (failed or left); not asked".to_string())
            }
        };
        out.push(Target {
            node,
            address: Some(best.addr),
            plan,
        });
    }
    for name in expected {
        if !out.iter().any(|t| t.node == *name) {
            out.push(Target {
                node: name.clone(),
                address: None,
                plan: Plan::Unreachable(
                    "an expected control plane (cluster.controlPlanes.members) this node's mesh does not know: never seen, or down for over an hour".into(),
                ),
            });
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// The name a status row shows: a node the mesh knows only by its address (its metadata has
/// not arrived yet) is named by its own answer once it gave one, so a viewer never sees
/// `198.18.0.7:7946` for a node that just told us it is `w-1`.
pub fn row_name(target: &Target, answered_name: Option<&str>) -> String {
    let by_address = target.address.is_some_and(|a| a.to_string() == target.node);
    match answered_name {
        Some(name) if by_address && !name.is_empty() => name.to_string(),
        _ => target.node.clone(),
    }
}

/// The least role this node's route table gives `action` (the same table the admin socket
/// uses), or Admin for an action it does not know: a newer node asking for something this one
/// has no rule for gets nothing.
pub fn needed_role(action: &str) -> Role {
    ROUTES
        .iter()
        .find(|r| r.action == action && !r.mutating)
        .map_or(Role::Admin, |r| r.role)
}

/// Whether `role` may read `action` here; the refusal names both roles.
pub fn authorize(action: &str, role: Role) -> Result<(), String> {
    let needs = needed_role(action);
    if role >= needs {
        Ok(())
    } else {
        Err(format!(
            "{action} needs role {needs} or higher; the caller has role {role}"
        ))
    }
}

/// How a node's part went, before its payload is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Answered(T),
    Refused(String),
    Unreachable(String),
    Failed(String),
}

impl<T> Outcome<T> {
    pub fn answer(&self) -> NodeAnswer {
        match self {
            Outcome::Answered(_) => NodeAnswer::Ok,
            Outcome::Refused(_) => NodeAnswer::Refused,
            Outcome::Unreachable(_) => NodeAnswer::Unreachable,
            Outcome::Failed(_) => NodeAnswer::Failed,
        }
    }

    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Answered(_) => None,
            Outcome::Refused(m) | Outcome::Unreachable(m) | Outcome::Failed(m) => Some(m.clone()),
        }
    }
}

/// What a mesh request's result means for the node's row: a timeout or a stopped mesh is
/// unreachable, the peer's handler error is a failure on that node.
pub fn outcome(result: Result<Vec<u8>, RequestError>, timeout: Duration) -> Outcome<Vec<u8>> {
    match result {
        Ok(bytes) => Outcome::Answered(bytes),
        Err(RequestError::Timeout { .. }) => Outcome::Unreachable(format!(
            "no answer over the mesh within {} s",
            timeout.as_secs_f64()
        )),
        Err(RequestError::Stopped) => {
            Outcome::Unreachable("the mesh is not running on this node".into())
        }
        Err(RequestError::Refused { message, .. }) => Outcome::Failed(message),
        Err(e @ (RequestError::TooLarge { .. } | RequestError::AlreadyServed { .. })) => {
            Outcome::Failed(e.to_string())
        }
    }
}

/// One node's part of the cluster audit list, as the fan-out collected it.
#[derive(Debug, Clone)]
pub struct NodeAudit {
    pub node: String,
    pub address: Option<SocketAddr>,
    pub outcome: Outcome<AuditExport>,
}

/// The chain state of a node: its own full verification (file and line) and the asker's check
/// of what it received (sequence number), in one [`ChainBreak`].
pub fn chain_break(
    verify: &Result<AuditVerifyResponse, String>,
    received: Option<(Option<u64>, String)>,
) -> Option<ChainBreak> {
    let own = match verify {
        Ok(v) => v.first_break.as_ref(),
        Err(_) => None,
    };
    match (own, received) {
        (None, None) => None,
        (Some(b), received) => Some(ChainBreak {
            seq: received.as_ref().and_then(|r| r.0),
            file: Some(b.file.clone()),
            line: Some(b.line),
            reason: match received {
                Some((_, r)) if r != b.reason => {
                    format!("{}; in the records received: {r}", b.reason)
                }
                _ => b.reason.clone(),
            },
        }),
        (None, Some((seq, reason))) => Some(ChainBreak {
            seq,
            file: None,
            line: None,
            reason,
        }),
    }
}

/// Every node's records in one list, oldest first (ties by node, then sequence number), the
/// newest `limit` kept; each node's row with its answer, count and chain state. Records that
/// fail their own hash or link are kept and marked, never dropped.
pub fn merge_audit(asked_by: &str, nodes: Vec<NodeAudit>, limit: usize) -> ClusterAuditResponse {
    let limit = if limit == 0 { 1000 } else { limit };
    let mut rows = Vec::with_capacity(nodes.len());
    let mut records = Vec::new();
    let mut truncated = false;
    for n in nodes {
        let mut row = ClusterAuditNode {
            node: n.node.clone(),
            address: n.address.map(|a| a.to_string()),
            answer: n.outcome.answer(),
            message: n.outcome.message(),
            records: 0,
            chain_break: None,
        };
        if let Outcome::Answered(export) = n.outcome {
            truncated |= export.truncated;
            let (parsed, bad, first) = check_segment(&export.lines);
            let received = first.map(|b| {
                let at = b.seq.map_or_else(
                    || format!("line {} sent", b.index + 1),
                    |s| format!("seq {s}"),
                );
                (b.seq, format!("{at}: {}", b.reason))
            });
            row.chain_break = chain_break(&export.verify, received);
            if let Err(e) = &export.verify {
                row.message = Some(format!("its own chain could not be verified: {e}"));
            }
            for (i, record) in parsed.into_iter().enumerate() {
                if let Some(record) = record {
                    row.records += 1;
                    records.push(ClusterAuditRecord {
                        node: n.node.clone(),
                        chain_ok: !bad.contains(&i),
                        record,
                    });
                }
            }
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    records.sort_by(|a, b| {
        (a.record.time, &a.node, a.record.seq).cmp(&(b.record.time, &b.node, b.record.seq))
    });
    if records.len() > limit {
        records.drain(..records.len() - limit);
        truncated = true;
    }
    ClusterAuditResponse {
        asked_by: asked_by.to_string(),
        nodes: rows,
        records,
        truncated,
    }
}

/// The newest lines whose bytes sum to at most `max_bytes` (an export is held in memory for a
/// minute, so its size is bounded whatever `limit` asks); true when older lines were cut.
pub fn newest_within(mut lines: Vec<String>, max_bytes: usize) -> (Vec<String>, bool) {
    let mut total = 0;
    let keep = lines
        .iter()
        .rev()
        .take_while(|l| {
            total += l.len() + 1;
            total <= max_bytes
        })
        .count();
    let cut = keep < lines.len();
    lines.drain(..lines.len() - keep);
    (lines, cut)
}

/// `s` cut to at most `max` characters, marked when cut (an answer must fit one datagram).
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
