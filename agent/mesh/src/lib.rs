//! The mesh: authenticated gossip membership and failure detection for KubeDNA nodes.
//!
//! Owns the protocol core ([`Mesh`], sans-IO: SWIM from foca plus Lifeguard, anti-entropy,
//! re-announce and metadata), the packet security layer ([`security`]: AEAD, HKDF key ring,
//! replay protection), a deterministic simulator ([`sim`]) that drives many cores in virtual
//! time, and a thin tokio driver ([`runtime`]) for the daemon. It must never do I/O in the core,
//! and never log or return a secret.

pub mod fuzzing;
pub mod identity;
pub mod lifeguard;
pub mod mesh;
pub mod meta;
pub mod runtime;
pub mod secret;
pub mod security;
pub mod sim;

pub use identity::NodeId;
pub use lifeguard::LifeguardConfig;
pub use mesh::{
    DownReason, Event, Liveness, MemberInfo, Mesh, MeshConfig, MeshError, TrafficStats, Transmit,
};
pub use meta::{MetaRecord, NodeMeta, NodeState, Role};
pub use secret::{ClusterSecret, SecretError};
pub use security::{KeyId, KeyRing, KeyRingError, Reject, SecurityCounters};
