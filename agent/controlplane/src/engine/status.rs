//! What the engine shows and how it fails: [`Phase`] and [`Status`] for `kubedna status` (never
//! a secret), and [`EngineError`], whose every variant names the node and the unit, command or
//! path at fault and says what to do next.

use super::*;

// ---------------------------------------------------------------------------------------------
// Status and persisted state.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Starting,
    PreparingHost,
    WaitingForQuorum,
    StartingEtcd,
    Initialising,
    WaitingForJoinMaterial,
    Joining,
    StartingKubelet,
    Member,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    pub name: String,
    pub term: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberStatus {
    pub name: String,
    pub id: String,
    pub learner: bool,
}

/// What `kubedna status` shows about formation. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub role: NodeRole,
    pub phase: Phase,
    /// What the current phase waits for, if it waits.
    pub waiting_for: Option<String>,
    pub etcd_members: Vec<EtcdMemberStatus>,
    pub leader: Option<LeaderStatus>,
    pub init_recorded: bool,
    pub cluster_id: Option<String>,
    /// The last failed step, naming the unit, node or command, with what to do next.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("node {node}: the control-plane configuration is invalid")]
    Config {
        node: String,
        #[source]
        source: MemberSetError,
    },
    #[error("node {node}: host preparation failed")]
    Prepare {
        node: String,
        #[source]
        source: Box<kubedna_host::prepare::PrepareError>,
    },
    #[error("node {node}: etcd's TLS files")]
    Pki {
        node: String,
        #[source]
        source: PkiError,
    },
    #[error("node {node}: etcd service")]
    EtcdUnit {
        node: String,
        #[source]
        source: Box<EtcdUnitError>,
    },
    #[error("node {node}: kubelet service")]
    Kubelet {
        node: String,
        #[source]
        source: Box<KubeletError>,
    },
    #[error("node {node}: {what}")]
    Coord {
        node: String,
        what: &'static str,
        #[source]
        source: Box<CoordError>,
    },
    #[error("node {node}: kubeadm")]
    Kubeadm {
        node: String,
        #[source]
        source: KubeadmError,
    },
    #[error("node {node}: cannot record progress in {path}; check the state directory's disk")]
    State {
        node: String,
        path: PathBuf,
        #[source]
        source: AtomicWriteError,
    },
    #[error("node {node}: {path} is not this engine's state; move it away only if this node is to rejoin as a new member")]
    StateCorrupt {
        node: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "node {node}: cannot give kubeadm its copy of etcd's CA and client certificate at {path}"
    )]
    KubeadmFiles {
        node: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: etcd records this node as the init winner, but its state directory has no record of running init (wiped disk?); it will not init again: restore its disk or `kubeadm reset` it and remove /kubedna/<cluster>/init after checking no control plane was initialised")]
    InitInterrupted { node: String },
    #[error("node {node}: etcd is not serving yet and a started member reports a formed cluster; waiting for a quorum of control planes to come back")]
    NoQuorum { node: String },
    #[error("node {node}: an earlier `kubeadm {op}` on this node did not succeed (no marker {marker}), and etcd already holds Kubernetes data under /registry/, so the agent will not `kubeadm reset` this node: a reset does not clean etcd and a second `kubeadm {op}` could split the cluster's certificates. Look at the node (journalctl -u 'kubedna-kubeadm-*'); if kubeadm did finish, create the marker file; otherwise reset the node by hand, knowing what it holds. Then restart the agent")]
    ResetRefused {
        node: String,
        op: &'static str,
        marker: PathBuf,
    },
    #[error(
        "node {node}: the join lock was lost before `{step}`; taking it again before going on"
    )]
    JoinLockLost { node: String, step: &'static str },
    #[error("node {node}: the learner {id:x} was not promoted within {secs} s; etcd promotes only a learner in sync with the leader: check this node's etcd journal (journalctl -u kubedna-etcd)")]
    NotPromoted { node: String, id: u64, secs: u64 },
    #[error("node {node}: join material from {from} does not open")]
    JoinMaterial {
        node: String,
        from: String,
        #[source]
        source: JoinError,
    },
    #[error("node {node}: cannot remove its own stale etcd member before rejoining")]
    RemovalRefused {
        node: String,
        #[source]
        source: crate::membership::RemoveRefused,
    },
    #[error("node {node}: leader duty")]
    Duty {
        node: String,
        #[source]
        source: Box<DutyError>,
    },
}
