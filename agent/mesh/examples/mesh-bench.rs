//! Figures of the mesh from the simulator (see docs/benchmarks.md, section "Mesh").
//!
//! `cargo run --release -p kubedna-mesh --example mesh-bench [-- quick]`

use std::time::{Duration, Instant};

use kubedna_mesh::sim::{sim_addr, Sim, SimConfig};
use kubedna_mesh::{Event, MeshConfig, NodeState};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A cluster of `n` joining through 3 seeds.
fn build(
    n: usize,
    seed: u64,
    loss: f64,
    record_updates: bool,
    tweak: impl Fn(&mut MeshConfig),
) -> Sim {
    let mut sim = nodes(n, seed, loss, record_updates, tweak);
    for i in 0..n {
        sim.join(i);
    }
    sim
}

/// A cluster of `n` restored converged (skips simulating the join storm).
fn restored(n: usize, seed: u64, record_updates: bool) -> Sim {
    let mut sim = nodes(n, seed, 0.0, record_updates, |_| {});
    sim.bootstrap_converged();
    sim
}

fn nodes(
    n: usize,
    seed: u64,
    loss: f64,
    record_updates: bool,
    tweak: impl Fn(&mut MeshConfig),
) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        loss,
        record_updates,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_node(|c| {
            c.expected_size = n as u32;
            tweak(c);
        });
    }
    sim
}

fn converge(sim: &mut Sim, limit: Duration) -> Option<Duration> {
    let start = sim.now();
    while sim.now() - start < limit {
        sim.run_for(Duration::from_millis(500));
        if sim.converged() {
            return Some(sim.now() - start);
        }
    }
    None
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Plain SWIM: no Lifeguard, a fixed suspicion timeout equal to Lifeguard's minimum, so both
/// detect a crash confirmed by several members equally fast.
fn plain(c: &mut MeshConfig) {
    let lg = c.lifeguard.take().unwrap_or_default();
    c.suspect_timeout = kubedna_mesh::lifeguard::min_suspicion(
        &lg,
        c.expected_size as usize,
        c.probe_period,
        c.pause_tolerance,
    );
}

/// Crash detection by every member, 100 nodes.
fn detection(seeds: &[u64], crashes: usize) {
    let n = 100;
    let mut all_seen = Vec::new();
    let mut each = Vec::new();
    for &seed in seeds {
        let mut sim = build(n, seed, 0.0, false, |_| {});
        converge(&mut sim, Duration::from_secs(60)).expect("converges");
        for k in 0..crashes {
            let victim = 10 + k;
            sim.crash(victim);
            sim.run_for(Duration::from_secs(20));
            let times = sim.detection_times(victim);
            let mut worst: f64 = 0.0;
            for t in times {
                let t = t.map_or(f64::INFINITY, |d| d.as_secs_f64());
                worst = worst.max(t);
                each.push(t);
            }
            all_seen.push(worst);
            sim.clear_records();
        }
    }
    all_seen.sort_by(f64::total_cmp);
    each.sort_by(f64::total_cmp);
    println!(
        "detection, 100 nodes, {} crashes: seen by every member p50 {:.2} s, p99 {:.2} s (goal 4 s / 8 s); per observer p50 {:.2} s, p99 {:.2} s",
        all_seen.len(),
        pct(&all_seen, 0.5),
        pct(&all_seen, 0.99),
        pct(&each, 0.5),
        pct(&each, 0.99)
    );
}

/// False positives under loss and pauses: Lifeguard vs plain SWIM, same seeds and script.
fn false_positives(n: usize, seeds: &[u64], minutes: u64) {
    let mut totals = [(0usize, 0usize); 2];
    for &seed in seeds {
        for (slot, lifeguard) in [(0usize, true), (1, false)] {
            let mut sim = build(n, seed, 0.0, false, |c| {
                if !lifeguard {
                    plain(c);
                }
            });
            converge(&mut sim, Duration::from_secs(60)).expect("converges");
            sim.clear_records();
            sim.set_loss(0.05);
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut pauses: Vec<(Duration, usize)> = Vec::new();
            // Every 10 s, 10% of the nodes stall for 2 s at a random moment.
            for _ in 0..minutes * 6 {
                let mut starts: Vec<(Duration, usize)> = (0..n / 10)
                    .map(|_| {
                        (
                            Duration::from_millis(rng.random_range(0..8000)),
                            rng.random_range(0..n),
                        )
                    })
                    .collect();
                starts.sort();
                let base = sim.now();
                for (offset, node) in starts {
                    sim.run_until(base + offset);
                    if !sim.is_paused(node) {
                        pauses.push((sim.now(), node));
                    }
                    sim.pause(node, Duration::from_secs(2));
                }
                sim.run_until(base + Duration::from_secs(10));
            }
            if let Some(watch) = std::env::var("MESH_BENCH_WATCH")
                .ok()
                .and_then(|w| w.parse::<usize>().ok())
            {
                if lifeguard {
                    for r in sim.records() {
                        let about = match &r.event {
                            Event::MemberDown(id, _) | Event::MemberUp(id) => {
                                sim.index_of(id.addr) == Some(watch)
                            }
                            _ => r.node == watch,
                        };
                        if about && !matches!(r.event, Event::MemberUp(_)) {
                            println!("  {:.2} node {} {:?}", r.at.as_secs_f64(), r.node, r.event);
                        }
                    }
                }
            }
            if std::env::var_os("MESH_BENCH_DEBUG").is_some() {
                let mut seen = std::collections::HashSet::new();
                for r in sim.records() {
                    if let Event::MemberDown(id, kubedna_mesh::DownReason::Failed) = &r.event {
                        if seen.insert(*id) {
                            let victim = sim.index_of(id.addr).unwrap_or(usize::MAX);
                            let vp: Vec<_> = pauses
                                .iter()
                                .filter(|(t, n)| {
                                    *n == victim
                                        && *t <= r.at
                                        && r.at - *t < Duration::from_secs(12)
                                })
                                .map(|(t, _)| (r.at - *t).as_secs_f64())
                                .collect();
                            let op: Vec<_> = pauses
                                .iter()
                                .filter(|(t, n)| {
                                    *n == r.node
                                        && *t <= r.at
                                        && r.at - *t < Duration::from_secs(12)
                                })
                                .map(|(t, _)| (r.at - *t).as_secs_f64())
                                .collect();
                            println!("  lg={lifeguard} FP {id:?} first by node {} at {:.2}: victim paused {vp:?} s ago, declarer paused {op:?} s ago", r.node, r.at.as_secs_f64());
                        }
                    }
                }
            }
            let fp = sim.false_positives();
            totals[slot].0 += fp.identities;
            totals[slot].1 += fp.observer_events;
        }
    }
    let (lg, sw) = (totals[0], totals[1]);
    let ratio = if lg.0 == 0 {
        format!(">= {}x (Lifeguard had none)", sw.0)
    } else {
        format!("{:.1}x", sw.0 as f64 / lg.0 as f64)
    };
    println!(
        "false positives, {n} nodes, 5% loss, 2 s pauses on 10% of nodes every 10 s, {} min x {} seeds: Lifeguard {} declarations ({} observer events), plain SWIM {} ({}): {ratio} fewer (goal 50x)",
        minutes,
        seeds.len(),
        lg.0,
        lg.1,
        sw.0,
        sw.1
    );
}

/// How long a metadata change takes to reach 99.9% of 1,000 nodes.
fn dissemination(n: usize, seeds: &[u64], changes: usize) {
    let mut times = Vec::new();
    for &seed in seeds {
        let mut sim = restored(n, seed, true);
        converge(&mut sim, Duration::from_secs(120)).expect("converges");
        // Let the start-up gossip (own metadata, first anti-entropy) drain first.
        sim.run_for(Duration::from_secs(30));
        for k in 0..changes {
            sim.clear_records();
            let origin = 100 + k;
            sim.with_mesh(origin, |m, now| m.set_state(NodeState::Ready, now));
            let start = sim.now();
            sim.run_for(Duration::from_secs(10));
            let target = (n as f64 * 0.999).ceil() as usize - 1; // others, the origin has it
            let mut got: Vec<Duration> = sim
                .records()
                .iter()
                .filter(|r| matches!(&r.event, Event::MemberUpdated(id, m) if id.addr == sim_addr(origin) && m.state == NodeState::Ready))
                .map(|r| r.at - start)
                .collect();
            got.sort();
            got.dedup();
            let t = got
                .get(target.saturating_sub(1))
                .map_or(f64::INFINITY, |d| d.as_secs_f64());
            times.push(t);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "dissemination, {n} nodes, {} changes: 99.9% reached in p50 {:.2} s, max {:.2} s (goal 2 s)",
        times.len(),
        pct(&times, 0.5),
        times.last().copied().unwrap_or(f64::NAN)
    );
}

/// Steady-state load per node.
fn load(sizes: &[usize], seed: u64) {
    for &n in sizes {
        let mut sim = restored(n, seed, false);
        converge(&mut sim, Duration::from_secs(120)).expect("converges");
        // Let the start-up gossip drain.
        sim.run_for(Duration::from_secs(30));
        let before: Vec<_> = (0..n).map(|i| sim.mesh(i).map(|m| m.traffic())).collect();
        let window = Duration::from_secs(120);
        sim.run_for(window);
        let (mut pkts, mut bytes, mut max_bytes) = (0u64, 0u64, 0u64);
        for (i, b) in before.iter().enumerate() {
            if let (Some(b), Some(m)) = (b, sim.mesh(i)) {
                let t = m.traffic();
                pkts += t.packets_sent - b.packets_sent;
                bytes += t.bytes_sent - b.bytes_sent;
                max_bytes = max_bytes.max(t.bytes_sent - b.bytes_sent);
            }
        }
        let secs = window.as_secs_f64();
        println!(
            "load, {n:>4} nodes: {:.2} msgs/s and {:.0} B/s sent per node (max node {:.0} B/s) (goal 10 msgs/s, 3 KB/s)",
            pkts as f64 / secs / n as f64,
            bytes as f64 / secs / n as f64,
            max_bytes as f64 / secs
        );
    }
}

/// How long `n` nodes booting together take to converge through 3 seeds.
fn join(n: usize, seed: u64) {
    let t = Instant::now();
    let mut sim = build(n, seed, 0.0, false, |_| {});
    let took = converge(&mut sim, Duration::from_secs(300));
    println!(
        "join, {n} nodes at once through 3 seeds: converged in {} (virtual; wall {:.0} s)",
        took.map_or("more than 300 s".into(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        )),
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "quick");
    let only = |what: &str| args.iter().any(|a| a == what);
    let t = Instant::now();
    if only("detect") {
        detection(&[1], 10);
    } else if only("fp") {
        false_positives(100, &[1], 3);
    } else if only("dissem") {
        dissemination(1000, &[1], 2);
    } else if only("fp-seed4") {
        false_positives(100, &[4], 8);
    } else if only("fp-seeds") {
        false_positives(100, &[2, 3, 4], 8);
    } else if only("join") {
        join(1000, 1);
    } else if only("load") {
        load(&[100, 1000], 1);
    } else if quick {
        detection(&[1], 5);
        false_positives(100, &[1], 2);
        load(&[10, 100], 1);
        dissemination(300, &[1], 2);
    } else {
        detection(&[1, 2, 3], 20);
        false_positives(100, &[1, 2, 3, 4, 5, 6], 8);
        load(&[10, 50, 100, 250, 500, 1000], 1);
        dissemination(1000, &[1], 5);
        join(100, 1);
        join(1000, 1);
    }
    println!("(wall time {:.1} s)", t.elapsed().as_secs_f64());
}
