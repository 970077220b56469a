//! The boundary between the runner and the API server: only the calls the catalogue makes.
//! [`crate::kube_cluster::KubeCluster`] implements it with kube-rs; [`crate::fakes`] in memory.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::format::HealthCheck;
use crate::object::ObjectKey;
use crate::validate::ClusterFacts;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Server-side apply refused: a field of ours is managed by another field manager now.
    #[error("{object}: conflict with another field manager: {message}")]
    Conflict { object: String, message: String },
    #[error("{what}: the API server does not serve it")]
    NotServed { what: String },
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("{check}: {message}")]
    Unhealthy { check: String, message: String },
}

/// What the runner needs from the API server.
pub trait Cluster: Send + Sync {
    /// Discovery: every served (group, version, kind) with its scope; the namespaces that exist.
    fn facts(&self) -> impl Future<Output = Result<ClusterFacts, ClusterError>> + Send;

    /// Every object of these `Kind.group`s, in all namespaces, labelled as part of our
    /// ApplySet (full bodies: the drift test compares them). Kinds no longer served are skipped.
    fn list_ours(
        &self,
        group_kinds: &BTreeSet<String>,
    ) -> impl Future<Output = Result<Vec<(ObjectKey, Value)>, ClusterError>> + Send;

    /// Server-side apply of `intent` with the field manager `kubedna`.
    fn apply(
        &self,
        api_version: &str,
        key: &ObjectKey,
        intent: &Value,
        force: bool,
        dry_run: bool,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Deletes the object if its uid is still `uid` (a look-alike created since is kept);
    /// an object already gone is success.
    fn delete(
        &self,
        key: &ObjectKey,
        uid: &str,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Takes our ApplySet and component labels and our digest annotation off the object (a
    /// merge patch: every other field stays as it is), so it is no longer ours.
    fn release(&self, key: &ObjectKey) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Whether an object of a kind the CRD `crd` defines exists without our ApplySet label.
    fn foreign_objects(&self, crd: &str)
        -> impl Future<Output = Result<bool, ClusterError>> + Send;

    /// Awaits `check` (a watch, not a sleep) for at most `timeout`.
    fn health(
        &self,
        check: &HealthCheck,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
}
