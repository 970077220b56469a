//! Issue 5 acceptance, simulation part: 1,000 nodes, 5% packet loss, 2-second pauses on 10% of
//! the nodes; views converge, crashes are detected by every node, false positives are counted.
//!
//! The 1,000-node run needs an optimized build: `cargo test --release -p kubedna-mesh --test
//! acceptance_1000` (about 30 s of CPU). In a debug build it is skipped and the same scenario
//! runs at 60 nodes.

use std::time::{Duration, Instant};

use kubedna_mesh::sim::{Sim, SimConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn scenario(n: usize, seed: u64) {
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_node(|c| c.expected_size = n as u32);
    }
    // The join storm of 1,000 nodes is measured by mesh-bench; here the cluster starts from a
    // restored, converged view and must stay converged through the trouble.
    sim.bootstrap_converged();
    sim.run_for(Duration::from_secs(5));
    assert!(sim.converged(), "restored view is stable");
    sim.clear_records();

    // 20 s of trouble: 5% loss; every 10 s, 10% of the nodes stall for 2 s; 5 nodes crash.
    sim.set_loss(0.05);
    let mut rng = StdRng::seed_from_u64(seed ^ 55);
    let crashed: Vec<usize> = (0..5).map(|k| n / 10 + (n / 10) * k).collect();
    let mut pauses = 0;
    for round in 0..2 {
        let base = sim.now();
        let mut starts: Vec<(u64, usize)> = (0..n / 10)
            .map(|_| (rng.random_range(0..8000), rng.random_range(0..n)))
            .collect();
        starts.sort();
        for (offset, node) in starts {
            sim.run_until(base + Duration::from_millis(offset));
            if round == 0 && offset > 4000 && sim.crashed_at(crashed[0]).is_none() {
                for &c in &crashed {
                    sim.crash(c);
                }
            }
            if crashed.contains(&node) || sim.is_paused(node) {
                continue;
            }
            sim.pause(node, Duration::from_secs(2));
            pauses += 1;
        }
        sim.run_until(base + Duration::from_secs(10));
    }
    // Then no more pauses (loss stays): the views must settle.
    sim.run_for(Duration::from_secs(12));

    for &c in &crashed {
        assert_eq!(
            sim.still_seeing(c),
            0,
            "crashed node {c} still seen as active"
        );
        let times = sim.detection_times(c);
        assert!(
            times.iter().all(Option::is_some),
            "every live node saw crash of {c}"
        );
    }
    let fp = sim.false_positives();
    let worst = crashed
        .iter()
        .flat_map(|&c| sim.detection_times(c))
        .flatten()
        .max()
        .unwrap_or_default();
    println!(
        "{n} nodes: {pauses} pauses; every crash seen by all within {:.1} s; false positives: {} identities, {} observer events; wall {:.1} s",
        worst.as_secs_f64(),
        fp.identities,
        fp.observer_events,
        wall.elapsed().as_secs_f64()
    );
    assert!(sim.converged(), "views converge");
    // Counted, and with Lifeguard rare (none with this seed): mesh-bench compares with plain SWIM.
    assert!(fp.identities <= n / 500, "{fp:?}");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "1,000 nodes need --release")]
fn thousand_nodes_loss_pauses_crashes() {
    scenario(1000, 5);
}

#[test]
fn sixty_nodes_loss_pauses_crashes() {
    scenario(60, 6);
}
