//! What the engine exchanges with the daemon and with other nodes: the node's role, the peers
//! the mesh sees alive, the small requests engines send each other over the authenticated mesh
//! and their answers, and the [`Peers`] trait the daemon implements. Serde types only; no I/O.

use super::*;

// ---------------------------------------------------------------------------------------------
// What the daemon provides.

pub use kubedna_proto::NodeRole;

/// A peer the mesh currently considers alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: String,
    pub role: NodeRole,
    /// The mesh address, for the daemon's own use; the engine addresses peers by name.
    pub addr: Option<String>,
}

/// A small request from one node's engine to another's, carried authenticated by the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// "Have you started etcd?" (the bootstrap rule's question).
    Started,
    /// Join material, asked of a control plane by a joining node.
    JoinMaterial,
    /// Who leads now.
    Leader,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Started(StartedAnswer),
    /// Still sealed with the cluster secret as stored in etcd: the asker opens it.
    JoinMaterial {
        sealed: Vec<u8>,
        leader: Option<LeaderStatus>,
    },
    Leader(Option<LeaderStatus>),
    /// The answering node cannot answer yet (no etcd, no material); ask again later.
    NotReady(String),
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("peer {peer}: {reason}")]
pub struct PeerError {
    pub peer: String,
    pub reason: String,
}

/// The mesh, as the engine sees it.
pub trait Peers: Send + Sync + 'static {
    /// Peers alive now (never this node).
    fn alive(&self) -> Vec<PeerInfo>;
    /// Names of the peers the mesh suspects now: silent, but not yet silent longer than its
    /// pause tolerance, so not declared down (never this node; none of them in [`Peers::alive`]).
    /// A paused node is here until it speaks again; a crashed one until the mesh declares it
    /// down. The takeover rule ([`crate::takeover`]) waits for the latter.
    fn suspect(&self) -> Vec<String>;
    /// Sends `req` to `peer` over the authenticated mesh and awaits its answer (the
    /// implementation applies its own timeout).
    fn ask(
        &self,
        peer: &str,
        req: Request,
    ) -> impl Future<Output = Result<Response, PeerError>> + Send;
}
