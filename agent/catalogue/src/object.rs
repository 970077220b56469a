//! Objects of the catalogue: their identity, the labels we put on them (KEP-3659 ApplySet
//! member label plus the component), the order kinds are applied and deleted in, and the
//! drift test ([`covers`]) that decides whether a live object still matches its intent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// ApplySet member label (KEP-3659, as shipped in kubectl).
pub const PART_OF: &str = "applyset.kubernetes.io/part-of";
/// ApplySet parent label.
pub const APPLYSET_ID: &str = "applyset.kubernetes.io/id";
pub const APPLYSET_TOOLING: &str = "applyset.kubernetes.io/tooling";
pub const APPLYSET_GROUP_KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
/// Which component an object belongs to.
pub const COMPONENT_LABEL: &str = "catalogue.kubedna.io/component";
/// The SHA-256 of the object's intent as applied (without our labels), to tell an upgrade
/// (intent changed) from drift (live changed).
pub const DIGEST_ANNOTATION: &str = "catalogue.kubedna.io/digest";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "kubedna";
/// The ApplySet parent: a ConfigMap, one of the parent kinds kubectl accepts by default.
pub const PARENT_NAMESPACE: &str = "kube-system";
pub const PARENT_NAME: &str = "kubedna-catalogue";

/// The ApplySet id of our parent: `applyset-<base64url(sha256(name.namespace.kind.group))>-v1`.
pub fn applyset_id() -> String {
    let digest = Sha256::digest(format!("{PARENT_NAME}.{PARENT_NAMESPACE}.ConfigMap.").as_bytes());
    format!("applyset-{}-v1", base64url_nopad(&digest))
}

fn base64url_nopad(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The identity of an object: group, kind, namespace, name. The version is not part of it (one
/// object served at two versions is one object).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// `Kind.group` as ApplySet's `contains-group-kinds` writes it (`Kind` for the core group).
    pub fn group_kind(&self) -> String {
        group_kind(&self.group, &self.kind)
    }
}

pub fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.group_kind())?;
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

/// One object of a component, as parsed from its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: ObjectKey,
    pub api_version: String,
    /// The manifest file it came from (bundle-relative) and its document index there.
    pub file: String,
    pub doc: usize,
    /// The manifest's body, as written.
    pub body: Value,
}

impl Object {
    /// `apiVersion`'s version part.
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version.as_str(), |(_, v)| v)
    }

    /// SHA-256 of the body as written (canonical JSON: serde_json sorts map keys).
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.body.to_string().as_bytes()))
    }

    /// The body we apply: the manifest with our labels and digest annotation added.
    pub fn intent(&self, component: &str) -> Value {
        let mut body = self.body.clone();
        let digest = self.digest();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(l) = labels.as_object_mut() {
                l.insert(PART_OF.into(), applyset_id().into());
                l.insert(COMPONENT_LABEL.into(), component.into());
            }
            let ann = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = ann.as_object_mut() {
                a.insert(DIGEST_ANNOTATION.into(), digest.into());
            }
        }
        body
    }

    pub fn is_namespace(&self) -> bool {
        self.key.group.is_empty() && self.key.kind == "Namespace"
    }

    pub fn is_crd(&self) -> bool {
        self.key.group == "apiextensions.k8s.io" && self.key.kind == "CustomResourceDefinition"
    }
}

/// Apply rank of a kind within one component (Helm's install order, shortened): what others
/// refer to goes first. Deletion uses the reverse.
pub fn kind_rank(group: &str, kind: &str) -> u8 {
    match (group, kind) {
        ("", "Namespace") => 0,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 1,
        ("scheduling.k8s.io", "PriorityClass") => 2,
        ("", "ServiceAccount") => 3,
        ("", "Secret") | ("", "ConfigMap") => 4,
        ("storage.k8s.io", "StorageClass") => 5,
        ("rbac.authorization.k8s.io", "ClusterRole") => 6,
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => 7,
        ("rbac.authorization.k8s.io", "Role") => 8,
        ("rbac.authorization.k8s.io", "RoleBinding") => 9,
        ("", "Service") => 10,
        ("apps", "DaemonSet") | ("apps", "Deployment") | ("apps", "StatefulSet") => 11,
        ("batch", "Job") | ("batch", "CronJob") => 12,
        ("admissionregistration.k8s.io", _) => 14,
        ("apiregistration.k8s.io", "APIService") => 15,
        _ => 13,
    }
}

/// What a live object says about us: its labels, the digest we last applied, and whether it
/// still holds every field of the intent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveObject {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub digest: Option<String>,
    /// `covers(intent, live)` at the time it was read.
    pub covers_intent: bool,
}

impl LiveObject {
    pub fn ours(&self) -> bool {
        self.labels.get(PART_OF).map(String::as_str) == Some(applyset_id().as_str())
    }
    pub fn component(&self) -> Option<&str> {
        self.labels.get(COMPONENT_LABEL).map(String::as_str)
    }
}

/// Whether `live` holds every field `intent` sets, with the same value. Objects compare by
/// field, lists by position and length (a list's items are the intent's, with fields the
/// server defaulted), scalars by value; a number and a string holding the same value are the
/// same (quantities, ports as strings). Extra fields in `live` (defaults, status, fields
/// of other managers) are allowed: they are not ours. `managedFields` is ignored.
pub fn covers(intent: &Value, live: &Value) -> bool {
    match (intent, live) {
        (Value::Object(i), Value::Object(l)) => i.iter().all(|(k, iv)| {
            if k == "managedFields" {
                return true;
            }
            match l.get(k) {
                Some(lv) => covers(iv, lv),
                // A null, an empty map or list, or a zero value in the intent: the API server
                // leaves such fields out (Go's `omitempty`), so absent live is the same.
                None => match iv {
                    Value::Null => true,
                    Value::Object(m) => m.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::Bool(b) => !b,
                    Value::Number(n) => n.as_f64() == Some(0.0),
                    Value::String(s) => s.is_empty(),
                },
            }
        }),
        (Value::Array(i), Value::Array(l)) => {
            i.len() == l.len() && i.iter().zip(l).all(|(iv, lv)| covers(iv, lv))
        }
        (Value::Number(a), Value::String(b)) | (Value::String(b), Value::Number(a)) => {
            a.to_string() == *b
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applyset_id_is_base64url_of_the_parent() {
        // Recomputed by hand: sha256("kubedna-catalogue.kube-system.ConfigMap.") in RFC 4648
        // URL-safe base64 without padding is 43 characters.
        let id = applyset_id();
        assert!(id.starts_with("applyset-") && id.ends_with("-v1"), "{id}");
        assert_eq!(id.len(), "applyset-".len() + 43 + "-v1".len());
        assert!(id.len() <= 63, "a label value");
    }

    #[test]
    fn base64url_known_vectors() {
        // RFC 4648 test vectors, without padding.
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_nopad(input.as_bytes()), want, "{input}");
        }
        assert_eq!(base64url_nopad(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn covers_by_table() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1, "b": 2}), true),
            (json!({"a": 1}), json!({"a": 2}), false),
            (json!({"a": 1}), json!({}), false),
            // Zero values the server omits (`minReadySeconds: 0`, `hostNetwork: false`).
            (json!({"a": 0}), json!({}), true),
            (json!({"a": false}), json!({}), true),
            (json!({"a": ""}), json!({}), true),
            (json!({"a": true}), json!({}), false),
            (json!({"a": {}}), json!({}), true),
            (json!({"a": null}), json!({}), true),
            (
                json!({"l": [{"x": 1}]}),
                json!({"l": [{"x": 1, "d": 0}]}),
                true,
            ),
            (
                json!({"l": [{"x": 1}]}),
                json!({"l": [{"x": 1}, {"x": 2}]}),
                false,
            ),
            (json!({"port": 80}), json!({"port": "80"}), true),
            (json!({"replicas": 1}), json!({"replicas": 3}), false),
            (
                json!({"metadata": {"managedFields": [1]}}),
                json!({"metadata": {}}),
                true,
            ),
        ];
        for (intent, live, want) in cases {
            assert_eq!(covers(&intent, &live), want, "{intent} vs {live}");
        }
    }

    #[test]
    fn intent_adds_our_labels_and_digest() {
        let o = Object {
            key: ObjectKey {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: Some("x".into()),
                name: "c".into(),
            },
            api_version: "v1".into(),
            file: "f.yaml".into(),
            doc: 0,
            body: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "x", "labels": {"app": "a"}}}),
        };
        let i = o.intent("demo");
        assert_eq!(i["metadata"]["labels"]["app"], "a");
        assert_eq!(i["metadata"]["labels"][COMPONENT_LABEL], "demo");
        assert_eq!(i["metadata"]["labels"][PART_OF], applyset_id().as_str());
        assert_eq!(
            i["metadata"]["annotations"][DIGEST_ANNOTATION],
            o.digest().as_str()
        );
        assert_eq!(o.version(), "v1");
    }
}
