//! What the doctor tells the audit log. Every decision (a node judged dead, a guard holding the
//! doctor back) and every step (taken, done, failed) becomes one [`DoctorEvent`] naming the node
//! and the signals; the daemon passes a [`DoctorEvents`] sink that writes each as an agent-self
//! audit record. Events never carry the provider token or the seed (user data).

use serde::{Deserialize, Serialize};

use crate::Unix;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A node was judged dead and its replacement started.
    Decision,
    /// A guard holds the doctor back (maxUnhealthy, pause, back-off, lease, quorum).
    Wait,
    /// A step's action was carried out.
    Step,
    /// A step's action failed; it is retried.
    StepFailed,
    /// A replacement ended (replaced or abandoned).
    Finished,
    /// An admin paused or resumed the doctor.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorEvent {
    pub at: Unix,
    pub kind: EventKind,
    /// The node the event is about (empty for cluster-wide waits).
    pub node: String,
    /// What happened, in words: the step and its outcome, or the wait's reason.
    pub what: String,
    /// The node's signals at that moment, in words.
    pub signals: String,
    pub term: i64,
}

impl DoctorEvent {
    /// The audit action name: `doctor.<kind>`.
    pub fn action(&self) -> String {
        let kind = serde_json::to_value(&self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("doctor.{kind}")
    }
}

/// Where events go (the daemon's audit writer; a vector in tests).
pub trait DoctorEvents: Send + Sync {
    fn record(&self, event: &DoctorEvent);
}

/// Drops events (a node without an audit log).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl DoctorEvents for NoEvents {
    fn record(&self, _: &DoctorEvent) {}
}

/// Keeps events in memory (tests, and the duty's own history buffer).
#[derive(Debug, Default)]
pub struct Collected(pub std::sync::Mutex<Vec<DoctorEvent>>);

impl DoctorEvents for Collected {
    fn record(&self, event: &DoctorEvent) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event.clone());
        }
    }
}
