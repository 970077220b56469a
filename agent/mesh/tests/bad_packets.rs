//! Random and mutated packets never panic a node and are never accepted unauthenticated (the
//! stable counterpart of the cargo-fuzz target in `agent/mesh/fuzz`).

use std::time::Instant;

use kubedna_mesh::fuzzing::decode_packet;
use kubedna_mesh::sim::{sim_addr, sim_meta};
use kubedna_mesh::{ClusterSecret, Mesh, MeshConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..300 {
        let len = rng.random_range(0..1500);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        // Make some look like foca packets and our sync kinds behind the envelope.
        if len > 0 {
            data[0] = rng.random_range(0..5);
        }
        decode_packet(&data);
    }
}

#[test]
fn mutated_valid_packets_are_dropped_not_parsed() {
    let secret = ClusterSecret::new(b"a-cluster-secret-for-the-bad-packet-tests".to_vec())
        .expect("long enough");
    let now = Instant::now();
    let wall = 1_800_000_000_000;
    let mut a = Mesh::new(
        MeshConfig::lan("t", sim_addr(0), sim_meta(0)),
        &secret,
        1,
        now,
        wall,
    )
    .expect("valid");
    let mut b = Mesh::new(
        MeshConfig::lan("t", sim_addr(1), sim_meta(1)),
        &secret,
        2,
        now,
        wall,
    )
    .expect("valid");
    a.announce(sim_addr(1), now);
    let mut packets = Vec::new();
    while let Some(t) = a.poll_transmit() {
        packets.push(t.bytes);
    }
    assert!(!packets.is_empty());
    let mut rng = StdRng::seed_from_u64(7);
    for p in &packets {
        for _ in 0..200 {
            let mut m = p.clone();
            let i = rng.random_range(0..m.len());
            m[i] ^= 1 << rng.random_range(0..8);
            assert!(b.handle_packet(sim_addr(0), &m, now).is_err());
        }
    }
    assert_eq!(b.security_counters().accepted, 0);
    assert_eq!(b.num_active(), 0, "nothing forged got through");
    // The genuine packets still pass, once.
    for p in &packets {
        b.handle_packet(sim_addr(0), p, now).expect("genuine");
        assert!(b.handle_packet(sim_addr(0), p, now).is_err(), "replay");
    }
    assert_eq!(b.num_active(), 1);
}
