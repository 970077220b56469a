//! The one trait behind which the doctor lists, fences, deletes and creates VMs. Implementations:
//! [`hetzner::Hetzner`] (Hetzner Cloud; the lab serves the same API subset on its bridge, so the
//! lab uses this client too). Every call either completes its provider action (polled to
//! `success`) or returns an error naming the request and what to do; a call never returns
//! half-done success. Implementations must never log or return the API token.

pub mod hetzner;

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::verdict::VmState;

/// A VM's status, in Hetzner Cloud's words (`hcloud/schema/server.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Initializing,
    Starting,
    Running,
    Stopping,
    Off,
    Deleting,
    Migrating,
    Rebuilding,
    #[serde(other)]
    Unknown,
}

impl VmStatus {
    /// The provider signal this status gives the verdict.
    pub fn signal(self) -> VmState {
        match self {
            VmStatus::Running => VmState::Running,
            VmStatus::Off => VmState::Off,
            VmStatus::Unknown => VmState::Failed,
            VmStatus::Deleting => VmState::Missing,
            VmStatus::Initializing
            | VmStatus::Starting
            | VmStatus::Stopping
            | VmStatus::Migrating
            | VmStatus::Rebuilding => VmState::Transitional,
        }
    }
}

/// One VM of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: u64,
    pub name: String,
    pub status: VmStatus,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What [`Provider::create`] needs: the rest (type, image, location, network) is the
/// provider's configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct NewVm {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// cloud-init user data: the node's freshly rendered seed. It may hold the cluster secret,
    /// so it is never logged (see the Debug impl).
    pub user_data: String,
}

impl std::fmt::Debug for NewVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewVm")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field(
                "user_data",
                &format_args!("<{} bytes>", self.user_data.len()),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot read the provider token file {path}: fix the file or provider.hetzner.tokenFile in agent.yaml")]
    TokenFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{request}: the request failed ({detail}); check this node's route to the provider API"
    )]
    Transport { request: String, detail: String },
    #[error("{request}: HTTP {status}, {code}: {message}{hint}")]
    Api {
        request: String,
        status: u16,
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("{request}: rate limited (429) and the limit resets in {reset_in_secs}s, beyond the {max_wait_secs}s this call waits; the doctor retries on its next pass")]
    RateLimited {
        request: String,
        reset_in_secs: u64,
        max_wait_secs: u64,
    },
    #[error("{request}: action {action} ended in error {code}: {message}")]
    ActionFailed {
        request: String,
        action: u64,
        code: String,
        message: String,
    },
    #[error("{request}: action {action} still running after {secs}s; the doctor checks again on its next pass")]
    ActionTimeout {
        request: String,
        action: u64,
        secs: u64,
    },
    #[error("{request}: unexpected answer ({detail})")]
    Answer { request: String, detail: String },
    #[error("user data for {name} is {len} bytes, above the provider's limit of {max}: shorten the seed")]
    UserDataTooLarge {
        name: String,
        len: usize,
        max: usize,
    },
}

impl ProviderError {
    /// The provider refused a create because the name is taken (Hetzner `uniqueness_error`):
    /// the VM exists already, an earlier create went through.
    pub fn is_name_taken(&self) -> bool {
        matches!(self, ProviderError::Api { code, .. } if code == "uniqueness_error")
    }

    /// The VM is gone already (`not_found`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProviderError::Api { code, .. } if code == "not_found")
    }
}

/// A VM provider.
pub trait Provider: Send + Sync {
    /// Every VM of this cluster (the cluster's label selector), all pages.
    fn list(&self) -> impl Future<Output = Result<Vec<Vm>, ProviderError>> + Send;
    /// Cuts the VM's power and waits until the provider's action succeeded.
    fn power_off(&self, id: u64) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Deletes the VM and waits until the action succeeded; a VM already gone is success.
    fn delete(&self, id: u64) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Creates and starts a VM, waiting until the create action succeeded.
    fn create(&self, vm: &NewVm) -> impl Future<Output = Result<Vm, ProviderError>> + Send;
}
