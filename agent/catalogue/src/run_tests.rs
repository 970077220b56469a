use std::sync::{Arc, Mutex};

use super::*;
use crate::bundle::parse_manifest;
use crate::fakes::{FakeCluster, FakeLedger};
use crate::object::PART_OF;
use crate::progress::Change;

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.demo.kubedna.io}\nspec: {group: demo.kubedna.io, scope: Namespaced, names: {kind: Widget, plural: widgets}, versions: [{name: v1, served: true, storage: true}]}\n";
const CR: &str = "apiVersion: demo.kubedna.io/v1\nkind: Widget\nmetadata: {name: w, namespace: demo}\nspec: {size: 1}\n";
const CM: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: demo}\ndata: {a: '1'}\n";
const DEP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: demo}\nspec: {replicas: 1}\n";
const SA: &str = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: demo}\n";

struct Spec<'a> {
    name: &'a str,
    deps: &'a [&'a str],
    docs: &'a [&'a str],
}

fn catalogue(specs: &[Spec]) -> Catalogue {
    Catalogue {
        version: "1".into(),
        digest: "d".into(),
        components: specs
            .iter()
            .map(|s| Component {
                name: s.name.into(),
                version: "1".into(),
                optional: false,
                depends_on: s.deps.iter().map(|d| d.to_string()).collect(),
                health: Vec::new(),
                force: false,
                objects: parse_manifest(s.name, "f.yaml", s.docs.join("---\n").as_bytes())
                    .expect("manifest"),
            })
            .collect(),
    }
}

fn demo() -> Catalogue {
    catalogue(&[
        Spec {
            name: "base",
            deps: &[],
            docs: &[NS, CRD],
        },
        Spec {
            name: "app",
            deps: &["base"],
            docs: &[CR, CM, DEP, SA],
        },
    ])
}

struct Rig {
    cluster: FakeCluster,
    ledger: FakeLedger,
    events: Arc<Mutex<Vec<Event>>>,
    sink: EventSink,
}

impl Rig {
    fn new() -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        Rig {
            cluster: FakeCluster::new(),
            ledger: FakeLedger::default(),
            events,
            sink: Arc::new(move |ev: &Event| e.lock().expect("events").push(ev.clone())),
        }
    }

    async fn pass(&self, cat: &Catalogue) -> Result<Report, RunError> {
        let runner = Runner {
            cluster: &self.cluster,
            ledger: &self.ledger,
            events: &self.sink,
            health_timeout: Duration::from_secs(1),
            term: 7,
        };
        runner.pass(cat, &Selection::default()).await
    }

    fn events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().expect("events"))
    }
}

fn key(group: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        group: group.into(),
        kind: kind.into(),
        namespace: ns.map(str::to_string),
        name: name.into(),
    }
}

fn position(log: &[String], entry: &str) -> usize {
    log.iter()
        .position(|l| l == entry)
        .unwrap_or_else(|| panic!("{entry} not in {log:#?}"))
}

#[tokio::test]
async fn cold_install_dry_runs_first_then_applies_in_order() {
    let rig = Rig::new();
    let r = rig.pass(&demo()).await.expect("pass");
    let log = rig.cluster.log();
    // Namespace and CRD are dry-run before any write; the CR and the objects in the new
    // namespace right after them, before any other write.
    let first_apply = log
        .iter()
        .position(|l| l.starts_with("apply"))
        .expect("applies");
    assert!(
        position(&log, "dry-run Namespace demo") < first_apply,
        "{log:#?}"
    );
    assert!(
        position(&log, "apply Namespace demo")
            < position(
                &log,
                "apply CustomResourceDefinition.apiextensions.k8s.io widgets.demo.kubedna.io"
            )
    );
    let crd = position(
        &log,
        "apply CustomResourceDefinition.apiextensions.k8s.io widgets.demo.kubedna.io",
    );
    let cr_dry = position(&log, "dry-run Widget.demo.kubedna.io demo/w");
    let cm = position(&log, "apply ConfigMap demo/c");
    assert!(crd < cr_dry && cr_dry < cm, "{log:#?}");
    assert!(
        position(&log, "dry-run Deployment.apps demo/d") < cm,
        "{log:#?}"
    );
    assert!(cm < position(&log, "apply Deployment.apps demo/d"));
    assert!(
        position(&log, "apply Widget.demo.kubedna.io demo/w") > cm,
        "custom resources after workloads' config"
    );
    assert_eq!(r.writes, 6 + 1, "six objects and the ApplySet parent");
    let p = rig.ledger.progress();
    assert_eq!(p.components["base"].order, 0);
    assert_eq!(p.components["app"].order, 1);
    assert_eq!(p.components["app"].applied_version.as_deref(), Some("1"));
    assert!(p.group_kinds.contains("Widget.demo.kubedna.io"));
    let applied = rig
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::Applied {
                    change: Change::Create,
                    ..
                }
            )
        })
        .count();
    assert_eq!(applied, 6);
    let parent = rig
        .cluster
        .get(&key(
            "",
            "ConfigMap",
            Some("kube-system"),
            "kubedna-catalogue",
        ))
        .expect("parent");
    assert_eq!(
        parent["metadata"]["labels"][APPLYSET_ID],
        applyset_id().as_str()
    );
}

#[tokio::test]
async fn a_second_pass_with_nothing_changed_writes_nothing() {
    let rig = Rig::new();
    rig.pass(&demo()).await.expect("first");
    rig.cluster.clear_log();
    let saved = rig.ledger.value.lock().expect("v").clone();
    let r = rig.pass(&demo()).await.expect("second");
    assert_eq!((r.writes, r.deletes, r.dry_runs), (0, 0, 0));
    assert!(rig.cluster.log().is_empty(), "{:?}", rig.cluster.log());
    assert_eq!(
        *rig.ledger.value.lock().expect("v"),
        saved,
        "no progress write either"
    );
}

#[tokio::test]
async fn a_hand_edit_is_reverted_only_with_force() {
    let rig = Rig::new();
    rig.pass(&demo()).await.expect("first");
    let cm = key("", "ConfigMap", Some("demo"), "c");
    let mut edited = rig.cluster.get(&cm).expect("cm");
    edited["data"]["a"] = "changed".into();
    rig.cluster.put_by_hand(&cm, edited);
    rig.events();
    // Without force: reported as a conflict, left alone.
    let r = rig.pass(&demo()).await.expect("second");
    assert_eq!(r.conflicts, 1);
    assert_eq!(rig.cluster.get(&cm).expect("cm")["data"]["a"], "changed");
    assert!(matches!(&rig.events()[..], [Event::Conflict { component, .. }] if component == "app"));
    // With force: taken back.
    let mut cat = demo();
    cat.components[1].force = true;
    rig.pass(&cat).await.expect("third");
    assert_eq!(rig.cluster.get(&cm).expect("cm")["data"]["a"], "1");
    assert!(rig.events().iter().any(
        |e| matches!(e, Event::Applied { change: Change::Drift, object, .. } if *object == cm)
    ));
}

#[tokio::test]
async fn an_invalid_catalogue_changes_nothing() {
    let rig = Rig::new();
    rig.pass(&demo()).await.expect("first");
    rig.cluster.clear_log();
    rig.events();
    let bad = catalogue(&[
        Spec {
            name: "base",
            deps: &[],
            docs: &[NS],
        },
        Spec {
            name: "new",
            deps: &["base"],
            docs: &["apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"],
        },
    ]);
    let e = rig.pass(&bad).await.expect_err("refused");
    assert!(matches!(e, RunError::Refused(_)), "{e}");
    assert!(
        rig.cluster.log().is_empty(),
        "nothing written, nothing pruned: {:?}",
        rig.cluster.log()
    );
    assert!(
        matches!(&rig.events()[..], [Event::Refused { problems }] if problems[0].contains("no metadata.namespace"))
    );
    assert!(rig.ledger.progress().last_error.is_some());
    assert!(rig
        .cluster
        .get(&key("demo.kubedna.io", "Widget", Some("demo"), "w"))
        .is_some());
}

#[tokio::test]
async fn removing_a_component_prunes_exactly_its_objects() {
    let rig = Rig::new();
    let three = catalogue(&[
        Spec {
            name: "base",
            deps: &[],
            docs: &[NS, CRD],
        },
        Spec {
            name: "app",
            deps: &["base"],
            docs: &[CR, DEP],
        },
        Spec {
            name: "extra",
            deps: &["base"],
            docs: &[CM, SA],
        },
    ]);
    rig.pass(&three).await.expect("first");
    // A look-alike without our label, same kind and namespace as a pruned object.
    let look = key("", "ConfigMap", Some("demo"), "look-alike");
    rig.cluster.put_by_hand(&look, serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "look-alike", "namespace": "demo", "labels": {"catalogue.kubedna.io/component": "extra"}}}));
    rig.cluster.clear_log();
    let two = catalogue(&[
        Spec {
            name: "base",
            deps: &[],
            docs: &[NS, CRD],
        },
        Spec {
            name: "app",
            deps: &["base"],
            docs: &[CR, DEP],
        },
    ]);
    let r = rig.pass(&two).await.expect("second");
    assert_eq!(r.deletes, 2);
    assert_eq!(
        rig.cluster.log(),
        ["delete ConfigMap demo/c", "delete ServiceAccount demo/s"],
        "ConfigMap before ServiceAccount: reverse kind order"
    );
    assert!(rig.cluster.get(&look).is_some());
    assert!(!rig.ledger.progress().components.contains_key("extra"));
}

#[tokio::test]
async fn a_crd_with_objects_not_ours_is_released_not_deleted() {
    let rig = Rig::new();
    rig.pass(&demo()).await.expect("first");
    let theirs = key("demo.kubedna.io", "Widget", Some("demo"), "theirs");
    rig.cluster.put_by_hand(
        &theirs,
        serde_json::json!({"apiVersion": "demo.kubedna.io/v1", "kind": "Widget",
        "metadata": {"name": "theirs", "namespace": "demo"}}),
    );
    rig.pass(&catalogue(&[])).await.expect("empty catalogue");
    let crd = key(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        None,
        "widgets.demo.kubedna.io",
    );
    let live = rig.cluster.get(&crd).expect("CRD kept");
    assert!(
        live["metadata"]["labels"][PART_OF].is_null(),
        "released: {live}"
    );
    assert!(rig.cluster.get(&theirs).is_some());
    assert!(
        rig.cluster
            .get(&key("", "Namespace", None, "demo"))
            .is_some(),
        "namespaces are released"
    );
    assert!(rig
        .cluster
        .get(&key("demo.kubedna.io", "Widget", Some("demo"), "w"))
        .is_none());
    assert!(rig.ledger.progress().components.is_empty());
}

#[tokio::test]
async fn a_lost_term_stops_before_the_next_write_and_the_next_leader_completes() {
    let rig = Rig::new();
    *rig.ledger.stale_after.lock().expect("s") = Some(3);
    let e = rig.pass(&demo()).await.expect_err("term lost");
    assert!(e.is_stale(), "{e}");
    let first: Vec<String> = rig
        .cluster
        .log()
        .into_iter()
        .filter(|l| l.starts_with("apply"))
        .collect();
    assert_eq!(
        first.len(),
        3,
        "parent + two objects, then nothing: {first:?}"
    );
    // The next leader: same etcd record, same cluster, a valid term.
    *rig.ledger.stale_after.lock().expect("s") = None;
    rig.cluster.clear_log();
    rig.pass(&demo()).await.expect("resumed");
    let second: Vec<String> = rig
        .cluster
        .log()
        .into_iter()
        .filter(|l| l.starts_with("apply") && !l.contains("kubedna-catalogue"))
        .collect();
    for l in &second {
        assert!(!first.contains(l), "{l} applied twice");
    }
    assert_eq!(first.len() - 1 + second.len(), 6, "{first:?} {second:?}");
    assert_eq!(rig.ledger.progress().components.len(), 2);
}

#[tokio::test]
async fn a_failing_health_check_stops_the_rollout_and_keeps_the_rest() {
    let rig = Rig::new();
    let mut cat = catalogue(&[
        Spec {
            name: "base",
            deps: &[],
            docs: &[NS],
        },
        Spec {
            name: "mid",
            deps: &["base"],
            docs: &[DEP],
        },
        Spec {
            name: "top",
            deps: &["mid"],
            docs: &[CM],
        },
    ]);
    cat.components[1].health = vec![crate::HealthCheck::DeploymentAvailable {
        namespace: "demo".into(),
        name: "d".into(),
    }];
    rig.cluster
        .state
        .lock()
        .expect("s")
        .unhealthy
        .insert("Deployment demo/d available".into());
    let e = rig.pass(&cat).await.expect_err("unhealthy");
    assert!(
        matches!(&e, RunError::Health { component, .. } if component == "mid"),
        "{e}"
    );
    assert!(
        rig.cluster
            .get(&key("", "ConfigMap", Some("demo"), "c"))
            .is_none(),
        "top not applied"
    );
    let p = rig.ledger.progress();
    assert_eq!(p.components["base"].health, Health::Healthy);
    assert_eq!(p.components["mid"].health, Health::Unhealthy);
    assert!(p.components["mid"].last_error.is_some());
    assert!(!p.components.contains_key("top"));
    assert!(rig
        .events()
        .iter()
        .any(|e| matches!(e, Event::HealthFailed { component, .. } if component == "mid")));
}

#[tokio::test]
async fn a_dry_run_failure_writes_nothing() {
    let rig = Rig::new();
    rig.pass(&demo()).await.expect("first");
    rig.cluster.clear_log();
    // The new version changes two objects; the API server refuses the second (a webhook, a
    // schema): the dry run catches it before the first is written.
    let mut cat = demo();
    for o in &mut cat.components[1].objects {
        o.body["metadata"]["labels"] = serde_json::json!({"v": "2"});
    }
    let refused = key("apps", "Deployment", Some("demo"), "d");
    rig.cluster
        .state
        .lock()
        .expect("s")
        .refuse
        .insert(refused.clone());
    let e = rig.pass(&cat).await.expect_err("dry run refused");
    assert!(
        matches!(&e, RunError::DryRun { object, .. } if *object == refused),
        "{e}"
    );
    assert!(
        rig.cluster.log().iter().all(|l| l.starts_with("dry-run")),
        "{:?}",
        rig.cluster.log()
    );
}
