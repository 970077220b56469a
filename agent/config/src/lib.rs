//! `/etc/kubedna/agent.yaml`: the agent's configuration, its defaults and its validation.
//!
//! Loading is all-or-nothing: [`load`] reads the file, rejects unknown fields, checks every value,
//! reads the cluster secret (from a file that must be mode 0600) and resolves user and group names,
//! and only then returns a [`Config`]. Every error names the file, the field path and what is
//! allowed. This crate never writes anything and never logs a secret: [`Secret`] prints as
//! `[redacted]`.

mod doctor;
mod kubernetes;
mod rbac;
mod spec;
mod validate;

use std::path::{Path, PathBuf};

pub use doctor::DoctorSpec;
pub use kubedna_proto::ClusterSecret as Secret;
pub use kubedna_proto::{Cidr, Endpoint, KubernetesVersion};
pub use kubernetes::{
    KubernetesSpec, DEFAULT_API_PORT, DEFAULT_KUBERNETES_VERSION, DEFAULT_POD_SUBNET,
    DEFAULT_SERVICE_SUBNET, SUPPORTED_KUBERNETES_MINOR,
};
pub use rbac::{RbacMap, RoleSubjects};
pub use spec::*;

/// The config file the agent reads unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/kubedna/agent.yaml";
pub const API_VERSION: &str = "kubedna.io/v1alpha1";
pub const KIND: &str = "AgentConfig";

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: field `{field}`: {message}")]
    Parse {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
}

impl ConfigError {
    /// The dotted field path the error is about (`.` for the whole document).
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    pub spec: AgentConfig,
    /// The node's name: `node.name`, or the host name.
    pub node_name: String,
    pub cluster_secret: Secret,
    pub rbac: RbacMap,
    /// The socket's group, resolved to a gid.
    pub socket_gid: Option<u32>,
    pub socket_mode: u32,
}

impl Config {
    pub fn state_dir(&self) -> &Path {
        &self.spec.state.dir
    }

    /// Where the units the agent starts write their output (`state.runtimeDir`).
    pub fn runtime_dir(&self) -> &Path {
        &self.spec.state.runtime_dir
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.spec
            .audit
            .dir
            .clone()
            .unwrap_or_else(|| self.spec.state.dir.join("audit"))
    }

    pub fn socket_path(&self) -> &Path {
        &self.spec.admin.socket
    }

    /// Top-level sections whose values differ between `self` and `new`.
    pub fn changed_sections(&self, new: &Config) -> Vec<String> {
        let (a, b) = (&self.spec, &new.spec);
        let mut out = Vec::new();
        let mut check = |name: &str, differs: bool| {
            if differs {
                out.push(name.to_string());
            }
        };
        check(
            "cluster",
            a.cluster != b.cluster || self.cluster_secret != new.cluster_secret,
        );
        check("node", a.node != b.node);
        check("discovery", a.discovery != b.discovery);
        check("mesh", a.mesh != b.mesh);
        check("kubernetes", a.kubernetes != b.kubernetes);
        check("provider", a.provider != b.provider);
        check("doctor", a.doctor != b.doctor);
        check("rbac", a.rbac != b.rbac || self.rbac != new.rbac);
        check("admin", a.admin != b.admin);
        check("state", a.state != b.state);
        check("audit", a.audit != b.audit);
        check("log", a.log != b.log);
        check("metrics", a.metrics != b.metrics);
        out
    }

    /// Whether `new` holds a different cluster secret. A running agent takes it over as a mesh
    /// key rotation (old and new accepted for `cluster.secretGraceSeconds`); the control-plane
    /// engine keeps the secret it started with until the agent restarts.
    pub fn secret_changed(&self, new: &Config) -> bool {
        self.cluster_secret != new.cluster_secret
    }

    /// Fields that a running agent cannot take over without a restart, if `new` changes them.
    /// The cluster secret is not one of them: see [`Config::secret_changed`].
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.spec, &new.spec);
        let mut out = Vec::new();
        if a.cluster.name != b.cluster.name {
            out.push("cluster.name");
        }
        if self.node_name != new.node_name {
            out.push("node.name");
        }
        if a.node.role != b.node.role {
            out.push("node.role");
        }
        if a.mesh != b.mesh {
            out.push("mesh.pauseToleranceSeconds");
        }
        if a.kubernetes != b.kubernetes {
            out.push("kubernetes");
        }
        if a.admin != b.admin || self.socket_gid != new.socket_gid {
            out.push("admin");
        }
        if a.state.dir != b.state.dir {
            out.push("state.dir");
        }
        if a.state.runtime_dir != b.state.runtime_dir {
            out.push("state.runtimeDir");
        }
        if new.audit_dir() != self.audit_dir() {
            out.push("audit.dir");
        }
        if a.metrics != b.metrics {
            out.push("metrics");
        }
        out
    }
}

/// Reads and validates the config at `file`.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let file = &std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(file, &text)
}

/// Validates `text` as if it had been read from `file` (relative paths resolve against its
/// directory).
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let spec: AgentConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        // serde_yaml may put the path, or its parent's, in front of its message too; we
        // already report it.
        let text = ancestors(&field)
            .find_map(|p| text.strip_prefix(&format!("{p}: ")))
            .unwrap_or(&text)
            .to_string();
        let message = match inner.location() {
            Some(loc) => format!(
                "{} (line {}, column {})",
                strip_location(&text),
                loc.line(),
                loc.column()
            ),
            None => text,
        };
        ConfigError::Parse {
            file: file.to_path_buf(),
            field,
            message,
        }
    })?;
    validate::validate(file, spec)
}

/// `a.b.c`, `a.b`, `a`.
fn ancestors(field: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(field), |f| {
        f.rsplit_once('.').map(|(parent, _)| parent)
    })
}

/// serde_yaml appends " at line L column C"; we report the location ourselves.
fn strip_location(msg: &str) -> &str {
    match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

#[cfg(test)]
mod tests;

/// What the section modules' tests share: a minimal valid worker config to append to.
#[cfg(test)]
mod test_support {
    const BASE: &str = "apiVersion: kubedna.io/v1alpha1\nkind: AgentConfig\ncluster:\n  name: demo\n  secret: 0123456789abcdef0123456789abcdef\nnode:\n  name: n1\n  role: worker\n";

    /// `extra` appended to the minimal config, parsed as `/etc/kubedna/agent.yaml`.
    pub(crate) fn parse(extra: &str) -> Result<crate::Config, crate::ConfigError> {
        crate::parse(
            std::path::Path::new("/etc/kubedna/agent.yaml"),
            &format!("{BASE}{extra}"),
        )
    }
}
