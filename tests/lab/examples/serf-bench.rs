//! Pauses against crashes in the lab, our mesh beside Serf (issue 17). Five nspawn nodes (lab
//! `p-serf`, 198.18.60.0/24) run our agent and, next to it, the host's Serf (Debian's `serf`
//! package; the binary is copied into each node, which has no route out). Under the same
//! scripted faults, in the same run:
//! - power cuts (`kubedna-lab kill`): when each other node declares the node failed, per system;
//! - freezes of a whole node (SIGSTOP of every process in it, SIGCONT after the freeze length, as
//!   a paused VM), with and without packet loss on another node's link: the nodes declared
//!   failed, per system;
//! - the control plane's leader frozen (does its term change?) and power-cut (how long until
//!   another node shows a higher term), when the image forms a control plane.
//!
//! Observation is event-based: each node's own journal (`journalctl -f -o json`, our agent's
//! "mesh: member failed" with journald's receive timestamp, microseconds) and `serf monitor`
//! (Serf's "EventMemberFailed", timestamped on arrival here, about a millisecond). Only the
//! waits for a settled cluster and the leader's term are polled (`kubedna peers`, `serf
//! members`, `kubedna status`, every 250 ms). The fixed waits are measurement windows: the
//! freeze itself, 8 s after it in which failures still count, 3 s after a leader's freeze in
//! which a takeover would show.
//!
//! Needs root. Usage (docs/benchmarks.md, "Mesh beside Serf on lab nodes"):
//! `cargo run --release -p kubedna-lab --example serf-bench -- --image DIR [--reps 3]
//! [--freezes 1,2,3,4,4.5,5,6,8|none] [--leader-freezes 4,4.5] [--loss 15] [--serf /usr/bin/serf]`

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use kubedna_lab::lab::{self, Discovery, Lab, UpOptions};
use kubedna_lab::node;
use serde_json::Value;

const LAB: &str = "p-serf";
const SUBNET: &str = "198.18.60.0/24";
const NODES: [&str; 5] = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"];
const CONTROL_PLANES: [&str; 3] = ["cp-1", "cp-2", "cp-3"];
const SERF_PORT: u16 = 7950;
const SERF_RPC: &str = "127.0.0.1:7373";
/// Nodes frozen in turn (worker-1 carries the loss; cp-1 usually leads).
const FREEZE_VICTIMS: [&str; 3] = ["cp-3", "worker-2", "cp-2"];
const CRASH_VICTIMS: [&str; 3] = ["worker-2", "cp-3", "worker-1"];
const LOSSY: &str = "worker-1";
/// After SIGCONT, how long failures are still counted before the cluster must be whole again:
/// longer than either system takes to refute or to declare.
const SETTLE: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sys {
    Ours,
    Serf,
}

/// One freeze, for one system: (the frozen node declared failed, how many nodes were).
type Outcome = (bool, usize);

#[derive(Debug, Clone)]
struct Ev {
    sys: Sys,
    observer: String,
    target: String,
    at: SystemTime,
}

struct Opts {
    image: PathBuf,
    reps: usize,
    freezes: Vec<f64>,
    leader_freezes: Vec<f64>,
    loss: f32,
    serf: PathBuf,
}

fn args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        image: PathBuf::new(),
        reps: 3,
        freezes: vec![1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 6.0, 8.0],
        leader_freezes: vec![4.0, 4.5],
        loss: 15.0,
        serf: "/usr/bin/serf".into(),
    };
    let mut a = std::env::args().skip(1);
    while let Some(flag) = a.next() {
        let v = a.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--image" => o.image = v.into(),
            "--reps" => o.reps = v.parse()?,
            "--freezes" if v == "none" => o.freezes.clear(),
            "--leader-freezes" => {
                o.leader_freezes = v.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--freezes" => o.freezes = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--loss" => o.loss = v.parse()?,
            "--serf" => o.serf = v.into(),
            other => bail!("unknown argument {other}; see the example's header"),
        }
    }
    if o.image.as_os_str().is_empty() {
        bail!("--image DIR is required: a node image with the agent (docs/lab.md)");
    }
    Ok(o)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn secs_since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0)
        .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
}

/// `argv` inside `node` as a child with its stdout piped (what `kubedna-lab exec` runs, kept
/// running).
fn spawn_in(lab: &Lab, node: &str, argv: &[&str]) -> anyhow::Result<Child> {
    let leader = node::leader(&lab.paths(node)).with_context(|| format!("{node} not running"))?;
    let mut cmd = Command::new("nsenter");
    cmd.args(["--target", &leader.to_string()])
        .args([
            "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd",
        ])
        .args(["--", "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin"])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    Ok(cmd.spawn()?)
}

/// The two event streams of one node.
fn watch(
    lab: &Lab,
    node: &str,
    by_ip: &BTreeMap<Ipv4Addr, String>,
    tx: &Sender<Ev>,
) -> anyhow::Result<Vec<Child>> {
    let mut children = Vec::new();
    let journal = [
        "journalctl",
        "-f",
        "-n",
        "0",
        "-o",
        "json",
        "-u",
        "kubedna-agent",
    ];
    let mut c = spawn_in(lab, node, &journal)?;
    let out = c.stdout.take().context("journalctl stdout")?;
    let (tx1, me, ips) = (tx.clone(), node.to_string(), by_ip.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let msg = v["MESSAGE"].as_str().unwrap_or_default();
            if !msg.contains("mesh: member failed") {
                continue;
            }
            let ip = msg
                .split("peer=")
                .nth(1)
                .and_then(|p| p.split(':').next())
                .and_then(|p| p.parse::<Ipv4Addr>().ok());
            let micros: u64 = v["__REALTIME_TIMESTAMP"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            if let Some(target) = ip.and_then(|ip| ips.get(&ip)) {
                let at = UNIX_EPOCH + Duration::from_micros(micros);
                let ev = Ev {
                    sys: Sys::Ours,
                    observer: me.clone(),
                    target: target.clone(),
                    at,
                };
                if tx1.send(ev).is_err() {
                    return;
                }
            }
        }
    });
    children.push(c);
    let monitor = [
        "/usr/local/bin/serf",
        "monitor",
        "-log-level=info",
        &format!("-rpc-addr={SERF_RPC}"),
    ];
    let mut c = spawn_in(lab, node, &monitor)?;
    let out = c.stdout.take().context("serf monitor stdout")?;
    let (tx2, me) = (tx.clone(), node.to_string());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let at = SystemTime::now();
            let Some(rest) = line.split("EventMemberFailed: ").nth(1) else {
                continue;
            };
            let target = rest.split_whitespace().next().unwrap_or_default();
            let ev = Ev {
                sys: Sys::Serf,
                observer: me.clone(),
                target: target.to_string(),
                at,
            };
            if tx2.send(ev).is_err() {
                return;
            }
        }
    });
    children.push(c);
    Ok(children)
}

fn run(lab: &Lab, node: &str, argv: &[&str]) -> anyhow::Result<String> {
    let out = lab.exec(node, argv, Some(Duration::from_secs(20)))?;
    if !out.success() {
        bail!("{node}: {argv:?}: {}{}", out.stdout, out.stderr);
    }
    Ok(out.stdout)
}

/// Copies the host's Serf into `node` (it has no route out) and starts it as a transient unit.
fn start_serf(lab: &Lab, serf: &Path, node: &str) -> anyhow::Result<()> {
    let dest = lab.paths(node).root.join("usr/local/bin/serf");
    std::fs::copy(serf, &dest).with_context(|| format!("copy {} into {node}", serf.display()))?;
    let me = lab.node(node)?.address;
    let _ = lab.exec(node, &["systemctl", "stop", "serf-bench"], None);
    let _ = lab.exec(node, &["systemctl", "reset-failed", "serf-bench"], None);
    let mut argv: Vec<String> = [
        "systemd-run",
        "--unit=serf-bench",
        "--collect",
        "/usr/local/bin/serf",
        "agent",
        "-log-level=info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(format!("-node={node}"));
    argv.push(format!("-bind={me}:{SERF_PORT}"));
    argv.push(format!("-rpc-addr={SERF_RPC}"));
    for other in NODES.iter().filter(|n| **n != node) {
        argv.push(format!(
            "-retry-join={}:{SERF_PORT}",
            lab.node(other)?.address
        ));
    }
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    run(lab, node, &refs)?;
    Ok(())
}

/// Who `node` shows alive, per system (None while that system does not answer there).
fn views(lab: &Lab, node: &str) -> (Option<BTreeSet<String>>, Option<BTreeSet<String>>) {
    let names = |v: &Value, list: &str, state: &str, alive: &str| -> BTreeSet<String> {
        v[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m[state] == alive)
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .collect()
    };
    let ours = run(lab, node, &["kubedna", "peers", "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .map(|v| names(&v, "peers", "liveness", "alive"));
    let rpc = format!("-rpc-addr={SERF_RPC}");
    let serf = run(lab, node, &["serf", "members", "-format=json", &rpc])
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .map(|v| names(&v, "members", "status", "alive"));
    (ours, serf)
}

/// Polls until every node shows every other alive in both systems.
fn await_whole(lab: &Lab, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut missing = Vec::new();
        for n in NODES {
            let (ours, serf) = views(lab, n);
            for (sys, v) in [("ours", ours), ("serf", serf)] {
                let want = NODES.iter().filter(|m| **m != n);
                let lacking: Vec<&str> = match &v {
                    Some(v) => want.filter(|m| !v.contains(**m)).copied().collect(),
                    None => vec!["(no answer)"],
                };
                if !lacking.is_empty() {
                    missing.push(format!("{n} {sys}: {lacking:?}"));
                }
            }
        }
        if missing.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("not whole again within {within:?}: {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGSTOP (or SIGCONT) of every process of the node, PID 1 included: a paused VM.
fn signal_node(lab: &Lab, node: &str, sig: nix::sys::signal::Signal) -> anyhow::Result<usize> {
    let ino = node::netns_inode(&lab.paths(node).netns).context("netns")?;
    let pids = node::pids_in_netns(ino);
    for pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), sig);
    }
    Ok(pids.len())
}

/// The leader and its term as `node` shows them.
fn leader(lab: &Lab, node: &str) -> Option<(String, i64)> {
    let v: Value =
        serde_json::from_str(&run(lab, node, &["kubedna", "status", "-o", "json"]).ok()?).ok()?;
    let l = &v["formation"]["leader"];
    Some((l["name"].as_str()?.to_string(), l["term"].as_i64()?))
}

struct Bench {
    lab: Lab,
    opts: Opts,
    by_ip: BTreeMap<Ipv4Addr, String>,
    tx: Sender<Ev>,
    rx: Receiver<Ev>,
    watchers: BTreeMap<String, Vec<Child>>,
    events: Vec<Ev>,
}

impl Bench {
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.events.push(e);
        }
    }

    /// Ends the watchers this bench started in `node` (by their pids).
    fn stop_watchers(&mut self, node: &str) {
        for mut c in self.watchers.remove(node).unwrap_or_default() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn rewatch(&mut self, node: &str) -> anyhow::Result<()> {
        self.stop_watchers(node);
        let w = watch(&self.lab, node, &self.by_ip, &self.tx)?;
        self.watchers.insert(node.to_string(), w);
        Ok(())
    }

    /// Failures declared in [from, to], as (system, target) → observers.
    fn failures(&mut self, from: SystemTime, to: SystemTime) -> BTreeMap<(Sys, String), Vec<Ev>> {
        self.drain();
        let mut m: BTreeMap<(Sys, String), Vec<Ev>> = BTreeMap::new();
        for e in self.events.iter().filter(|e| e.at >= from && e.at <= to) {
            m.entry((e.sys, e.target.clone()))
                .or_default()
                .push(e.clone());
        }
        m
    }

    /// One freeze; returns the nodes each system declared failed meanwhile.
    fn freeze(&mut self, victim: &str, secs: f64) -> anyhow::Result<[BTreeSet<String>; 2]> {
        let t0 = SystemTime::now();
        signal_node(&self.lab, victim, nix::sys::signal::Signal::SIGSTOP)?;
        // A fork racing the first pass is stopped by the second.
        signal_node(&self.lab, victim, nix::sys::signal::Signal::SIGSTOP)?;
        std::thread::sleep(Duration::from_secs_f64(secs));
        signal_node(&self.lab, victim, nix::sys::signal::Signal::SIGCONT)?;
        std::thread::sleep(SETTLE);
        await_whole(&self.lab, Duration::from_secs(90))?;
        let f = self.failures(t0, SystemTime::now());
        let mut out = [BTreeSet::new(), BTreeSet::new()];
        for ((sys, target), evs) in &f {
            out[*sys as usize].insert(target.clone());
            let at: Vec<String> = evs
                .iter()
                .map(|e| format!("{} +{:.2}s", e.observer, secs_since(t0, e.at)))
                .collect();
            println!("    {sys:?} declared {target} failed: {at:?}");
        }
        Ok(out)
    }

    /// One power cut; per system, each other node's detection time (s).
    fn crash(&mut self, victim: &str) -> anyhow::Result<[Vec<f64>; 2]> {
        let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != victim).collect();
        let t0 = SystemTime::now();
        self.lab.kill(victim)?;
        let started = Instant::now();
        let out = loop {
            std::thread::sleep(Duration::from_millis(200));
            let f = self.failures(t0, SystemTime::now() + Duration::from_secs(1));
            let out: [Vec<f64>; 2] = [Sys::Ours, Sys::Serf].map(|sys| {
                let evs = f
                    .get(&(sys, victim.to_string()))
                    .cloned()
                    .unwrap_or_default();
                others
                    .iter()
                    .filter_map(|o| {
                        evs.iter()
                            .filter(|e| e.observer == *o)
                            .map(|e| secs_since(t0, e.at))
                            .min_by(f64::total_cmp)
                    })
                    .collect()
            });
            if out.iter().all(|v| v.len() == others.len()) {
                break out;
            }
            if started.elapsed() > Duration::from_secs(90) {
                println!("    not seen by all within 90 s: {out:?}");
                break out;
            }
        };
        self.stop_watchers(victim);
        self.lab
            .start(&[victim.to_string()], Duration::from_secs(180))?;
        start_serf(&self.lab, &self.opts.serf, victim)?;
        self.rewatch(victim)?;
        await_whole(&self.lab, Duration::from_secs(120))?;
        Ok(out)
    }
}

fn main() -> anyhow::Result<()> {
    let opts = args()?;
    lab::require_root()?;
    let serf_version = Command::new(&opts.serf).arg("version").output()?;
    println!(
        "serf: {} ({}); loadavg at start {}",
        opts.serf.display(),
        String::from_utf8_lossy(&serf_version.stdout)
            .lines()
            .next()
            .unwrap_or("?"),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let root: &Path = lab::DEFAULT_ROOT.as_ref();
    lab::down(root, LAB)?;
    let up = UpOptions {
        root: root.into(),
        name: LAB.into(),
        control_planes: 3,
        workers: 2,
        image: opts.image.clone(),
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: SUBNET.parse()?,
        timeout: Duration::from_secs(300),
    };
    let lab = Lab::up_with(&up, Discovery::Seeds)?;
    let result = bench(lab, opts);
    let down = lab::down(root, LAB);
    result?;
    down?;
    Ok(())
}

fn bench(lab: Lab, opts: Opts) -> anyhow::Result<()> {
    let by_ip: BTreeMap<Ipv4Addr, String> = lab
        .state
        .nodes
        .iter()
        .map(|r| (r.address, r.name.clone()))
        .collect();
    for n in NODES {
        start_serf(&lab, &opts.serf, n)?;
    }
    let (tx, rx) = channel();
    let mut b = Bench {
        lab,
        opts,
        by_ip,
        tx,
        rx,
        watchers: BTreeMap::new(),
        events: Vec::new(),
    };
    let t = await_whole(&b.lab, Duration::from_secs(120))?;
    println!("both meshes whole {:.1} s after up", t.as_secs_f64());
    for n in NODES {
        b.rewatch(n)?;
    }
    let formed = (0..240).find_map(|_| {
        let l: Vec<_> = CONTROL_PLANES.iter().map(|c| leader(&b.lab, c)).collect();
        if l.iter().all(|x| x.is_some() && *x == l[0]) {
            return l[0].clone();
        }
        std::thread::sleep(Duration::from_millis(500));
        None
    });
    println!("leader: {formed:?}");

    // Freezes: lengths × {no loss, loss on another node} × reps.
    let reps = b.opts.reps;
    let mut table: BTreeMap<(u64, bool), [Vec<Outcome>; 2]> = BTreeMap::new();
    for lossy in [false, true] {
        let pct = if lossy { b.opts.loss } else { 0.0 };
        b.lab.set_loss(LOSSY, pct)?;
        for &secs in &b.opts.freezes.clone() {
            for rep in 0..reps {
                let victim = FREEZE_VICTIMS[rep % FREEZE_VICTIMS.len()];
                println!("  freeze {victim} {secs:.1} s (loss {pct}% on {LOSSY}), rep {rep}");
                // The leader's term, from a control plane that is not frozen.
                let judge = CONTROL_PLANES.iter().find(|c| **c != victim).copied();
                let term = |b: &Bench| judge.and_then(|j| leader(&b.lab, j));
                let before = term(&b);
                let [ours, serf] = b.freeze(victim, secs)?;
                let after = term(&b);
                if before != after {
                    println!("    leader changed: {before:?} → {after:?}");
                }
                let cell = table.entry(((secs * 1000.0) as u64, lossy)).or_default();
                cell[0].push((ours.contains(victim), ours.len()));
                cell[1].push((serf.contains(victim), serf.len()));
            }
        }
    }
    b.lab.set_loss(LOSSY, 0.0)?;

    // Power cuts.
    let mut crash: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut crash_all: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        let victim = CRASH_VICTIMS[rep % CRASH_VICTIMS.len()];
        println!("  power cut of {victim}, rep {rep}");
        let per = b.crash(victim)?;
        for (i, v) in per.iter().enumerate() {
            println!("    {:?}: per observer {v:.2?}", [Sys::Ours, Sys::Serf][i]);
            crash[i].extend(v);
            crash_all[i].push(v.iter().copied().fold(f64::NAN, f64::max));
        }
    }

    // The leader: frozen (term kept?), then power-cut (time to a higher term).
    // (freeze length, term kept, our mesh declared the leader's node down)
    let mut leader_freezes: Vec<(f64, bool, bool)> = Vec::new();
    let mut leader_cuts: Vec<Option<f64>> = Vec::new();
    if formed.is_some() {
        for secs in b.opts.leader_freezes.clone() {
            for rep in 0..reps {
                let Some((name, term)) = leader(&b.lab, "cp-2").or_else(|| leader(&b.lab, "cp-3"))
                else {
                    continue;
                };
                println!("  freeze the leader {name} (term {term}) {secs:.1} s, rep {rep}");
                let [ours, _] = b.freeze(&name, secs)?;
                // The engine's pass (1 s) and the seat's watch act within a few seconds.
                std::thread::sleep(Duration::from_secs(3));
                let after: Vec<_> = CONTROL_PLANES.iter().map(|c| leader(&b.lab, c)).collect();
                let kept = after
                    .iter()
                    .all(|l| l.as_ref() == Some(&(name.clone(), term)));
                println!("    terms after: {after:?}");
                leader_freezes.push((secs, kept, ours.contains(&name)));
            }
        }
        for rep in 0..reps {
            let Some((name, term)) = leader(&b.lab, "cp-2").or_else(|| leader(&b.lab, "cp-3"))
            else {
                continue;
            };
            let others: Vec<&str> = CONTROL_PLANES
                .iter()
                .copied()
                .filter(|c| *c != name)
                .collect();
            println!("  power cut of the leader {name} (term {term}), rep {rep}");
            let t0 = Instant::now();
            b.lab.kill(&name)?;
            let took = loop {
                if others
                    .iter()
                    .any(|c| leader(&b.lab, c).is_some_and(|(_, t)| t > term))
                {
                    break Some(t0.elapsed().as_secs_f64());
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(250));
            };
            println!("    a higher term shown after {took:?} s");
            leader_cuts.push(took);
            b.stop_watchers(&name);
            b.lab
                .start(std::slice::from_ref(&name), Duration::from_secs(180))?;
            start_serf(&b.lab, &b.opts.serf, &name)?;
            b.rewatch(&name)?;
            await_whole(&b.lab, Duration::from_secs(120))?;
        }
    }

    // The report.
    println!("\n| freeze | loss on {LOSSY} | ours: frozen node declared failed (of {reps}) | Serf: same | ours: other nodes declared | Serf: other nodes declared |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((ms, lossy), [ours, serf]) in &table {
        let dead = |v: &[Outcome]| v.iter().filter(|(d, _)| *d).count();
        let other = |v: &[Outcome]| v.iter().map(|(d, n)| n - usize::from(*d)).sum::<usize>();
        println!(
            "| {:.1} s | {} | {} | {} | {} | {} |",
            *ms as f64 / 1000.0,
            if *lossy {
                format!("{}%", b.opts.loss)
            } else {
                "none".into()
            },
            dead(ours),
            dead(serf),
            other(ours),
            other(serf),
        );
    }
    for (i, sys) in ["ours", "Serf"].iter().enumerate() {
        println!(
            "crash seen, {sys}: by every other node median {:.2} s, max {:.2} s ({} cuts); per observer median {:.2} s, min {:.2} s, max {:.2} s",
            median(crash_all[i].clone()),
            crash_all[i].iter().copied().fold(f64::NAN, f64::max),
            crash_all[i].len(),
            median(crash[i].clone()),
            crash[i].iter().copied().fold(f64::NAN, f64::min),
            crash[i].iter().copied().fold(f64::NAN, f64::max),
        );
    }
    for (secs, kept, down) in &leader_freezes {
        println!("leader frozen {secs:.1} s: term kept {kept}, declared down by our mesh {down}");
    }
    if !leader_cuts.is_empty() {
        let cut: Vec<f64> = leader_cuts.iter().flatten().copied().collect();
        println!(
            "leader power-cut → higher term on another control plane (poll 250 ms): {leader_cuts:.2?} s, median {:.2} s",
            median(cut)
        );
    }
    println!(
        "loadavg at end {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for n in NODES {
        b.stop_watchers(n);
    }
    Ok(())
}
