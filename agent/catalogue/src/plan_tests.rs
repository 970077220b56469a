use super::*;
use crate::bundle::{parse_manifest, Component};
use crate::object::{applyset_id, COMPONENT_LABEL, PART_OF};
use crate::progress::ComponentRecord;
use crate::HealthCheck;

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.demo.kubedna.io}\n";
const CR: &str =
    "apiVersion: demo.kubedna.io/v1\nkind: Widget\nmetadata: {name: w, namespace: demo}\n";
const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: demo}\n";
const DEP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: demo}\n";
const SA: &str = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: demo}\n";

fn comp(name: &str, docs: &[&str]) -> Component {
    Component {
        name: name.into(),
        version: "1".into(),
        optional: false,
        depends_on: Vec::new(),
        health: Vec::new(),
        force: false,
        objects: parse_manifest(name, "f.yaml", docs.join("---\n").as_bytes()).expect("manifest"),
    }
}

fn selected(components: Vec<Component>) -> Selected {
    Selected {
        version: "1".into(),
        digest: "d".into(),
        components,
    }
}

/// The live view of `c`'s objects as if applied, intact.
fn applied(c: &Component) -> BTreeMap<ObjectKey, LiveObject> {
    c.objects
        .iter()
        .map(|o| (o.key.clone(), live_of(&c.name, &o.digest(), true)))
        .collect()
}

fn live_of(component: &str, digest: &str, covers: bool) -> LiveObject {
    LiveObject {
        uid: format!("uid-{component}"),
        labels: [
            (PART_OF.to_string(), applyset_id()),
            (COMPONENT_LABEL.to_string(), component.to_string()),
        ]
        .into(),
        digest: Some(digest.into()),
        covers_intent: covers,
    }
}

fn recorded(names: &[&str]) -> Progress {
    Progress {
        components: names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.to_string(),
                    ComponentRecord {
                        wanted_version: "1".into(),
                        applied_version: Some("1".into()),
                        order: i,
                        health: Health::Healthy,
                        last_error: None,
                    },
                )
            })
            .collect(),
        ..Progress::default()
    }
}

/// A step as a short string, for tables.
fn short(s: &Step) -> String {
    match s {
        Step::Apply(w) => format!("apply {} {} {}", w.component, w.key, w.change),
        Step::WaitEstablished { crd, .. } => format!("established {crd}"),
        Step::Health { component } => format!("health {component}"),
        Step::Record { component } => format!("record {component}"),
        Step::Prune {
            component,
            key,
            guard,
            ..
        } => {
            format!(
                "prune {component} {key}{}",
                if *guard == Guard::None {
                    ""
                } else {
                    " guarded"
                }
            )
        }
        Step::Release { component, key, .. } => format!("release {component} {key}"),
        Step::Forget { component } => format!("forget {component}"),
    }
}

fn shorts(p: &Plan) -> Vec<String> {
    p.steps.iter().map(short).collect()
}

#[test]
fn cold_install_orders_namespaces_crds_then_components() {
    let a = comp("a", &[CRD, CR, NS]);
    let mut b = comp("b", &[DEP, CM, SA]);
    b.health = vec![HealthCheck::DeploymentAvailable {
        namespace: "demo".into(),
        name: "d".into(),
    }];
    let p = plan(
        &selected(vec![a, b]),
        &BTreeMap::new(),
        &Progress::default(),
    );
    assert_eq!(
        shorts(&p),
        [
            "apply a Namespace demo create",
            "apply a CustomResourceDefinition.apiextensions.k8s.io widgets.demo.kubedna.io create",
            "established widgets.demo.kubedna.io",
            "apply a Widget.demo.kubedna.io demo/w create",
            "record a",
            "apply b ServiceAccount demo/s create",
            "apply b ConfigMap demo/c create",
            "apply b Deployment.apps demo/d create",
            "health b",
            "record b",
        ]
    );
}

#[test]
fn nothing_to_do_writes_nothing() {
    let a = comp("a", &[NS, CM]);
    let p = plan(&selected(vec![a.clone()]), &applied(&a), &recorded(&["a"]));
    assert!(!p.changes_cluster(), "{:?}", shorts(&p));
    assert!(p.steps.is_empty(), "{:?}", shorts(&p));
}

#[test]
fn changes_by_table() {
    let a = comp("a", &[CM]);
    let o = &a.objects[0];
    let d = o.digest();
    let cases = [
        (None, Some(Change::Create)),
        (Some(live_of("a", &d, true)), None),
        (Some(live_of("a", &d, false)), Some(Change::Drift)),
        (Some(live_of("a", "old", true)), Some(Change::Upgrade)),
        (Some(live_of("a", "old", false)), Some(Change::Upgrade)),
        // Moved from another component: rewritten to carry the new component label.
        (Some(live_of("z", &d, true)), Some(Change::Upgrade)),
    ];
    for (live, want) in cases {
        assert_eq!(change("a", o, live.as_ref()), want, "{live:?}");
    }
}

#[test]
fn removed_components_are_pruned_in_reverse_dependency_order() {
    // Recorded order: base (0), mid (1), top (2); all three left the catalogue; keep stays.
    let base = comp("base", &[NS, CRD]);
    let mid = comp("mid", &[SA]);
    let top = comp("top", &[CR, DEP]);
    let keep = comp("keep", &[CM]);
    let mut live = BTreeMap::new();
    for c in [&base, &mid, &top, &keep] {
        live.extend(applied(c));
    }
    let p = plan(
        &selected(vec![keep]),
        &live,
        &recorded(&["base", "mid", "top", "keep"]),
    );
    assert_eq!(
        shorts(&p),
        [
            // Custom resources first (kapp's delete order), then workloads.
            "prune top Widget.demo.kubedna.io demo/w",
            "prune top Deployment.apps demo/d",
            "forget top",
            "prune mid ServiceAccount demo/s",
            "forget mid",
            "prune base CustomResourceDefinition.apiextensions.k8s.io widgets.demo.kubedna.io guarded",
            "release base Namespace demo",
            "forget base",
        ]
    );
}

#[test]
fn only_objects_with_our_label_are_pruned() {
    let a = comp("a", &[CM]);
    let mut live = applied(&a);
    // A look-alike of a removed object, created by hand: no ApplySet label, or another set's.
    let mut foreign = live_of("a", "x", true);
    foreign.labels.remove(PART_OF);
    let mut other_set = live_of("a", "x", true);
    other_set
        .labels
        .insert(PART_OF.into(), "applyset-someone-else-v1".into());
    let key = |n: &str| ObjectKey {
        group: String::new(),
        kind: "Secret".into(),
        namespace: Some("demo".into()),
        name: n.into(),
    };
    live.insert(key("foreign"), foreign);
    live.insert(key("other"), other_set);
    live.insert(key("gone"), live_of("a", "x", true));
    let p = plan(&selected(vec![a]), &live, &recorded(&["a"]));
    assert_eq!(shorts(&p), ["prune a Secret demo/gone"]);
}

#[test]
fn an_object_dropped_from_a_kept_component_is_pruned_and_the_component_kept() {
    let before = comp("a", &[CM, SA]);
    let after = comp("a", &[CM]);
    let p = plan(&selected(vec![after]), &applied(&before), &recorded(&["a"]));
    assert_eq!(shorts(&p), ["prune a ServiceAccount demo/s"]);
}

#[test]
fn a_recorded_component_with_no_live_objects_is_forgotten() {
    let p = plan(&selected(vec![]), &BTreeMap::new(), &recorded(&["gone"]));
    assert_eq!(shorts(&p), ["forget gone"]);
}

#[test]
fn a_hand_edit_is_a_drift_correction_and_health_is_checked_again() {
    let mut a = comp("a", &[NS, DEP]);
    a.health = vec![HealthCheck::DeploymentAvailable {
        namespace: "demo".into(),
        name: "d".into(),
    }];
    a.force = true;
    let mut live = applied(&a);
    if let Some(l) = live.values_mut().find(|l| l.uid.contains('a')) {
        l.covers_intent = true;
    }
    let dep = a.objects[1].key.clone();
    live.insert(dep, live_of("a", &a.objects[1].digest(), false));
    let p = plan(&selected(vec![a]), &live, &recorded(&["a"]));
    assert_eq!(
        shorts(&p),
        [
            "apply a Deployment.apps demo/d drift correction",
            "health a",
            "record a"
        ]
    );
    assert!(p.writes().all(|w| w.force));
}

#[test]
fn an_upgraded_version_is_recorded_even_without_object_changes() {
    let a = comp("a", &[CM]);
    let mut progress = recorded(&["a"]);
    if let Some(r) = progress.components.get_mut("a") {
        r.applied_version = Some("0".into());
    }
    let p = plan(&selected(vec![a.clone()]), &applied(&a), &progress);
    assert_eq!(shorts(&p), ["record a"]);
}
