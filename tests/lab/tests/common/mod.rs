//! What the lab acceptance tests share: taking a lab down at the end, polling with a deadline,
//! each node's formation as `kubedna status` shows it, the kubeadm runs its agent recorded in
//! the audit log, etcd checked with the host's `etcdctl` inside a node's network namespace,
//! `kubectl` through the lab, and what an operator reads first when a node does not get there.
//! Every wait here polls something observable with a deadline; none sleeps for a condition.

#![allow(dead_code, reason = "each test binary uses a part of these helpers")]

pub mod faults;

use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Lab};
use serde_json::Value;

pub const ROOT: &str = "/var/lib/kubedna-lab";
pub const CONTROL_PLANES: [&str; 3] = ["cp-1", "cp-2", "cp-3"];
pub const NODES: [&str; 5] = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"];
/// Where the agent keeps this member's etcd CA and client certificate.
const ETCD_PKI: &str = "etc/kubedna/pki/etcd";

pub fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they create bridges, namespaces, mounts and containers"
    );
}

/// The node image with real Kubernetes (`KUBEDNA_LAB_K8S_IMAGE`, which scripts/test sets).
pub fn k8s_image() -> std::path::PathBuf {
    std::env::var_os("KUBEDNA_LAB_K8S_IMAGE")
        .map(std::path::PathBuf::from)
        .expect("set KUBEDNA_LAB_K8S_IMAGE to a node image with real Kubernetes (scripts/lab-image builds it; scripts/test does)")
}

/// Options for a nspawn lab `name` on `subnet` with `image`, under [`ROOT`], checking root.
pub fn lab_opts(
    name: &str,
    subnet: &str,
    (control_planes, workers): (u32, u32),
    image: std::path::PathBuf,
) -> kubedna_lab::lab::UpOptions {
    assert_root();
    kubedna_lab::lab::UpOptions {
        root: ROOT.into(),
        name: name.into(),
        control_planes,
        workers,
        image,
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: subnet.parse().unwrap_or_else(|e| panic!("{e}")),
        timeout: Duration::from_secs(180),
    }
}

/// Takes the lab down when the test ends, even by panic (unless `KUBEDNA_LAB_KEEP_FAILED` is
/// set and the test failed: then the lab stays for inspection, and `kubedna-lab --name LAB
/// down` removes it). Declare it before the lab, so it is dropped after it.
pub struct Down(pub &'static str);

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("KUBEDNA_LAB_KEEP_FAILED").is_some() {
            eprintln!(
                "lab {} kept for inspection (KUBEDNA_LAB_KEEP_FAILED)",
                self.0
            );
            return;
        }
        let res = lab::down(ROOT.as_ref(), self.0);
        if !std::thread::panicking() {
            res.unwrap_or_else(|e| panic!("down {}: {e}", self.0));
            let left = lab::leftovers(ROOT.as_ref(), self.0);
            assert!(left.is_empty(), "lab {} left {left:?}", self.0);
        }
    }
}

/// Calls `f` every `every` until it returns a value; at the deadline panics with `why()`.
pub fn poll<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
    why: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}\n{}", why());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What an operator reads first when a node does not get there: the agent's status, failed
/// units, the last lines of the agent's, etcd's and kubelet's journals.
pub fn diagnose(lab: &Lab, node: &str) -> String {
    lab.exec(
        node,
        &[
            "sh",
            "-c",
            "kubedna status; systemctl --failed --no-legend; \
             journalctl -u kubedna-agent -n 40 --no-pager -o short-monotonic; \
             journalctl -u kubedna-etcd -n 10 --no-pager -o short-monotonic; \
             journalctl -u kubelet -n 8 --no-pager -o short-monotonic",
        ],
        Some(Duration::from_secs(20)),
    )
    .map(|o| o.stdout + &o.stderr)
    .unwrap_or_else(|e| format!("(cannot read {node}: {e})"))
}

pub fn diagnose_all(lab: &Lab, nodes: &[&str]) -> String {
    nodes
        .iter()
        .map(|n| format!("---- {n} ----\n{}", diagnose(lab, n)))
        .collect::<Vec<_>>()
        .join("\n")
}

// -- formation, as `kubedna status` shows it ----------------------------------------------------

/// A node's formation as `kubedna status -o json` shows it.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub phase: String,
    pub waiting_for: Option<String>,
    /// (name, term)
    pub leader: Option<(String, i64)>,
    /// (name, id, learner)
    pub members: Vec<(String, String, bool)>,
    pub init_recorded: bool,
    pub last_error: Option<String>,
}

impl View {
    pub fn voters(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .members
            .iter()
            .filter(|(_, _, learner)| !learner)
            .map(|(n, _, _)| n.as_str())
            .collect();
        v.sort_unstable();
        v
    }

    pub fn member_id(&self, name: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, id, _)| id.as_str())
    }
}

/// `node`'s formation, or None while its agent does not answer or its engine does not run.
pub fn view(lab: &Lab, node: &str) -> Option<View> {
    let out = lab
        .exec(
            node,
            &["kubedna", "status", "-o", "json"],
            Some(Duration::from_secs(10)),
        )
        .ok()?;
    if !out.success() {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    let f = v.get("formation")?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(View {
        phase: s(f, "phase").unwrap_or_default(),
        waiting_for: s(f, "waiting_for"),
        leader: f.get("leader").and_then(|l| {
            Some((
                l.get("name")?.as_str()?.to_string(),
                l.get("term")?.as_i64()?,
            ))
        }),
        members: f
            .get("etcd_members")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        (
                            s(m, "name").unwrap_or_default(),
                            s(m, "id").unwrap_or_default(),
                            m.get("learner").and_then(Value::as_bool).unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        init_recorded: f
            .get("init_recorded")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        last_error: s(f, "last_error"),
    })
}

/// Polls every node in `nodes` until `done(node, view)` holds for all of them; returns the time
/// it took. At the deadline, panics with each pending node's last view and journal.
pub fn await_views(
    lab: &Lab,
    nodes: &[&str],
    what: &str,
    within: Duration,
    done: impl Fn(&str, &View) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut pending: Vec<&str> = nodes.to_vec();
    let mut last: Vec<(String, Option<View>)> = Vec::new();
    loop {
        last.clear();
        pending.retain(|node| {
            let v = view(lab, node);
            let ok = v.as_ref().is_some_and(|v| done(node, v));
            if !ok {
                last.push((node.to_string(), v));
            }
            !ok
        });
        if pending.is_empty() {
            return started.elapsed();
        }
        if started.elapsed() >= within {
            panic!(
                "{what}: not within {within:?}; views: {last:#?}\n{}",
                diagnose_all(lab, &pending)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The one leader every node in `nodes` shows; panics when they differ or one shows none.
pub fn common_leader(lab: &Lab, nodes: &[&str]) -> (String, i64) {
    let leaders: Vec<(&str, Option<(String, i64)>)> = nodes
        .iter()
        .map(|n| (*n, view(lab, n).and_then(|v| v.leader)))
        .collect();
    let first = leaders[0].1.clone();
    assert!(
        first.is_some() && leaders.iter().all(|(_, l)| *l == first),
        "every node must show the same leader: {leaders:?}"
    );
    first.unwrap_or_default()
}

// -- kubeadm runs, from the agent's own audit records -------------------------------------------

/// The kubeadm runs one node's agent recorded in its audit log (`kubedna audit list --actor
/// agent`; docs/api.md, "The agent's own actions"). The same with the real kubeadm and the
/// double, so no test depends on a double's call log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// `kubeadm init` runs started.
    pub init_attempts: usize,
    /// `kubeadm init` runs that finished with success.
    pub inits: usize,
    /// `kubeadm join` runs that finished with success.
    pub joins: usize,
    /// `kubeadm reset` runs started.
    pub resets: usize,
}

pub fn calls(lab: &Lab, node: &str) -> Calls {
    let out = lab
        .exec(
            node,
            &[
                "kubedna",
                "-o",
                "json",
                "audit",
                "list",
                "--actor",
                "agent",
                "--action",
                "kubeadm.*",
                "--limit",
                "100000",
            ],
            Some(Duration::from_secs(20)),
        )
        .unwrap_or_else(|e| panic!("reading {node}'s audit log: {e}"));
    assert!(out.success(), "reading {node}'s audit log: {out:?}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{node}: audit list is not JSON: {e}: {}", out.stdout));
    let mut c = Calls::default();
    for r in v["records"].as_array().into_iter().flatten() {
        let phase = r["args"]["phase"].as_str().unwrap_or_default();
        let ok = r["result"]["outcome"] == "ok";
        match (r["action"].as_str().unwrap_or_default(), phase) {
            ("kubeadm.init", "started") => c.init_attempts += 1,
            ("kubeadm.init", "finished") => c.inits += usize::from(ok),
            ("kubeadm.join", "finished") => c.joins += usize::from(ok),
            ("kubeadm.reset", "started") => c.resets += 1,
            _ => {}
        }
    }
    c
}

pub fn all_calls(lab: &Lab) -> Vec<(&'static str, Calls)> {
    NODES.iter().map(|n| (*n, calls(lab, n))).collect()
}

/// Every node's agent records about kubeadm, for failure messages about inits and joins.
pub fn kubeadm_evidence(lab: &Lab) -> String {
    NODES
        .iter()
        .map(|n| {
            let out = lab
                .exec(
                    n,
                    &[
                        "kubedna",
                        "audit",
                        "list",
                        "--actor",
                        "agent",
                        "--action",
                        "kubeadm.*",
                    ],
                    Some(Duration::from_secs(15)),
                )
                .map(|o| o.stdout + &o.stderr)
                .unwrap_or_else(|e| e.to_string());
            format!("---- {n} ----\n{out}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// -- etcd ---------------------------------------------------------------------------------------

/// `etcdctl ARGS` (the host's; the image has none) in `node`'s network namespace against its own
/// etcd on loopback, with the agent's client certificate. Returns (success, stdout + stderr).
pub fn etcdctl(lab: &Lab, node: &str, args: &[&str]) -> (bool, String) {
    let p = lab.paths(node);
    let pki = p.root.join(ETCD_PKI);
    let net = format!("--net={}", p.netns.display());
    let file = |f: &str| pki.join(f).display().to_string();
    let (ca, cert, key) = (
        format!("--cacert={}", file("ca.crt")),
        format!("--cert={}", file("client.crt")),
        format!("--key={}", file("client.key")),
    );
    let mut argv = vec![
        net.as_str(),
        "--",
        "env",
        "ETCDCTL_API=3",
        "etcdctl",
        "--endpoints=https://127.0.0.1:2379",
        "--command-timeout=5s",
        &ca,
        &cert,
        &key,
    ];
    argv.extend_from_slice(args);
    match kubedna_lab::cmd::output("nsenter", &argv, Some(Duration::from_secs(20))) {
        Ok(o) => (o.success(), o.stdout + &o.stderr),
        Err(e) => (false, e.to_string()),
    }
}

/// Polls until every control plane's etcd answers a health check (a quorum read) and lists 3
/// voting members, `cp-1`..`cp-3`, and no learner.
pub fn await_etcd_healthy(lab: &Lab, what: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let mut problems = Vec::new();
        for cp in CONTROL_PLANES {
            let (ok, out) = etcdctl(lab, cp, &["endpoint", "health"]);
            if !ok || !out.contains("is healthy") {
                problems.push(format!("{cp}: endpoint health: {}", out.trim()));
                continue;
            }
            let (ok, out) = etcdctl(lab, cp, &["member", "list", "-w", "json"]);
            let members: Option<Vec<(String, bool)>> = ok
                .then(|| serde_json::from_str::<Value>(&out).ok())
                .flatten()
                .and_then(|v| {
                    v.get("members")?.as_array().map(|ms| {
                        ms.iter()
                            .map(|m| {
                                (
                                    m["name"].as_str().unwrap_or_default().to_string(),
                                    m["isLearner"].as_bool().unwrap_or(false),
                                )
                            })
                            .collect()
                    })
                });
            match members {
                Some(mut ms) => {
                    ms.sort();
                    let want: Vec<(String, bool)> = CONTROL_PLANES
                        .iter()
                        .map(|n| (n.to_string(), false))
                        .collect();
                    if ms != want {
                        problems.push(format!("{cp}: members {ms:?}"));
                    }
                }
                None => problems.push(format!("{cp}: member list: {}", out.trim())),
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{what}: etcd not healthy with 3 voting members within {within:?}: {problems:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

// -- nodes and Kubernetes -----------------------------------------------------------------------

pub fn has_file(lab: &Lab, node: &str, path: &str) -> bool {
    lab.exec(node, &["test", "-e", path], Some(Duration::from_secs(10)))
        .is_ok_and(|o| o.success())
}

pub fn machine_id(lab: &Lab, node: &str) -> String {
    lab.exec(
        node,
        &["cat", "/etc/machine-id"],
        Some(Duration::from_secs(10)),
    )
    .map(|o| o.stdout.trim().to_string())
    .unwrap_or_else(|e| panic!("{node}'s machine-id: {e}"))
}

/// Resident memory (MiB) of the first process named `comm` in `node`.
pub fn rss_mib(lab: &Lab, node: &str, comm: &str) -> Option<f64> {
    let script = format!(
        "for p in $(pgrep -x {comm}); do awk '/^VmRSS:/ {{print $2}}' /proc/$p/status; break; done"
    );
    let out = lab
        .exec(node, &["sh", "-c", &script], Some(Duration::from_secs(10)))
        .ok()?;
    out.stdout
        .trim()
        .parse::<f64>()
        .ok()
        .map(|kib| kib / 1024.0)
}

/// `kubectl ARGS -o json` in the lab, parsed; None while no API answers.
pub fn kubectl_json(lab: &Lab, args: &[&str]) -> Option<Value> {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let out = lab.kubectl(&argv, Some(Duration::from_secs(30))).ok()?;
    if !out.success() {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

pub fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Names of Ready nodes, sorted, from `kubectl get nodes`.
pub fn ready_nodes(nodes: &Value) -> Vec<String> {
    let mut ready: Vec<String> = items(nodes)
        .iter()
        .filter(|n| {
            n["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    ready.sort();
    ready
}

/// Polls `kubectl get nodes` until exactly `nodes` are Ready; returns the last listing.
pub fn await_ready(lab: &Lab, nodes: &[&str], what: &str, within: Duration) -> Value {
    let want: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    poll(
        what,
        within,
        || {
            let v = kubectl_json(lab, &["get", "nodes"])?;
            (ready_nodes(&v) == want).then_some(v)
        },
        || {
            format!(
                "ready: {:?}\n{}",
                kubectl_json(lab, &["get", "nodes"]).map(|v| ready_nodes(&v)),
                diagnose_all(lab, &NODES)
            )
        },
    )
}
