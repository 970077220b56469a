//! Catalogue figures against a real API server (docs/benchmarks.md, "Component catalogue").
//!
//! `bench gen DIR NAMESPACE COMPONENTS`: writes a bundle of COMPONENTS components of 10 objects
//! each (a ServiceAccount, a Role, a RoleBinding, a Service and 6 ConfigMaps) in NAMESPACE, plus
//! the namespace, to `DIR/bundle`, and the same objects as plain manifests to `DIR/flat` (for
//! `kubectl apply --server-side --prune`, the baseline).
//! `bench run DIR KUBECONFIG`: one cold pass, then one pass with nothing changed, printing each
//! one's wall time and writes. The ledger is in memory: the etcd fence (one compare-only
//! transaction per write) is not counted, so a cold pass of the duty costs that much more; a
//! pass with nothing changed makes no write and so no fence.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kubedna_catalogue::fakes::FakeLedger;
use kubedna_catalogue::kube_cluster::KubeCluster;
use kubedna_catalogue::progress::EventSink;
use kubedna_catalogue::run::Runner;
use kubedna_catalogue::Selection;
use sha2::{Digest, Sha256};

fn objects(ns: &str, c: usize) -> Vec<String> {
    let mut out = vec![
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: c{c}, namespace: {ns}}}\n"),
        format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: c{c}, namespace: {ns}}}\nrules:\n- apiGroups: ['']\n  resources: [configmaps]\n  verbs: [get]\n"),
        format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: c{c}, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: c{c}}}\nsubjects:\n- {{kind: ServiceAccount, name: c{c}, namespace: {ns}}}\n"),
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: c{c}, namespace: {ns}}}\nspec:\n  selector: {{app: c{c}}}\n  ports:\n  - {{port: 80, targetPort: 8080, protocol: TCP}}\n"),
    ];
    for i in 0..6 {
        out.push(format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{c}-{i}, namespace: {ns}}}\ndata:\n  key: value-{c}-{i}\n"));
    }
    out
}

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn gen(dir: &Path, ns: &str, n: usize) {
    let ns_doc = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
    let mut cat = String::from(
        "apiVersion: catalogue.kubedna.io/v1\nkind: Catalogue\nversion: bench\ncomponents:\n",
    );
    let mut entry = |name: &str, deps: &str, file: &str, text: &str| {
        write(&dir.join("bundle").join(file), text);
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        cat.push_str(&format!("- name: {name}\n  version: '1'\n  dependsOn: [{deps}]\n  manifests: [{{file: {file}, sha256: {sha}}}]\n"));
    };
    entry("bench-ns", "", "ns.yaml", &ns_doc);
    write(&dir.join("flat/000-ns.yaml"), &ns_doc);
    for c in 0..n {
        let text = objects(ns, c).join("---\n");
        entry(&format!("c{c}"), "bench-ns", &format!("c{c}.yaml"), &text);
        write(&dir.join(format!("flat/c{c:03}.yaml")), &text);
    }
    write(&dir.join("bundle/catalogue.yaml"), &cat);
}

async fn run(dir: &Path, kubeconfig: &Path) {
    let cat = kubedna_catalogue::load(&dir.join("bundle")).unwrap_or_else(|e| panic!("{e}"));
    let objects: usize = cat.components.iter().map(|c| c.objects.len()).sum();
    let cluster = KubeCluster::from_kubeconfig(kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ledger = FakeLedger::default();
    let events: EventSink = Arc::new(|_| {});
    let runner = Runner {
        cluster: &cluster,
        ledger: &ledger,
        events: &events,
        health_timeout: std::time::Duration::from_secs(120),
        term: 1,
    };
    for label in ["cold", "no-op", "no-op"] {
        let t = Instant::now();
        let r = runner
            .pass(&cat, &Selection::default())
            .await
            .unwrap_or_else(|e| panic!("{label}: {}", kubedna_proto::error_chain(&e)));
        println!(
            "CATALOGUE BENCH kubedna {label}: {} components, {objects} objects, {:.2} s, {} writes, {} dry runs, {} deletes",
            cat.components.len(),
            t.elapsed().as_secs_f64(),
            r.writes,
            r.dry_runs,
            r.deletes
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 5 => gen(
            Path::new(&args[2]),
            &args[3],
            args[4].parse().expect("COMPONENTS"),
        ),
        Some("run") if args.len() == 4 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(Path::new(&args[2]), Path::new(&args[3]))),
        _ => {
            eprintln!("usage: bench gen DIR NAMESPACE COMPONENTS | bench run DIR KUBECONFIG");
            std::process::exit(2);
        }
    }
}
