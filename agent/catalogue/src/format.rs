//! The catalogue file as written: `catalogue.yaml` at the root of a bundle directory. Serde
//! types only, every struct `deny_unknown_fields`, so a field this version does not know is
//! refused rather than ignored. What the fields mean is checked in [`crate::validate`].

use serde::{Deserialize, Serialize};

/// The `apiVersion` this build reads. A new incompatible format gets a new version string.
pub const API_VERSION: &str = "catalogue.kubedna.io/v1";
pub const KIND: &str = "Catalogue";
/// The file at the root of a bundle.
pub const CATALOGUE_FILE: &str = "catalogue.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CatalogueFile {
    pub api_version: String,
    pub kind: String,
    /// The catalogue's own version, shown by `kubedna catalogue status`.
    pub version: String,
    pub components: Vec<ComponentSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ComponentSpec {
    /// A DNS label: it becomes a label value on every object of the component.
    pub name: String,
    /// The component's pinned version (informational; the manifests' checksums pin content).
    pub version: String,
    /// `false` (the default): installed on every cluster. `true`: only when the agent config
    /// selects it (`catalogue.optional`).
    #[serde(default)]
    pub optional: bool,
    /// Components applied and healthy before this one; pruned after it.
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub manifests: Vec<ManifestSpec>,
    /// Waited for after the component is applied, before the next. None: no wait. Each
    /// check is a one-key map (`- crdEstablished: {name: ...}`), not a YAML tag.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub health: Vec<HealthCheck>,
    /// Take back fields another field manager took over (server-side apply `force`). Without
    /// it such a conflict is reported and the field left to its new manager.
    #[serde(default)]
    pub force: bool,
}

/// One manifest file of the bundle, pinned by its SHA-256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestSpec {
    /// Relative to the bundle directory; no `..`, not absolute.
    pub file: String,
    pub sha256: String,
}

/// A readiness condition of one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum HealthCheck {
    /// The CustomResourceDefinition of that name has `Established=True`.
    CrdEstablished { name: String },
    /// `Available=True` and every replica of the current generation updated.
    DeploymentAvailable { namespace: String, name: String },
    /// Every scheduled pod of the current generation updated and available.
    DaemonSetAvailable { namespace: String, name: String },
    /// `Complete=True`; `Failed=True` fails the check at once.
    JobComplete { namespace: String, name: String },
}

impl std::fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthCheck::CrdEstablished { name } => write!(f, "CRD {name} established"),
            HealthCheck::DeploymentAvailable { namespace, name } => {
                write!(f, "Deployment {namespace}/{name} available")
            }
            HealthCheck::DaemonSetAvailable { namespace, name } => {
                write!(f, "DaemonSet {namespace}/{name} available")
            }
            HealthCheck::JobComplete { namespace, name } => {
                write!(f, "Job {namespace}/{name} complete")
            }
        }
    }
}

/// Which optional components this cluster wants (from the agent config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub optional: std::collections::BTreeSet<String>,
}

/// Whether `s` is an RFC 1123 DNS label (what a label value and a component name must be).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
