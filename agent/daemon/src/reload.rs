//! Configuration reloads (SIGHUP and `kubedna reload`): re-read `agent.yaml`, refuse what is
//! invalid or what only a restart can change, audit the attempt either way, then apply: the log
//! filter, a cluster-secret rotation of the mesh's keys, and the new config generation. It owns
//! the config generations; the mesh applies a rotation through [`crate::mesh::rotate_secret`].
//!
//! Like every mutating call: prepare (validate, compute), audit (fsynced), apply. If the audit
//! write fails, nothing is applied.

use std::time::Duration;

use kubedna_config::Config;
use kubedna_mesh::security::KeyId;
use kubedna_proto::{AuditResult, Caller, Outcome, ReloadResponse, Role};

use crate::api::{audited, AppState};
use crate::logging::LogControl;

/// What a reload that changes the cluster secret did to the mesh, for the reload answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRotation {
    /// The new key's id (public, in every packet header; never key material).
    pub key: KeyId,
    /// How long the previous key stays accepted.
    pub grace: Duration,
}

impl SecretRotation {
    /// The note for the reload answer's `changed` list and the audit record.
    pub fn note(&self) -> String {
        format!(
            "cluster.secret (mesh key {} accepted now, sealed with once every live member accepts it; the previous key stays accepted for {} s; the control-plane engine keeps the secret it started with until the agent restarts)",
            self.key,
            self.grace.as_secs()
        )
    }
}

/// The rotation `new` asks for if its secret differs from `current`'s, computed without
/// touching the mesh (the reload's prepare step). `None` when the secret is unchanged.
pub fn prepare_rotation(current: &Config, new: &Config) -> Result<Option<SecretRotation>, String> {
    if !current.secret_changed(new) {
        return Ok(None);
    }
    Ok(Some(SecretRotation {
        key: kubedna_mesh::security::key_id(&new.spec.cluster.name, &new.cluster_secret),
        grace: Duration::from_secs(new.spec.cluster.secret_grace_seconds),
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Audit(String),
}

/// Re-reads the config file. An invalid file, or one that changes what only a restart can
/// change, is refused and the running config stays; either way the attempt is audited. A new
/// cluster secret rotates the mesh's keys (see [`crate::mesh::rotate_secret`]); the answer's
/// `changed` says so, naming the new key's id, never the secret.
pub async fn reload_config(
    state: &AppState,
    caller: Caller,
    role: Option<Role>,
) -> Result<ReloadResponse, ReloadError> {
    let _serial = state.reload_serial().await;
    let current = state.config();
    let path = current.file.clone();
    let action = "config.reload";
    let args = serde_json::json!({"file": path});
    let status = if caller.via == kubedna_proto::Via::Socket {
        422
    } else {
        0
    };
    let candidate = tokio::task::spawn_blocking(move || kubedna_config::load(&path))
        .await
        .map_err(|e| ReloadError::Invalid(format!("reload task failed: {e}")))?;
    let refuse = |message: String| AuditResult {
        outcome: Outcome::Error,
        status,
        message: Some(message),
    };
    let new = match candidate {
        Ok(c) => c,
        Err(e) => {
            let message = format!(
                "{}; the running configuration is unchanged",
                kubedna_host::error_chain(&e)
            );
            audited(state, caller, role, action, args, refuse(message.clone()))
                .await
                .map_err(ReloadError::Audit)?;
            return Err(ReloadError::Invalid(message));
        }
    };
    let restart_only = current.restart_only_changes(&new);
    if !restart_only.is_empty() {
        let message = format!(
            "{}: {} cannot change while the agent runs; restart it to apply (systemctl restart kubedna-agent); the running configuration is unchanged",
            new.file.display(),
            restart_only.join(", ")
        );
        audited(state, caller, role, action, args, refuse(message.clone()))
            .await
            .map_err(ReloadError::Audit)?;
        return Err(ReloadError::Invalid(message));
    }
    let new_filter = (new.spec.log.level != current.spec.log.level)
        .then(|| LogControl::parse(&new.spec.log.level).map(|p| (new.spec.log.level.clone(), p)));
    let new_filter = match new_filter.transpose() {
        Ok(f) => f,
        Err(message) => {
            audited(state, caller, role, action, args, refuse(message.clone()))
                .await
                .map_err(ReloadError::Audit)?;
            return Err(ReloadError::Invalid(message));
        }
    };
    let rotation = match prepare_rotation(&current, &new) {
        Ok(r) => r,
        Err(message) => {
            audited(state, caller, role, action, args, refuse(message.clone()))
                .await
                .map_err(ReloadError::Audit)?;
            return Err(ReloadError::Invalid(message));
        }
    };
    let mut changed = current.changed_sections(&new);
    changed.extend(rotation.as_ref().map(SecretRotation::note));
    let ok = AuditResult {
        outcome: Outcome::Ok,
        status: if status == 0 { 0 } else { 200 },
        message: Some(format!(
            "changed: {}",
            if changed.is_empty() {
                "nothing".into()
            } else {
                changed.join(", ")
            }
        )),
    };
    audited(state, caller, role, action, args, ok)
        .await
        .map_err(ReloadError::Audit)?;
    if let Some((text, parsed)) = new_filter {
        state.log().apply(&text, parsed);
    }
    if let Some(rotation) = &rotation {
        crate::mesh::rotate_secret(state.mesh(), &new, rotation).await;
    }
    let generation = state.install_config(new);
    Ok(ReloadResponse {
        generation,
        changed,
    })
}
