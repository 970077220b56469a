//! Lab figures for docs/benchmarks.md: time from `up` to all nodes ready (systemd running, agent
//! answering where the image has one) for a 1-node baseline and a 5-node lab, memory per node on
//! the host (PSS of all the node's processes), and `down` time; medians over `--runs`.
//! Needs root. Usage:
//! `cargo run --release -p kubedna-lab --example lab-bench -- --image DIR [--runs 3]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Lab, UpOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Run {
    up_s: f64,
    down_s: f64,
    pss_mib_per_node: f64,
    upper_mib_per_node: f64,
}

fn du_kib(p: &std::path::Path) -> f64 {
    std::process::Command::new("du")
        .args(["-sk", &p.to_string_lossy()])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn one(image: &std::path::Path, nodes: (u32, u32)) -> anyhow::Result<Run> {
    let name = "bench";
    lab::down(lab::DEFAULT_ROOT.as_ref(), name)?;
    let opts = UpOptions {
        root: lab::DEFAULT_ROOT.into(),
        name: name.into(),
        control_planes: nodes.0,
        workers: nodes.1,
        image: image.to_path_buf(),
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: "198.18.0.0/24".parse()?,
        timeout: Duration::from_secs(300),
    };
    let t = Instant::now();
    let lab = Lab::up(&opts)?;
    let up_s = t.elapsed().as_secs_f64();
    let n = lab.state.nodes.len() as f64;
    let pss: u64 = lab
        .state
        .nodes
        .iter()
        .map(|r| kubedna_lab::node::memory_pss_kib(&lab.paths(&r.name)))
        .sum();
    let upper: f64 = lab
        .state
        .nodes
        .iter()
        .map(|r| du_kib(&lab.paths(&r.name).upper))
        .sum();
    drop(lab);
    let t = Instant::now();
    lab::down(lab::DEFAULT_ROOT.as_ref(), name)?;
    let down_s = t.elapsed().as_secs_f64();
    Ok(Run {
        up_s,
        down_s,
        pss_mib_per_node: pss as f64 / 1024.0 / n,
        upper_mib_per_node: upper / 1024.0 / n,
    })
}

fn main() -> anyhow::Result<()> {
    let mut image = PathBuf::from("/var/tmp/kubedna-lab-dev/rootfs");
    let mut runs = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--image" => image = args.next().map(PathBuf::from).unwrap_or(image),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            other => anyhow::bail!("unknown argument {other}; use --image DIR --runs N"),
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "image {} runs {runs} loadavg at start {}",
        image.display(),
        load.trim()
    );
    let mut results = Vec::new();
    for (label, nodes) in [
        ("1 node (baseline)", (1, 0)),
        ("5 nodes (3 cp + 2 workers)", (3, 2)),
    ] {
        let mut all = Vec::new();
        for i in 0..runs {
            let r = one(&image, nodes)?;
            println!(
                "  {label} run {i}: up {:.1}s, down {:.2}s, PSS {:.1} MiB/node, upper {:.1} MiB/node",
                r.up_s, r.down_s, r.pss_mib_per_node, r.upper_mib_per_node
            );
            all.push(r);
        }
        let m = (
            median(all.iter().map(|r| r.up_s).collect()),
            median(all.iter().map(|r| r.down_s).collect()),
            median(all.iter().map(|r| r.pss_mib_per_node).collect()),
            median(all.iter().map(|r| r.upper_mib_per_node).collect()),
        );
        results.push((label, m));
    }
    let base_up = results[0].1 .0;
    println!("| lab | up → all ready (median) | ratio to 1 node | down (median) | memory per node (PSS) | overlay upper per node |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (label, (up, down, pss, upper)) in &results {
        println!(
            "| {label} | {up:.1} s | {:.2}× | {down:.2} s | {pss:.1} MiB | {upper:.1} MiB |",
            up / base_up
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("loadavg at end {}", load.trim());
    Ok(())
}
