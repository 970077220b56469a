//! Real Kubernetes v1.30.3 on lab nodes (issues 6 and 10): 3 control planes and 2 workers boot
//! the node image with the agent and the REAL kubelet, kubeadm and control-plane images (built
//! from the `k8s.io/kubernetes` Go module by `tests/kubernetes/build`, baked in by
//! `scripts/lab-image`; `KUBEDNA_LAB_K8S_IMAGE`), on real systemd, D-Bus, containerd and etcd.
//! One lab, brought up once, hurt while it forms, checked as an operator would, then hurt again:
//! - while it forms (issue 16, `common::faults`): the init node's agent is frozen through the
//!   end of the real `kubeadm init` and killed once kubeadm exited 0; the first control-plane
//!   join is held while every etcd member crashes in turn; the second control-plane join's agent
//!   is killed while its unit runs. Afterwards one init, 4 joins and no reset in the audit
//!   records, and no two control-plane joins (nor a reset and a join) overlapping in the
//!   journals;
//! - `kubectl get nodes` lists all five nodes Ready at v1.30.3, the control planes with their
//!   role; kube-apiserver, kube-controller-manager and kube-scheduler run as static pods on every
//!   control plane, and the API answers `/readyz` through every control plane's own address;
//! - the pod network works across nodes: a pod on each worker gets an address from that node's
//!   pod CIDR, and each is reachable from another node;
//! - every node reaches phase `member`; etcd is healthy with 3 voting members; exactly one
//!   `kubeadm init` across all nodes and 4 joins (2 control planes, 2 workers), counted in the
//!   agents' own audit records; every node shows the same leader;
//! - the leader is unseated (its agent frozen) while its join-material duty is stopped at a gate
//!   in `kubeadm init phase upload-certs`: a new leader renews the material, and the thawed
//!   agent stops its own kubeadm, completing nothing of its old term;
//! - the leader node is power-cut: the others show a new leader with a higher term within the
//!   lease TTL (plus etcd's own leader change and a margin); the old leader boots again, follows
//!   without running kubeadm again, and is Ready again;
//! - the node that ran `kubeadm init` is reinstalled with a wiped disk: it rejoins etcd as a new
//!   member and joins with kubeadm as a control plane, never init; all five are Ready again.
//! - a kubelet that cannot start (a bad flag) shows in `kubedna status` with its journal's reason.
//!
//! Figures are printed as `K8S FIGURE` lines: `up` to all Ready, failover, rejoin, and per
//! control plane the resident memory of kube-apiserver, etcd and the agent. Needs root and the
//! image; fails rather than skips without them (`scripts/test` skips it, loudly, only where no Go
//! can build Kubernetes). Every wait polls with a deadline. Lab `p-k8s` (198.18.40.0/24).

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;
use kubedna_lab::lab::{self, Lab, UpOptions};

const LAB: &str = "p-k8s";
const SUBNET: &str = "198.18.40.0/24";
/// From `up` returning to every node Ready: host preparation, image import, etcd, a real
/// `kubeadm init`, two control-plane joins one at a time and two worker joins.
const FORMATION: Duration = Duration::from_secs(900);
/// The agent's leader lease (`Timings::default()` in agent/controlplane).
const LEASE_TTL: Duration = Duration::from_secs(15);
const APISERVER_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";

fn opts() -> UpOptions {
    lab_opts(LAB, SUBNET, (3, 2), k8s_image())
}

#[test]
fn five_real_kubernetes_nodes_form_ready_fail_over_and_survive_a_reinstall() {
    let opts = opts();
    let _ = lab::down(ROOT.as_ref(), LAB);
    // Declared before the lab, so it is dropped after it: the lab holds the lab's lock.
    let _down = Down(LAB);
    let started = Instant::now();
    let mut lab = Lab::up(&opts).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    let booted = started.elapsed();
    assert!(
        lab.status().iter().all(|s| s.agent == "ready"),
        "the image must carry the agent: {:?}",
        lab.status()
    );

    // 0. Faults while the cluster forms (issue 16), each on the real kubeadm run it targets; the
    // evidence is checked in 6 (one init, 4 joins, no reset, joins one at a time).
    // a. The init node's agent is frozen in the last seconds of `kubeadm init` and killed once
    //    kubeadm exited 0: it never saw the exit and must judge by evidence on restart (one
    //    formation has one init, so this replaces the kill in the middle of init, which the
    //    in-process engine test keeps covering).
    let (init_node, unit, frozen) = kill_agent_right_after_init(&lab, FORMATION);
    println!(
        "K8S FIGURE fault: {init_node}'s agent frozen {:.1} s until {unit} exited 0, then killed",
        frozen.as_secs_f64()
    );
    // b. The first control-plane join (the other control plane waits for the join lock): kubeadm
    //    is held while every etcd member crashes in turn, the one carrying the joiner's lock
    //    keep-alive included.
    let joiners: Vec<&'static str> = CONTROL_PLANES
        .iter()
        .copied()
        .filter(|n| *n != init_node)
        .collect();
    let (first, unit, held) = crash_etcd_members_during_join(&lab, &joiners, FORMATION);
    println!(
        "K8S FIGURE fault: {first}'s {unit} held {:.1} s while each etcd member was crashed",
        held.as_secs_f64()
    );
    // c. The second control-plane join: its agent is killed while the join unit runs.
    let second: Vec<&'static str> = joiners.iter().copied().filter(|n| *n != first).collect();
    let (joiner, unit) =
        kill_agent_while_running(&lab, &second, "kubedna-kubeadm-join-", FORMATION);
    println!("K8S FIGURE fault: killed {joiner}'s agent while {unit} ran");

    // 1. Every node Ready at v1.30.3.
    let nodes = await_ready(&lab, &NODES, "all five nodes Ready", FORMATION);
    let ready = started.elapsed();
    println!(
        "K8S FIGURE up {:.1} s, up to all 5 Ready {:.1} s",
        booted.as_secs_f64(),
        ready.as_secs_f64()
    );
    for n in items(&nodes) {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            n["status"]["nodeInfo"]["kubeletVersion"], "v1.30.3",
            "{name}'s kubelet"
        );
        assert!(
            n["status"]["nodeInfo"]["containerRuntimeVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("containerd://")),
            "{name}: {}",
            n["status"]["nodeInfo"]
        );
        let is_cp = n["metadata"]["labels"]
            .get("node-role.kubernetes.io/control-plane")
            .is_some();
        assert_eq!(
            is_cp,
            name.starts_with("cp-"),
            "{name}'s control-plane role"
        );
        assert!(
            n["spec"]["podCIDR"]
                .as_str()
                .is_some_and(|c| c.starts_with("10.244.")),
            "{name} has a pod CIDR: {}",
            n["spec"]
        );
    }

    // 2. Static control-plane pods on every control plane, and the API through each of them.
    let pods = poll(
        "static control-plane pods Running",
        Duration::from_secs(180),
        || {
            let v = kubectl_json(&lab, &["-n", "kube-system", "get", "pods"])?;
            let running: Vec<String> = items(&v)
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            CONTROL_PLANES
                .iter()
                .flat_map(|cp| {
                    [
                        "kube-apiserver",
                        "kube-controller-manager",
                        "kube-scheduler",
                    ]
                    .map(|c| format!("{c}-{cp}"))
                })
                .all(|want| running.contains(&want))
                .then_some(running)
        },
        || {
            format!(
                "{:#?}",
                kubectl_json(&lab, &["-n", "kube-system", "get", "pods"])
            )
        },
    );
    println!("kube-system pods Running: {pods:?}");
    // Running is not ready: each API server finishes its post-start hooks first.
    for cp in CONTROL_PLANES {
        let addr = lab.node(cp).expect("node").address;
        let server = format!("--server=https://{addr}:6443");
        let readyz = || {
            lab.exec(
                cp,
                &[
                    "kubectl",
                    "--kubeconfig",
                    "/etc/kubernetes/admin.conf",
                    &server,
                    "get",
                    "--raw",
                    "/readyz",
                ],
                Some(Duration::from_secs(30)),
            )
        };
        poll(
            &format!("{cp}'s API /readyz through its own address"),
            Duration::from_secs(180),
            || readyz().ok().filter(|o| o.stdout.trim() == "ok"),
            || format!("{:?}", readyz()),
        );
    }

    // 4. The pod network across nodes: a pause pod pinned to each worker, reached from another node.
    for w in ["worker-1", "worker-2"] {
        let overrides = format!(r#"{{"spec":{{"nodeName":"{w}"}}}}"#);
        let pod = format!("probe-{w}");
        let out = lab
            .kubectl(
                &[
                    "run",
                    &pod,
                    "--image=registry.k8s.io/pause:3.9",
                    "--image-pull-policy=Never",
                    "--restart=Never",
                    &format!("--overrides={overrides}"),
                ],
                Some(Duration::from_secs(30)),
            )
            .expect("kubectl run");
        assert!(out.success(), "kubectl run {pod}: {out:?}");
    }
    let pod_ips: Vec<(String, Ipv4Addr)> = poll(
        "both probe pods Running with an address",
        Duration::from_secs(180),
        || {
            let v = kubectl_json(&lab, &["get", "pods"])?;
            let got: Vec<(String, Ipv4Addr)> = items(&v)
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| {
                    let node = p["spec"]["nodeName"].as_str()?.to_string();
                    let ip = p["status"]["podIP"].as_str()?.parse().ok()?;
                    Some((node, ip))
                })
                .collect();
            (got.len() == 2).then_some(got)
        },
        || format!("{:#?}", kubectl_json(&lab, &["get", "pods"])),
    );
    let cidr_of = |node: &str| -> String {
        items(&nodes)
            .iter()
            .find(|n| n["metadata"]["name"] == node)
            .and_then(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    for (node, ip) in &pod_ips {
        let prefix = cidr_of(node);
        let prefix = prefix.rsplit_once('.').map(|(p, _)| p).unwrap_or_default();
        assert!(
            ip.to_string().starts_with(&format!("{prefix}.")),
            "the pod on {node} has {ip}, outside its node's pod CIDR {}",
            cidr_of(node)
        );
        for from in [
            "cp-1",
            if node == "worker-1" {
                "worker-2"
            } else {
                "worker-1"
            },
        ] {
            let answered = lab.ping(from, *ip, 3, 0.2).expect("ping");
            assert!(
                answered >= 2,
                "{from} reaches the pod on {node} ({ip}): {answered} of 3 answered\n{}",
                diagnose(&lab, from)
            );
        }
    }

    // 5. Memory per control plane.
    for cp in CONTROL_PLANES {
        let f = |c| rss_mib(&lab, cp, c).map_or("?".to_string(), |m| format!("{m:.0}"));
        println!(
            "K8S FIGURE {cp} RSS MiB: kube-apiserver {} etcd {} kubedna-agent {}",
            f("kube-apiserver"),
            f("etcd"),
            f("kubedna-agent")
        );
    }

    // 6. Formation as the agents see it: all members, 3 voting etcd members, one init.
    await_views(
        &lab,
        &NODES,
        "every node joined (phase member)",
        Duration::from_secs(60),
        |_, v| v.phase == "member",
    );
    await_etcd_healthy(&lab, "after formation", Duration::from_secs(60));
    await_views(
        &lab,
        &CONTROL_PLANES,
        "status lists 3 voting etcd members",
        Duration::from_secs(30),
        |_, v| v.voters() == CONTROL_PLANES && v.members.len() == 3 && v.init_recorded,
    );
    assert_eq!(
        one_init_and_four_joins(&lab),
        init_node,
        "the init ran where the fault found it"
    );
    for n in NODES {
        assert_eq!(
            has_file(&lab, n, APISERVER_MANIFEST),
            CONTROL_PLANES.contains(&n),
            "{n}: {APISERVER_MANIFEST} must exist exactly on control planes"
        );
    }
    let spans = assert_joins_serialized(&lab);
    for s in spans
        .iter()
        .filter(|s| matches!(s.op.as_str(), "init" | "join" | "reset"))
    {
        println!(
            "K8S FIGURE kubeadm {} on {}: {:.1} s",
            s.op,
            s.node,
            (s.to - s.from) as f64 / 1e6
        );
    }
    let mut cp_joins: Vec<&Span> = spans
        .iter()
        .filter(|s| s.op == "join" && CONTROL_PLANES.contains(&s.node))
        .collect();
    cp_joins.sort_by_key(|s| s.from);
    for w in cp_joins.windows(2) {
        let gap = Duration::from_micros(w[1].from - w[0].to);
        println!(
            "K8S FIGURE {}'s join began {:.1} s after {}'s ended",
            w[1].node,
            gap.as_secs_f64(),
            w[0].node
        );
        // A lock given back at once is taken at the waiter's next poll; one left to lapse (its
        // revoke lost to a restarted etcd member) keeps the waiter out until the lease expires,
        // at least 2/3 of the TTL after the holder's last renewal.
        assert!(
            gap < LEASE_TTL * 2 / 3,
            "{}'s join began {gap:?} after {}'s ended: the join lock was not given back \
             (it lapsed with its lease); read the first joiner's agent journal",
            w[1].node,
            w[0].node
        );
    }
    let (leader, term) = common_leader(&lab, &NODES);
    assert!(CONTROL_PLANES.contains(&leader.as_str()), "leader {leader}");
    println!("K8S FIGURE init on {init_node}; leader {leader} (term {term})");

    // 6b. The leader is unseated while its join-material duty is blocked in `kubeadm init phase
    // upload-certs`; the new leader renews the material, and the old term completes nothing
    // after. The reinstall in 8 joins a control plane with the material stored here.
    let seat = CONTROL_PLANES
        .into_iter()
        .find(|c| *c == leader)
        .expect("the leader is a control plane");
    let u = unseat_leader_in_upload_certs(&lab, seat, term);
    println!(
        "K8S FIGURE {leader} unseated in upload-certs: {} (term {}) after {:.1} s, material \
         renewed after {:.1} s, the old call stopped {:.1} s after the thaw",
        u.new_leader,
        u.new_term,
        u.takeover.as_secs_f64(),
        u.renewed.as_secs_f64(),
        u.stopped.as_secs_f64()
    );
    await_views(
        &lab,
        &NODES,
        "every node on the new leader after the unseating",
        Duration::from_secs(60),
        |_, v| v.leader == Some((u.new_leader.clone(), u.new_term)),
    );
    let (leader, term) = (u.new_leader, u.new_term);

    // 7. The leader is power-cut: no lease revocation, no goodbye. The lease expires after its
    // TTL (restarted once if etcd's own raft leader was on the dead node), then another
    // control plane wins.
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
    println!(
        "K8S FIGURE leader {leader} killed; {new_leader} (term {new_term}) shown by all 4 others \
         after {:.1} s (lease TTL {} s; {:.2}x)",
        failover.as_secs_f64(),
        LEASE_TTL.as_secs(),
        failover.as_secs_f64() / LEASE_TTL.as_secs_f64()
    );

    // The old leader boots again: it follows the new leader, runs kubeadm no more, and its
    // kubelet brings it back Ready.
    lab.start(std::slice::from_ref(&leader), Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("start {leader}: {e}"));
    let back = await_views(
        &lab,
        &NODES,
        "the old leader back as a member, everyone on the new leader",
        Duration::from_secs(180),
        |_, v| v.phase == "member" && v.leader == Some((new_leader.clone(), new_term)),
    );
    println!(
        "K8S FIGURE rebooted {leader} member again, following {new_leader}, {:.1} s after its \
         boot was ready",
        back.as_secs_f64()
    );
    assert_eq!(
        calls(&lab, &leader),
        before,
        "{leader} ran kubeadm again after a reboot"
    );
    await_etcd_healthy(
        &lab,
        "after the old leader's reboot",
        Duration::from_secs(60),
    );
    await_ready(
        &lab,
        &NODES,
        "all five Ready after the reboot",
        Duration::from_secs(240),
    );

    // 8. Reinstall with a wiped disk: the node that ran `kubeadm init` boots the image again.
    // It must rejoin etcd as a new member (its old one removed) and join with kubeadm as a
    // control plane, never init.
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
        Duration::from_secs(420),
        |_, v| {
            v.phase == "member"
                && v.leader.as_ref().is_some_and(|(n, _)| n != victim)
                && (v.members.is_empty()
                    || (v.voters() == CONTROL_PLANES
                        && v.members.len() == 3
                        && v.member_id(victim).is_some_and(|id| id != old_id)))
        },
    );
    println!(
        "K8S FIGURE {victim} reinstalled (wiped disk): member again {:.1} s after its boot, \
         {:.1} s after the wipe",
        rejoin.as_secs_f64(),
        wiped_at.elapsed().as_secs_f64()
    );
    await_etcd_healthy(&lab, "after the reinstall", Duration::from_secs(60));
    let fresh = calls(&lab, victim);
    assert_eq!(
        (fresh.init_attempts, fresh.joins),
        (0, 1),
        "the reinstalled {victim} must join once and never init: {fresh:?}\n{}",
        kubeadm_evidence(&lab)
    );
    let post = all_calls(&lab);
    for (n, c) in post.iter().filter(|(n, _)| *n != victim) {
        let was = pre_wipe.iter().find(|(p, _)| p == n).map(|(_, c)| *c);
        assert_eq!(
            Some(*c),
            was,
            "{n} ran kubeadm during the reinstall: before {pre_wipe:?}, after {post:?}"
        );
    }
    assert!(
        has_file(&lab, victim, APISERVER_MANIFEST),
        "{victim} rejoined as a control plane"
    );
    await_ready(
        &lab,
        &NODES,
        "all five Ready after the reinstall",
        Duration::from_secs(240),
    );
    common_leader(&lab, &NODES);

    // 9. A kubelet that cannot start: `kubedna status` says so, and why (bad input, issue 10).
    let sh = |node: &str, script: &str| {
        lab.exec(node, &["sh", "-c", script], Some(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{node}: {script}: {e}"))
    };
    sh(
        "worker-2",
        "cp /etc/default/kubelet /etc/default/kubelet.good && \
         echo 'KUBELET_EXTRA_ARGS=--no-such-flag' > /etc/default/kubelet && \
         systemctl restart kubelet; true",
    );
    let shown = poll(
        "worker-2's status shows its kubelet failing with the reason",
        Duration::from_secs(60),
        || {
            let out = lab
                .exec(
                    "worker-2",
                    &["kubedna", "status"],
                    Some(Duration::from_secs(15)),
                )
                .ok()?;
            (out.stdout.contains("NOT RUNNING") && out.stdout.contains("no-such-flag"))
                .then_some(out.stdout)
        },
        || diagnose(&lab, "worker-2"),
    );
    println!("kubedna status with a broken kubelet:\n{shown}");
    sh(
        "worker-2",
        "mv /etc/default/kubelet.good /etc/default/kubelet && systemctl restart kubelet",
    );
    await_ready(
        &lab,
        &NODES,
        "worker-2 Ready again",
        Duration::from_secs(180),
    );
    println!(
        "K8S FIGURE the whole scenario took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Exactly one `kubeadm init` attempt in the whole cluster, on a control plane; every other node
/// joined once, the control planes as control planes. Returns the init node.
fn one_init_and_four_joins(lab: &Lab) -> &'static str {
    let c = all_calls(lab);
    let attempts: usize = c.iter().map(|(_, c)| c.init_attempts).sum();
    let joins: usize = c.iter().map(|(_, c)| c.joins).sum();
    if attempts != 1 || joins != 4 {
        panic!(
            "want exactly 1 kubeadm init and 4 joins, got {c:?}\n{}",
            kubeadm_evidence(lab)
        );
    }
    let (init_node, init) = c
        .iter()
        .find(|(_, c)| c.init_attempts == 1)
        .copied()
        .unwrap_or_else(|| panic!("{c:?}"));
    assert!(CONTROL_PLANES.contains(&init_node), "{c:?}");
    assert_eq!(init.inits, 1, "the init on {init_node} succeeded: {c:?}");
    for (n, calls) in &c {
        assert_eq!(calls.joins, usize::from(*n != init_node), "{n}: {c:?}");
        assert_eq!(calls.resets, 0, "{n} ran kubeadm reset: {c:?}");
    }
    init_node
}
