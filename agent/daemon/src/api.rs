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
    PeerLiveness, PeersResponse, PeersSummary, Role, StatusResponse, VersionResponse, Via,
    API_VERSION,
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
    tasks: crate::tasks::Tasks,
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
            tasks: crate::tasks::Tasks::new(),
        }
    }

    /// The agent's one task set (crate::tasks): every task of the daemon is spawned through it.
    pub fn tasks(&self) -> &crate::tasks::Tasks {
        &self.tasks
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

    /// Holds off other reloads while one prepares, audits and applies (see [`crate::reload`]).
    pub(crate) async fn reload_serial(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload_lock.lock().await
    }

    /// The run-time log filter.
    pub(crate) fn log(&self) -> &LogControl {
        &self.log
    }

    /// Puts `new` in force for every later call; returns its generation (1 for the first
    /// reload). Only [`crate::reload`] calls this, after the reload's audit record.
    pub(crate) fn install_config(&self, new: Config) -> u64 {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
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
    /// Which handler answers it: dispatch matches this, exhaustively, never the path again.
    pub endpoint: Endpoint,
    /// The least role that may call it.
    pub role: Role,
    /// The audit action; mutating routes are always audited.
    pub action: &'static str,
    pub mutating: bool,
}

/// The handler of a route. A new route needs a new variant, and the compiler then asks for its
/// handler in [`handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Version,
    Status,
    Peers,
    Metrics,
    CatalogueStatus,
    CatalogueDiff,
    AuditRecords,
    ClusterStatus,
    ClusterAuditRecords,
    AuditVerify,
    LogLevel,
    ConfigReload,
    Doctor,
    DoctorHistory,
    DoctorPause,
    DoctorResume,
}

/// Every endpoint of API v1. `docs/api.md` documents the same table.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: paths::VERSION,
        endpoint: Endpoint::Version,
        role: Role::Viewer,
        action: "version.get",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::STATUS,
        endpoint: Endpoint::Status,
        role: Role::Viewer,
        action: "status.get",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::PEERS,
        endpoint: Endpoint::Peers,
        role: Role::Viewer,
        action: "peers.list",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::METRICS,
        endpoint: Endpoint::Metrics,
        role: Role::Viewer,
        action: "metrics.get",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CATALOGUE_STATUS,
        endpoint: Endpoint::CatalogueStatus,
        role: Role::Viewer,
        action: "catalogue.status",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CATALOGUE_DIFF,
        endpoint: Endpoint::CatalogueDiff,
        role: Role::Viewer,
        action: "catalogue.diff",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::AUDIT_RECORDS,
        endpoint: Endpoint::AuditRecords,
        role: Role::Operator,
        action: "audit.list",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CLUSTER_STATUS,
        endpoint: Endpoint::ClusterStatus,
        role: Role::Viewer,
        action: "cluster.status",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::CLUSTER_AUDIT_RECORDS,
        endpoint: Endpoint::ClusterAuditRecords,
        role: Role::Viewer,
        action: "cluster.audit.list",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::AUDIT_VERIFY,
        endpoint: Endpoint::AuditVerify,
        role: Role::Operator,
        action: "audit.verify",
        mutating: false,
    },
    Route {
        method: "PUT",
        path: paths::LOG_LEVEL,
        endpoint: Endpoint::LogLevel,
        role: Role::Operator,
        action: "log.level.set",
        mutating: true,
    },
    Route {
        method: "POST",
        path: paths::CONFIG_RELOAD,
        endpoint: Endpoint::ConfigReload,
        role: Role::Admin,
        action: "config.reload",
        mutating: true,
    },
    Route {
        method: "GET",
        path: paths::DOCTOR,
        endpoint: Endpoint::Doctor,
        role: Role::Viewer,
        action: "doctor.status",
        mutating: false,
    },
    Route {
        method: "GET",
        path: paths::DOCTOR_HISTORY,
        endpoint: Endpoint::DoctorHistory,
        role: Role::Viewer,
        action: "doctor.history",
        mutating: false,
    },
    Route {
        method: "POST",
        path: paths::DOCTOR_PAUSE,
        endpoint: Endpoint::DoctorPause,
        role: Role::Admin,
        action: "doctor.pause",
        mutating: true,
    },
    Route {
        method: "POST",
        path: paths::DOCTOR_RESUME,
        endpoint: Endpoint::DoctorResume,
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
    Ok(match route.endpoint {
        Endpoint::Version => json(
            StatusCode::OK,
            &VersionResponse {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                api_version: API_VERSION.into(),
            },
        ),
        Endpoint::Status => json(StatusCode::OK, &status(&state, &caller, role).await),
        Endpoint::Peers => json(StatusCode::OK, &peers(&state).await),
        Endpoint::Metrics => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(state.metrics_text().await)))
            .expect("static response parts are valid"),
        Endpoint::CatalogueStatus => json(StatusCode::OK, &state.node.catalogue_status().await),
        Endpoint::CatalogueDiff => json(StatusCode::OK, &state.node.catalogue_diff().await),
        Endpoint::AuditRecords => match audit_filter(&query) {
            Ok(filter) => audit_records(&state, filter).await,
            Err(m) => error(StatusCode::BAD_REQUEST, m, None),
        },
        Endpoint::ClusterStatus => json(
            StatusCode::OK,
            &crate::cluster::status_view(&state, &caller, role).await,
        ),
        Endpoint::ClusterAuditRecords => match audit_filter(&query) {
            Ok(filter) => json(
                StatusCode::OK,
                &crate::cluster::audit_view(&state, &caller, role, filter).await,
            ),
            Err(m) => error(StatusCode::BAD_REQUEST, m, None),
        },
        Endpoint::AuditVerify => {
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
        Endpoint::LogLevel => set_log_level(&state, caller, role, &body).await,
        Endpoint::Doctor => crate::doctor::status(&state).await,
        Endpoint::DoctorHistory => crate::doctor::history(&state).await,
        Endpoint::DoctorPause => crate::doctor::set_pause(&state, caller, role, &body, true).await,
        Endpoint::DoctorResume => {
            crate::doctor::set_pause(&state, caller, role, &body, false).await
        }
        Endpoint::ConfigReload => {
            match crate::reload::reload_config(&state, caller, Some(role)).await {
                Ok(r) => json(StatusCode::OK, &r),
                Err(crate::reload::ReloadError::Audit(m)) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, m, None)
                }
                Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), None),
            }
        }
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

#[cfg(test)]
mod route_table {
    use super::ROUTES;

    #[test]
    fn each_route_has_its_own_handler_and_its_own_method_and_path() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert_ne!(a.endpoint, b.endpoint, "{} and {}", a.path, b.path);
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
                assert_ne!(a.action, b.action, "{} and {}", a.path, b.path);
            }
            assert_eq!(
                a.mutating,
                a.method != "GET",
                "{} {}: only GET is read-only",
                a.method,
                a.path
            );
        }
    }
}
