//! Real Kubernetes v1.30.3 on lab nodes (issue 10): 3 control planes and 2 workers boot the node
//! image with the agent and the REAL kubelet, kubeadm and control-plane images (built from the
//! `k8s.io/kubernetes` Go module by `tests/kubernetes/build`, baked in by `scripts/lab-image`;
//! `KUBEDNA_LAB_K8S_IMAGE`). One lab, brought up once, checked as an operator would:
//! - `kubectl get nodes` lists all five nodes Ready at v1.30.3, the control planes with their role;
//! - kube-apiserver, kube-controller-manager and kube-scheduler run as static pods on every
//!   control plane, and the API answers `/readyz` through every control plane's own address;
//! - exactly one `kubeadm init` ran across the cluster (counted in every node's journal);
//! - the pod network works across nodes: a pod on each worker gets an address from that node's
//!   pod CIDR, and each is reachable from another node;
//! - figures (`K8S FIGURE` lines): `up` to all Ready, and per control plane the resident memory
//!   of kube-apiserver, etcd and the agent.
//!
//! Needs root and the image; fails rather than skips without them. Every wait polls with a
//! deadline. Lab `p-k8s` (198.18.40.0/24).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Lab, UpOptions};
use serde_json::Value;

const ROOT: &str = "/var/lib/kubedna-lab";
const LAB: &str = "p-k8s";
const SUBNET: &str = "198.18.40.0/24";
const CONTROL_PLANES: [&str; 3] = ["cp-1", "cp-2", "cp-3"];
const NODES: [&str; 5] = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"];
/// From `up` returning to every node Ready: host preparation, image import, etcd, a real
/// `kubeadm init`, two control-plane joins one at a time and two worker joins.
const FORMATION: Duration = Duration::from_secs(900);

fn opts() -> UpOptions {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they create bridges, namespaces, mounts and containers"
    );
    let image = std::env::var_os("KUBEDNA_LAB_K8S_IMAGE")
        .map(PathBuf::from)
        .expect("set KUBEDNA_LAB_K8S_IMAGE to a node image with real Kubernetes (scripts/lab-image builds it; scripts/test does)");
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
/// set and the test failed).
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("KUBEDNA_LAB_KEEP_FAILED").is_some() {
            eprintln!("lab {LAB} kept for inspection (KUBEDNA_LAB_KEEP_FAILED)");
            return;
        }
        let res = lab::down(ROOT.as_ref(), LAB);
        if !std::thread::panicking() {
            res.unwrap_or_else(|e| panic!("down {LAB}: {e}"));
            let left = lab::leftovers(ROOT.as_ref(), LAB);
            assert!(left.is_empty(), "lab {LAB} left {left:?}");
        }
    }
}

/// `kubectl ARGS -o json` in the lab, parsed; None while no API answers.
fn kubectl_json(lab: &Lab, args: &[&str]) -> Option<Value> {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let out = lab.kubectl(&argv, Some(Duration::from_secs(30))).ok()?;
    if !out.success() {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

/// What an operator reads first when a node does not get there.
fn diagnose(lab: &Lab, node: &str) -> String {
    lab.exec(
        node,
        &[
            "sh",
            "-c",
            "kubedna status; systemctl --failed --no-legend; \
             journalctl -u kubedna-agent -n 25 --no-pager -o cat; \
             journalctl -u kubelet -n 8 --no-pager -o cat",
        ],
        Some(Duration::from_secs(20)),
    )
    .map(|o| o.stdout + &o.stderr)
    .unwrap_or_else(|e| format!("(cannot read {node}: {e})"))
}

/// Names of Ready nodes, from `kubectl get nodes`.
fn ready_nodes(nodes: &Value) -> Vec<String> {
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

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn poll<T>(
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
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Resident memory (MiB) of the first process named `comm` in `node`.
fn rss_mib(lab: &Lab, node: &str, comm: &str) -> Option<f64> {
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

#[test]
fn five_real_kubernetes_nodes_form_ready_with_static_pods_and_a_pod_network() {
    let opts = opts();
    let _ = lab::down(ROOT.as_ref(), LAB);
    // Declared before the lab, so it is dropped after it: the lab holds the lab's lock.
    let _down = Down;
    let started = Instant::now();
    let lab = Lab::up(&opts).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    let booted = started.elapsed();

    // 1. Every node Ready at v1.30.3.
    let want: Vec<String> = NODES.iter().map(|s| s.to_string()).collect();
    let nodes = poll(
        "all five nodes Ready",
        FORMATION,
        || {
            let v = kubectl_json(&lab, &["get", "nodes"])?;
            (ready_nodes(&v) == want).then_some(v)
        },
        || {
            NODES
                .iter()
                .map(|n| format!("== {n}\n{}", diagnose(&lab, n)))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
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
    for cp in CONTROL_PLANES {
        let addr = lab.node(cp).expect("node").address;
        let server = format!("--server=https://{addr}:6443");
        let out = lab
            .exec(
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
            .expect("exec");
        assert_eq!(out.stdout.trim(), "ok", "{cp}'s API /readyz: {out:?}");
    }

    // 3. One kubeadm init in the whole cluster.
    let mut inits = Vec::new();
    for n in NODES {
        let out = lab
            .exec(
                n,
                &["sh", "-c", "journalctl --no-pager -o cat | grep -c 'Starting kubedna-kubeadm-init-' || true"],
                Some(Duration::from_secs(20)),
            )
            .expect("journal");
        let count: u32 = out.stdout.trim().parse().unwrap_or(0);
        inits.extend(std::iter::repeat_n(n, count as usize));
    }
    assert_eq!(
        inits.len(),
        1,
        "kubeadm init runs across the cluster: {inits:?}"
    );

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
}
