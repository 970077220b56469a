//! The component catalogue: what the cluster's components are and how the elected leader keeps
//! the cluster at exactly that pinned state. This crate owns the catalogue format
//! ([`format`]), loading a bundle with its SHA-256 pins ([`bundle`]), validating it as a whole
//! against what the API server serves ([`validate`]), the pure planner that turns the wanted
//! state, the live objects and the recorded progress into ordered steps ([`plan`]), and the
//! runner that carries the steps out through a [`cluster::Cluster`] (kube-rs server-side apply
//! with the field manager `kubedna`; an in-memory fake for tests), checking a [`run::Fence`]
//! before every write. It never writes without passing that fence, never applies a catalogue
//! that failed validation, and never deletes an object that does not carry our ApplySet label.
//! It does not hold the leader term itself: the leader duty in the control plane does, and
//! hands in the fence, the progress store and the audit sink.

pub mod bundle;
pub mod cluster;
pub mod credentials;
pub mod fakes;
pub mod format;
pub mod kube_cluster;
pub mod object;
pub mod plan;
pub mod progress;
pub mod run;
pub mod validate;

use std::path::PathBuf;

pub use bundle::{load, Catalogue, Component};
pub use format::{HealthCheck, Selection};
pub use object::{ObjectKey, FIELD_MANAGER};
pub use validate::{validate, ClusterFacts, Scope, Selected};

/// One thing wrong with a catalogue, naming where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub component: Option<String>,
    pub file: Option<String>,
    pub object: Option<String>,
    pub what: String,
}

impl Problem {
    pub fn component(component: &str, what: impl Into<String>) -> Self {
        Problem {
            component: Some(component.into()),
            file: None,
            object: None,
            what: what.into(),
        }
    }
    pub fn file(component: &str, file: &str, what: impl Into<String>) -> Self {
        Problem {
            file: Some(file.into()),
            ..Problem::component(component, what)
        }
    }
    pub fn object(
        component: &str,
        file: &str,
        object: &ObjectKey,
        what: impl Into<String>,
    ) -> Self {
        Problem {
            object: Some(object.to_string()),
            ..Problem::file(component, file, what)
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(c) = &self.component {
            write!(f, "component {c}: ")?;
        }
        if let Some(file) = &self.file {
            write!(f, "file {file}: ")?;
        }
        if let Some(o) = &self.object {
            write!(f, "object {o}: ")?;
        }
        f.write_str(&self.what)
    }
}

/// Why a catalogue was refused. Nothing of a refused catalogue is applied.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("{file}: cannot read the catalogue")]
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
    #[error("the catalogue was refused, nothing applied: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { problems: Vec<Problem> },
}
