use super::*;
use crate::bundle::parse_manifest;

fn comp(name: &str, deps: &[&str], optional: bool, manifest: &str) -> Component {
    Component {
        name: name.into(),
        version: "1".into(),
        optional,
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        health: Vec::new(),
        force: false,
        objects: parse_manifest(name, &format!("{name}.yaml"), manifest.as_bytes())
            .expect("manifest"),
    }
}

fn cat(components: Vec<Component>) -> Catalogue {
    Catalogue {
        version: "1".into(),
        digest: "d".into(),
        components,
    }
}

fn facts() -> ClusterFacts {
    let mut f = ClusterFacts::default();
    f.serve("", "v1", "ConfigMap", Scope::Namespaced);
    f.serve("", "v1", "Namespace", Scope::Cluster);
    f.serve("apps", "v1", "Deployment", Scope::Namespaced);
    f.serve(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        Scope::Cluster,
    );
    f.serve(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        Scope::Cluster,
    );
    f.namespaces.insert("kube-system".into());
    f
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: kube-system}\n";
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.demo.kubedna.io}\nspec: {group: demo.kubedna.io, scope: Namespaced, names: {kind: Widget, plural: widgets}, versions: [{name: v1, served: true, storage: true}]}\n";

fn sel(optional: &[&str]) -> Selection {
    Selection {
        optional: optional.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn validation_by_table() {
    let ns_and_cm = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: demo}\n";
    let cr = "apiVersion: demo.kubedna.io/v1\nkind: Widget\nmetadata: {name: w, namespace: kube-system}\n";
    // (catalogue, selection, Ok(apply order) or Err(substring of a problem, its object))
    type Want = Result<Vec<&'static str>, (&'static str, Option<&'static str>)>;
    let cases: Vec<(Catalogue, Selection, Want)> = vec![
        (cat(vec![comp("a", &[], false, CM)]), sel(&[]), Ok(vec!["a"])),
        (
            cat(vec![comp("b", &["a"], false, ""), comp("a", &[], false, CM)]),
            sel(&[]),
            Ok(vec!["a", "b"]),
        ),
        (
            cat(vec![comp("a", &["b"], false, ""), comp("b", &["a"], false, "")]),
            sel(&[]),
            Err(("dependsOn cycle: a → b → a", None)),
        ),
        (cat(vec![comp("a", &["a"], false, "")]), sel(&[]), Err(("cycle: a → a", None))),
        (cat(vec![comp("a", &["z"], false, "")]), sel(&[]), Err(("`z`, which the catalogue does not have", None))),
        (cat(vec![comp("A_b", &[], false, "")]), sel(&[]), Err(("DNS label", None))),
        (cat(vec![comp("a", &[], false, ""), comp("a", &[], false, "")]), sel(&[]), Err(("second component", None))),
        // Optional components: only when selected; a default one may not need an unselected one.
        (cat(vec![comp("a", &[], true, CM)]), sel(&[]), Ok(vec![])),
        (cat(vec![comp("a", &[], true, CM)]), sel(&["a"]), Ok(vec!["a"])),
        (cat(vec![comp("a", &[], false, "")]), sel(&["x"]), Err(("no such component", None))),
        (
            cat(vec![comp("o", &[], true, ""), comp("a", &["o"], false, "")]),
            sel(&[]),
            Err(("does not select", None)),
        ),
        // Objects.
        (
            cat(vec![comp("a", &[], false, CM), comp("b", &[], false, CM)]),
            sel(&[]),
            Err(("also in component `a`", Some("ConfigMap kube-system/c"))),
        ),
        (
            cat(vec![comp("a", &[], false, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")]),
            sel(&[]),
            Err(("no metadata.namespace", Some("ConfigMap c"))),
        ),
        (
            cat(vec![comp("a", &[], false, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: nope}\n")]),
            sel(&[]),
            Err(("namespace `nope` neither exists", Some("ConfigMap nope/c"))),
        ),
        (cat(vec![comp("a", &[], false, ns_and_cm)]), sel(&[]), Ok(vec!["a"])),
        (
            cat(vec![comp("a", &[], false, "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r, namespace: kube-system}\n")]),
            sel(&[]),
            Err(("cluster-scoped, but names", None)),
        ),
        (
            cat(vec![comp("a", &[], false, "apiVersion: policy/v1beta1\nkind: PodSecurityPolicy\nmetadata: {name: p}\n")]),
            sel(&[]),
            Err(("does not serve policy/v1beta1", Some("PodSecurityPolicy.policy p"))),
        ),
        (cat(vec![comp("a", &[], false, cr)]), sel(&[]), Err(("does not serve demo.kubedna.io/v1", None))),
        // A CR is served once a CRD of the catalogue defines its kind, in any component.
        (
            cat(vec![comp("crd", &[], false, CRD), comp("a", &["crd"], false, cr)]),
            sel(&[]),
            Ok(vec!["crd", "a"]),
        ),
    ];
    for (i, (c, s, want)) in cases.into_iter().enumerate() {
        let got = validate(&c, &s, &facts());
        match (got, want) {
            (Ok(sel), Ok(order)) => {
                let names: Vec<&str> = sel.components.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, order, "case {i}");
            }
            (Err(CatalogueError::Invalid { problems }), Err((what, object))) => {
                let p = problems
                    .iter()
                    .find(|p| p.what.contains(what))
                    .unwrap_or_else(|| {
                        panic!("case {i}: no problem with {what:?} in {problems:?}")
                    });
                assert!(p.component.is_some(), "case {i}: {p}");
                if let Some(o) = object {
                    assert_eq!(p.object.as_deref(), Some(o), "case {i}");
                    assert!(p.file.is_some(), "case {i}: {p}");
                }
            }
            (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn crd_kinds_reads_served_versions_and_scope() {
    let o = parse_manifest("c", "f", CRD.as_bytes()).expect("crd");
    let k = crd_kinds(&o[0].body);
    assert_eq!(
        k,
        vec![(
            ("demo.kubedna.io".into(), "v1".into(), "Widget".into()),
            Scope::Namespaced
        )]
    );
}
