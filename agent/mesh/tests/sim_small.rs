//! Small simulated clusters: joining, metadata, crash detection, leave, partitions, rotation.

use std::time::Duration;

use kubedna_mesh::sim::{sim_addr, Sim, SimConfig};
use kubedna_mesh::{DownReason, Event, Liveness, NodeState};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn cluster(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        record_updates: true,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_node(|_| {});
    }
    for i in 0..n {
        sim.join(i);
    }
    sim
}

#[test]
fn twenty_nodes_join_and_converge() {
    let mut sim = cluster(20, 7);
    sim.run_for(secs(10));
    assert!(sim.converged());
    let mesh = sim.mesh(5).expect("live");
    let members = mesh.members();
    assert_eq!(members.len(), 19);
    for m in &members {
        assert_eq!(m.liveness, Liveness::Alive);
        let meta = m.meta.as_ref().expect("metadata gossiped");
        assert_eq!(meta.addresses, vec![m.id.addr.ip()]);
    }
    assert!(members.iter().filter(|m| m.last_heard.is_some()).count() >= 10);
    assert!(members.iter().any(|m| m.rtt.is_some()));
}

fn downs_of(sim: &Sim, addr: std::net::SocketAddr) -> Vec<(usize, DownReason)> {
    sim.records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::MemberDown(id, reason) if id.addr == addr => Some((r.node, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_crash_is_seen_by_every_member() {
    let mut sim = cluster(20, 11);
    sim.run_for(secs(10));
    assert!(sim.converged());
    sim.crash(7);
    sim.run_for(secs(15));
    assert_eq!(sim.still_seeing(7), 0);
    let downs = downs_of(&sim, sim_addr(7));
    assert_eq!(downs.len(), 19, "{downs:?}");
    assert!(downs.iter().all(|(_, r)| *r == DownReason::Failed));
    assert!(sim.converged());
}

#[test]
fn graceful_leave_is_not_a_failure() {
    let mut sim = cluster(10, 12);
    sim.run_for(secs(8));
    sim.with_mesh(4, |m, now| m.leave(now));
    sim.run_for(secs(5));
    assert!(sim
        .records()
        .iter()
        .any(|r| r.node == 4 && r.event == Event::Left));
    let downs = downs_of(&sim, sim_addr(4));
    assert_eq!(downs.len(), 9, "{downs:?}");
    assert!(
        downs.iter().all(|(_, r)| *r == DownReason::Left),
        "{downs:?}"
    );
}

#[test]
fn metadata_changes_reach_everyone() {
    let mut sim = cluster(15, 13);
    sim.run_for(secs(8));
    sim.with_mesh(2, |m, now| m.set_state(NodeState::Maintenance, now));
    sim.run_for(secs(3));
    for i in (0..15).filter(|i| *i != 2) {
        let meta = sim
            .mesh(i)
            .and_then(|m| m.meta_of(sim_addr(2)))
            .expect("known");
        assert_eq!(meta.state, NodeState::Maintenance, "node {i}");
    }
}

#[test]
fn a_partitioned_node_is_marked_failed_and_comes_back_after_heal() {
    let mut sim = cluster(8, 14);
    sim.run_for(secs(8));
    assert!(sim.converged());
    sim.isolate(3);
    sim.run_for(secs(30));
    assert_eq!(
        sim.still_seeing(3),
        0,
        "partitioned node marked down everywhere"
    );
    // The cut-off node hears no confirmation of its suspicions, so each runs to Lifeguard's
    // maximum (6 x the 5 s pause tolerance), started as its slowed probes reach each peer.
    sim.run_for(secs(60));
    assert!(sim
        .records()
        .iter()
        .any(|r| r.node == 3 && r.event == Event::Isolated));
    sim.heal_all(3);
    sim.run_for(secs(40));
    assert!(sim.converged(), "rejoined after heal");
}

#[test]
fn late_joiner_learns_old_metadata_by_anti_entropy() {
    let mut sim = cluster(10, 15);
    sim.run_for(secs(60));
    let late = sim.add_node(|_| {});
    sim.join(late);
    sim.run_for(secs(5));
    let mesh = sim.mesh(late).expect("live");
    assert_eq!(mesh.num_active(), 10);
    for i in 0..10 {
        assert!(mesh.meta_of(sim_addr(i)).is_some(), "meta of node {i}");
    }
}

#[test]
fn every_seed_gone_then_back_reannounces() {
    let mut sim = Sim::new(SimConfig {
        seed: 16,
        ..SimConfig::default()
    });
    for _ in 0..2 {
        sim.add_node(|c| c.seeds = vec![sim_addr(0), sim_addr(1)]);
    }
    // The only seed is unreachable: node 1 is alone and keeps re-announcing with backoff.
    sim.isolate(0);
    sim.join(1);
    sim.run_for(secs(10));
    assert!(!sim.mesh(1).expect("live").is_connected());
    let attempts = sim.mesh(1).expect("live").traffic().packets_sent;
    assert!(
        (3..=6).contains(&attempts),
        "backoff: {attempts} announces in 10 s"
    );
    sim.heal_all(0);
    sim.run_for(secs(40));
    assert!(sim.converged());
}

#[test]
fn key_rotation_without_false_deaths() {
    let mut sim = cluster(10, 17);
    sim.run_for(secs(8));
    let new = kubedna_mesh::ClusterSecret::new(b"the-next-cluster-secret-4242424242".to_vec())
        .expect("ok");
    // Staggered like a real rollout: install everywhere, then promote everywhere, then retire.
    for i in 0..10 {
        sim.with_mesh(i, |m, _| {
            m.key_ring_mut().install(&new).expect("room");
        });
        sim.run_for(Duration::from_millis(700));
    }
    for i in 0..10 {
        sim.with_mesh(i, |m, _| {
            let id = m.key_ring_mut().id_of(&new);
            m.key_ring_mut().set_primary(id).expect("installed");
        });
        sim.run_for(Duration::from_millis(700));
    }
    for i in 0..10 {
        sim.with_mesh(i, |m, _| {
            let ids = m.key_ring_mut().key_ids();
            let primary = m.key_ring_mut().primary_id();
            for id in ids.into_iter().filter(|id| *id != primary) {
                m.key_ring_mut().remove(id).expect("not primary");
            }
        });
    }
    sim.run_for(secs(20));
    assert!(sim
        .records()
        .iter()
        .all(|r| !matches!(r.event, Event::MemberDown(..))));
    assert!(sim.converged());
    for i in 0..10 {
        let c = sim.mesh(i).expect("live").security_counters();
        assert_eq!(c.dropped(), 0, "node {i}: {c:?}");
    }
}

/// The daemon's rotation: one `rotate_secret` per node (a config reload), staggered. Nobody seals
/// with the new key before every live member accepts it, so nobody is ever unreadable.
#[test]
fn rotate_secret_one_node_at_a_time_without_false_deaths() {
    let mut sim = cluster(10, 21);
    sim.run_for(secs(8));
    let new = kubedna_mesh::ClusterSecret::new(b"the-next-cluster-secret-4242424242".to_vec())
        .expect("ok");
    let grace = secs(60);
    let mut target = None;
    for i in 0..10 {
        sim.with_mesh(i, |m, now| {
            target = Some(m.rotate_secret(&new, grace, now).expect("room"));
        });
        sim.run_for(Duration::from_millis(700));
        if i < 9 {
            let primary = sim
                .mesh(i)
                .expect("live")
                .key_status(sim.instant(sim.now()))
                .primary;
            assert_ne!(
                Some(primary),
                target,
                "node {i} promoted before everyone accepts"
            );
        }
    }
    let target = target.expect("rotated");
    sim.run_for(secs(5));
    for i in 0..10 {
        let status = sim
            .mesh(i)
            .expect("live")
            .key_status(sim.instant(sim.now()));
        assert_eq!(status.primary, target, "node {i}: {status:?}");
        assert_eq!(
            status.keys.len(),
            2,
            "old key still accepted during the grace"
        );
        assert!(status.rotation.expect("in grace").waiting_for.is_empty());
    }
    sim.run_for(grace);
    for i in 0..10 {
        let status = sim
            .mesh(i)
            .expect("live")
            .key_status(sim.instant(sim.now()));
        assert_eq!(status.keys, vec![target], "node {i}: old key retired");
        assert!(status.rotation.is_none());
        let c = sim.mesh(i).expect("live").security_counters();
        assert_eq!(c.dropped(), 0, "node {i}: {c:?}");
    }
    assert!(sim
        .records()
        .iter()
        .all(|r| !matches!(r.event, Event::MemberDown(..))));
    assert!(sim.converged());
    // Rotating to the same key again changes nothing.
    sim.with_mesh(0, |m, now| {
        m.rotate_secret(&new, grace, now).expect("same key");
        assert!(m.key_status(now).rotation.is_none());
    });
}

/// A node left with only the old key when the grace period ends is failed by the others (and
/// they by it), and its packets are dropped as `unknown_key`.
#[test]
fn a_node_without_the_new_key_is_dropped_after_the_grace_period() {
    let mut sim = cluster(3, 22);
    sim.run_for(secs(6));
    assert!(sim.converged());
    let new = kubedna_mesh::ClusterSecret::new(b"the-next-cluster-secret-4242424242".to_vec())
        .expect("ok");
    let grace = secs(10);
    for i in 0..2 {
        sim.with_mesh(i, |m, now| {
            m.rotate_secret(&new, grace, now).expect("room");
        });
    }
    sim.run_for(secs(5));
    // Node 2 never took the key: the others keep sealing with the old one and nobody is down.
    let status = sim
        .mesh(0)
        .expect("live")
        .key_status(sim.instant(sim.now()));
    assert_ne!(
        Some(status.primary),
        status.rotation.as_ref().map(|r| r.target)
    );
    assert_eq!(
        status
            .rotation
            .expect("waiting")
            .waiting_for
            .iter()
            .map(|id| id.addr)
            .collect::<Vec<_>>(),
        vec![sim_addr(2)]
    );
    assert!(downs_of(&sim, sim_addr(2)).is_empty());
    sim.run_for(secs(20));
    let mut downs = downs_of(&sim, sim_addr(2));
    downs.sort_unstable_by_key(|(n, _)| *n);
    downs.dedup_by_key(|(n, _)| *n);
    assert_eq!(
        downs,
        vec![(0, DownReason::Failed), (1, DownReason::Failed)],
        "both rotated nodes fail the straggler"
    );
    for i in 0..2 {
        let c = sim.mesh(i).expect("live").security_counters();
        assert!(
            c.unknown_key > 0,
            "node {i} counts the straggler's packets: {c:?}"
        );
    }
    assert!(sim.mesh(2).expect("live").security_counters().unknown_key > 0);
    // The two rotated nodes still see each other.
    assert!(sim.mesh(0).expect("live").sees_active(sim_addr(1)));
    assert!(
        downs_of(&sim, sim_addr(0)).iter().all(|(n, _)| *n == 2),
        "only the straggler loses node 0"
    );
}

#[test]
fn garbage_and_foreign_packets_in_flight_are_counted() {
    let mut sim = cluster(3, 18);
    sim.run_for(secs(3));
    let before = sim.mesh(0).expect("live").security_counters();
    sim.inject(0, sim_addr(1), vec![0u8; 10]);
    sim.inject(
        0,
        sim_addr(1),
        b"KDNA\x01garbage-garbage-garbage-garbage-garbage-garbage-garbage-garbage".to_vec(),
    );
    sim.run_for(Duration::from_millis(1));
    let after = sim.mesh(0).expect("live").security_counters();
    assert_eq!(after.malformed, before.malformed + 1);
    assert_eq!(after.foreign_cluster, before.foreign_cluster + 1);
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = cluster(12, seed);
        sim.set_loss(0.05);
        sim.run_for(secs(5));
        sim.crash(3);
        sim.pause(4, secs(2));
        sim.run_for(secs(10));
        sim.records()
            .iter()
            .filter(|r| !matches!(r.event, Event::MemberUpdated(..)))
            .map(|r| format!("{:?}", r))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(99), run(99));
}
