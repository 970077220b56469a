//! Entry points for fuzzing packet decoding (the cargo-fuzz target in `agent/mesh/fuzz` and the
//! stable randomized test both call these).
//!
//! Owns nothing: builds a throwaway node and feeds it bytes. Must never be used by the daemon.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::mesh::{Mesh, MeshConfig};
use crate::security::{KeyRing, PacketSecurity};
use crate::sim::{sim_addr, sim_meta};
use kubedna_proto::ClusterSecret;

const WALL_MS: u64 = 1_800_000_000_000;

fn secret() -> ClusterSecret {
    ClusterSecret::new(b"fuzzing-cluster-secret-0123456789".to_vec())
        .unwrap_or_else(|_| unreachable!("long enough"))
}

fn node(now: Instant) -> Mesh {
    let cfg = MeshConfig::lan("fuzz", sim_addr(0), sim_meta(0));
    Mesh::new(cfg, &secret(), 1, now, WALL_MS).unwrap_or_else(|e| panic!("valid config: {e}"))
}

/// Feeds `data` to a node twice: as a raw datagram (exercising the envelope checks) and sealed
/// with the cluster key (exercising every decoder behind authentication). Must never panic.
pub fn decode_packet(data: &[u8]) {
    let now = Instant::now();
    let mut mesh = node(now);
    let from: SocketAddr = sim_addr(1);
    let _ = mesh.handle_packet(from, data, now);
    let mut sender = PacketSecurity::new(KeyRing::new("fuzz", &secret()), [7; 16], 120_000);
    let sealed = sender.seal(data, WALL_MS);
    let _ = mesh.handle_packet(from, &sealed, now);
    mesh.handle_timeout(now + Duration::from_secs(5));
    while mesh.poll_transmit().is_some() {}
    let _ = mesh.members();
}
