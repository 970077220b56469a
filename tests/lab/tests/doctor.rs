//! The doctor on real nodes (issue 13; docs/doctor.md): 3 control planes and 2 workers with
//! real Kubernetes v1.30.3 and real etcd, seeded with `doctor:` by `kubedna-image seed` (the
//! provider token, provider settings and both role templates on the control planes), and the
//! lab's subset of the Hetzner Cloud API (`kubedna_lab::hcloud`) served on the lab bridge and
//! backed by the lab's nodes, so the agents' own Hetzner client powers off, deletes and creates
//! real nodes. One lab, brought up once, then, in order:
//! 1. a minority partition (the leader's node and a worker, 2 of 5, for 3 minutes) while another
//!    node's link is delayed by 150 ms each way: nothing is replaced, no VM is touched;
//! 2. three nodes powered off at once: the doctor waits, saying it is `maxUnhealthy`, and touches
//!    nothing; the three boot again;
//! 3. a worker powered off while the provider answers errors and 429s: the doctor retries, then
//!    replaces it with exactly one new VM of the same name, which joins Ready, and the pods of a
//!    Deployment that ran on it run again;
//! 4. a control plane (not the leader) powered off: its etcd member is removed, the new VM joins
//!    as a new member, and there are 3 voters again;
//! 5. a worker powered off, and the leader's own node powered off once that replacement is past
//!    its fence: the next leader finishes it, then replaces the old leader's node.
//!
//! `DOCTOR FIGURE` lines give each MTTR (power cut to the new node Ready). Lab `p-doc`
//! (198.18.80.0/24). The test never holds the lab's lock while it waits: the API server's
//! backend opens the lab for each call, as `kubedna-lab hcloud-api` does.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kubedna_lab::hcloud::{HcloudApi, LabBackend};
use kubedna_lab::lab::{self, Lab, LabDoctor, UpOptions};
use serde_json::Value;

const LAB: &str = "p-doc";
const SUBNET: &str = "198.18.80.0/24";
const API: &str = "198.18.80.1:8089";
const FORMATION: Duration = Duration::from_secs(900);
/// Power cut to the new node Ready: providerOffSeconds (30) + fence, member removal, create,
/// boot, a real `kubeadm join`, under the load of a 2-core host running 5 nodes.
const REPLACED: Duration = Duration::from_secs(900);
const DEPLOYMENT: &str = "doc-pause";

fn opts() -> UpOptions {
    lab_opts(LAB, SUBNET, (3, 2), k8s_image())
}

/// Opens the lab for one look (the lab is locked while open; the API's backend needs it too).
fn with<T>(f: impl FnOnce(&mut Lab) -> T) -> T {
    let mut lab = Lab::open(ROOT.as_ref(), LAB).unwrap_or_else(|e| panic!("open {LAB}: {e}"));
    f(&mut lab)
}

/// `kubedna doctor WHAT -o json` on `node`.
fn doctor(node: &str, what: &str) -> Option<Value> {
    with(|lab| {
        let out = lab
            .exec(
                node,
                &["kubedna", "doctor", what, "-o", "json"],
                Some(Duration::from_secs(30)),
            )
            .ok()?;
        out.success()
            .then(|| serde_json::from_str(&out.stdout).ok())
            .flatten()
    })
}

/// The node every answering control plane shows as leader, if they agree.
fn leader(cps: &[&str]) -> Option<String> {
    let leaders: Vec<String> = with(|lab| {
        cps.iter()
            .filter_map(|n| view(lab, n).and_then(|v| v.leader).map(|l| l.0))
            .collect()
    });
    let first = leaders.first()?.clone();
    leaders.iter().all(|l| *l == first).then_some(first)
}

/// The servers' ids by name, as the provider lists them (the lab's never-reused indices + 1).
fn vm_ids() -> BTreeMap<String, u32> {
    with(|lab| {
        lab.state
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.index + 1))
            .collect()
    })
}

/// The doctor's history, from any answering control plane.
fn history() -> Vec<Value> {
    for cp in CONTROL_PLANES {
        if let Some(h) = doctor(cp, "history") {
            return h["entries"].as_array().cloned().unwrap_or_default();
        }
    }
    Vec::new()
}

fn ready() -> Vec<String> {
    with(|lab| kubectl_json(lab, &["get", "nodes"]))
        .map(|v| ready_nodes(&v))
        .unwrap_or_default()
}

fn all_ready(what: &str, within: Duration) {
    let want: Vec<String> = NODES.iter().map(|s| s.to_string()).collect();
    poll(
        what,
        within,
        || (ready() == want).then_some(()),
        || {
            format!(
                "ready: {:?}\n{}",
                ready(),
                with(|lab| diagnose_all(lab, &NODES))
            )
        },
    );
}

/// Every leader's doctor status and the history, for a failure message.
fn doctor_evidence() -> String {
    let mut s = String::new();
    for cp in CONTROL_PLANES {
        s.push_str(&format!("{cp}: {:#?}\n", doctor(cp, "status")));
    }
    s + &format!("history: {:#?}", history())
}

/// Waits until the doctor has replaced `node`, powered off at `cut`: a new VM of the same name
/// (another id than `old`) whose Node is Ready, and a `replaced` history entry after the first
/// `entries_before`. Returns the MTTR, from the power cut to the new node Ready.
fn await_replaced(node: &str, old: u32, entries_before: usize, cut: Instant) -> Duration {
    poll(
        &format!("{node} replaced by a new VM and Ready"),
        REPLACED,
        || {
            let id = vm_ids().get(node).copied()?;
            (id != old && ready().iter().any(|n| n == node)).then_some(())
        },
        doctor_evidence,
    );
    let mttr = cut.elapsed();
    poll(
        &format!("{node}'s replacement recorded as replaced"),
        Duration::from_secs(180),
        || {
            let h = history();
            (h.len() > entries_before
                && h[entries_before..]
                    .iter()
                    .any(|e| e["node"] == node && e["outcome"] == "replaced"))
            .then_some(())
        },
        doctor_evidence,
    );
    mttr
}

/// Power-cuts `node`; returns its VM id and when.
fn kill(node: &str) -> (u32, Instant) {
    with(|lab| {
        let id = lab.node(node).expect("node").index + 1;
        lab.kill(node)
            .unwrap_or_else(|e| panic!("power cut {node}: {e}"));
        (id, Instant::now())
    })
}

fn pause_deployment() {
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {DEPLOYMENT}\n  namespace: default\n\
         spec:\n  replicas: 4\n  selector:\n    matchLabels:\n      app: {DEPLOYMENT}\n  template:\n    \
         metadata:\n      labels:\n        app: {DEPLOYMENT}\n    spec:\n      \
         terminationGracePeriodSeconds: 0\n      containers:\n        - name: pause\n          \
         image: registry.k8s.io/pause:3.9\n          imagePullPolicy: Never\n"
    );
    // Right after Ready the API may not serve its OpenAPI yet: kubectl's validation needs it.
    poll(
        "the pause Deployment applied",
        Duration::from_secs(180),
        || {
            with(|lab| {
                let node = lab.kubectl_node().ok()?;
                let p = lab.paths(&node).root.join("root/doc-pause.yaml");
                std::fs::write(&p, &manifest).expect("write manifest");
                let out = lab
                    .kubectl(
                        &["apply", "-f", "/root/doc-pause.yaml"],
                        Some(Duration::from_secs(60)),
                    )
                    .ok()?;
                out.success().then_some(())
            })
        },
        || {
            format!(
                "{:?}",
                with(|lab| lab.kubectl(&["apply", "-f", "/root/doc-pause.yaml"], None))
            )
        },
    );
}

/// Running pods of the Deployment by node.
fn pods_by_node() -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    let Some(v) =
        with(|lab| kubectl_json(lab, &["get", "pods", "-l", &format!("app={DEPLOYMENT}")]))
    else {
        return by;
    };
    for p in items(&v) {
        let running =
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null();
        if let (true, Some(n)) = (running, p["spec"]["nodeName"].as_str()) {
            *by.entry(n.to_string()).or_insert(0) += 1;
        }
    }
    by
}

fn await_pods(
    what: &str,
    ok: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    poll(
        what,
        Duration::from_secs(300),
        || Some(pods_by_node()).filter(|b| b.values().sum::<usize>() == 4 && ok(b)),
        || format!("{:?}", pods_by_node()),
    )
}

#[test]
fn the_doctor_replaces_dead_nodes_and_nothing_else() {
    let opts = opts();
    let _ = lab::down(ROOT.as_ref(), LAB);
    let _down = Down(LAB);
    let token = format!("doc-{:x}", std::process::id() as u64 * 2_654_435_761);
    let settings = BTreeMap::from([("backoffSeconds".to_string(), 60)]);
    let doctor_cfg = LabDoctor::new(format!("http://{API}/v1"), token.clone(), settings);
    let started = Instant::now();
    drop(Lab::up_with_doctor(&opts, doctor_cfg).unwrap_or_else(|e| panic!("lab up: {e:#}")));
    let backend = Arc::new(LabBackend {
        root: ROOT.into(),
        lab: LAB.into(),
    });
    let api = HcloudApi::serve(API, &token, backend).unwrap_or_else(|e| panic!("serve {API}: {e}"));
    all_ready("all five nodes Ready", FORMATION);
    println!(
        "DOCTOR FIGURE up to all 5 Ready {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for cp in CONTROL_PLANES {
        let s = poll(
            &format!("{cp}'s doctor enabled"),
            Duration::from_secs(60),
            || doctor(cp, "status"),
            doctor_evidence,
        );
        assert_eq!(s["enabled"], true, "{cp}: {s}");
    }
    pause_deployment();
    await_pods("4 pause pods Running", |_| true);

    // 1. A minority partition with the leader in it, and a slow node: nothing replaced.
    let ids = vm_ids();
    let boss = poll(
        "one leader",
        Duration::from_secs(60),
        || leader(&CONTROL_PLANES),
        doctor_evidence,
    );
    let slow = if boss == "cp-3" { "cp-2" } else { "cp-3" };
    let minority = vec![boss.clone(), "worker-1".to_string()];
    let majority: Vec<String> = NODES
        .iter()
        .map(|s| s.to_string())
        .filter(|n| !minority.contains(n))
        .collect();
    with(|lab| {
        lab.set_delay(slow, 150).expect("delay");
        lab.partition(vec![minority.clone(), majority.clone()])
            .expect("partition");
    });
    let cut = Instant::now();
    // Three minutes of watching: every look checks that no VM was touched.
    poll(
        "3 minutes of a minority partition",
        Duration::from_secs(200),
        || {
            assert_eq!(
                vm_ids(),
                ids,
                "no VM created or deleted during the partition\n{}",
                doctor_evidence()
            );
            assert!(
                with(|lab| lab.status())
                    .iter()
                    .all(|s| s.state != "stopped"),
                "no VM powered off during the partition\n{}",
                doctor_evidence()
            );
            (cut.elapsed() >= Duration::from_secs(180)).then_some(())
        },
        doctor_evidence,
    );
    let majority_cps: Vec<&str> = CONTROL_PLANES
        .iter()
        .copied()
        .filter(|c| *c != boss)
        .collect();
    let during = leader(&majority_cps);
    with(|lab| {
        lab.heal().expect("heal");
        lab.set_delay(slow, 0).expect("undelay");
    });
    all_ready(
        "all five Ready after the partition",
        Duration::from_secs(300),
    );
    assert!(history().is_empty(), "nothing replaced: {:#?}", history());
    println!("DOCTOR FIGURE partition 2 of 5 for 180 s (+150 ms on {slow}): 0 replacements, 0 VM actions; leader {boss} → {during:?} in the majority");

    // 2. Three of five powered off: the doctor waits and says why.
    let ids = vm_ids();
    let boss = poll(
        "one leader",
        Duration::from_secs(120),
        || leader(&CONTROL_PLANES),
        doctor_evidence,
    );
    let cp_off = CONTROL_PLANES
        .iter()
        .copied()
        .find(|c| *c != boss)
        .expect("a follower");
    let three = [cp_off, "worker-1", "worker-2"];
    for n in three {
        kill(n);
    }
    // The wait is said once a node would otherwise be judged dead, so it follows the Node
    // signal, which lags a power cut by the node controller's grace period (40-100 s here).
    let said = poll(
        "the leader's doctor waiting because of maxUnhealthy",
        Duration::from_secs(300),
        || {
            let s = doctor(&boss, "status")?;
            let d = s["decision"].as_str()?.to_string();
            d.contains("maxUnhealthy").then_some(d)
        },
        doctor_evidence,
    );
    println!("DOCTOR FIGURE 3 of 5 off: {said}");
    // Past every threshold that would otherwise judge them (providerOffSeconds 30), nothing moves.
    let off = Instant::now();
    poll(
        "60 s with three nodes off",
        Duration::from_secs(90),
        || {
            assert!(
                doctor(&boss, "status").is_none_or(|s| s["in_flight"].is_null()),
                "no replacement starts\n{}",
                doctor_evidence()
            );
            (off.elapsed() >= Duration::from_secs(60)).then_some(())
        },
        doctor_evidence,
    );
    assert_eq!(vm_ids(), ids, "no VM created or deleted");
    with(|lab| {
        lab.start(&three.map(str::to_string), Duration::from_secs(300))
            .expect("boot the three again")
    });
    all_ready(
        "all five Ready after the three came back",
        Duration::from_secs(600),
    );
    assert!(history().is_empty(), "nothing replaced: {:#?}", history());

    // 3. A worker powered off while the provider fails: retried, then replaced exactly once.
    let before = pods_by_node();
    let victim = if before.get("worker-1").copied().unwrap_or(0) > 0 {
        "worker-1"
    } else {
        "worker-2"
    };
    api.fail_next(&[503, 429, 503, 429, 503]);
    let (old, cut) = kill(victim);
    let mttr = await_replaced(victim, old, 0, cut);
    println!(
        "DOCTOR FIGURE MTTR worker {victim} (provider failed 5 calls first): {:.1} s",
        mttr.as_secs_f64()
    );
    assert_eq!(
        api.faults_left(),
        0,
        "the injected failures were met and retried"
    );
    let ids_after = vm_ids();
    assert_eq!(ids_after.len(), 5, "exactly one new VM: {ids_after:?}");
    let after = await_pods("the Deployment's 4 pods Running again", |b| {
        b.keys().all(|n| NODES.contains(&n.as_str()))
    });
    println!("pods before {before:?}, after {after:?}");

    // 4. A control plane that does not lead: member removed, new member, 3 voters again.
    let boss = poll(
        "one leader",
        Duration::from_secs(120),
        || leader(&CONTROL_PLANES),
        doctor_evidence,
    );
    let cp = CONTROL_PLANES
        .iter()
        .copied()
        .find(|c| *c != boss)
        .expect("a follower");
    let old_member = with(|lab| view(lab, &boss).and_then(|v| v.member_id(cp).map(str::to_string)));
    let (old, cut) = kill(cp);
    let mttr = await_replaced(cp, old, 1, cut);
    println!(
        "DOCTOR FIGURE MTTR control plane {cp}: {:.1} s",
        mttr.as_secs_f64()
    );
    with(|lab| await_etcd_healthy(lab, "3 voting members again", Duration::from_secs(300)));
    let new_member = with(|lab| view(lab, &boss).and_then(|v| v.member_id(cp).map(str::to_string)));
    assert!(
        new_member.is_some() && new_member != old_member,
        "{cp} is a new etcd member: {old_member:?} → {new_member:?}"
    );

    // 5. A worker powered off, then the leader's own node once that replacement is past its
    // fence: the next leader finishes it, then replaces the old leader's node.
    let boss = poll(
        "one leader",
        Duration::from_secs(120),
        || leader(&CONTROL_PLANES),
        doctor_evidence,
    );
    let w = if victim == "worker-1" {
        "worker-2"
    } else {
        "worker-1"
    };
    let (old_w, cut_w) = kill(w);
    poll(
        &format!("{w}'s replacement past its fence"),
        REPLACED,
        || {
            let s = doctor(&boss, "status")?;
            let step = s["in_flight"]["step"].as_str()?.to_string();
            (s["in_flight"]["node"] == w && !matches!(step.as_str(), "lease" | "fence"))
                .then_some(step)
        },
        doctor_evidence,
    );
    let (old_boss, cut_boss) = kill(&boss);
    let rest: Vec<&str> = CONTROL_PLANES
        .iter()
        .copied()
        .filter(|c| *c != boss)
        .collect();
    let next = poll(
        "a new leader",
        Duration::from_secs(120),
        || leader(&rest).filter(|l| *l != boss),
        doctor_evidence,
    );
    let mttr_w = await_replaced(w, old_w, 2, cut_w);
    println!(
        "DOCTOR FIGURE MTTR worker {w}, finished by the next leader {next}: {:.1} s",
        mttr_w.as_secs_f64()
    );
    let mttr_boss = await_replaced(&boss, old_boss, 3, cut_boss);
    println!(
        "DOCTOR FIGURE MTTR old leader {boss}: {:.1} s",
        mttr_boss.as_secs_f64()
    );
    with(|lab| {
        await_etcd_healthy(
            lab,
            "3 voting members after the leader's replacement",
            Duration::from_secs(300),
        )
    });
    all_ready("all five Ready at the end", Duration::from_secs(300));
    let h = history();
    assert_eq!(h.len(), 4, "four replacements, no other: {h:#?}");
    assert!(h.iter().all(|e| e["outcome"] == "replaced"), "{h:#?}");
}
