//! Observability on a formed lab cluster (issue 14): 3 control planes and 2 workers boot the
//! node image with the agent and the kubeadm/kubelet TEST DOUBLES (`KUBEDNA_LAB_IMAGE`, as
//! scripts/test builds it), form etcd and elect a leader; then, on that one lab:
//! - a real Prometheus (Debian's `prometheus` package) started by this test, listening only on
//!   the lab bridge address, scrapes every node's metrics listener every 5 s; through its HTTP
//!   API all five targets are up, the alive-member gauge is 4 on each node, and the leader term
//!   is the same everywhere;
//! - `kubedna status --cluster` and `kubedna audit list --cluster` from one node name all five
//!   nodes, every one answering, every chain intact;
//! - a powered-off node is shown unreachable by both, never dropped.
//!
//! Without the prometheus package the Prometheus checks are SKIPPED with a line saying so (the
//! rest runs); scripts/setup installs it from scripts/deps/lab.txt. With
//! `KUBEDNA_VIEW_FIGURES=1` it also prints `VIEW FIGURE` lines (scrape latency and size, agent
//! CPU and RSS with and without scraping, `audit list --cluster` p50/p99) for
//! docs/benchmarks.md. Needs root. Every wait polls with a deadline. Lab `v-obs`
//! (198.18.70.0/24).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kubedna_lab::lab::{self, Lab, UpOptions};
use serde_json::Value;

const LAB: &str = "v-obs";
const SUBNET: &str = "198.18.70.0/24";
/// etcd formed, the kubeadm double's init and four joins, a leader elected.
const FORMATION: Duration = Duration::from_secs(600);
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMETHEUS_PORT: u16 = 9090;
/// The agent's default `metrics.listen` port (on the node's mesh address).
const METRICS_PORT: u16 = 9464;

fn opts() -> UpOptions {
    let image = std::env::var_os("KUBEDNA_LAB_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kubedna-lab-dev/rootfs"));
    assert!(
        image.exists(),
        "no node image at {} (set KUBEDNA_LAB_IMAGE; docs/lab.md says how to build one with --test-doubles)",
        image.display()
    );
    lab_opts(LAB, SUBNET, (3, 2), image)
}

#[test]
fn a_formed_cluster_is_seen_whole_from_any_node_and_by_a_real_prometheus() {
    let opts = opts();
    let _ = lab::down(ROOT.as_ref(), LAB);
    let _down = Down(LAB);
    let lab = Lab::up(&opts).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    assert!(
        lab.status().iter().all(|s| s.agent == "ready"),
        "the image must carry the agent: {:?}",
        lab.status()
    );
    let took = await_views(&lab, &NODES, "every node a member", FORMATION, |_, v| {
        v.phase == "member" && v.leader.is_some()
    });
    println!("VIEW FIGURE formed in {:.1} s", took.as_secs_f64());
    let (leader, term) = common_leader(&lab, &NODES);

    // 1. A real Prometheus on the lab bridge scrapes every node.
    match prometheus_binary() {
        None => eprintln!(
            "PROMETHEUS CHECK SKIPPED: {PROMETHEUS} is missing; install Debian's prometheus package \
             (scripts/setup does, from scripts/deps/lab.txt)"
        ),
        Some(bin) => {
            let prom = Prometheus::start(&bin, &lab);
            prom.await_targets_up(NODES.len(), Duration::from_secs(60));
            let alive = prom.await_series(
                "kubedna_mesh_members{name=\"alive\"}",
                NODES.len(),
                Duration::from_secs(30),
            );
            assert!(
                alive.iter().all(|(_, v)| *v == 4.0),
                "every node sees 4 alive members: {alive:?}"
            );
            let terms = prom.await_series("kubedna_leader_term", NODES.len(), Duration::from_secs(30));
            assert!(
                terms.iter().all(|(_, v)| *v == term as f64),
                "the leader term ({leader}, {term}) is the same everywhere: {terms:?}"
            );
            if figures() {
                prometheus_figures(&prom, &lab);
            }
            drop(prom);
        }
    }

    // 2. The cluster view from one node names all five, every one answering, chains intact.
    let status = cluster_json(&lab, "cp-2", &["status", "--cluster"]);
    let rows = answers(&status);
    assert_eq!(
        rows,
        NODES
            .iter()
            .map(|n| (n.to_string(), "ok".to_string()))
            .collect::<Vec<_>>(),
        "{status:#}"
    );
    for n in status["nodes"].as_array().into_iter().flatten() {
        assert_eq!(n["status"]["leader"]["name"], leader, "{n}");
        assert_eq!(n["status"]["phase"], "member", "{n}");
    }
    let audit = cluster_json(
        &lab,
        "cp-2",
        &["audit", "list", "--cluster", "--limit", "100000"],
    );
    assert_eq!(
        answers(&audit),
        NODES
            .iter()
            .map(|n| (n.to_string(), "ok".to_string()))
            .collect::<Vec<_>>(),
        "{:#}",
        audit["nodes"]
    );
    let records = audit["records"].as_array().cloned().unwrap_or_default();
    for n in NODES {
        assert!(
            records.iter().any(|r| r["node"] == n),
            "records of {n} in the merged list: {:#}",
            audit["nodes"]
        );
    }
    assert!(records.iter().all(|r| r["chain_ok"] == true));
    assert!(audit["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|n| n.get("chain_break").is_none()));
    let times: Vec<&str> = records
        .iter()
        .filter_map(|r| r["record"]["time"].as_str())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(times, sorted, "in time order");
    if figures() {
        print_audit_latency(&lab, records.len());
        // A longer log: 200 more audited calls on each node (log-level set, a mutating call).
        for n in NODES {
            let out = lab
                .exec(
                    n,
                    &[
                        "sh",
                        "-c",
                        "for i in $(seq 200); do kubedna log-level info >/dev/null || exit 1; done",
                    ],
                    Some(Duration::from_secs(300)),
                )
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(out.success(), "{n}: {out:?}");
        }
        let total = cluster_json(
            &lab,
            "cp-2",
            &["audit", "list", "--cluster", "--limit", "100000"],
        )["records"]
            .as_array()
            .map_or(0, Vec::len);
        print_audit_latency(&lab, total);
    }

    // 3. A powered-off node is shown unreachable, not dropped.
    lab.kill("worker-2").unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<(String, String)> = NODES
        .iter()
        .map(|n| {
            (
                n.to_string(),
                if *n == "worker-2" {
                    "unreachable"
                } else {
                    "ok"
                }
                .to_string(),
            )
        })
        .collect();
    let status = poll(
        "status --cluster shows worker-2 unreachable",
        Duration::from_secs(60),
        || {
            let s = cluster_json(&lab, "cp-1", &["status", "--cluster"]);
            (answers(&s) == want).then_some(s)
        },
        || format!("{:#}", cluster_json(&lab, "cp-1", &["status", "--cluster"])),
    );
    assert!(
        status["nodes"][4]["message"].as_str().is_some(),
        "why: {status:#}"
    );
    let audit = cluster_json(
        &lab,
        "cp-1",
        &["audit", "list", "--cluster", "--actor", "agent"],
    );
    assert_eq!(answers(&audit), want, "{:#}", audit["nodes"]);
    let table = lab
        .exec(
            "cp-1",
            &["kubedna", "status", "--cluster"],
            Some(Duration::from_secs(30)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{}", table.stdout);
    assert!(table.stdout.contains("worker-2") && table.stdout.contains("unreachable"));
}

fn figures() -> bool {
    std::env::var_os("KUBEDNA_VIEW_FIGURES").is_some()
}

/// `kubedna -o json ARGS` on `node`, parsed.
fn cluster_json(lab: &Lab, node: &str, args: &[&str]) -> Value {
    let mut argv = vec!["kubedna", "-o", "json"];
    argv.extend_from_slice(args);
    let out = lab
        .exec(node, &argv, Some(Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("{argv:?} on {node}: {e}"));
    assert!(out.success(), "{argv:?} on {node}: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{argv:?}: {e}: {}", out.stdout))
}

/// (node, answer) of each row of a cluster view.
fn answers(v: &Value) -> Vec<(String, String)> {
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default().to_string(),
                n["answer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn prometheus_binary() -> Option<PathBuf> {
    Path::new(PROMETHEUS)
        .exists()
        .then(|| PathBuf::from(PROMETHEUS))
}

/// A Prometheus process of this test: config and storage in a temp dir, listening only on the
/// lab bridge address. Killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, lab: &Lab) -> Prometheus {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let targets: Vec<String> = NODES
            .iter()
            .map(|n| {
                let a = lab.node(n).unwrap_or_else(|e| panic!("{e}")).address;
                format!("'{a}:{METRICS_PORT}'")
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 5s\n  scrape_timeout: 4s\n  evaluation_interval: 5s\n\
             scrape_configs:\n  - job_name: kubedna\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap_or_else(|e| panic!("{e}"));
        let addr = SocketAddr::from((lab.gateway(), PROMETHEUS_PORT));
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log"))
            .map(|l| l.lines().rev().take(20).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    fn api(&self, path: &str) -> Option<Value> {
        let body = http_get(self.addr, path)?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// Polls `/api/v1/targets` until `n` active targets are up.
    fn await_targets_up(&self, n: usize, within: Duration) {
        let started = Instant::now();
        poll(
            "every node's metrics target up in Prometheus",
            within,
            || {
                let t = self.api("/api/v1/targets?state=active")?;
                let up = t["activeTargets"]
                    .as_array()?
                    .iter()
                    .filter(|t| t["health"] == "up")
                    .count();
                (up == n).then_some(())
            },
            || {
                format!(
                    "targets: {:?}\nprometheus log:\n{}",
                    self.api("/api/v1/targets"),
                    self.log()
                )
            },
        );
        println!(
            "VIEW FIGURE all {n} targets up in Prometheus {:.1} s after it started",
            started.elapsed().as_secs_f64()
        );
    }

    /// Polls an instant query until it returns `n` series; (instance, value) sorted.
    fn await_series(&self, query: &str, n: usize, within: Duration) -> Vec<(String, f64)> {
        poll(
            &format!("{n} series of {query}"),
            within,
            || {
                let series = self.query(query)?;
                (series.len() == n).then_some(series)
            },
            || format!("{query}: {:?}", self.query(query)),
        )
    }

    fn query(&self, query: &str) -> Option<Vec<(String, f64)>> {
        let d = self.api(&format!("/api/v1/query?query={}", encode(query)))?;
        let mut out: Vec<(String, f64)> = d["result"]
            .as_array()?
            .iter()
            .filter_map(|s| {
                Some((
                    s["metric"]["instance"].as_str()?.to_string(),
                    s["value"][1].as_str()?.parse().ok()?,
                ))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over HTTP/1.0 (the body ends with the connection); None on any failure.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Scrape latency and size per node (Prometheus's own `scrape_duration_seconds` and the body
/// size over 12 scrapes of the host's own), and the agents' CPU and RSS over one minute with
/// scraping every 5 s, then one minute with Prometheus stopped.
fn prometheus_figures(prom: &Prometheus, lab: &Lab) {
    // One minute scraped every 5 s: the agents' CPU and RSS, then Prometheus's own account of
    // those scrapes (about 12 per node).
    let with = agent_usage(lab, Duration::from_secs(60));
    for n in NODES {
        let a = lab.node(n).unwrap_or_else(|e| panic!("{e}")).address;
        let addr = SocketAddr::from((a, METRICS_PORT));
        let mut ms = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..12 {
            let t = Instant::now();
            let body = http_get(addr, "/metrics").unwrap_or_default();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes.push(body.len() as f64);
        }
        let instance = format!("instance=\"{a}:{METRICS_PORT}\"");
        let over_minute = |query: &str| {
            prom.query(&query.replace("{}", &format!("{{{instance}}}")))
                .and_then(|s| s.first().map(|x| x.1))
                .unwrap_or(f64::NAN)
        };
        println!(
            "VIEW FIGURE scrape {n}: Prometheus's median scrape_duration {:.2} ms over {:.0} scrapes in 1 min, \
             {:.0} samples; host GET median {:.2} ms, {:.0} bytes (12 GETs)",
            over_minute("quantile_over_time(0.5, scrape_duration_seconds{}[1m])") * 1000.0,
            over_minute("count_over_time(scrape_duration_seconds{}[1m])"),
            over_minute("scrape_samples_scraped{}"),
            median(&mut ms),
            median(&mut bytes)
        );
    }
    // The same minute without scraping: Prometheus stopped (SIGSTOP), then let go on.
    let pid = nix::unistd::Pid::from_raw(prom.child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
    let without = agent_usage(lab, Duration::from_secs(60));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    for ((n, cpu_w, rss_w), (_, cpu_wo, rss_wo)) in with.iter().zip(&without) {
        println!(
            "VIEW FIGURE agent {n}: CPU {cpu_w:.2} % and RSS {rss_w:.1} MiB scraped every 5 s; \
             {cpu_wo:.2} % and {rss_wo:.1} MiB without (ratio {:.2})",
            cpu_w / cpu_wo
        );
    }
}

/// Per node: the agent's CPU share (utime + stime over `window`) and RSS at the end.
fn agent_usage(lab: &Lab, window: Duration) -> Vec<(&'static str, f64, f64)> {
    let ticks = |n: &str| -> f64 {
        let out = lab
            .exec(
                n,
                &[
                    "sh",
                    "-c",
                    "awk '{print $14 + $15}' /proc/$(pgrep -x kubedna-agent)/stat",
                ],
                Some(Duration::from_secs(10)),
            )
            .map(|o| o.stdout)
            .unwrap_or_default();
        out.trim().parse().unwrap_or(f64::NAN)
    };
    let before: Vec<f64> = NODES.iter().map(|n| ticks(n)).collect();
    let t = Instant::now();
    std::thread::sleep(window); // A measurement window, not a wait for a condition.
    let secs = t.elapsed().as_secs_f64();
    NODES
        .iter()
        .zip(before)
        .map(|(n, b)| {
            // USER_HZ is 100 on Linux.
            let cpu = (ticks(n) - b) / 100.0 / secs * 100.0;
            (
                *n,
                cpu,
                rss_mib(lab, n, "kubedna-agent").unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// `audit list --cluster` on cp-2, p50 and p99 of 50 runs, with the baseline of the same run:
/// cp-2's own `audit list` (no mesh), interleaved so both see the same load.
fn print_audit_latency(lab: &Lab, total: usize) {
    let cluster = "kubedna -o json audit list --cluster --limit 100000";
    let local = "kubedna -o json audit list --limit 100000";
    let ((p50, p99, n), (b50, b99, _)) = audit_latency(lab, "cp-2", 50, cluster, local);
    println!(
        "VIEW FIGURE audit list --cluster over 5 nodes, {total} records: p50 {p50:.0} ms, p99 {p99:.0} ms ({n} runs); \
         baseline cp-2's own audit list, same run: p50 {b50:.0} ms, p99 {b99:.0} ms"
    );
}

/// Runs `a` and `b` alternately `runs` times each inside `node`, timing each with the node's
/// clock; (p50 ms, p99 ms, runs) of each.
fn audit_latency(
    lab: &Lab,
    node: &str,
    runs: u32,
    a: &str,
    b: &str,
) -> ((f64, f64, usize), (f64, f64, usize)) {
    let script = format!(
        "for i in $(seq {runs}); do \
         s=$(date +%s%N); {a} >/dev/null; e=$(date +%s%N); echo a $(( (e - s) / 1000 )); \
         s=$(date +%s%N); {b} >/dev/null; e=$(date +%s%N); echo b $(( (e - s) / 1000 )); done"
    );
    let out = lab
        .exec(node, &["sh", "-c", &script], Some(Duration::from_secs(900)))
        .unwrap_or_else(|e| panic!("{e}"));
    let pick = |tag: &str| {
        let mut ms: Vec<f64> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(tag)?.trim().parse::<f64>().ok())
            .map(|us| us / 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let q = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        (q(0.5), q(0.99), ms.len())
    };
    (pick("a "), pick("b "))
}
