//! Control-plane formation on real lab nodes (issue 6): 3 control planes and 2 workers boot the
//! node image with the agent and the kubeadm and kubelet TEST DOUBLES (`kubedna-image build
//! --test-doubles`), on real systemd, D-Bus, containerd and etcd 3.4. One lab, brought up once:
//! - every node reaches phase `member`; etcd is healthy with 3 voting members; exactly one
//!   `kubeadm init` across all nodes and 4 joins (2 control planes, 2 workers); kubelet active
//!   everywhere; every node shows the same leader;
//! - the leader node is power-cut: the others show a new leader with a higher term within the
//!   lease TTL (plus etcd's own leader change and a margin); the old leader boots again and
//!   follows without running kubeadm again;
//! - the node that ran `kubeadm init` is reinstalled with a wiped disk: it rejoins etcd as a new
//!   member and joins with kubeadm; the cluster's init count stays 1.
//!
//! Needs root and a node image carrying this agent and the doubles (`KUBEDNA_LAB_IMAGE`, as
//! `scripts/test` builds it); it fails rather than skips without them. Every wait polls `kubedna
//! status -o json` inside the nodes (or systemctl, or etcd) with a deadline. The node image has no
//! `etcdctl`, so etcd is checked with the host's `etcdctl` run in the node's network namespace
//! against its loopback, with the client certificate the agent wrote for itself. Lab `p-cp`
//! (198.18.30.0/24). Timings are printed as `CP FIGURE ...` lines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Lab, UpOptions};
use serde_json::Value;

const ROOT: &str = "/var/lib/kubedna-lab";
const LAB: &str = "p-cp";
const SUBNET: &str = "198.18.30.0/24";
const CONTROL_PLANES: [&str; 3] = ["cp-1", "cp-2", "cp-3"];
const NODES: [&str; 5] = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"];
/// The agent's leader lease (`Timings::default()` in agent/controlplane).
const LEASE_TTL: Duration = Duration::from_secs(15);
/// From `up` returning to every node `member`: boots, host preparation, etcd, init, 4 joins.
const FORMATION: Duration = Duration::from_secs(300);
/// The kubeadm double's call log in each node (tests/fixtures/kubeadm-double/README.md).
const KUBEADM_CALLS: &str = "/var/log/kubeadm-double/calls.jsonl";
/// Where the agent keeps this member's etcd CA and client certificate.
const ETCD_PKI: &str = "etc/kubedna/pki/etcd";

fn opts() -> UpOptions {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they create bridges, namespaces, mounts and containers"
    );
    let image = std::env::var_os("KUBEDNA_LAB_IMAGE")
        .map(PathBuf::from)
        .expect("set KUBEDNA_LAB_IMAGE to a node image with the agent and the test doubles (scripts/test does)");
    UpOptions {
        root: ROOT.into(),
        name: LAB.into(),
        control_planes: 3,
        workers: 2,
        image,
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: SUBNET.parse().unwrap_or_else(|e| panic!("{e}")),
        timeout: Duration::from_secs(180),
    }
}

/// Takes the lab down when the test ends, even by panic (unless `KUBEDNA_LAB_KEEP_FAILED` is
/// set and the test failed: then the lab stays for inspection, and `kubedna-lab --name p-cp
/// down` removes it).
struct Down(&'static str);

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

/// A node's formation as `kubedna status -o json` shows it.
#[derive(Debug, Clone, Default)]
struct View {
    phase: String,
    #[expect(dead_code, reason = "read in failure messages, through Debug")]
    waiting_for: Option<String>,
    /// (name, term)
    leader: Option<(String, i64)>,
    /// (name, id, learner)
    members: Vec<(String, String, bool)>,
    init_recorded: bool,
    #[expect(dead_code, reason = "read in failure messages, through Debug")]
    last_error: Option<String>,
}

impl View {
    fn voters(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .members
            .iter()
            .filter(|(_, _, learner)| !learner)
            .map(|(n, _, _)| n.as_str())
            .collect();
        v.sort_unstable();
        v
    }

    fn member_id(&self, name: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, id, _)| id.as_str())
    }
}

/// `node`'s formation, or None while its agent does not answer or its engine does not run.
fn view(lab: &Lab, node: &str) -> Option<View> {
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

/// What an operator would read first when a node does not get there: failed units and the last
/// lines of the agent's and etcd's journals.
fn diagnose(lab: &Lab, node: &str) -> String {
    lab.exec(
        node,
        &[
            "sh",
            "-c",
            "systemctl --failed --no-legend; \
             journalctl -u kubedna-agent -n 40 --no-pager -o short-monotonic; \
             journalctl -u kubedna-etcd -n 15 --no-pager -o short-monotonic; \
             journalctl -u kubelet -n 5 --no-pager -o short-monotonic",
        ],
        Some(Duration::from_secs(15)),
    )
    .map(|o| o.stdout + &o.stderr)
    .unwrap_or_else(|e| format!("(cannot read {node}'s journal: {e})"))
}

/// Polls every node in `nodes` until `done(node, view)` holds for all of them; returns the time
/// it took. At the deadline, panics with each pending node's last view and journal.
fn await_views(
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
            let journals: Vec<String> = pending
                .iter()
                .map(|n| format!("---- {n} ----\n{}", diagnose(lab, n)))
                .collect();
            panic!(
                "{what}: not within {within:?}; views: {last:#?}\n{}",
                journals.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The kubeadm calls recorded by the double in one node.
#[derive(Debug, Clone, Default)]
struct Calls {
    /// `kubeadm init` attempts (not `init phase ...`), successful or not.
    init_attempts: usize,
    inits: usize,
    joins: usize,
}

fn calls(lab: &Lab, node: &str) -> Calls {
    let script = format!("if [ -e {KUBEADM_CALLS} ]; then cat {KUBEADM_CALLS}; fi");
    let out = lab
        .exec(node, &["sh", "-c", &script], Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("reading {node}'s kubeadm calls: {e}"));
    assert!(out.success(), "reading {node}'s kubeadm calls: {out:?}");
    let mut c = Calls::default();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{node}: bad line in {KUBEADM_CALLS}: {e}: {line}"));
        let arg = |i: usize| v["args"][i].as_str().unwrap_or_default().to_string();
        let ok = v["exit"] == 0;
        if arg(0) == "init" && arg(1) != "phase" {
            c.init_attempts += 1;
            c.inits += usize::from(ok);
        }
        if arg(0) == "join" && ok {
            c.joins += 1;
        }
    }
    c
}

/// Every node's raw kubeadm call log and the agent's journal lines about kubeadm, for failure
/// messages about inits and joins.
fn kubeadm_evidence(lab: &Lab) -> String {
    let script = format!(
        "cat {KUBEADM_CALLS} 2>/dev/null; journalctl -u kubedna-agent --no-pager -o short-monotonic \
         | grep -iE 'kubeadm|init|started|stopp' | tail -n 30"
    );
    NODES
        .iter()
        .map(|n| {
            let out = lab
                .exec(n, &["sh", "-c", &script], Some(Duration::from_secs(15)))
                .map(|o| o.stdout)
                .unwrap_or_else(|e| e.to_string());
            format!("---- {n} ----\n{out}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn all_calls(lab: &Lab) -> Vec<(&'static str, Calls)> {
    NODES.iter().map(|n| (*n, calls(lab, n))).collect()
}

/// `etcdctl ARGS` (the host's; the image has none) in `node`'s network namespace against its own
/// etcd on loopback, with the agent's client certificate. Returns (success, stdout + stderr).
fn etcdctl(lab: &Lab, node: &str, args: &[&str]) -> (bool, String) {
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
fn await_etcd_healthy(lab: &Lab, what: &str, within: Duration) {
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

/// Polls until `systemctl is-active kubelet` says `active` on every node in `nodes`.
fn await_kubelet_active(lab: &Lab, nodes: &[&str], within: Duration) {
    let started = Instant::now();
    loop {
        let inactive: Vec<(String, String)> = nodes
            .iter()
            .filter_map(|n| {
                let out = lab
                    .exec(
                        n,
                        &["systemctl", "is-active", "kubelet.service"],
                        Some(Duration::from_secs(10)),
                    )
                    .map(|o| o.stdout.trim().to_string())
                    .unwrap_or_else(|e| e.to_string());
                (out != "active").then(|| (n.to_string(), out))
            })
            .collect();
        if inactive.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < within,
            "kubelet not active within {within:?}: {inactive:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn has_file(lab: &Lab, node: &str, path: &str) -> bool {
    lab.exec(node, &["test", "-e", path], Some(Duration::from_secs(10)))
        .is_ok_and(|o| o.success())
}

/// The one leader every node in `nodes` shows; panics when they differ or one shows none.
fn common_leader(lab: &Lab, nodes: &[&str]) -> (String, i64) {
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

fn machine_id(lab: &Lab, node: &str) -> String {
    lab.exec(
        node,
        &["cat", "/etc/machine-id"],
        Some(Duration::from_secs(10)),
    )
    .map(|o| o.stdout.trim().to_string())
    .unwrap_or_else(|e| panic!("{node}'s machine-id: {e}"))
}

fn resident_kib(lab: &Lab, node: &str, process: &str) -> u64 {
    lab.exec(
        node,
        &["ps", "-o", "rss=", "-C", process],
        Some(Duration::from_secs(10)),
    )
    .ok()
    .map(|o| {
        o.stdout
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok())
            .sum()
    })
    .unwrap_or(0)
}

#[test]
fn three_control_planes_two_workers_form_fail_over_and_survive_a_reinstall() {
    let o = opts();
    let _down = Down(LAB);
    lab::down(&o.root, &o.name).unwrap_or_else(|e| panic!("pre-clean {}: {e}", o.name));

    // -- formation ------------------------------------------------------------------------------
    let started = Instant::now();
    let mut lab = Lab::up(&o).unwrap_or_else(|e| panic!("up {}: {e}", o.name));
    let up_took = started.elapsed();
    assert!(
        lab.status().iter().all(|s| s.agent == "ready"),
        "the image must carry the agent: {:?}",
        lab.status()
    );
    await_views(
        &lab,
        &NODES,
        "every node joined (phase member)",
        FORMATION,
        |_, v| v.phase == "member",
    );
    let formed = started.elapsed();
    eprintln!(
        "CP FIGURE {LAB}: up returned after {:.1} s; all 5 nodes member {:.1} s after up started",
        up_took.as_secs_f64(),
        formed.as_secs_f64()
    );

    // etcd: healthy, 3 voting members, as etcd and as every control plane's status say.
    await_etcd_healthy(&lab, "after formation", Duration::from_secs(60));
    await_views(
        &lab,
        &CONTROL_PLANES,
        "status lists 3 voting etcd members",
        Duration::from_secs(30),
        |_, v| v.voters() == CONTROL_PLANES && v.members.len() == 3 && v.init_recorded,
    );

    // Exactly one init in the whole cluster; every other node joined once; control planes
    // joined as control planes (the double wrote their API server manifests), workers not.
    let c = all_calls(&lab);
    let total_init_attempts: usize = c.iter().map(|(_, c)| c.init_attempts).sum();
    if total_init_attempts != 1 || c.iter().map(|(_, c)| c.joins).sum::<usize>() != 4 {
        panic!(
            "want exactly 1 kubeadm init and 4 joins, got {c:?}\n{}",
            kubeadm_evidence(&lab)
        );
    }
    let init_nodes: Vec<&str> = c
        .iter()
        .filter(|(_, c)| c.init_attempts > 0)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(init_nodes.len(), 1, "kubeadm init on {init_nodes:?}: {c:?}");
    let init_node = init_nodes[0];
    assert!(CONTROL_PLANES.contains(&init_node), "{c:?}");
    assert_eq!(
        c.iter().map(|(_, c)| c.init_attempts).sum::<usize>(),
        1,
        "{c:?}"
    );
    assert_eq!(c.iter().map(|(_, c)| c.inits).sum::<usize>(), 1, "{c:?}");
    for (n, calls) in &c {
        let want = usize::from(*n != init_node);
        assert_eq!(calls.joins, want, "{n} joined {} times: {c:?}", calls.joins);
    }
    let cp_joins: usize = c
        .iter()
        .filter(|(n, _)| CONTROL_PLANES.contains(n))
        .map(|(_, c)| c.joins)
        .sum();
    assert_eq!(cp_joins, 2, "control-plane joins: {c:?}");
    let manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml";
    for n in NODES {
        let cp = CONTROL_PLANES.contains(&n);
        assert_eq!(
            has_file(&lab, n, manifest),
            cp,
            "{n}: {manifest} must exist exactly on control planes"
        );
        assert!(has_file(&lab, n, "/etc/kubernetes/kubelet.conf"), "{n}");
    }
    await_kubelet_active(&lab, &NODES, Duration::from_secs(30));
    let (leader, term) = common_leader(&lab, &NODES);
    assert!(CONTROL_PLANES.contains(&leader.as_str()), "leader {leader}");
    eprintln!("CP FIGURE {LAB}: init on {init_node}; leader {leader} (term {term})");
    eprintln!(
        "CP FIGURE {LAB}: RSS on {leader} with etcd running: agent {} KiB, etcd {} KiB",
        resident_kib(&lab, &leader, "kubedna-agent"),
        resident_kib(&lab, &leader, "etcd")
    );

    // -- leader killed --------------------------------------------------------------------------
    // A power cut: no lease revocation, no goodbye. The lease expires after its TTL (restarted
    // once if etcd's own raft leader was on the dead node), then another control plane wins.
    let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != leader).collect();
    let before = calls(&lab, &leader);
    lab.kill(&leader)
        .unwrap_or_else(|e| panic!("kill {leader}: {e}"));
    let failover = await_views(
        &lab,
        &others,
        "a new leader with a higher term, shown by every other node",
        LEASE_TTL * 2 + Duration::from_secs(15),
        |_, v| {
            v.leader
                .as_ref()
                .is_some_and(|(n, t)| *n != leader && *t > term)
        },
    );
    let (new_leader, new_term) = common_leader(&lab, &others);
    eprintln!(
        "CP FIGURE {LAB}: leader {leader} killed; {new_leader} (term {new_term}) shown by all 4 \
         others after {:.1} s (lease TTL {} s; {:.2}x)",
        failover.as_secs_f64(),
        LEASE_TTL.as_secs(),
        failover.as_secs_f64() / LEASE_TTL.as_secs_f64()
    );

    // The old leader boots again: it follows the new leader and runs kubeadm no more.
    lab.start(std::slice::from_ref(&leader), Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("start {leader}: {e}"));
    let back = await_views(
        &lab,
        &NODES,
        "the old leader back as a member, everyone on the new leader",
        Duration::from_secs(120),
        |_, v| v.phase == "member" && v.leader == Some((new_leader.clone(), new_term)),
    );
    eprintln!(
        "CP FIGURE {LAB}: rebooted {leader} member again, following {new_leader}, {:.1} s after \
         its boot was ready",
        back.as_secs_f64()
    );
    let after = calls(&lab, &leader);
    assert_eq!(
        (after.init_attempts, after.joins),
        (before.init_attempts, before.joins),
        "{leader} ran kubeadm again after a reboot"
    );
    await_etcd_healthy(
        &lab,
        "after the old leader's reboot",
        Duration::from_secs(60),
    );

    // -- reinstall with a wiped disk ------------------------------------------------------------
    // The node that ran `kubeadm init` loses its disk and boots the image again. It must rejoin
    // etcd as a new member (its old member removed) and join with kubeadm, never init.
    let victim = init_node;
    let pre_wipe = all_calls(&lab);
    let old_id = view(&lab, victim)
        .and_then(|v| v.member_id(victim).map(str::to_string))
        .unwrap_or_else(|| panic!("{victim}'s etcd member id in its status"));
    let old_machine = machine_id(&lab, victim);
    let wiped_at = Instant::now();
    lab.reinstall(victim, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("reinstall {victim}: {e}"));
    assert_ne!(
        machine_id(&lab, victim),
        old_machine,
        "a reinstalled {victim} is a new machine"
    );
    let rejoin = await_views(
        &lab,
        &NODES,
        "the reinstalled node a member again with a new etcd member",
        Duration::from_secs(240),
        |_, v| {
            v.phase == "member"
                && v.leader.as_ref().is_some_and(|(n, _)| n != victim)
                && (v.members.is_empty()
                    || (v.voters() == CONTROL_PLANES
                        && v.members.len() == 3
                        && v.member_id(victim).is_some_and(|id| id != old_id)))
        },
    );
    eprintln!(
        "CP FIGURE {LAB}: {victim} reinstalled (wiped disk): member again {:.1} s after its boot, \
         {:.1} s after the wipe",
        rejoin.as_secs_f64(),
        wiped_at.elapsed().as_secs_f64()
    );
    await_etcd_healthy(&lab, "after the reinstall", Duration::from_secs(60));
    let fresh = calls(&lab, victim);
    assert_eq!(
        (fresh.init_attempts, fresh.joins),
        (0, 1),
        "the reinstalled {victim} must join once and never init: {fresh:?}"
    );
    let post = all_calls(&lab);
    for (n, c) in post.iter().filter(|(n, _)| *n != victim) {
        let was = pre_wipe
            .iter()
            .find(|(p, _)| p == n)
            .map(|(_, c)| c.init_attempts);
        assert_eq!(
            Some(c.init_attempts),
            was,
            "{n}: before {pre_wipe:?}, after {post:?}"
        );
    }
    let total_inits =
        pre_wipe.iter().map(|(_, c)| c.init_attempts).sum::<usize>() + fresh.init_attempts;
    assert_eq!(total_inits, 1, "before {pre_wipe:?}, after {post:?}");
    assert!(
        has_file(&lab, victim, manifest),
        "{victim} rejoined as a control plane"
    );
    await_kubelet_active(&lab, &NODES, Duration::from_secs(30));
    common_leader(&lab, &NODES);
}
