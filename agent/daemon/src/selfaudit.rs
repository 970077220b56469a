//! The agent's own actions in the audit log. The control-plane engine and its leader duties
//! report what they change on their own ([`kubedna_controlplane::actions`]); this module writes
//! each report as one audit record, in order, with the agent as the caller (`via: agent`, this
//! process's pid), the reason and the result, redacted like every other record. The records
//! join the same hash chain and are fsynced like the admin calls' (`docs/api.md`).

use kubedna_audit::{AuditHandle, Entry};
use kubedna_controlplane::actions::{ActionLog, AgentAction};
use kubedna_proto::{AuditResult, Outcome, Via};

/// A log whose reports are written to `audit` by a task of its own (in `tasks`), which ends
/// when the last reporter is dropped.
pub fn log(audit: AuditHandle, tasks: &crate::tasks::Tasks) -> ActionLog {
    let (log, mut rx) = ActionLog::channel();
    tasks.spawn("agent action audit", async move {
        while let Some(a) = rx.recv().await {
            let action = a.action;
            if let Err(e) = audit.append(entry(a)).await {
                tracing::error!(error = %e, action, "cannot write the audit record of the agent's own action; check the disk");
            }
        }
    });
    log
}

/// The audit entry for one report.
pub fn entry(a: AgentAction) -> Entry {
    let mut caller = kubedna_host::creds::caller_self(Via::Agent);
    caller.pid = i32::try_from(std::process::id()).ok();
    let mut args = serde_json::json!({ "reason": a.reason });
    if let (Some(all), serde_json::Value::Object(more)) = (args.as_object_mut(), a.args) {
        all.extend(more);
    }
    kubedna_audit::redact(&mut args);
    let (outcome, message) = match a.result {
        Ok(()) => (Outcome::Ok, None),
        Err(e) => (Outcome::Error, Some(e)),
    };
    Entry {
        caller,
        role: None,
        action: a.action.into(),
        args,
        result: AuditResult {
            outcome,
            status: 0,
            message,
        },
        time: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_becomes_an_agent_record_with_its_reason_redacted_args_and_error() {
        let e = entry(AgentAction {
            action: "kubeadm.join",
            reason: "a worker joins".into(),
            args: json!({ "phase": "finished", "token": "abcdef.0123456789abcdef" }),
            result: Err("exit 1".into()),
        });
        assert_eq!(e.caller.via, Via::Agent);
        assert_eq!(e.caller.pid, i32::try_from(std::process::id()).ok());
        assert_eq!(e.action, "kubeadm.join");
        assert_eq!(
            e.args,
            json!({ "reason": "a worker joins", "phase": "finished", "token": "[redacted]" })
        );
        assert_eq!(e.result.outcome, Outcome::Error);
        assert_eq!(e.result.message.as_deref(), Some("exit 1"));
        assert!(e.role.is_none());
    }
}
