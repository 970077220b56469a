//! The admin API between `kubedna` (the CLI) and `kubedna-agent`: paths, request and response
//! bodies, roles and audit records. This crate is data only: it does no I/O and knows nothing of
//! how the daemon authorizes or stores anything, so the CLI can depend on it without the daemon.
//!
//! The API is HTTP/1.1 with JSON bodies on a Unix socket, versioned by the first path segment
//! (`/v1/...`). Compatible additions add optional fields; anything else gets a new version.
//!
//! It is also the project's one vocabulary, so no crate keeps its own copy: [`NodeRole`], the
//! error-chain display [`error_chain`], the Kubernetes values config and engine share
//! ([`Cidr`], [`Endpoint`], [`KubernetesVersion`]), and, behind the `secret` feature that the
//! CLI does not enable, the cluster secret (`ClusterSecret`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod cluster;
mod errors;
mod kubernetes;
#[cfg(feature = "secret")]
mod secret;

pub use errors::error_chain;
pub use kubernetes::{Cidr, Endpoint, Host, IpFamily, KubernetesVersion, ValueError};
#[cfg(feature = "secret")]
pub use secret::{ClusterSecret, SecretError, MIN_SECRET_LEN};

pub use cluster::{
    ChainBreak, ClusterAuditNode, ClusterAuditRecord, ClusterAuditResponse, ClusterStatusResponse,
    ClusterStatusRow, NodeAnswer, NodeLine,
};

/// The API version this crate describes; the first segment of every path.
pub const API_VERSION: &str = "v1";
/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/kubedna/agent.sock";

/// Request paths, relative to the socket.
pub mod paths {
    pub const VERSION: &str = "/v1/version";
    pub const STATUS: &str = "/v1/status";
    pub const AUDIT_RECORDS: &str = "/v1/audit/records";
    pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
    pub const LOG_LEVEL: &str = "/v1/log-level";
    pub const CONFIG_RELOAD: &str = "/v1/config/reload";
    pub const PEERS: &str = "/v1/peers";
    /// Prometheus metrics (OpenMetrics text), as on `metrics.listen`.
    pub const METRICS: &str = "/v1/metrics";
    pub const DOCTOR: &str = "/v1/doctor";
    pub const DOCTOR_HISTORY: &str = "/v1/doctor/history";
    pub const DOCTOR_PAUSE: &str = "/v1/doctor/pause";
    pub const DOCTOR_RESUME: &str = "/v1/doctor/resume";
    pub const CATALOGUE_STATUS: &str = "/v1/catalogue/status";
    pub const CATALOGUE_DIFF: &str = "/v1/catalogue/diff";
    /// One line per node of the cluster, each asked over the mesh (`kubedna status --cluster`).
    pub const CLUSTER_STATUS: &str = "/v1/cluster/status";
    /// Every node's audit records merged in time order (`kubedna audit list --cluster`).
    pub const CLUSTER_AUDIT_RECORDS: &str = "/v1/cluster/audit/records";
}

/// Admin roles, ordered: each role may do everything the roles below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: allowed are viewer, operator, admin"
            )),
        }
    }
}

/// What a node is in the cluster: the one node-role type of every crate (the mesh gossips it, the
/// control-plane engine forms by it, the doctor recreates it, the CLI shows it). JSON spells it
/// `control-plane` / `worker`; postcard by variant index, so the order must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    ControlPlane,
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::ControlPlane => "control-plane",
            NodeRole::Worker => "worker",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call reached the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The admin socket; uid, gid and pid come from the kernel (SO_PEERCRED).
    Socket,
    /// A signal such as SIGHUP; the sender is not known.
    Signal,
    /// The agent itself (start-up repairs, retention).
    Agent,
    /// Another node's agent over the authenticated mesh, on behalf of a caller of that node's
    /// admin socket (uid, gid and role as that node established them; pid unknown here).
    Mesh,
}

/// Who made a call, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub via: Via,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResponse {
    pub agent_version: String,
    pub api_version: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub node: NodeStatus,
    pub agent: AgentStatus,
    pub caller: CallerStatus,
    /// The mesh as this node sees it; absent from agents older than the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<PeersSummary>,
    /// Control-plane formation as this node's engine sees it; absent until the engine runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formation: Option<FormationStatus>,
    /// kubelet.service as systemd sees it, once the engine installed it; absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<UnitHealth>,
}

/// A systemd unit's state, and why it is not running when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitHealth {
    pub unit: String,
    /// systemd's ActiveState: active, activating, deactivating, inactive, failed.
    pub active_state: String,
    /// systemd's SubState: running, auto-restart, dead, failed, ...
    pub sub_state: String,
    /// The unit's last journal lines, when it is not active and running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<String>,
}

impl UnitHealth {
    /// Whether the unit runs as it should (a long-running service: active and running).
    pub fn running(&self) -> bool {
        self.active_state == "active" && self.sub_state == "running"
    }
}

/// This node's part in forming the cluster (issue 6; see docs/control-plane.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormationStatus {
    /// starting, preparing-host, waiting-for-quorum, starting-etcd, initialising,
    /// waiting-for-join-material, joining, starting-kubelet, member.
    pub phase: String,
    /// What the current phase waits for, if it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// etcd's member list, as last read (control planes only).
    #[serde(default)]
    pub etcd_members: Vec<EtcdMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<Leader>,
    /// Whether the cluster's one `kubeadm init` is recorded in etcd.
    pub init_recorded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The last failed step, naming the unit, node or command, and what to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    /// Hex member ID.
    pub id: String,
    pub learner: bool,
}

/// The elected leader and its term (every leader write carries the term; stale ones are refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub name: String,
    pub term: i64,
}

/// Counts of `GET /v1/peers`, for `kubedna status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersSummary {
    /// False while the mesh is not running yet (network not up) or after it stopped.
    pub mesh_running: bool,
    /// This node's mesh address (`IP:port`), once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_address: Option<String>,
    pub alive: usize,
    pub suspect: usize,
    pub down: usize,
}

/// Liveness of a peer in this node's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerLiveness {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared down unless it refutes in time.
    Suspect,
    /// Declared down (failed), or left on purpose (its state is then `leaving`).
    Down,
}

impl PeerLiveness {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerLiveness::Alive => "alive",
            PeerLiveness::Suspect => "suspect",
            PeerLiveness::Down => "down",
        }
    }
}

/// `GET /v1/peers`: every member of the mesh this node knows, except itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersResponse {
    pub summary: PeersSummary,
    /// Sorted by name, then address.
    pub peers: Vec<Peer>,
    /// What happened to the datagrams this node received, since the agent started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<PacketCounters>,
    /// The mesh key ring: public key ids only, never key material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<MeshKeys>,
}

/// Mesh datagrams accepted and dropped (each drop reason counted), since the agent started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PacketCounters {
    pub accepted: u64,
    /// Not a mesh packet: truncated, or a wrong magic or version.
    pub malformed: u64,
    /// Sealed for another cluster.
    pub foreign_cluster: u64,
    /// Sealed with a key this node does not hold: a node still on an old secret, or a new one
    /// this node has not been given yet.
    pub unknown_key: u64,
    /// Failed authentication: forged or corrupted.
    pub bad_tag: u64,
    pub replayed: u64,
    /// Too old, or from the future, by the sender's clock.
    pub stale: u64,
}

impl PacketCounters {
    pub fn dropped(&self) -> u64 {
        self.malformed
            + self.foreign_cluster
            + self.unknown_key
            + self.bad_tag
            + self.replayed
            + self.stale
    }
}

/// The mesh's key ring as ids (the first 4 bytes of a public key id, hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshKeys {
    /// The key this node seals with.
    pub primary: String,
    /// Every key accepted, in install order.
    pub accepted: Vec<String>,
    /// The key a rotation in progress moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_to: Option<String>,
}

/// One peer. Metadata fields are absent until its metadata has reached this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Mesh address `IP:port` (the member's identity).
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<NodeRole>,
    /// Lifecycle state it gossips: booting, ready, joining, member, maintenance, leaving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub liveness: PeerLiveness,
    /// SWIM incarnation (rises when it refutes a suspicion).
    pub incarnation: u64,
    /// Rejoin generation of its identity.
    pub generation: u16,
    /// Seconds since a packet from it was last accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_seconds_ago: Option<f64>,
    /// Round-trip time of this node's last direct probe of it (SWIM ping → ack), in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// Every address it reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub cluster: String,
    pub role: NodeRole,
    /// Stable random identity of this node's state directory; a wiped disk gets a new one.
    pub node_id: String,
    /// Lifecycle state: booting, ready, joining, member, maintenance, leaving.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub config_path: String,
    /// Increments on each accepted reload.
    pub config_generation: u64,
    pub log_filter: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerStatus {
    pub uid: u32,
    pub role: Role,
}

/// `GET /v1/audit/records?since=RFC3339&action=A&limit=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecordsResponse {
    pub records: Vec<AuditRecord>,
    /// True when more records matched than `limit`; the newest are returned.
    pub truncated: bool,
}

/// One line of the audit log. The line's bytes, with `hash` removed, hash to `hash`; `prev` is
/// the `hash` of the record before it. See `docs/api.md` for the exact format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub caller: Caller,
    /// The caller's role, or none when it has no role at all.
    pub role: Option<Role>,
    pub action: String,
    /// Arguments of the call, with every secret replaced by `"[redacted]"`.
    pub args: serde_json::Value,
    pub result: AuditResult,
    pub prev: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditResult {
    pub outcome: Outcome,
    /// The HTTP status the caller got (0 for calls that did not come over HTTP).
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Denied,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// `GET /v1/audit/verify` (and `kubedna audit verify --dir` offline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerifyResponse {
    pub ok: bool,
    pub files_checked: usize,
    pub records_checked: u64,
    /// Hash of the newest valid record: note it elsewhere to detect later truncation.
    pub head: Option<String>,
    pub first_break: Option<AuditBreak>,
}

/// The first place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBreak {
    pub file: String,
    /// 1-based line number in `file`.
    pub line: u64,
    pub reason: String,
}

/// `PUT /v1/log-level`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLevelRequest {
    /// A tracing filter directive, e.g. `info` or `info,kubedna_agent=debug`.
    pub filter: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLevelResponse {
    pub previous: String,
    pub current: String,
}

/// `POST /v1/config/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResponse {
    pub generation: u64,
    /// Top-level config sections whose value changed.
    pub changed: Vec<String>,
}

/// One node as the doctor judges it (docs/doctor.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorNode {
    pub name: String,
    pub role: String,
    /// `healthy`, `suspect` or `dead (by provider|unreachable|hung)`.
    pub verdict: String,
    /// Each signal and how long it has been bad: `mesh=down for 40s, node=unknown for 35s, vm=off for 40s`.
    pub signals: String,
}

/// The replacement in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReplacement {
    pub node: String,
    pub role: String,
    /// lease, fence, remove-member, delete-node, create-vm, wait-ready or release.
    pub step: String,
    pub started: u64,
    pub step_since: u64,
    pub signals: String,
    pub old_vm: Option<u64>,
    pub new_vm: Option<u64>,
    pub term: i64,
}

/// An admin's pause of the doctor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorPause {
    pub by: String,
    pub since: u64,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /v1/doctor`. The node signals and the decision come from the leader's last pass and
/// are present only when asked on the leader; the replacement and the pause come from etcd
/// and are present on every control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorStatusResponse {
    /// `doctor.enabled` on this node.
    pub enabled: bool,
    /// Whether this node leads (its doctor runs).
    pub leading: bool,
    pub nodes: Vec<DoctorNode>,
    /// The last decision in words (nothing to do, replacing X, waiting because ...).
    pub decision: Option<String>,
    pub in_flight: Option<DoctorReplacement>,
    pub paused: Option<DoctorPause>,
    /// The last error of the leader's pass.
    pub error: Option<String>,
}

/// One finished replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorHistoryEntry {
    pub node: String,
    pub role: String,
    /// `replaced`, or `abandoned: <why>`.
    pub outcome: String,
    pub started: u64,
    pub ended: u64,
    pub signals: String,
    pub term: i64,
}

/// `GET /v1/doctor/history`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorHistoryResponse {
    pub entries: Vec<DoctorHistoryEntry>,
}

/// `POST /v1/doctor/pause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DoctorPauseRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// For 403: the least role that may make this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_role: Option<Role>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root"
            .parse::<Role>()
            .expect_err("must be refused")
            .contains("allowed"));
    }

    #[test]
    fn audit_record_rejects_unknown_fields() {
        let line = r#"{"seq":1,"time":"2026-01-01T00:00:00Z","caller":{"uid":0,"gid":0,"via":"agent"},"role":null,"action":"a","args":{},"result":{"outcome":"ok","status":0},"prev":"","hash":"","extra":1}"#;
        assert!(serde_json::from_str::<AuditRecord>(line).is_err());
    }
}

/// `GET /v1/catalogue/status`: the component catalogue as the leader recorded it in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogueStatusResponse {
    /// Why this node cannot read the record (a worker, etcd not reached); the rest is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// The catalogue version and digest of the last pass.
    pub version: Option<String>,
    pub digest: Option<String>,
    /// The leader term that recorded it.
    pub term: i64,
    pub last_pass_unix: Option<u64>,
    pub last_error: Option<String>,
    pub components: Vec<CatalogueComponentStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogueComponentStatus {
    pub name: String,
    pub wanted_version: String,
    pub applied_version: Option<String>,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: String,
    pub last_error: Option<String>,
}

/// `GET /v1/catalogue/diff`: what a pass would change now, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogueDiffResponse {
    /// Why this node cannot compute a diff (no `catalogue` section, no etcd, the bundle refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    pub version: String,
    pub changes: Vec<CatalogueChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogueChange {
    /// `create`, `upgrade`, `drift correction`, `prune` or `release`.
    pub action: String,
    pub component: String,
    pub object: String,
}
