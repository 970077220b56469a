//! `kubedna doctor status|history|pause|resume` on the agent's side (docs/doctor.md). The
//! replacement in flight, the history and the pause are read from (and the pause written to)
//! etcd through this control plane's engine, so any control plane answers; the node signals
//! and the decision come from the doctor's last pass and only the leader has them
//! ([`DoctorSlot`], filled when the daemon runs the doctor duty). Pause and resume are admin
//! calls and, like every mutating call, are audited before they are applied.

use std::sync::{Arc, OnceLock};

use hyper::StatusCode;
use kubedna_controlplane::doctor_duty::{read_records, set_paused};
use kubedna_doctor::guard::{Decision, Pause};
use kubedna_doctor::pass::{HistoryEntry, Report};
use kubedna_doctor::steps::{Outcome as StepOutcome, Progress};
use kubedna_doctor::verdict::Verdict;
use kubedna_proto::{
    AuditResult, Caller, DoctorHistoryEntry, DoctorHistoryResponse, DoctorNode, DoctorPause,
    DoctorPauseRequest, DoctorReplacement, DoctorStatusResponse, Outcome, Role,
};

use crate::api::{audited, error, json, AppState, Resp};

/// The leader's doctor, for its last report.
pub trait DoctorReport: Send + Sync + std::fmt::Debug {
    fn report(&self) -> Report;
}

/// Set once when the daemon runs the doctor duty on this node.
#[derive(Debug, Clone, Default)]
pub struct DoctorSlot(Arc<OnceLock<Arc<dyn DoctorReport>>>);

impl DoctorSlot {
    pub fn set(&self, doctor: Arc<dyn DoctorReport>) {
        let _ = self.0.set(doctor);
    }

    fn report(&self) -> Option<Report> {
        self.0.get().map(|d| d.report())
    }
}

fn to_snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn verdict(v: Verdict) -> String {
    match v {
        Verdict::Healthy => "healthy".into(),
        Verdict::Suspect => "suspect".into(),
        Verdict::Dead { by } => format!("dead (by {})", to_snake(&by)),
    }
}

fn decision(d: &Decision) -> String {
    match d {
        Decision::Nothing => "nothing to do".into(),
        Decision::Continue { node } => format!("continuing the replacement of {node}"),
        Decision::Replace { node, .. } => format!("replacing {node}"),
        Decision::Wait(why) => format!("waiting: {why}"),
    }
}

fn replacement(p: &Progress) -> DoctorReplacement {
    DoctorReplacement {
        node: p.node.clone(),
        role: p.role.to_string(),
        step: to_snake(&p.step),
        started: p.started,
        step_since: p.step_since,
        signals: p.signals.clone(),
        old_vm: p.old_vm,
        new_vm: p.new_vm,
        term: p.term,
    }
}

fn pause(p: Pause) -> DoctorPause {
    DoctorPause {
        by: p.by,
        since: p.since,
        reason: p.reason,
    }
}

fn history_entry(h: HistoryEntry) -> DoctorHistoryEntry {
    DoctorHistoryEntry {
        node: h.node,
        role: h.role.to_string(),
        outcome: match h.outcome {
            StepOutcome::Replaced => "replaced".into(),
            StepOutcome::Abandoned { why } => format!("abandoned: {why}"),
        },
        started: h.started,
        ended: h.ended,
        signals: h.signals,
        term: h.term,
    }
}

fn no_etcd() -> Resp {
    error(
        StatusCode::CONFLICT,
        "the doctor's records live in etcd: ask a control plane whose etcd runs (`kubedna status` shows the phase)",
        None,
    )
}

/// `GET /v1/doctor`.
pub async fn status(state: &AppState) -> Resp {
    let Some(coord) = state.node().handle().and_then(|h| h.coordinator()) else {
        return no_etcd();
    };
    let (in_flight, paused, _) = match read_records(&coord).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                kubedna_host::error_chain(&e),
                None,
            )
        }
    };
    let report = state.doctor().report();
    let leading = report.as_ref().is_some_and(|r| r.at > 0);
    let report = report.unwrap_or_default();
    json(
        StatusCode::OK,
        &DoctorStatusResponse {
            enabled: state.config().spec.doctor.enabled,
            leading,
            nodes: report
                .nodes
                .iter()
                .map(|n| DoctorNode {
                    name: n.name.clone(),
                    role: n.role.to_string(),
                    verdict: verdict(n.verdict),
                    signals: n.signals.clone(),
                })
                .collect(),
            decision: report.decision.as_ref().map(decision),
            in_flight: in_flight.as_ref().map(replacement),
            paused: paused.map(pause),
            error: report.error,
        },
    )
}

/// `GET /v1/doctor/history`.
pub async fn history(state: &AppState) -> Resp {
    let Some(coord) = state.node().handle().and_then(|h| h.coordinator()) else {
        return no_etcd();
    };
    match read_records(&coord).await {
        Ok((_, _, h)) => json(
            StatusCode::OK,
            &DoctorHistoryResponse {
                entries: h.into_iter().map(history_entry).collect(),
            },
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            kubedna_host::error_chain(&e),
            None,
        ),
    }
}

/// `POST /v1/doctor/pause` and `/v1/doctor/resume` (admin): audited, then written to etcd.
pub async fn set_pause(
    state: &AppState,
    caller: Caller,
    role: Role,
    body: &[u8],
    pausing: bool,
) -> Resp {
    let action = if pausing {
        "doctor.pause"
    } else {
        "doctor.resume"
    };
    let req: DoctorPauseRequest = if body.is_empty() {
        DoctorPauseRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be {{\"reason\": \"<text>\"}} or empty: {e}"),
                    None,
                )
            }
        }
    };
    let args = serde_json::json!({"reason": req.reason});
    let Some(coord) = state.node().handle().and_then(|h| h.coordinator()) else {
        let refused = AuditResult {
            outcome: Outcome::Error,
            status: 409,
            message: Some("no etcd on this node".into()),
        };
        if let Err(m) = audited(state, caller, Some(role), action, args, refused).await {
            return error(StatusCode::SERVICE_UNAVAILABLE, m, None);
        }
        return no_etcd();
    };
    let by = caller
        .user
        .clone()
        .unwrap_or_else(|| format!("uid {}", caller.uid));
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let p = Pause {
        by,
        since: now,
        reason: req.reason.clone(),
    };
    let ok = AuditResult {
        outcome: Outcome::Ok,
        status: 200,
        message: None,
    };
    if let Err(m) = audited(state, caller, Some(role), action, args, ok).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, m, None);
    }
    match set_paused(&coord, pausing.then_some(&p)).await {
        Ok(()) => {
            tracing::info!(action, by = %p.by, "doctor {}", if pausing { "paused" } else { "resumed" });
            json(
                StatusCode::OK,
                &serde_json::json!({"paused": pausing.then(|| pause(p))}),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{}; the audit log records the attempt, nothing changed",
                kubedna_host::error_chain(&e)
            ),
            None,
        ),
    }
}
