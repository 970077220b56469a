//! The mesh: authenticated gossip membership and failure detection for KubeDNA nodes.
//!
//! Owns the protocol core ([`Mesh`], sans-IO: SWIM from foca plus Lifeguard, anti-entropy,
//! re-announce, metadata and
//! application requests, [`requests`]), the packet security layer ([`security`]: AEAD, HKDF key ring,
//! replay protection), a deterministic simulator ([`sim`]) that drives many cores in virtual
//! time, a thin tokio driver ([`runtime`]) with the handle the daemon holds, and the discovery
//! sources that find first peers ([`discovery`]: seeds, multicast beacons, provider). It must never do I/O in the core,
//! and never log or return a secret.

pub mod discovery;
pub mod fuzzing;
pub mod identity;
pub mod lifeguard;
pub mod mesh;
pub mod meta;
pub mod requests;
pub mod runtime;
pub mod security;
pub mod sim;
pub mod stream;

pub use identity::NodeId;
pub use kubedna_proto::{ClusterSecret, SecretError};
pub use lifeguard::LifeguardConfig;
pub use mesh::{
    DownReason, Event, KeyStatus, Liveness, MemberInfo, Mesh, MeshConfig, MeshError,
    RotationStatus, TrafficStats, Transmit,
};
pub use meta::{MetaRecord, NodeMeta, NodeRole, NodeState};
pub use requests::{AppBody, AppFrame, Incoming, Reply, RequestError, MAX_APP_PAYLOAD};
pub use security::{KeyId, KeyRing, KeyRingError, Reject, SecurityCounters};

pub(crate) use kubedna_proto::error_chain;
