//! Loading a bundle directory: `catalogue.yaml` parsed strictly, every manifest file read,
//! checked against its SHA-256 and split into objects. Everything wrong is collected and
//! returned at once, each problem naming its component, file and object; a bundle with any
//! problem yields no [`Catalogue`], so nothing of it can be applied. Reads only, never writes.

use std::path::{Component as PathPart, Path};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::format::{CatalogueFile, ComponentSpec, HealthCheck, API_VERSION, CATALOGUE_FILE, KIND};
use crate::object::{Object, ObjectKey};
use crate::{CatalogueError, Problem};

/// A catalogue read from a bundle, checksums verified. Not yet validated against the cluster
/// (see [`crate::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    pub version: String,
    /// SHA-256 over `catalogue.yaml` (which pins every manifest by its SHA-256).
    pub digest: String,
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: String,
    pub version: String,
    pub optional: bool,
    pub depends_on: Vec<String>,
    pub health: Vec<HealthCheck>,
    pub force: bool,
    pub objects: Vec<Object>,
}

impl Catalogue {
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Reads and checks the bundle at `dir`.
pub fn load(dir: &Path) -> Result<Catalogue, CatalogueError> {
    let file = dir.join(CATALOGUE_FILE);
    let text = std::fs::read_to_string(&file).map_err(|source| CatalogueError::Read {
        file: file.clone(),
        source,
    })?;
    let spec = parse_catalogue(&text).map_err(|(field, message)| CatalogueError::Parse {
        file: file.clone(),
        field,
        message,
    })?;
    let mut problems = Vec::new();
    let mut components = Vec::new();
    for c in &spec.components {
        let mut objects = Vec::new();
        for m in &c.manifests {
            let bytes = match safe_relative(&m.file) {
                Ok(()) => std::fs::read(dir.join(&m.file)).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    problems.push(Problem::file(&c.name, &m.file, format!("cannot read: {e}")));
                    continue;
                }
            };
            if let Err(p) = check_sha256(&c.name, &m.file, &bytes, &m.sha256) {
                problems.push(p);
                continue;
            }
            match parse_manifest(&c.name, &m.file, &bytes) {
                Ok(mut o) => objects.append(&mut o),
                Err(mut p) => problems.append(&mut p),
            }
        }
        components.push(component(c, objects));
    }
    if !problems.is_empty() {
        return Err(CatalogueError::Invalid { problems });
    }
    Ok(Catalogue {
        version: spec.version,
        digest: hex::encode(Sha256::digest(text.as_bytes())),
        components,
    })
}

fn component(c: &ComponentSpec, objects: Vec<Object>) -> Component {
    Component {
        name: c.name.clone(),
        version: c.version.clone(),
        optional: c.optional,
        depends_on: c.depends_on.clone(),
        health: c.health.clone(),
        force: c.force,
        objects,
    }
}

/// Parses `catalogue.yaml`: unknown fields refused; the error is (field path, message).
pub fn parse_catalogue(text: &str) -> Result<CatalogueFile, (String, String)> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let spec: CatalogueFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        (field, e.into_inner().to_string())
    })?;
    if spec.api_version != API_VERSION {
        return Err((
            "apiVersion".into(),
            format!(
                "`{}` is not a version this agent reads (it reads {API_VERSION})",
                spec.api_version
            ),
        ));
    }
    if spec.kind != KIND {
        return Err(("kind".into(), format!("must be {KIND}")));
    }
    Ok(spec)
}

/// A manifest path stays inside the bundle: relative, no `..`.
fn safe_relative(file: &str) -> Result<(), String> {
    let p = Path::new(file);
    if file.is_empty() || p.components().any(|c| !matches!(c, PathPart::Normal(_))) {
        return Err("the path must be relative to the bundle, without `..`".into());
    }
    Ok(())
}

pub fn check_sha256(component: &str, file: &str, bytes: &[u8], want: &str) -> Result<(), Problem> {
    let got = hex::encode(Sha256::digest(bytes));
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(Problem::file(
            component,
            file,
            format!("SHA-256 mismatch: the catalogue pins {want}, the file has {got}"),
        ))
    }
}

/// Splits a multi-document YAML manifest into objects; each needs `apiVersion`, `kind` and
/// `metadata.name`. Empty documents are skipped; a `List` is refused (write its items).
pub fn parse_manifest(
    component: &str,
    file: &str,
    bytes: &[u8],
) -> Result<Vec<Object>, Vec<Problem>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return Err(vec![Problem::file(component, file, "not UTF-8 text")]),
    };
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                // The YAML stream cannot be resynchronized after a syntax error.
                problems.push(Problem::file(
                    component,
                    file,
                    format!("document {doc}: {e}"),
                ));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match object(file, doc, value) {
            Ok(o) => objects.push(o),
            Err(what) => problems.push(Problem::file(
                component,
                file,
                format!("document {doc}: {what}"),
            )),
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

fn object(file: &str, doc: usize, body: Value) -> Result<Object, String> {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let api_version = s(body.get("apiVersion")).ok_or("no apiVersion")?;
    let kind = s(body.get("kind")).ok_or("no kind")?;
    if kind.ends_with("List") {
        return Err(format!("a {kind}: write its items as separate documents"));
    }
    let meta = body.get("metadata");
    let name =
        s(meta.and_then(|m| m.get("name"))).ok_or(format!("{kind} without metadata.name"))?;
    let namespace = s(meta.and_then(|m| m.get("namespace")));
    let group = api_version
        .rsplit_once('/')
        .map_or(String::new(), |(g, _)| g.to_string());
    Ok(Object {
        key: ObjectKey {
            group,
            kind,
            namespace,
            name,
        },
        api_version,
        file: file.to_string(),
        doc,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_file_by_table() {
        let ok =
            "apiVersion: catalogue.kubedna.io/v1\nkind: Catalogue\nversion: '1'\ncomponents: []\n";
        assert!(parse_catalogue(ok).is_ok());
        // Health checks as the docs write them: one-key maps, not YAML tags.
        let health = ok.replace(
            "components: []",
            "components:\n- name: a\n  version: '1'\n  manifests: []\n  health:\n  - crdEstablished: {name: w.x.io}\n  - deploymentAvailable: {namespace: n, name: d}\n",
        );
        let spec = parse_catalogue(&health).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            spec.components[0].health,
            vec![
                HealthCheck::CrdEstablished {
                    name: "w.x.io".into()
                },
                HealthCheck::DeploymentAvailable {
                    namespace: "n".into(),
                    name: "d".into()
                }
            ]
        );
        let cases = [
            (ok.replace("components: []", "components: []\nextra: 1"), "extra"),
            (ok.replace("v1\n", "v2\n"), "apiVersion"),
            (ok.replace("Catalogue\n", "Other\n"), "kind"),
            (
                ok.replace(
                    "components: []",
                    "components:\n- {name: a, version: '1', manifests: [], helth: []}",
                ),
                "components[0].helth",
            ),
            (
                ok.replace(
                    "components: []",
                    "components:\n- {name: a, version: '1', manifests: [], health: [{podReady: {}}]}",
                ),
                "components[0].health[0].podReady",
            ),
        ];
        for (text, field) in cases {
            let (got, msg) = parse_catalogue(&text).expect_err(&text);
            assert_eq!(got, field, "{text}: {msg}");
        }
    }

    #[test]
    fn checksum_mismatch_names_component_and_file() {
        let good = hex::encode(Sha256::digest(b"x"));
        assert!(check_sha256("c", "f.yaml", b"x", &good).is_ok());
        assert!(check_sha256("c", "f.yaml", b"x", &good.to_uppercase()).is_ok());
        let p = check_sha256("c", "f.yaml", b"y", &good).expect_err("mismatch");
        assert_eq!(p.component.as_deref(), Some("c"));
        assert_eq!(p.file.as_deref(), Some("f.yaml"));
        assert!(p.what.contains("SHA-256 mismatch"), "{p}");
    }

    #[test]
    fn manifests_by_table() {
        let cases: [(&str, Result<usize, &str>); 6] = [
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: n}\n", Ok(1)),
            ("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b}\n", Ok(2)),
            ("kind: ConfigMap\nmetadata: {name: a}\n", Err("no apiVersion")),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", Err("without metadata.name")),
            ("apiVersion: v1\nkind: List\nitems: []\n", Err("List")),
            ("apiVersion: v1\nkind: [\n", Err("document 0")),
        ];
        for (text, want) in cases {
            match (parse_manifest("c", "f.yaml", text.as_bytes()), want) {
                (Ok(o), Ok(n)) => assert_eq!(o.len(), n, "{text}"),
                (Err(p), Err(w)) => assert!(p[0].what.contains(w), "{text}: {}", p[0]),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        let o = parse_manifest(
            "c",
            "f.yaml",
            b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\n",
        )
        .expect("parses");
        assert_eq!(o[0].key.group, "apps");
        assert_eq!(o[0].key.namespace.as_deref(), Some("n"));
    }

    #[test]
    fn paths_stay_in_the_bundle() {
        assert!(safe_relative("a/b.yaml").is_ok());
        for bad in ["", "/etc/passwd", "../x.yaml", "a/../../x"] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }
}
