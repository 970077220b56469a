//! The admin API: the route table with each endpoint's least role, authorization of every call
//! by the caller's kernel-reported credentials, the handlers, and the audit of every mutating call
//! and every denial.
//!
//! Mutating handlers run in three steps, so no change happens without its audit record:
//! prepare (validate, compute the new value), audit (the record is fsynced), apply. If the audit
//! write fails, nothing is applied and the caller gets 503.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use kubedna_audit::{AuditHandle, Entry, ListFilter};
use kubedna_config::Config;
use kubedna_host::state::StateDir;
use kubedna_proto::{
    paths, AgentStatus, ApiError, AuditRecordsResponse, AuditResult, Caller, CallerStatus,
    LogLevelRequest, LogLevelResponse, MeshKeys, NodeStatus, Outcome, PacketCounters, Peer,
    PeerLiveness, PeersResponse, PeersSummary, ReloadResponse, Role, StatusResponse,
    VersionResponse, Via, API_VERSION,
};
use serde::Serialize;

mod views;

pub(crate) use views::formation;
pub use views::peers;
use views::status;

use crate::logging::LogControl;
use crate::mesh::{Liveness, MeshSlot};

/// Everything a call may read or change.
#[derive(Debug)]
pub struct AppState {
    config: RwLock<Arc<Config>>,
    generation: AtomicU64,
    state_dir: StateDir,
    audit: AuditHandle,
    log: LogControl,
    started_at: DateTime<Utc>,
    started: Instant,
    /// Serializes reloads so two cannot interleave their prepare and apply.
    reload_lock: tokio::sync::Mutex<()>,
    mesh: MeshSlot,
    node: crate::node::NodeSlot,
    metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    pub fn new(config: Config, state_dir: StateDir, audit: AuditHandle, log: LogControl) -> Self {
        AppState {
            config: RwLock::new(Arc::new(config)),
            generation: AtomicU64::new(0),
            state_dir,
            audit,
            log,
            started_at: Utc::now(),
            started: Instant::now(),
            reload_lock: tokio::sync::Mutex::new(()),
            mesh: MeshSlot::default(),
            node: crate::node::NodeSlot::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        }
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Appends an audit record, counted and timed for the metrics.
    pub async fn audit_append(
        &self,
        entry: Entry,
    ) -> Result<kubedna_proto::AuditRecord, kubedna_audit::AuditError> {
        let started = Instant::now();
        let r = self.audit.append(entry).await;
        if r.is_ok() {
            self.metrics.audit_append(started.elapsed().as_secs_f64());
        }
        r
    }

    /// What a scrape reads off this agent's state.
    pub async fn metrics_text(&self) -> String {
        let snapshot = crate::metrics::Snapshot {
            peers: peers(self).await,
            formation: self.node.status().map(formation),
            node: self.config().node_name.clone(),
        };
        self.metrics.render(&snapshot)
    }

    /// The mesh, once it runs (see [`crate::mesh`]).
    pub fn mesh(&self) -> &MeshSlot {
        &self.mesh
    }

    /// The audit log, for writers outside the API (the agent's own actions).
    pub fn audit(&self) -> &AuditHandle {
        &self.audit
    }

    /// The control-plane engine, once it runs (see [`crate::node`]).
    pub fn node(&self) -> &crate::node::NodeSlot {
        &self.node
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn node_id(&self) -> &str {
        &self.state_dir.node.node_id
    }
}

/// One row of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// The least role that may call it.
    pub role: Role,
    /// The audit action; mutating routes are always audited.
    pub action: &'static str,
    pub mutating: bool,
}

/// Every endpoint of API v1. `docs/api.md` documents the same table.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: paths::VERSION,
        role: Role::Viewer,
        action: "version.get",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::STATUS,
        role: Role::Viewer,
        action: "status.get",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::PEERS,
        role: Role::Viewer,
        action: "peers.list",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::METRICS,
        role: Role::Viewer,
        action: "metrics.get",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CATALOGUE_STATUS,
        role: Role::Viewer,
        action: "catalogue.status",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CATALOGUE_DIFF,
        role: Role::Viewer,
        action: "catalogue.diff",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::AUDIT_RECORDS,
        role: Role::Operator,
        action: "audit.list",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CLUSTER_STATUS,
        role: Role::Viewer,
        action: "cluster.status",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CLUSTER_AUDIT_RECORDS,
        role: Role::Viewer,
        action: "cluster.audit.list",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::AUDIT_VERIFY,
        role: Role::Operator,
        action: "audit.verify",
        mutating: false,
    },
    Route {
        method: "PUT",
        path: paths::LOG_LEVEL,
        role: Role::Operator,
        action: "log.level.set",
        mutating: true,
    },
    Route {
        method: "POST",
        path: paths::CONFIG_RELOAD,
        role: Role::Admin,
        action: "config.reload",
        mutating: true,
    },
    Route {
        method: "GET",
        path: paths::DOCTOR,
        role: Role::Viewer,
        action: "doctor.status",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::DOCTOR_HISTORY,
        role: Role::Viewer,
        action: "doctor.history",
        mutating: false,
    },
    Route {
        method: "POST",
        path: paths::DOCTOR_PAUSE,
        role: Role::Admin,
        action: "doctor.pause",
        mutating: true,
    },
    Route {
        method: "POST",
        path: paths::DOCTOR_RESUME,
        role: Role::Admin,
        action: "doctor.resume",
        mutating: true,
    },
];

const MAX_BODY: usize = 64 * 1024;

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).expect("API bodies serialize");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

pub(crate) fn error(
    status: StatusCode,
    message: impl Into<String>,
    required_role: Option<Role>,
) -> Resp {
    json(
        status,
        &ApiError {
            error: message.into(),
            required_role,
        },
    )
}

/// Handles one request from `caller`.
pub async fn handle(
    state: Arc<AppState>,
    caller: Caller,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let Some(route) = ROUTES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
    else {
        return Ok(if ROUTES.iter().any(|r| r.path == path) {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
                None,
            )
        } else {
            error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {path} (API {API_VERSION})"),
                None,
            )
        });
    };

    let config = state.config();
    let gids = caller_gids(&caller);
    let role = config.rbac.role_of(caller.uid, &gids);
    if role.is_none_or(|r| r < route.role) {
        let message = format!(
            "permission denied: {} {} needs role {} or higher; uid {} has {}",
            route.method,
            route.path,
            route.role,
            caller.uid,
            role.map_or("no role".to_string(), |r| format!("role {r}")),
        );
        let record = Entry {
            caller: caller.clone(),
            role,
            action: route.action.into(),
            args: serde_json::json!({"method": route.method, "path": route.path}),
            result: AuditResult {
                outcome: Outcome::Denied,
                status: 403,
                message: Some(format!("needs role {}", route.role)),
            },
            time: None,
        };
        state.metrics.api_call(route.action, role, true);
        if let Err(e) = state.audit_append(record).await {
            tracing::error!(error = %e, uid = caller.uid, "cannot audit a denial");
            return Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log is unavailable; try again later",
                None,
            ));
        }
        tracing::info!(uid = caller.uid, action = route.action, "denied");
        return Ok(error(StatusCode::FORBIDDEN, message, Some(route.role)));
    }
    let role = role.unwrap_or(Role::Viewer);
    state.metrics.api_call(route.action, Some(role), false);

    let body = if route.mutating {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
                    None,
                ))
            }
        }
    } else {
        Bytes::new()
    };
    Ok(match route.path {
        paths::VERSION => json(
            StatusCode::OK,
            &VersionResponse {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                api_version: API_VERSION.into(),
            },
        ),
        paths::STATUS => json(StatusCode::OK, &status(&state, &caller, role).await),
        paths::PEERS => json(StatusCode::OK, &peers(&state).await),
        paths::METRICS => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(state.metrics_text().await)))
            .expect("static response parts are valid"),
        paths::CATALOGUE_STATUS => json(StatusCode::OK, &state.node.catalogue_status().await),
        paths::CATALOGUE_DIFF => json(StatusCode::OK, &state.node.catalogue_diff().await),
        paths::AUDIT_RECORDS => match audit_filter(&query) {
            Ok(filter) => audit_records(&state, filter).await,
            Err(m) => error(StatusCode::BAD_REQUEST, m, None),
        },
        paths::CLUSTER_STATUS => json(
            StatusCode::OK,
            &crate::cluster::status_view(&state, &caller, role).await,
        ),
        paths::CLUSTER_AUDIT_RECORDS => match audit_filter(&query) {
            Ok(filter) => json(
                StatusCode::OK,
                &crate::cluster::audit_view(&state, &caller, role, filter).await,
            ),
            Err(m) => error(StatusCode::BAD_REQUEST, m, None),
        },
        paths::AUDIT_VERIFY => {
            let dir = state.audit.dir().to_path_buf();
            match tokio::task::spawn_blocking(move || kubedna_audit::verify(&dir)).await {
                Ok(Ok(report)) => json(StatusCode::OK, &report),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"), None),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("verification failed: {e}"),
                    None,
                ),
            }
        }
        paths::LOG_LEVEL => set_log_level(&state, caller, role, &body).await,
        paths::DOCTOR => crate::doctor::status(&state).await,
        paths::DOCTOR_HISTORY => crate::doctor::history(&state).await,
        paths::DOCTOR_PAUSE => crate::doctor::set_pause(&state, caller, role, &body, true).await,
        paths::DOCTOR_RESUME => crate::doctor::set_pause(&state, caller, role, &body, false).await,
        paths::CONFIG_RELOAD => match reload_config(&state, caller, Some(role)).await {
            Ok(r) => json(StatusCode::OK, &r),
            Err(ReloadError::Audit(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m, None),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), None),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
            None,
        ),
    })
}

/// The caller's primary gid and the groups its user account belongs to (/etc/group). The
/// kernel's SO_PEERCRED reports only the primary gid; membership in the group database is what
/// an admin changes with `usermod -aG`, so that is what roles are mapped from.
fn caller_gids(caller: &Caller) -> Vec<u32> {
    let mut gids = vec![caller.gid];
    if let Some(name) = caller.user.as_deref() {
        if let Ok(cname) = std::ffi::CString::new(name) {
            if let Ok(groups) =
                nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(caller.gid))
            {
                gids.extend(groups.into_iter().map(|g| g.as_raw()));
            }
        }
    }
    gids
}

/// The filter of `GET /v1/audit/records` (and of the cluster view), or why it is a bad request.
fn audit_filter(query: &str) -> Result<ListFilter, String> {
    let mut filter = ListFilter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "since" => match DateTime::parse_from_rfc3339(&v) {
                Ok(t) => filter.since = Some(t.with_timezone(&Utc)),
                Err(_) => {
                    return Err(format!(
                        "since={v:?} is not an RFC 3339 time such as 2026-11-23T00:00:00Z"
                    ))
                }
            },
            "action" => filter.action = Some(v),
            "actor" => {
                filter.via = match v.as_str() {
                    "agent" => Some(Via::Agent),
                    "socket" => Some(Via::Socket),
                    "signal" => Some(Via::Signal),
                    "mesh" => Some(Via::Mesh),
                    _ => {
                        return Err(format!(
                            "actor={v:?} is not one of agent, socket, signal, mesh"
                        ))
                    }
                }
            }
            "limit" => match v.parse::<usize>() {
                Ok(n) if n <= 100_000 => filter.limit = n,
                _ => return Err(format!("limit={v:?} is not a number from 0 to 100000")),
            },
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}: allowed are since, action, actor, limit"
                ))
            }
        }
    }
    Ok(filter)
}

async fn audit_records(state: &AppState, filter: ListFilter) -> Resp {
    let dir = state.audit.dir().to_path_buf();
    match tokio::task::spawn_blocking(move || kubedna_audit::list(&dir, &filter)).await {
        Ok(Ok((records, truncated))) => {
            json(StatusCode::OK, &AuditRecordsResponse { records, truncated })
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing failed: {e}"),
            None,
        ),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) async fn audited(
    state: &AppState,
    caller: Caller,
    role: Option<Role>,
    action: &str,
    args: serde_json::Value,
    result: AuditResult,
) -> Result<(), String> {
    let entry = Entry {
        caller,
        role,
        action: action.into(),
        args,
        result,
        time: None,
    };
    state.audit_append(entry).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, action, "cannot write the audit record; the call is refused");
        "the audit log is unavailable, so nothing was changed; check the agent's journal and the disk".to_string()
    })
}

async fn set_log_level(state: &AppState, caller: Caller, role: Role, body: &[u8]) -> Resp {
    let action = "log.level.set";
    let req: LogLevelRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("the body must be {{\"filter\": \"<directive>\"}}: {e}");
            let result = AuditResult {
                outcome: Outcome::Error,
                status: 400,
                message: Some(message.clone()),
            };
            if let Err(m) = audited(
                state,
                caller,
                Some(role),
                action,
                serde_json::json!({}),
                result,
            )
            .await
            {
                return error(StatusCode::SERVICE_UNAVAILABLE, m, None);
            }
            return error(StatusCode::BAD_REQUEST, message, None);
        }
    };
    let args = serde_json::json!({"filter": req.filter});
    let parsed = match LogControl::parse(&req.filter) {
        Ok(p) => p,
        Err(message) => {
            let result = AuditResult {
                outcome: Outcome::Error,
                status: 400,
                message: Some(message.clone()),
            };
            if let Err(m) = audited(state, caller, Some(role), action, args, result).await {
                return error(StatusCode::SERVICE_UNAVAILABLE, m, None);
            }
            return error(StatusCode::BAD_REQUEST, message, None);
        }
    };
    let result = AuditResult {
        outcome: Outcome::Ok,
        status: 200,
        message: None,
    };
    if let Err(m) = audited(state, caller, Some(role), action, args, result).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, m, None);
    }
    let previous = state.log.apply(&req.filter, parsed);
    tracing::info!(previous = %previous, current = %req.filter, "log filter changed");
    json(
        StatusCode::OK,
        &LogLevelResponse {
            previous,
            current: req.filter,
        },
    )
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
    let _serial = state.reload_lock.lock().await;
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
    let rotation = match crate::mesh::prepare_rotation(&current, &new) {
        Ok(r) => r,
        Err(message) => {
            audited(state, caller, role, action, args, refuse(message.clone()))
                .await
                .map_err(ReloadError::Audit)?;
            return Err(ReloadError::Invalid(message));
        }
    };
    let mut changed = current.changed_sections(&new);
    changed.extend(rotation.as_ref().map(crate::mesh::SecretRotation::note));
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
        state.log.apply(&text, parsed);
    }
    if let Some(rotation) = &rotation {
        crate::mesh::rotate_secret(&state.mesh, &new, rotation).await;
    }
    *state.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    let generation = state.generation.fetch_add(1, Ordering::Relaxed) + 1;
    Ok(ReloadResponse {
        generation,
        changed,
    })
}
