//! Pauses against crashes (issue 17), in the simulator: how long every other node takes to see a
//! crashed node down, and how many live nodes are declared down for a process pause
//! (SIGSTOP/SIGCONT, a VM frozen by live migration) of each length. Median and range over seeds.
//! See docs/benchmarks.md, section "Mesh: pauses and crashes".
//!
//! `cargo run --release -p kubedna-mesh --example pause-bench [-- OPTIONS]`, options (defaults
//! in brackets): `--nodes 5,50` cluster sizes, `--seeds 5` seeds per cell, `--crashes 10`
//! crashes per seed, `--pauses 0.5,1,2,3,4,4.5,4.9,5.5,6,8` pause lengths in seconds,
//! `--lossy 0,1` nodes with 15% loss on their link. Each pause length gets 10 pauses per seed.

use std::time::{Duration, Instant};

use kubedna_mesh::sim::{Sim, SimConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What to run, from the command line.
struct Opts {
    nodes: Vec<usize>,
    seeds: Vec<u64>,
    crashes: u64,
    pauses_ms: Vec<u64>,
    lossy: Vec<usize>,
}

fn list<T: std::str::FromStr>(v: &str, what: &str) -> Vec<T> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{what}: cannot read {x:?}"))
        })
        .collect()
}

fn opts() -> Opts {
    let mut o = Opts {
        nodes: vec![5, 50],
        seeds: (1..=5).collect(),
        crashes: 10,
        pauses_ms: vec![500, 1000, 2000, 3000, 4000, 4500, 4900, 5500, 6000, 8000],
        lossy: vec![0, 1],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            panic!("usage: pause-bench [--nodes 5,50] [--seeds 5] [--crashes 10] [--pauses 0.5,1,2] [--lossy 0,1]");
        };
        match flag.as_str() {
            "--nodes" => o.nodes = list(value, "--nodes"),
            "--seeds" => o.seeds = (1..=list::<u64>(value, "--seeds")[0]).collect(),
            "--crashes" => o.crashes = list(value, "--crashes")[0],
            "--pauses" => {
                o.pauses_ms = list::<f64>(value, "--pauses")
                    .into_iter()
                    .map(|s| (s * 1000.0).round() as u64)
                    .collect()
            }
            "--lossy" => o.lossy = list(value, "--lossy"),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn cluster(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_node(|c| c.expected_size = n as u32);
    }
    sim.bootstrap_converged();
    sim.run_for(Duration::from_secs(5));
    sim.clear_records();
    sim
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time until the last other node saw a crash, per seed (10 crashes of different nodes each).
fn crash_detection(o: &Opts, n: usize, lossy: usize) {
    let mut all = Vec::new();
    let mut per_seed = Vec::new();
    for &seed in &o.seeds {
        let mut seen_by_all = Vec::new();
        let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a5);
        for k in 0..o.crashes {
            let mut sim = cluster(n, seed * 100 + k);
            for i in 0..lossy {
                sim.set_link_loss(n - 1 - i, 0.15);
            }
            sim.run_for(Duration::from_millis(rng.random_range(0..2000)));
            let victim = rng.random_range(0..n - lossy);
            sim.crash(victim);
            sim.run_for(Duration::from_secs(40));
            let worst = sim
                .detection_times(victim)
                .into_iter()
                .map(|t| t.map_or(f64::INFINITY, |d| d.as_secs_f64()))
                .fold(0.0, f64::max);
            seen_by_all.push(worst);
            all.push(worst);
        }
        per_seed.push(median(&mut seen_by_all));
    }
    all.sort_by(f64::total_cmp);
    println!(
        "crash seen by every other node, {n} nodes{}: median {:.2} s (per-seed medians {:?}), min {:.2} s, max {:.2} s",
        if lossy > 0 { ", 15% loss on one other node" } else { "" },
        median(&mut per_seed),
        per_seed.iter().map(|s| (s * 100.0).round() / 100.0).collect::<Vec<_>>(),
        all[0],
        all[all.len() - 1],
    );
}

/// Live identities declared down for 10 pauses of `pause` each, per seed.
fn false_deaths(o: &Opts, n: usize, pause: Duration, lossy: usize) -> Vec<usize> {
    o.seeds
        .iter()
        .map(|&seed| {
            let mut sim = cluster(n, seed);
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            for i in 0..lossy {
                sim.set_link_loss(n - 1 - i, 0.15);
            }
            for _ in 0..10 {
                let victim = rng.random_range(0..n - lossy);
                let offset = Duration::from_millis(rng.random_range(0..500));
                sim.run_for(offset);
                sim.pause(victim, pause);
                sim.run_for(pause + Duration::from_secs(10) - offset);
            }
            sim.false_positives().identities
        })
        .collect()
}

fn main() {
    let o = opts();
    let t = Instant::now();
    for &n in &o.nodes {
        for &lossy in &o.lossy {
            crash_detection(&o, n, lossy);
        }
    }
    for &n in &o.nodes {
        for &lossy in &o.lossy {
            for &ms in &o.pauses_ms {
                let deaths = false_deaths(&o, n, Duration::from_millis(ms), lossy);
                let total: usize = deaths.iter().sum();
                println!(
                    "false deaths, {n} nodes{}, pause {:.1} s: {total} of {} pauses (per seed {deaths:?})",
                    if lossy > 0 { ", 15% loss on one other node" } else { "" },
                    ms as f64 / 1000.0,
                    10 * o.seeds.len(),
                );
            }
        }
    }
    println!("(wall time {:.1} s)", t.elapsed().as_secs_f64());
}
