//! What the leader records in etcd (`/kubedna/<cluster>/catalogue`) after each step, so the
//! next leader resumes and `kubedna catalogue status` can show it from any node; and the
//! events each apply, prune, drift correction and failed health check raise for the audit log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::object::ObjectKey;

/// The etcd key (under `/kubedna/<cluster>/`) the progress is stored at.
pub const PROGRESS_KEY: &str = "catalogue";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The catalogue last validated, and its digest.
    #[serde(default)]
    pub catalogue_version: Option<String>,
    #[serde(default)]
    pub catalogue_digest: Option<String>,
    /// Every component applied and not yet pruned.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentRecord>,
    /// Every `Kind.group` we ever applied and have not pruned to the last object: where the
    /// prune looks for our objects (ApplySet's `contains-group-kinds`).
    #[serde(default)]
    pub group_kinds: BTreeSet<String>,
    /// The leader term of the last pass.
    #[serde(default)]
    pub term: i64,
    #[serde(default)]
    pub last_pass_unix: Option<u64>,
    /// Why the last pass stopped, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentRecord {
    pub wanted_version: String,
    /// Set once every object of the wanted version was applied and its health checks passed.
    #[serde(default)]
    pub applied_version: Option<String>,
    /// Position in the apply order of the last pass: prune goes in reverse.
    #[serde(default)]
    pub order: usize,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// Why an object is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Not found with our label: created, or adopted if it existed without it.
    Create,
    /// The catalogue's intent for it changed.
    Upgrade,
    /// Its intent is the same but the live object no longer holds it: a hand edit.
    Drift,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Create => "create",
            Change::Upgrade => "upgrade",
            Change::Drift => "drift correction",
        })
    }
}

/// One thing the catalogue did or refused, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "event")]
pub enum Event {
    Applied {
        component: String,
        object: ObjectKey,
        change: Change,
    },
    Pruned {
        component: String,
        object: ObjectKey,
    },
    /// An object of ours that left the catalogue but is kept (a namespace, a CRD with
    /// objects that are not ours).
    PruneKept {
        component: String,
        object: ObjectKey,
        why: String,
    },
    /// A field another manager took over; not taken back because the component has no `force`.
    Conflict {
        component: String,
        object: ObjectKey,
        message: String,
    },
    HealthFailed {
        component: String,
        check: String,
        message: String,
    },
    /// The catalogue was refused as a whole.
    Refused { problems: Vec<String> },
}

impl Event {
    /// A short action name for an audit record.
    pub fn action(&self) -> &'static str {
        match self {
            Event::Applied {
                change: Change::Drift,
                ..
            } => "catalogue.drift-correct",
            Event::Applied { .. } => "catalogue.apply",
            Event::Pruned { .. } => "catalogue.prune",
            Event::PruneKept { .. } => "catalogue.prune-kept",
            Event::Conflict { .. } => "catalogue.conflict",
            Event::HealthFailed { .. } => "catalogue.health-failed",
            Event::Refused { .. } => "catalogue.refused",
        }
    }
}

impl Event {
    /// Why the agent did it, for an audit record.
    pub fn reason(&self) -> String {
        match self {
            Event::Applied { change, .. } => {
                format!("the catalogue's pinned state ({change})")
            }
            Event::Pruned { .. } => "the object left the catalogue".into(),
            Event::PruneKept { why, .. } => format!("left the catalogue; kept: {why}"),
            Event::Conflict { .. } => {
                "another field manager holds a field of ours; the component has no force".into()
            }
            Event::HealthFailed { .. } => "a health check failed; the rollout stopped".into(),
            Event::Refused { .. } => "the catalogue was refused; nothing applied".into(),
        }
    }

    /// The failure an audit record carries, if the event is one.
    pub fn failure(&self) -> Option<String> {
        match self {
            Event::Conflict { message, .. } | Event::HealthFailed { message, .. } => {
                Some(message.clone())
            }
            Event::Refused { problems } => Some(problems.join("; ")),
            _ => None,
        }
    }
}

/// Where events go: the daemon hands in a closure that writes audit records.
pub type EventSink = std::sync::Arc<dyn Fn(&Event) + Send + Sync>;
