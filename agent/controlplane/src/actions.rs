//! What the agent changes on its own, reported for the audit log: etcd started, members added,
//! promoted and removed, `kubeadm init`, `join` and `reset`, leader terms won and lost, a gone
//! leader's seat emptied, join material renewed. The engine and the duties report each change
//! with its reason and result through an [`ActionLog`]; the daemon writes every report into the
//! audit log with the agent as the caller (`docs/api.md`, "The agent's own actions").
//!
//! Reporting never blocks or fails the step it describes: the log is an unbounded channel that
//! the daemon drains into the audit writer, in order. A long operation (a kubeadm run takes
//! minutes with the real binary) is reported twice, when it starts and when it ends, so an
//! auditor sees a run that the agent's death interrupted, and a test can count attempts. No
//! report carries a secret: callers pass names, ids, URLs and reasons, never tokens or keys.

use serde_json::Value;
use tokio::sync::mpsc;

/// One change the agent made (or began) on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentAction {
    /// The audit action, such as `etcd.member.add` or `kubeadm.init`.
    pub action: &'static str,
    /// Why the agent did it, in words an operator can follow.
    pub reason: String,
    /// What it acted on (ids, names, URLs, the phase `started` or `finished`); never a secret.
    pub args: Value,
    /// `Err` carries the error chain when the change failed.
    pub result: Result<(), String>,
}

/// Where the engine reports its actions; the default reports nowhere (in-process tests that do
/// not look at them).
#[derive(Debug, Clone, Default)]
pub struct ActionLog(Option<mpsc::UnboundedSender<AgentAction>>);

impl ActionLog {
    /// A log and the receiver its reports arrive on, in order.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<AgentAction>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ActionLog(Some(tx)), rx)
    }

    pub fn record(
        &self,
        action: &'static str,
        reason: impl Into<String>,
        args: Value,
        result: Result<(), String>,
    ) {
        if let Some(tx) = &self.0 {
            // A closed receiver means the daemon is shutting down; nothing is left to tell.
            let _ = tx.send(AgentAction {
                action,
                reason: reason.into(),
                args,
                result,
            });
        }
    }

    /// The start of a long operation: `args` gains `"phase": "started"`.
    pub fn started(&self, action: &'static str, reason: impl Into<String>, args: Value) {
        self.record(action, reason, with_phase(args, "started"), Ok(()));
    }

    /// The end of a long operation: `args` gains `"phase": "finished"`.
    pub fn finished<E: std::error::Error>(
        &self,
        action: &'static str,
        reason: impl Into<String>,
        args: Value,
        result: Result<(), &E>,
    ) {
        let result = result.map_err(|e| kubedna_host::error_chain(e));
        self.record(action, reason, with_phase(args, "finished"), result);
    }

    /// A one-step change and its outcome.
    pub fn done<T, E: std::error::Error>(
        &self,
        action: &'static str,
        reason: impl Into<String>,
        args: Value,
        result: &Result<T, E>,
    ) {
        let result = match result {
            Ok(_) => Ok(()),
            Err(e) => Err(kubedna_host::error_chain(e)),
        };
        self.record(action, reason, args, result);
    }
}

fn with_phase(args: Value, phase: &str) -> Value {
    match args {
        Value::Object(mut m) => {
            m.insert("phase".into(), Value::String(phase.into()));
            Value::Object(m)
        }
        Value::Null => serde_json::json!({ "phase": phase }),
        other => serde_json::json!({ "phase": phase, "value": other }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_arrive_in_order_with_their_phase_and_error_chain() {
        let (log, mut rx) = ActionLog::channel();
        log.started(
            "kubeadm.init",
            "first control plane",
            json!({ "node": "cp-1" }),
        );
        let err = std::io::Error::other("exit 1");
        log.finished("kubeadm.init", "first control plane", json!({}), Err(&err));
        log.done::<(), std::io::Error>("leader.won", "campaign", json!(null), &Ok(()));
        let a = rx.try_recv().expect("a report");
        assert_eq!(a.args, json!({ "node": "cp-1", "phase": "started" }));
        assert_eq!(a.result, Ok(()));
        let b = rx.try_recv().expect("a report");
        assert_eq!(b.args, json!({ "phase": "finished" }));
        assert_eq!(b.result, Err("exit 1".to_string()));
        assert_eq!(rx.try_recv().expect("a report").action, "leader.won");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_default_log_reports_nowhere_and_never_fails() {
        let log = ActionLog::default();
        log.started("kubeadm.join", "worker", json!({}));
    }
}
