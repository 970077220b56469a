//! `kubedna doctor status|history|pause|resume` on the agent's side (docs/doctor.md). The
//! replacement in flight, the history and the pause are read from (and the pause written to)
//! etcd through this control plane's engine, so any control plane answers; the node signals
//! and the decision come from the doctor's last pass and only the leader has them
//! ([`DoctorSlot`], filled when the daemon runs the doctor duty). Pause and resume are admin
//! calls and, like every mutating call, are audited before they are applied.
//!
//! [`build`] makes the doctor duty for a control plane with `doctor.enabled`: the provider from
//! `provider:` (Hetzner Cloud, or the lab's API subset at `provider.lab.hcloudApi` with the same
//! client), the Node objects through
//! kubectl and the admin kubeconfig, the mesh's view refreshed from the mesh, the seeds from
//! the role templates in `/etc/kubedna/doctor/`. Each of its events is logged and written as an
//! agent-self audit record (`doctor.decision`, `doctor.wait`, `doctor.step`, ... through the
//! engine's `ActionLog`), and handed to a hook set with [`DoctorSlot::set_audit`] if any.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper::StatusCode;
use kubedna_config::{Config, ProviderKind};
use kubedna_controlplane::actions::ActionLog;
use kubedna_controlplane::doctor_duty::{read_records, set_paused, DoctorDuty, LeaderDuty};
use kubedna_controlplane::duties::{DutyError, Term};
use kubedna_doctor::events::EventKind;
use kubedna_doctor::guard::{Decision, GuardConfig, Pause};
use kubedna_doctor::kubectl::Kubectl;
use kubedna_doctor::pass::{
    Doctor, DoctorConfig, HistoryEntry, Mesh, MeshNode, Report, CLUSTER_LABEL,
};
use kubedna_doctor::provider::hetzner::{Hetzner, HetznerConfig, HETZNER_API};
use kubedna_doctor::seeds::TemplateSeeds;
use kubedna_doctor::steps::{Outcome as StepOutcome, Progress};
use kubedna_doctor::verdict::{MeshState, Thresholds, Verdict};
use kubedna_doctor::{DoctorEvent, DoctorEvents};
use kubedna_mesh::Liveness;
use kubedna_proto::{
    AuditResult, Caller, DoctorHistoryEntry, DoctorHistoryResponse, DoctorNode, DoctorPause,
    DoctorPauseRequest, DoctorReplacement, DoctorStatusResponse, Outcome, Role,
};
use tokio::sync::watch;

use crate::api::{audited, error, json, AppState, Resp};
use crate::mesh::MeshHandle;

/// The leader's doctor, for its last report.
pub trait DoctorReport: Send + Sync + std::fmt::Debug {
    fn report(&self) -> Report;
}

/// Where each doctor event goes besides the log: the daemon's audit writer.
pub type AuditHook = Arc<dyn Fn(&DoctorEvent) + Send + Sync>;

/// Set once when the daemon runs the doctor duty on this node.
#[derive(Clone, Default)]
pub struct DoctorSlot {
    report: Arc<OnceLock<Arc<dyn DoctorReport>>>,
    audit: Arc<OnceLock<AuditHook>>,
}

impl std::fmt::Debug for DoctorSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoctorSlot")
            .field("running", &self.report.get().is_some())
            .field("audited", &self.audit.get().is_some())
            .finish()
    }
}

impl DoctorSlot {
    pub fn set(&self, doctor: Arc<dyn DoctorReport>) {
        let _ = self.report.set(doctor);
    }

    /// Sends every doctor event to `hook` too (an agent-self audit record each).
    pub fn set_audit(&self, hook: AuditHook) {
        let _ = self.audit.set(hook);
    }

    fn report(&self) -> Option<Report> {
        self.report.get().map(|d| d.report())
    }
}

/// Logs each event, writes it as an agent-self audit record (the engine's [`ActionLog`]), and
/// passes it to the audit hook if one is set.
#[derive(Clone)]
struct Events(Arc<OnceLock<AuditHook>>, ActionLog);

/// The audit action of an event (`ActionLog` takes static names).
fn action_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Decision => "doctor.decision",
        EventKind::Wait => "doctor.wait",
        EventKind::Step => "doctor.step",
        EventKind::StepFailed => "doctor.step-failed",
        EventKind::Finished => "doctor.finished",
        EventKind::Admin => "doctor.admin",
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl DoctorEvents for Events {
    fn record(&self, e: &DoctorEvent) {
        tracing::info!(action = %e.action(), node = %e.node, what = %e.what, signals = %e.signals, term = e.term, "doctor");
        let result = match e.kind {
            EventKind::StepFailed => Err(e.what.clone()),
            _ => Ok(()),
        };
        self.1.record(
            action_name(&e.kind),
            e.what.clone(),
            serde_json::json!({"node": e.node, "signals": e.signals, "term": e.term}),
            result,
        );
        if let Some(hook) = self.0.get() {
            hook(e);
        }
    }
}

/// Every node the mesh knows, refreshed from the mesh (the doctor's view is synchronous).
#[derive(Debug, Clone, Default)]
struct MeshView(Arc<Mutex<Vec<MeshNode>>>);

impl Mesh for MeshView {
    fn nodes(&self) -> Vec<MeshNode> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

async fn keep_mesh_view(
    mesh: MeshHandle,
    view: MeshView,
    own: MeshNode,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = mesh.subscribe();
    loop {
        if let Ok(members) = mesh.members().await {
            let mut nodes = vec![own.clone()];
            for m in members {
                let Some(meta) = m.meta else { continue };
                if meta.name == own.name {
                    continue;
                }
                nodes.push(MeshNode {
                    name: meta.name,
                    role: meta.role,
                    state: match m.liveness {
                        Liveness::Alive => MeshState::Alive,
                        Liveness::Suspect => MeshState::Suspect,
                        Liveness::Down => MeshState::Down,
                    },
                });
            }
            if let Ok(mut v) = view.0.lock() {
                *v = nodes;
            }
        }
        tokio::select! {
            _ = events.recv() => {}
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

type ProductionDuty = DoctorDuty<Hetzner, Kubectl, MeshView, TemplateSeeds, Events>;

#[derive(Debug)]
struct Reporter(Arc<ProductionDuty>);

impl DoctorReport for Reporter {
    fn report(&self) -> Report {
        self.0.report()
    }
}

#[derive(Debug)]
struct Shared(Arc<ProductionDuty>);

impl LeaderDuty for Shared {
    fn name(&self) -> &'static str {
        "doctor"
    }
    fn pass<'a>(
        &'a self,
        term: Term<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DutyError>> + Send + 'a>>
    {
        self.0.pass(term)
    }
}

/// The doctor duty for this node, when `doctor.enabled` and this node can lead; None (and why,
/// logged) otherwise.
pub fn build(
    config: &Config,
    mesh: &MeshHandle,
    slot: &DoctorSlot,
    actions: ActionLog,
    shutdown: watch::Receiver<bool>,
    tasks: &crate::tasks::Tasks,
) -> Option<Arc<dyn LeaderDuty>> {
    let spec = &config.spec;
    if !spec.doctor.enabled {
        return None;
    }
    if spec.node.role != kubedna_proto::NodeRole::ControlPlane {
        return None; // only control planes lead
    }
    let provider = match (spec.provider.kind, &spec.provider.hetzner) {
        (ProviderKind::Hetzner, Some(h)) => {
            let selector = h
                .label_selector
                .clone()
                .unwrap_or_else(|| format!("{CLUSTER_LABEL}={}", spec.cluster.name));
            let mut c = HetznerConfig::new(HETZNER_API, h.token_file.clone(), &selector);
            if let Some(t) = &h.server_type {
                c.server_type = t.clone();
            }
            if let Some(i) = &h.image {
                c.image = i.clone();
            }
            c.location = h.location.clone();
            Hetzner::new(c)
        }
        // The lab serves the same API on its bridge, backed by its nodes; its nodes carry the
        // lab's name as their cluster label.
        (ProviderKind::Lab, _) => match spec
            .provider
            .lab
            .as_ref()
            .and_then(|l| Some((l.name.clone(), l.hcloud_api.clone()?, l.token_file.clone()?)))
        {
            Some((lab, url, token)) => {
                let selector = format!("{CLUSTER_LABEL}={lab}");
                Hetzner::new(HetznerConfig::new(&url, token, &selector))
            }
            None => {
                tracing::warn!(
                    file = %config.file.display(),
                    "doctor.enabled is set with provider.kind lab but provider.lab.hcloudApi is not: run `kubedna-lab hcloud-api` and set hcloudApi and tokenFile; the doctor is off"
                );
                return None;
            }
        },
        _ => {
            tracing::warn!(
                file = %config.file.display(),
                "doctor.enabled is set but provider.kind is neither hetzner nor lab; the doctor is off"
            );
            return None;
        }
    };
    let d = &spec.doctor;
    let on = |s: u64| (s > 0).then_some(s);
    let cfg = DoctorConfig {
        guard: GuardConfig {
            enabled: true,
            max_unhealthy_percent: d.max_unhealthy_percent,
            backoff: d.backoff_seconds,
            backoff_max: d.backoff_seconds.max(3600),
        },
        thresholds: Thresholds {
            mesh_down: on(d.mesh_down_seconds),
            not_ready: on(d.not_ready_seconds),
            provider_off: on(d.provider_off_seconds),
            hung: on(d.hung_seconds),
        },
        node_startup: d.node_startup_seconds,
        cluster: spec.cluster.name.clone(),
    };
    let view = MeshView::default();
    let own = MeshNode {
        name: config.node_name.clone(),
        role: kubedna_proto::NodeRole::ControlPlane,
        state: MeshState::Alive,
    };
    tasks.spawn(
        "doctor mesh view keeper",
        keep_mesh_view(mesh.clone(), view.clone(), own, shutdown),
    );
    let doctor = Doctor::new(
        provider,
        Kubectl::default(),
        view,
        TemplateSeeds::default(),
        Events(slot.audit.clone(), actions),
        cfg,
        &config.node_name,
    );
    let now: Arc<dyn Fn() -> u64 + Send + Sync> =
        Arc::new(|| chrono::Utc::now().timestamp().max(0) as u64);
    let duty = Arc::new(DoctorDuty::new(doctor, now));
    slot.set(Arc::new(Reporter(duty.clone())));
    tracing::info!(node = %config.node_name, "doctor: runs while this node leads (docs/doctor.md)");
    Some(Arc::new(Shared(duty)))
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
    let Some(engine) = state.node().handle() else {
        return no_etcd();
    };
    let Some(coord) = engine.coordinator() else {
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
    // The signals are this node's last pass: shown only while it leads under that pass's term.
    let status = engine.status();
    let leading_term = status
        .leader
        .as_ref()
        .filter(|l| l.name == state.config().node_name)
        .map(|l| l.term);
    let report = state
        .node()
        .doctor()
        .report()
        .filter(|r| r.at > 0 && Some(r.term) == leading_term);
    let leading = report.is_some();
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
