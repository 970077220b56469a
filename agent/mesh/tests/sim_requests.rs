//! Mesh requests (the control-plane engine's path) in the simulator: ids, resends, the
//! duplicate cache and deadlines, across packet loss and a partition.

use std::time::Duration;

use kubedna_mesh::sim::{Sim, SimConfig};
use kubedna_mesh::RequestError;

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn cluster(seed: u64, loss: f64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        loss,
        ..SimConfig::default()
    });
    for _ in 0..5 {
        sim.add_node(|c| c.expected_size = 5);
    }
    sim.bootstrap_converged();
    sim.run_for(Duration::from_secs(3));
    sim
}

/// The reply to request `id` of node `from`, if any yet.
fn reply(sim: &Sim, from: usize, id: u64) -> Option<Result<Vec<u8>, RequestError>> {
    sim.replies()
        .iter()
        .find(|(_, node, r)| *node == from && r.id == id)
        .map(|(_, _, r)| r.result.clone())
}

#[test]
fn requests_cross_loss_once_each_and_wait_out_a_partition() {
    let mut sim = cluster(31, 0.10);
    sim.serve_echo(4);

    // 10% loss on every datagram: resends carry every request through, and the handler runs
    // once per request however many copies arrive.
    let mut ids = Vec::new();
    for k in 0..20u8 {
        let from = usize::from(k % 2);
        let id = sim
            .request(from, 4, 2, vec![k], Duration::from_secs(5))
            .expect("fits");
        ids.push((from, id, k));
        sim.run_for(ms(100));
    }
    sim.run_for(Duration::from_secs(6));
    for (from, id, k) in &ids {
        assert_eq!(reply(&sim, *from, *id), Some(Ok(vec![*k])), "request {k}");
    }
    assert_eq!(sim.handled(4), 20, "one handler run per request");
    assert_eq!(sim.replies().len(), 20, "one reply per request");

    // Partition: node 4 is cut off for 3 s. A request with a 1 s deadline times out; one with
    // 8 s is resent until the partition heals and is then answered, once.
    sim.isolate(4);
    let short = sim
        .request(0, 4, 2, b"short".to_vec(), Duration::from_secs(1))
        .expect("fits");
    let long = sim
        .request(1, 4, 2, b"long".to_vec(), Duration::from_secs(8))
        .expect("fits");
    sim.run_for(Duration::from_secs(3));
    assert!(
        matches!(
            reply(&sim, 0, short),
            Some(Err(RequestError::Timeout { kind: 2, .. }))
        ),
        "{:?}",
        reply(&sim, 0, short)
    );
    assert_eq!(
        reply(&sim, 1, long),
        None,
        "still waiting across the partition"
    );
    sim.heal_all(4);
    sim.run_for(Duration::from_secs(6));
    assert_eq!(reply(&sim, 1, long), Some(Ok(b"long".to_vec())));
    assert_eq!(
        sim.handled(4),
        21,
        "the timed-out request never reached the handler"
    );

    // A node without a handler refuses at once instead of letting the requester time out.
    let refused = sim
        .request(0, 3, 9, vec![], Duration::from_secs(5))
        .expect("fits");
    sim.run_for(Duration::from_secs(2));
    assert!(
        matches!(
            reply(&sim, 0, refused),
            Some(Err(RequestError::Refused { kind: 9, .. }))
        ),
        "{:?}",
        reply(&sim, 0, refused)
    );
}

#[test]
fn request_ids_differ_between_lives_of_a_node() {
    // A restarted node must not be answered from the cache with its previous life's answer:
    // ids start from the random boot id.
    let mut a = cluster(32, 0.0);
    let mut b = cluster(33, 0.0);
    let ia = a
        .request(0, 1, 2, vec![], Duration::from_secs(1))
        .expect("fits");
    let ib = b
        .request(0, 1, 2, vec![], Duration::from_secs(1))
        .expect("fits");
    assert_ne!(ia, ib);
}
