//! The component catalogue against a real kube-apiserver v1.30.3 (issue 12): a lab of one
//! control plane and one worker forms a real cluster; the agent on the control plane, as the
//! elected leader, applies a test catalogue of the project's own manifests (a CRD and its
//! custom resources, ConfigMaps, RBAC, a Deployment running the pause image) with its own
//! kubeconfig, which it issues itself (a ServiceAccount token bound to a ClusterRole limited to
//! the catalogue's API groups; `admin.conf` only issues it). Checked as an operator would:
//! - it installs in order: the CRD is Established before its custom resource exists, the
//!   Deployment becomes available, every object carries our ApplySet label and is managed by
//!   the field manager `kubedna`; `kubedna catalogue status` shows every component healthy;
//! - a hand edit (`kubectl patch`) of a `force` component is reverted;
//! - removing a component prunes exactly its objects: look-alikes without our label (same kind,
//!   same name in another namespace; a custom resource of the same CRD) stay, and the objects
//!   of the other components keep their uid and resourceVersion;
//! - a corrupt catalogue (a manifest whose SHA-256 no longer matches) is refused: recorded in
//!   the status, nothing in the cluster changes;
//! - the agent killed (SIGKILL) while the leader waits for a component's health check, with a
//!   dependent component not yet applied: the restarted agent's new term completes the apply,
//!   and the objects the first term applied are not written again.
//!
//! Needs root and a node image with real Kubernetes (`KUBEDNA_LAB_K8S_IMAGE`, built by
//! `scripts/lab-image`). When that image's agent is older than the one under test,
//! `KUBEDNA_LAB_AGENT_BIN` names a directory with `kubedna-agent` and `kubedna` that replace the
//! control plane's before the catalogue is configured. Lab `p-cat` (198.18.50.0/24).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Lab, UpOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ROOT: &str = "/var/lib/kubedna-lab";
const LAB: &str = "p-cat";
const SUBNET: &str = "198.18.50.0/24";
const CP: &str = "cp-1";
const FORMATION: Duration = Duration::from_secs(600);
/// Where the bundles live in the node; `BUNDLE` is a symlink to the current one.
const BUNDLES: &str = "var/lib/kubedna-catalogue-test";
const BUNDLE: &str = "/etc/kubedna/catalogue";
const NS: &str = "kubedna-demo";
const APPLYSET_PART_OF: &str = "applyset.kubernetes.io/part-of";

fn opts() -> UpOptions {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they create bridges, namespaces, mounts and containers"
    );
    let image = std::env::var_os("KUBEDNA_LAB_K8S_IMAGE")
        .map(PathBuf::from)
        .expect("set KUBEDNA_LAB_K8S_IMAGE to a node image with real Kubernetes (scripts/lab-image builds it)");
    UpOptions {
        root: ROOT.into(),
        name: LAB.into(),
        control_planes: 1,
        workers: 1,
        image,
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: SUBNET.parse().unwrap_or_else(|e| panic!("{e}")),
        timeout: Duration::from_secs(180),
    }
}

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

fn kubectl(lab: &Lab, args: &[&str]) -> Option<Value> {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let out = lab.kubectl(&argv, Some(Duration::from_secs(30))).ok()?;
    if !out.success() {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

fn sh(lab: &Lab, script: &str) -> String {
    let out = lab
        .exec(CP, &["sh", "-c", script], Some(Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(out.success(), "{script}:\n{}{}", out.stdout, out.stderr);
    out.stdout
}

fn diagnose(lab: &Lab) -> String {
    lab.exec(
        CP,
        &[
            "sh",
            "-c",
            "kubedna status; kubedna catalogue status; journalctl -u kubedna-agent -n 40 --no-pager -o cat",
        ],
        Some(Duration::from_secs(20)),
    )
    .map(|o| o.stdout + &o.stderr)
    .unwrap_or_else(|e| format!("(cannot read {CP}: {e})"))
}

fn poll<T>(
    what: &str,
    within: Duration,
    every: Duration,
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
        std::thread::sleep(every);
    }
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

#[path = "catalogue/manifests.rs"]
mod manifests;
use manifests::*;

/// Writes bundle `name` into the node and points `BUNDLE` at it. `tamper`: a file whose
/// content changes after its SHA-256 was pinned.
fn publish(lab: &Lab, name: &str, version: &str, comps: &[Comp], tamper: Option<&str>) {
    let root = lab.paths(CP).root.join(BUNDLES).join(name);
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let mut yaml = format!("apiVersion: catalogue.kubedna.io/v1\nkind: Catalogue\nversion: \"{version}\"\ncomponents:\n");
    for c in comps {
        let deps: Vec<String> = c.deps.iter().map(|d| d.to_string()).collect();
        yaml.push_str(&format!(
            "- name: {}\n  version: \"{version}\"\n  dependsOn: [{}]\n  force: {}\n  health: {}\n  manifests:\n",
            c.name,
            deps.join(", "),
            c.force,
            c.health
        ));
        for (file, content) in &c.files {
            let path = root.join(file);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
            let sha = hex::encode(Sha256::digest(content.as_bytes()));
            let written = if tamper == Some(file.as_str()) {
                content.replace("greeting: hello", "greeting: tampered")
            } else {
                content.clone()
            };
            std::fs::write(&path, written).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            yaml.push_str(&format!("  - file: {file}\n    sha256: {sha}\n"));
        }
    }
    std::fs::write(root.join("catalogue.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    sh(
        lab,
        &format!("ln -sfn /{BUNDLES}/{name} {BUNDLE}.new && mv -T {BUNDLE}.new {BUNDLE}"),
    );
}

// ---------------------------------------------------------------------------------------------
// The agent's credentials and config.

fn configure_agent(lab: &Lab) {
    let root = lab.paths(CP).root;
    if let Some(bin) = std::env::var_os("KUBEDNA_LAB_AGENT_BIN").map(PathBuf::from) {
        for b in ["kubedna-agent", "kubedna"] {
            let to = root.join("usr/bin").join(b);
            let tmp = root.join("usr/bin").join(format!(".{b}.new"));
            std::fs::copy(bin.join(b), &tmp).unwrap_or_else(|e| panic!("{b}: {e}"));
            std::fs::rename(&tmp, &to).unwrap_or_else(|e| panic!("{b}: {e}"));
        }
    }
    // No kubeconfig is given: the leader issues its own from admin.conf (a ServiceAccount, a
    // ClusterRole limited to the catalogue's API groups, a 24 h token).
    sh(
        lab,
        r#"set -e
cat >> /etc/kubedna/agent.yaml <<EOF
catalogue:
  bundle: /etc/kubedna/catalogue
  kubeconfig: /etc/kubedna/catalogue.kubeconfig
  intervalSeconds: 5
  healthTimeoutSeconds: 120
EOF
systemctl restart kubedna-agent
"#,
    );
}

/// `kubedna catalogue status -o json`, once the agent answers it.
fn status(lab: &Lab) -> Option<Value> {
    cli_json(lab, "status")
}

/// `kubedna catalogue WHAT -o json` on the control plane.
fn cli_json(lab: &Lab, what: &str) -> Option<Value> {
    let out = lab
        .exec(
            CP,
            &["kubedna", "catalogue", what, "-o", "json"],
            Some(Duration::from_secs(30)),
        )
        .ok()?;
    if !out.success() {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

fn all_healthy(s: &Value, version: &str, components: &[&str]) -> bool {
    let comps = s["components"].as_array().cloned().unwrap_or_default();
    s["version"] == version
        && s["lastError"].is_null()
        && components.iter().all(|c| {
            comps.iter().any(|x| {
                x["name"] == *c && x["appliedVersion"] == version && x["health"] == "healthy"
            })
        })
        && comps.len() == components.len()
}

/// (kind/namespace/name → (uid, resourceVersion)) of every object labelled as ours.
fn ours(lab: &Lab) -> BTreeMap<String, (String, String)> {
    let selector = format!("-l{APPLYSET_PART_OF}");
    let mut out = BTreeMap::new();
    for kind in [
        "namespaces",
        "customresourcedefinitions",
        "configmaps",
        "serviceaccounts",
        "roles",
        "rolebindings",
        "clusterroles",
        "deployments",
        "widgets.demo.kubedna.io",
    ] {
        let Some(v) = kubectl(lab, &["get", kind, "-A", &selector]) else {
            continue;
        };
        for o in items(&v) {
            let m = &o["metadata"];
            out.insert(
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap_or(kind),
                    m["namespace"].as_str().unwrap_or("-"),
                    m["name"].as_str().unwrap_or_default()
                ),
                (
                    m["uid"].as_str().unwrap_or_default().to_string(),
                    m["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
            );
        }
    }
    out
}

fn exists(lab: &Lab, args: &[&str]) -> bool {
    kubectl(lab, args).is_some()
}

#[test]
fn catalogue_on_real_kubernetes() {
    let opts = opts();
    let _ = lab::down(ROOT.as_ref(), LAB);
    let _down = Down;
    let lab = Lab::up(&opts).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    poll(
        "both nodes Ready",
        FORMATION,
        Duration::from_secs(2),
        || {
            let v = kubectl(&lab, &["get", "nodes"])?;
            let ready = items(&v)
                .iter()
                .filter(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            (ready == 2).then_some(())
        },
        || diagnose(&lab),
    );

    // 1. Install.
    publish(&lab, "v1", "1", &[base(), app(), extra()], None);
    configure_agent(&lab);
    let started = Instant::now();
    let s = poll(
        "catalogue 1 applied, every component healthy",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || status(&lab).filter(|s| all_healthy(s, "1", &["demo-crd", "demo-app", "demo-extra"])),
        || diagnose(&lab),
    );
    println!(
        "CATALOGUE FIGURE install (3 components, 11 objects) within {:.1} s of the agent restart; term {}",
        started.elapsed().as_secs_f64(),
        s["term"]
    );
    let crd = kubectl(&lab, &["get", "crd", "widgets.demo.kubedna.io"]).expect("CRD");
    let established = crd["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Established"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .expect("Established")
        .to_string();
    let cr = kubectl(&lab, &["-n", NS, "get", "widget", "demo-widget"]).expect("CR");
    let created = cr["metadata"]["creationTimestamp"]
        .as_str()
        .expect("created");
    // RFC 3339 in UTC with second precision: strings compare as times.
    assert!(
        established.as_str() <= created,
        "the CR waited for its CRD: Established {established}, CR created {created}"
    );
    let dep = kubectl(
        &lab,
        &[
            "-n",
            NS,
            "get",
            "deployment",
            "demo",
            "--show-managed-fields",
        ],
    )
    .expect("deployment");
    assert_eq!(dep["status"]["availableReplicas"], 1, "{}", dep["status"]);
    let managers: Vec<&str> = dep["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(managers.contains(&"kubedna"), "{managers:?}");
    // The agent's own credentials: a 0600 kubeconfig with a ServiceAccount token, and a role
    // over the catalogue's groups only.
    let mode = sh(&lab, "stat -c %a /etc/kubedna/catalogue.kubeconfig");
    assert_eq!(mode.trim(), "600");
    let kc = sh(&lab, "cat /etc/kubedna/catalogue.kubeconfig");
    assert!(
        kc.contains("\"token\"") && !kc.contains("client-key-data"),
        "a token, not a certificate"
    );
    let role = kubectl(&lab, &["get", "clusterrole", "kubedna-catalogue"]).expect("role");
    assert_eq!(
        role["rules"][0]["apiGroups"],
        serde_json::json!([
            "",
            "apiextensions.k8s.io",
            "apps",
            "demo.kubedna.io",
            "rbac.authorization.k8s.io"
        ]),
        "{role}"
    );
    // `kubedna catalogue diff`: the catalogue just applied has nothing left to change.
    let diff = cli_json(&lab, "diff").expect("catalogue diff");
    assert!(diff["unavailable"].is_null(), "{diff}");
    assert_eq!(diff["changes"], serde_json::json!([]), "{diff}");
    let before = ours(&lab);
    assert_eq!(before.len(), 11, "{before:#?}");
    let parent = kubectl(
        &lab,
        &["-n", "kube-system", "get", "configmap", "kubedna-catalogue"],
    )
    .expect("ApplySet parent");
    let id = parent["metadata"]["labels"]["applyset.kubernetes.io/id"]
        .as_str()
        .expect("id");
    assert_eq!(
        dep["metadata"]["labels"][APPLYSET_PART_OF], id,
        "members carry the parent's id"
    );

    // 2. A hand edit is reverted (demo-app has force).
    sh(
        &lab,
        r#"kubectl --kubeconfig /etc/kubernetes/admin.conf -n kubedna-demo patch configmap demo-config --type merge -p '{"data":{"greeting":"by hand"}}' >/dev/null"#,
    );
    let edited = Instant::now();
    poll(
        "the hand edit reverted",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let cm = kubectl(&lab, &["-n", NS, "get", "configmap", "demo-config"])?;
            (cm["data"]["greeting"] == "hello").then_some(())
        },
        || diagnose(&lab),
    );
    println!(
        "CATALOGUE FIGURE hand edit reverted within {:.1} s (interval 5 s)",
        edited.elapsed().as_secs_f64()
    );

    // 3. Remove demo-extra: exactly its objects go; look-alikes without our label stay.
    sh(
        &lab,
        r#"set -e
K="kubectl --kubeconfig /etc/kubernetes/admin.conf"
$K -n default create configmap extra-a --from-literal=greeting=mine >/dev/null
$K -n default label configmap extra-a catalogue.kubedna.io/component=demo-extra >/dev/null
cat <<EOF | $K apply -f - >/dev/null
apiVersion: demo.kubedna.io/v1
kind: Widget
metadata: {name: extra-widget-mine, namespace: kubedna-demo}
spec: {size: 9}
EOF
"#,
    );
    let kept = ours(&lab);
    publish(&lab, "v2", "2", &[base(), app()], None);
    poll(
        "catalogue 2 applied, demo-extra pruned",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || status(&lab).filter(|s| all_healthy(s, "2", &["demo-crd", "demo-app"])),
        || diagnose(&lab),
    );
    assert!(!exists(&lab, &["-n", NS, "get", "configmap", "extra-a"]));
    assert!(!exists(&lab, &["get", "clusterrole", "kubedna-demo-extra"]));
    assert!(!exists(&lab, &["-n", NS, "get", "widget", "extra-widget"]));
    assert!(
        exists(&lab, &["-n", "default", "get", "configmap", "extra-a"]),
        "look-alike kept"
    );
    assert!(
        exists(&lab, &["-n", NS, "get", "widget", "extra-widget-mine"]),
        "foreign CR kept"
    );
    let after = ours(&lab);
    let gone: Vec<&String> = kept.keys().filter(|k| !after.contains_key(*k)).collect();
    assert_eq!(
        gone.len(),
        3,
        "exactly demo-extra's three objects: {gone:?}"
    );
    for (k, v) in &after {
        let (uid, _) = &kept[k];
        assert_eq!(uid, &v.0, "{k} kept its uid");
    }

    // 4. A corrupt catalogue changes nothing.
    let snapshot = ours(&lab);
    publish(
        &lab,
        "v3",
        "3",
        &[base(), app(), extra()],
        Some("app/config.yaml"),
    );
    let s = poll(
        "the corrupt catalogue refused",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            status(&lab).filter(|s| {
                s["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("SHA-256 mismatch"))
            })
        },
        || diagnose(&lab),
    );
    println!("refused: {}", s["lastError"]);
    assert!(s["lastError"]
        .as_str()
        .is_some_and(|e| e.contains("demo-app") && e.contains("app/config.yaml")));
    assert_eq!(ours(&lab), snapshot, "nothing changed");
    let diff = cli_json(&lab, "diff").expect("catalogue diff");
    assert!(
        diff["unavailable"]
            .as_str()
            .is_some_and(|u| u.contains("SHA-256 mismatch")),
        "a diff of a corrupt bundle says why there is none: {diff}"
    );
    assert!(
        !exists(&lab, &["-n", NS, "get", "configmap", "extra-a"]),
        "demo-extra not installed"
    );

    // 5. The agent killed while the leader waits for slow-b's health; slow-c not yet applied.
    let mut chain = vec![base(), app()];
    chain.extend(slow());
    publish(&lab, "v4", "4", &chain, None);
    poll(
        "slow-b's Deployment written",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || exists(&lab, &["-n", NS, "get", "deployment", "slow"]).then_some(()),
        || diagnose(&lab),
    );
    assert!(
        !exists(&lab, &["-n", NS, "get", "configmap", "slow-c-0"]),
        "slow-c must wait for slow-b"
    );
    let term_before = status(&lab).map(|s| s["term"].clone());
    sh(&lab, "systemctl kill -s KILL kubedna-agent");
    let killed = Instant::now();
    let first_term = ours(&lab);
    let s = poll(
        "catalogue 4 completed after the kill",
        Duration::from_secs(240),
        Duration::from_secs(1),
        || {
            status(&lab).filter(|s| {
                all_healthy(
                    s,
                    "4",
                    &["demo-crd", "demo-app", "slow-a", "slow-b", "slow-c"],
                )
            })
        },
        || diagnose(&lab),
    );
    println!(
        "CATALOGUE FIGURE resumed after SIGKILL: complete {:.1} s after the kill; term {term_before:?} -> {}",
        killed.elapsed().as_secs_f64(),
        s["term"]
    );
    let done = ours(&lab);
    for i in 0..10 {
        assert!(
            done.contains_key(&format!("ConfigMap/{NS}/slow-c-{i}")),
            "slow-c-{i}"
        );
    }
    for (k, v) in &first_term {
        if k.starts_with("Deployment/") {
            continue; // its status moves; its spec is not ours to bump
        }
        assert_eq!(done.get(k), Some(v), "{k} written again after the kill");
    }
    // Drift correction happened once, for the hand edit: the passes every 5 s in between found
    // every other object as applied (the no-op pass writes nothing).
    let drift = sh(
        &lab,
        "journalctl -u kubedna-agent --no-pager -o cat | grep -c 'catalogue.drift-correct' || true",
    );
    assert_eq!(drift.trim(), "1", "drift corrections logged");
    let writes = sh(
        &lab,
        "journalctl -u kubedna-agent --no-pager -o cat | grep -c 'catalogue applied' || true",
    );
    println!("passes that wrote: {}", writes.trim());

    if let Some(bench) = std::env::var_os("KUBEDNA_LAB_CAT_BENCH") {
        figures(&lab, Path::new(&bench));
    }
}

/// docs/benchmarks.md, "Component catalogue": 50 components of 10 objects, applied by the
/// catalogue runner (example `bench`, with this node's catalogue kubeconfig) cold and with
/// nothing to do, and the same objects by `kubectl apply --server-side --prune` (kubectl
/// v1.30.3, ApplySet) in the same run.
fn figures(lab: &Lab, bench: &Path) {
    // The runner under test shares the agent's ApplySet: empty the catalogue first (which
    // prunes what is left) and stop the agent, so the two never prune each other's objects.
    publish(lab, "v5", "5", &[], None);
    poll(
        "the empty catalogue applied",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || status(lab).filter(|s| all_healthy(s, "5", &[])),
        || diagnose(lab),
    );
    assert!(ours(lab).is_empty(), "{:#?}", ours(lab));
    // The CRD still has an object that is not ours, and a namespace is never deleted: both are
    // released (kept, without our label).
    let crd = kubectl(lab, &["get", "crd", "widgets.demo.kubedna.io"]).expect("CRD kept");
    assert!(
        crd["metadata"]["labels"][APPLYSET_PART_OF].is_null(),
        "{}",
        crd["metadata"]
    );
    assert!(exists(lab, &["get", "namespace", NS]), "namespace kept");
    sh(lab, "systemctl stop kubedna-agent");
    let to = lab.paths(CP).root.join("root/bench-bin");
    std::fs::copy(bench, &to).unwrap_or_else(|e| panic!("{}: {e}", bench.display()));
    let script = r#"set -e
cd /root
./bench-bin gen /root/bench-d bench-d 50
./bench-bin gen /root/bench-k bench-k 50
./bench-bin run /root/bench-d /etc/kubedna/catalogue.kubeconfig
K="kubectl --kubeconfig /etc/kubernetes/admin.conf"
$K create namespace bench-k >/dev/null
rm /root/bench-k/flat/000-ns.yaml
for run in cold no-op no-op; do
  t0=$(date +%s%N)
  KUBECTL_APPLYSET=true $K apply --server-side --prune --applyset=kubectl-bench -n bench-k -f /root/bench-k/flat/ >/dev/null
  t1=$(date +%s%N)
  echo "CATALOGUE BENCH kubectl $run: 500 objects, $(( (t1 - t0) / 1000000 )) ms"
done
"#;
    let out = lab
        .exec(CP, &["sh", "-c", script], Some(Duration::from_secs(900)))
        .unwrap_or_else(|e| panic!("bench: {e}"));
    assert!(out.success(), "bench:\n{}{}", out.stdout, out.stderr);
    let out = out.stdout;
    print!("{out}");
    let noop = out
        .lines()
        .find(|l| l.contains("kubedna no-op"))
        .expect("a no-op line");
    assert!(noop.contains(" 0 writes"), "{noop}");
}
