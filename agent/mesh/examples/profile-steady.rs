//! Profiling aid: a 1,000-node cluster restored converged, then 30 s of loss and pauses.
use std::time::{Duration, Instant};

use kubedna_mesh::sim::{Sim, SimConfig};

fn main() {
    let t = Instant::now();
    let mut sim = Sim::new(SimConfig {
        seed: 5,
        ..SimConfig::default()
    });
    for _ in 0..1000 {
        sim.add_node(|c| c.expected_size = 1000);
    }
    sim.bootstrap_converged();
    println!(
        "bootstrap {:.1} s, converged {}",
        t.elapsed().as_secs_f64(),
        sim.converged()
    );
    sim.run_for(Duration::from_secs(10));
    println!(
        "10 s calm {:.1} s, converged {}",
        t.elapsed().as_secs_f64(),
        sim.converged()
    );
    sim.set_loss(0.05);
    for i in 0..100 {
        sim.pause(i * 10, Duration::from_secs(2));
    }
    sim.run_for(Duration::from_secs(20));
    println!(
        "20 s trouble {:.1} s, converged {}",
        t.elapsed().as_secs_f64(),
        sim.converged()
    );
}
