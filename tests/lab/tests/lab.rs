//! End-to-end tests of the lab on this machine: real systemd-nspawn nodes, a real bridge,
//! nftables and network namespaces. They need root (CI runs as root) and a node image: set
//! `KUBEDNA_LAB_IMAGE` to an `--image` directory, default `/var/tmp/kubedna-lab-dev/rootfs`
//! (see docs/lab.md for how to build it). Each test uses its own lab name and subnet so they can
//! run at once; every wait polls the real condition with a deadline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Lab, LabError, UpOptions};
use kubedna_lab::net::NetError;
use kubedna_lab::provider::{CreateNode, LabProvider, LabelSelector, NodeProvider};
use kubedna_lab::Role;

const ROOT: &str = "/var/lib/kubedna-lab";
const BOOT: Duration = Duration::from_secs(180);

fn image() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they create bridges, namespaces, mounts and containers"
    );
    let dir = std::env::var_os("KUBEDNA_LAB_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kubedna-lab-dev/rootfs"));
    assert!(
        dir.exists(),
        "no node image at {} (set KUBEDNA_LAB_IMAGE; docs/lab.md says how to build one)",
        dir.display()
    );
    dir
}

fn opts(name: &str, subnet: &str, cps: u32, workers: u32) -> UpOptions {
    UpOptions {
        root: ROOT.into(),
        name: name.into(),
        control_planes: cps,
        workers,
        image: image(),
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: subnet.parse().unwrap_or_else(|e| panic!("{e}")),
        timeout: BOOT,
    }
}

/// Takes a lab down when the test ends, even by panic, and checks nothing is left.
struct Down(&'static str);

impl Drop for Down {
    fn drop(&mut self) {
        let res = lab::down(ROOT.as_ref(), self.0);
        if !std::thread::panicking() {
            if let Err(e) = res {
                panic!("down {}: {e}", self.0);
            }
            let left = lab::leftovers(ROOT.as_ref(), self.0);
            assert!(left.is_empty(), "lab {} left {left:?}", self.0);
        }
    }
}

fn up(o: &UpOptions) -> Lab {
    // A lab left over from an interrupted run of this test is ours to remove.
    lab::down(&o.root, &o.name).unwrap_or_else(|e| panic!("pre-clean {}: {e}", o.name));
    let started = Instant::now();
    let lab = Lab::up(o).unwrap_or_else(|e| panic!("up {}: {e}", o.name));
    eprintln!("lab {} up in {:?}", o.name, started.elapsed());
    lab
}

/// One ping from `from` to `to`'s address, waiting at most 1 s for the reply.
fn reaches(lab: &Lab, from: &str, to: &str) -> bool {
    let addr = lab.node(to).unwrap_or_else(|e| panic!("{e}")).address;
    lab.ping(from, addr, 1, 0.2)
        .unwrap_or_else(|e| panic!("{e}"))
        == 1
}

/// Like [`reaches`], but allows a few tries: ARP and neighbour state can take a moment after a
/// change that restores a path.
fn reaches_soon(lab: &Lab, from: &str, to: &str) -> bool {
    (0..3).any(|_| reaches(lab, from, to))
}

/// Fraction of `count` fast pings from `from` to `to` that got a reply.
fn delivery(lab: &Lab, from: &str, to: &str, count: u32) -> f64 {
    let addr = lab.node(to).unwrap_or_else(|e| panic!("{e}")).address;
    let received = lab
        .ping(from, addr, count, 0.005)
        .unwrap_or_else(|e| panic!("{e}"));
    f64::from(received) / f64::from(count)
}

/// Every ordered pair of nodes, in parallel by source.
/// Five pings 0.2 s apart from a node: (min rtt ms, max rtt ms, replies), from ping's summary.
fn rtt(lab: &Lab, from: &str, to: std::net::Ipv4Addr) -> (f64, f64, u32) {
    let ns = format!("--net={}", lab.paths(from).netns.display());
    let out = Command::new("nsenter")
        .args([ns.as_str(), "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2"])
        .arg(to.to_string())
        .output()
        .unwrap_or_else(|e| panic!("ping: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find_map(|l| {
            l.split(", ")
                .find_map(|part| part.strip_suffix(" received"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    let stats: Vec<f64> = text
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.starts_with("rtt")))
        .map(|(_, v)| {
            v.trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match stats[..] {
        [min, _, max, _] => (min, max, received),
        _ => (f64::NAN, f64::NAN, received),
    }
}

fn matrix(lab: &Lab, nodes: &[&str]) -> BTreeMap<(String, String), bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|from| {
                s.spawn(move || {
                    nodes
                        .iter()
                        .filter(|to| *to != from)
                        .map(|to| {
                            (
                                (from.to_string(), to.to_string()),
                                reaches_soon(lab, from, to),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[test]
fn cluster_of_five_comes_up_and_faults_do_what_they_say() {
    let name = "t-cluster";
    let _down = Down(name);
    let mut lab = up(&opts(name, "198.18.0.0/24", 3, 2));
    let nodes = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"];

    // Every node booted: systemd says "running" (not degraded).
    let status = lab.status();
    assert_eq!(status.len(), 5);
    for s in &status {
        if s.state != "running" {
            let why = lab
                .exec(
                    &s.name,
                    &["sh", "-c", "systemctl --failed --no-legend; journalctl -b -p warning --no-pager | tail -n 30"],
                    Some(Duration::from_secs(10)),
                )
                .map(|o| o.stdout)
                .unwrap_or_default();
            panic!("node {} is {}:\n{why}", s.name, s.state);
        }
    }
    // The agent, where the image has it, is active and its admin socket answers.
    for s in &status {
        if s.agent == "absent" {
            eprintln!(
                "AGENT CHECK SKIPPED on {}: the image has no kubedna-agent.service (dev image)",
                s.name
            );
        } else {
            assert_eq!(s.agent, "ready", "agent on {}", s.name);
        }
    }
    // Each node configured itself from its NoCloud seed.
    for n in nodes {
        let out = lab
            .exec(
                n,
                &["cat", "/etc/kubedna/agent.yaml"],
                Some(Duration::from_secs(5)),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let named = out.stdout.contains(&format!("name: {n}\n"))
            || out.stdout.contains(&format!("name: \"{n}\"\n"));
        assert!(named, "{n}: {}", out.stdout);
        let hn = lab
            .exec(n, &["hostname"], Some(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hn.stdout.trim(), n);
    }
    // Machine ids differ.
    let ids: std::collections::BTreeSet<String> = nodes
        .iter()
        .map(|n| {
            lab.exec(n, &["cat", "/etc/machine-id"], Some(Duration::from_secs(5)))
                .map(|o| o.stdout.trim().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ids.len(), 5, "machine ids: {ids:?}");

    // All nodes reach each other on the lab subnet.
    let m = matrix(&lab, &nodes);
    let broken: Vec<_> = m.iter().filter(|(_, ok)| !**ok).collect();
    assert!(broken.is_empty(), "unreachable pairs: {broken:?}");

    // Nothing routes or NATs beyond the bridge.
    let problems = lab.check_isolation();
    assert!(problems.is_empty(), "{problems:?}");

    // kill: worker-2 reachable before, unreachable after, processes gone; start brings it back.
    assert!(reaches_soon(&lab, "cp-1", "worker-2"));
    lab.kill("worker-2").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !reaches(&lab, "cp-1", "worker-2"),
        "killed node still answers"
    );
    assert_eq!(
        lab.status()
            .iter()
            .find(|s| s.name == "worker-2")
            .map(|s| s.state.clone()),
        Some("stopped".to_string())
    );
    assert!(kubedna_lab::node::node_pids(&lab.paths("worker-2")).is_empty());
    lab.start(&["worker-2".to_string()], BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        reaches_soon(&lab, "cp-1", "worker-2"),
        "restarted node unreachable"
    );

    // partition cp-1,cp-2 / cp-3,worker-1: across groups blocked both ways, within groups and to
    // the unlisted worker-2 open; heal restores everything.
    assert!(reaches_soon(&lab, "cp-1", "cp-3") && reaches_soon(&lab, "worker-1", "cp-2"));
    lab.partition(vec![
        vec!["cp-1".into(), "cp-2".into()],
        vec!["cp-3".into(), "worker-1".into()],
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    for (a, b) in [
        ("cp-1", "cp-3"),
        ("cp-3", "cp-1"),
        ("cp-2", "worker-1"),
        ("worker-1", "cp-2"),
    ] {
        assert!(!reaches(&lab, a, b), "{a} -> {b} crosses the partition");
    }
    for (a, b) in [
        ("cp-1", "cp-2"),
        ("cp-3", "worker-1"),
        ("cp-1", "worker-2"),
        ("worker-1", "worker-2"),
    ] {
        assert!(
            reaches_soon(&lab, a, b),
            "{a} -> {b} should not be partitioned"
        );
    }
    lab.heal().unwrap_or_else(|e| panic!("{e}"));
    let m = matrix(&lab, &nodes);
    let broken: Vec<_> = m.iter().filter(|(_, ok)| !**ok).collect();
    assert!(broken.is_empty(), "after heal, unreachable: {broken:?}");

    // loss: 100% cuts worker-1 off, 50% each way delivers about a quarter of round trips, 0 restores.
    let before = delivery(&lab, "cp-1", "worker-1", 50);
    assert!(before >= 0.98, "delivery before loss {before}");
    lab.set_loss("worker-1", 100.0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(delivery(&lab, "cp-1", "worker-1", 20), 0.0);
    lab.set_loss("worker-1", 50.0)
        .unwrap_or_else(|e| panic!("{e}"));
    let half = delivery(&lab, "cp-1", "worker-1", 400);
    // Expected 0.25 (request and reply each pass with p = 0.5); 400 tries keep it within these bounds.
    assert!(
        (0.12..=0.40).contains(&half),
        "delivery at 50% loss: {half}"
    );
    assert!(
        reaches_soon(&lab, "cp-2", "cp-3"),
        "loss on worker-1 hit others"
    );
    lab.set_loss("worker-1", 0.0)
        .unwrap_or_else(|e| panic!("{e}"));
    let after = delivery(&lab, "cp-1", "worker-1", 50);
    assert!(after >= 0.98, "delivery after clearing loss {after}");

    // delay: tc netem where the kernel has it; on ours (no sch_netem) a netfilter queue in the
    // node's namespace. Either way each direction is delayed, nothing is lost, and 0 clears it.
    let worker1 = lab
        .node("worker-1")
        .unwrap_or_else(|e| panic!("{e}"))
        .address;
    lab.set_delay("worker-1", 50)
        .unwrap_or_else(|e| panic!("delay: {e}"));
    let (min, max, received) = rtt(&lab, "cp-1", worker1);
    assert_eq!(received, 5, "delay must not lose packets");
    assert!(
        (100.0..400.0).contains(&min),
        "rtt with 50 ms each way: min {min} ms, max {max} ms"
    );
    // The delay outlives a power cut of the node, as a delay on its link would.
    lab.kill("worker-1").unwrap_or_else(|e| panic!("{e}"));
    lab.start(&["worker-1".to_string()], BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (min, _, _) = rtt(&lab, "cp-1", worker1);
    assert!(min >= 100.0, "delay after the node restarted: min {min} ms");
    assert_eq!(
        lab.set_delay("worker-1", 60_000)
            .map_err(|e| e.is_usage())
            .err(),
        Some(true),
        "an absurd delay is a usage error"
    );
    lab.set_delay("worker-1", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    // The fastest of five replies: a delay still in place would hold every one of them back.
    let (min, _, received) = rtt(&lab, "cp-1", worker1);
    assert_eq!(received, 5);
    assert!(min < 50.0, "rtt after clearing the delay: min {min} ms");
    assert!(
        kubedna_lab::delay::helper_pids(&lab.paths("worker-1").netns).is_empty(),
        "the delay helper must be gone once the delay is cleared"
    );

    // add-node: a third worker joins the bridge and is reachable.
    let added = lab
        .add_node(Role::Worker, BTreeMap::new(), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(added.name, "worker-3");
    lab.wait_ready(std::slice::from_ref(&added.name), Instant::now() + BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reaches_soon(&lab, "cp-1", "worker-3"));
    assert!(reaches_soon(&lab, "worker-3", "cp-3"));

    // down (by the guard) must leave nothing.
    drop(lab);
}

#[test]
fn labs_coexist_refuse_overlaps_and_provide_nodes() {
    let (a, b) = ("t-a", "t-b");
    let _da = Down(a);
    let _db = Down(b);
    let lab_a = up(&opts(a, "198.18.2.0/24", 1, 0));
    let lab_b = up(&opts(b, "198.18.3.0/24", 1, 0));
    assert_ne!(lab_a.state.bridge, lab_b.state.bridge);

    // A subnet overlapping a host route (here lab a's bridge) is refused, before anything is made.
    match Lab::up(&opts("t-c", "198.18.2.0/25", 1, 0)) {
        Err(e @ LabError::Net(NetError::Overlap { .. })) => assert!(e.is_usage()),
        other => panic!("overlap accepted: {other:?}"),
    }
    assert!(lab::leftovers(ROOT.as_ref(), "t-c").is_empty());
    // The same name twice is refused.
    drop(lab_a);
    match Lab::up(&opts(a, "198.18.4.0/24", 1, 0)) {
        Err(LabError::Exists { .. }) => {}
        other => panic!("duplicate lab accepted: {other:?}"),
    }
    let lab_a = Lab::open(ROOT.as_ref(), a).unwrap_or_else(|e| panic!("{e}"));
    // Labs do not reach each other: their only gateway forwards nothing.
    let b_addr = lab_b.node("cp-1").unwrap_or_else(|e| panic!("{e}")).address;
    let a_addr = lab_a.node("cp-1").unwrap_or_else(|e| panic!("{e}")).address;
    assert_eq!(
        lab_a
            .ping("cp-1", b_addr, 2, 0.2)
            .unwrap_or_else(|e| panic!("{e}")),
        0,
        "lab a reached lab b"
    );
    assert_eq!(
        lab_b
            .ping("cp-1", a_addr, 2, 0.2)
            .unwrap_or_else(|e| panic!("{e}")),
        0,
        "lab b reached lab a"
    );
    assert!(lab_a.check_isolation().is_empty());
    drop(lab_a);
    drop(lab_b);

    // The lab as a node provider: create with user-data, list by label, delete.
    let provider = LabProvider {
        root: ROOT.into(),
        lab: a.into(),
        boot_timeout: BOOT,
    };
    let mut labels = BTreeMap::new();
    labels.insert("pool".to_string(), "replacements".to_string());
    let created = provider
        .create_node(&CreateNode {
            image: image().display().to_string(),
            role: Role::Worker,
            user_data:
                "#cloud-config\nwrite_files:\n  - path: /etc/provided\n    content: provided\n"
                    .into(),
            labels,
        })
        .unwrap_or_else(|e| panic!("create_node: {e}"));
    let sel = LabelSelector::parse("pool=replacements").unwrap_or_default();
    let listed = provider.list_nodes(&sel).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed, vec![created.clone()]);
    let all = provider
        .list_nodes(&LabelSelector::parse("kubedna.io/cluster=t-a").unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 2);
    {
        let lab_a = Lab::open(ROOT.as_ref(), a).unwrap_or_else(|e| panic!("{e}"));
        let out = lab_a
            .exec(
                &created.name,
                &["cat", "/etc/provided"],
                Some(Duration::from_secs(5)),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.stdout.trim(), "provided", "user-data not applied");
        let got = lab_a
            .ping("cp-1", created.address, 1, 0.2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, 1, "provided node unreachable");
    }
    provider
        .delete_node(&created.id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(provider
        .list_nodes(&sel)
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
    let veth = kubedna_lab::names::veth(a, 2);
    assert!(
        !kubedna_lab::net::link_exists(&veth),
        "{veth} left after delete_node"
    );

    // The CLI over the same lab: status as JSON, exec passes the exit code through, usage
    // mistakes exit 2.
    let bin = env!("CARGO_BIN_EXE_kubedna-lab");
    let cli = |args: &[&str]| {
        Command::new(bin)
            .args(["--name", a])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{bin}: {e}"))
    };
    let out = cli(&["status", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status json: {e}"));
    assert_eq!(status[0]["name"], "cp-1");
    assert_eq!(status[0]["state"], "running");
    assert_eq!(
        cli(&["exec", "cp-1", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    let out = cli(&["exec", "cp-1", "--", "hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cp-1");
    let out = cli(&["exec", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no node nosuch"));
    assert_eq!(cli(&["partition", "cp-1"]).status.code(), Some(2));
    assert!(cli(&["check"]).status.success());
}

#[test]
fn down_cleans_up_after_a_crashed_lab() {
    let name = "t-crash";
    let _guard = Down(name);
    // Two nodes; control-plane counts are odd (1, 3, 5, 7), so one of each role.
    let mut lab = up(&opts(name, "198.18.5.0/24", 1, 1));
    // A node that cannot boot any more (its init exits at once) fails `start` with the reason
    // from its console, instead of a bare "not running".
    lab.kill("worker-1")
        .unwrap_or_else(|e| panic!("kill worker-1: {e}"));
    let init = lab.paths("worker-1").root.join("usr/lib/systemd/systemd");
    std::fs::write(&init, "#!/bin/sh\necho broken-init-for-test >&2\nexit 3\n")
        .unwrap_or_else(|e| panic!("{}: {e}", init.display()));
    let err = lab
        .start(&["worker-1".to_string()], Duration::from_secs(60))
        .expect_err("a node whose init exits must not start")
        .to_string();
    eprintln!("start of a broken node: {err}");
    assert!(
        err.contains("worker-1") && err.contains("broken-init-for-test"),
        "{err}"
    );
    // Crash: the nspawn processes die abruptly and the state file is lost.
    for n in ["cp-1", "worker-1"] {
        for pid in kubedna_lab::node::nspawn_pids(&lab.paths(n)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let dir = lab.dir.clone();
    drop(lab);
    std::fs::remove_file(dir.join("state.json")).unwrap_or_else(|e| panic!("{e}"));
    // And a half-done manual cleanup: the namespace files are unmounted, so the surviving node
    // PID 1s (nspawn's death does not end a container) can only be found by their cgroups.
    let netns = dir.join("netns").to_string_lossy().into_owned();
    let out = Command::new("umount")
        .args(["--recursive", "--lazy", &netns])
        .output()
        .unwrap_or_else(|e| panic!("umount: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lab::leftovers(ROOT.as_ref(), name).is_empty());
    let started = Instant::now();
    lab::down(ROOT.as_ref(), name).unwrap_or_else(|e| panic!("down after crash: {e}"));
    eprintln!("down after crash took {:?}", started.elapsed());
    assert_eq!(lab::leftovers(ROOT.as_ref(), name), Vec::<String>::new());
    assert!(!dir.exists());
}

#[test]
fn refuses_to_run_without_root_and_says_so() {
    let bin = env!("CARGO_BIN_EXE_kubedna-lab");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin,
            "--name",
            "t-noroot",
            "status",
        ])
        .output()
        .unwrap_or_else(|e| panic!("setpriv: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}
