//! The cluster-wide views from any node: `kubedna status --cluster` and `kubedna audit list
//! --cluster`. The node a caller asks answers for itself and asks every other node it knows over
//! the authenticated mesh (request kind [`request_kind::CLUSTER_VIEW`], messages in [`wire`]);
//! each node applies its own RBAC to the caller's role, audits a refusal in its own log, and
//! answers. The decisions (whom to ask, what an outcome means, how records merge and how a
//! broken chain shows) are pure functions in [`decide`].
//!
//! Owns the handler of that request kind (started once the mesh runs, stopped at shutdown),
//! the short-lived audit exports it serves in chunks, and the fan-out. It must never serve a
//! change over the mesh, never drop a node from a view without saying why, and never put a
//! secret in an answer (audit lines are already redacted).

pub mod decide;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubedna_audit::{Entry, ListFilter};
use kubedna_proto::{
    AuditResult, Caller, ClusterAuditResponse, ClusterStatusResponse, ClusterStatusRow, NodeLine,
    Outcome as AuditOutcome, PeerLiveness, Role, Via,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::AppState;
use crate::mesh::{request_kind, IncomingRequest, Liveness, MeshHandle};
use crate::tasks::Done;
use decide::{MemberView, NodeAudit, Outcome, Plan, Target};
use wire::{Asker, AuditExport, AuditQuery, ViewAnswer, ViewRequest, CHUNK};

/// How long the asking node waits for one answer (a status line, an export's opening, a chunk).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Opening an audit export verifies the node's whole chain first.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks of one export asked for at once (each node serves 64 requests waiting at most).
const CHUNKS_IN_FLIGHT: usize = 16;
/// Longest `last_error` in a status line.
const LAST_ERROR_CHARS: usize = 300;

/// Serves [`request_kind::CLUSTER_VIEW`] once the mesh runs, until `stop`.
pub fn spawn_serve(state: Arc<AppState>, mut stop: watch::Receiver<bool>) -> Done<()> {
    let tasks = state.tasks().clone();
    tasks.clone().spawn("cluster view server", async move {
        let handle = tokio::select! {
            h = state.mesh().running() => h,
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut requests = match handle.serve(request_kind::CLUSTER_VIEW, 64) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the cluster view is not served on this node");
                return;
            }
        };
        let exports = Arc::new(Mutex::new(Exports::default()));
        loop {
            tokio::select! {
                req = requests.recv() => match req {
                    Some(req) => { tasks.spawn("cluster view request", serve_one(Arc::clone(&state), Arc::clone(&exports), req)); }
                    None => return,
                },
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            }
        }
    })
}

/// Audit exports waiting for their chunks to be read.
#[derive(Debug, Default)]
struct Exports(Vec<(u64, SocketAddr, Instant, Arc<Vec<u8>>)>);

impl Exports {
    fn insert(&mut self, from: SocketAddr, bytes: Vec<u8>, now: Instant) -> u64 {
        self.0
            .retain(|(_, _, made, _)| now.duration_since(*made) < wire::EXPORT_TTL);
        if self.0.len() >= wire::MAX_EXPORTS {
            self.0.remove(0);
        }
        let mut id = [0u8; 8];
        if getrandom::fill(&mut id).is_err() {
            id = (now.elapsed().as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
        }
        let id = u64::from_le_bytes(id);
        self.0.push((id, from, now, Arc::new(bytes)));
        id
    }

    /// Only the node that opened an export may read it.
    fn get(&self, id: u64, from: SocketAddr) -> Option<Arc<Vec<u8>>> {
        self.0
            .iter()
            .find(|(i, f, made, _)| *i == id && *f == from && made.elapsed() < wire::EXPORT_TTL)
            .map(|(.., b)| Arc::clone(b))
    }
}

async fn serve_one(state: Arc<AppState>, exports: Arc<Mutex<Exports>>, req: IncomingRequest) {
    let Ok(request) = serde_json::from_slice::<ViewRequest>(&req.payload) else {
        req.respond(Err(
            "not a cluster-view request this agent understands: are both agents the same version?"
                .into(),
        ));
        return;
    };
    let json = |a: &ViewAnswer| serde_json::to_vec(a).map_err(|e| e.to_string());
    match request {
        ViewRequest::Status(asker) => {
            let answer = match local_status(
                &state,
                mesh_caller(&asker),
                asker.role,
                Some(&asker.node),
            )
            .await
            {
                Outcome::Answered(line) => json(&ViewAnswer::Status(line)),
                Outcome::Refused(m) => json(&ViewAnswer::Refused(m)),
                Outcome::Unreachable(m) | Outcome::Failed(m) => Err(m),
            };
            req.respond(answer);
        }
        ViewRequest::AuditOpen(asker, query) => {
            let caller = mesh_caller(&asker);
            let answer = match local_audit(
                &state,
                caller,
                asker.role,
                Some(&asker.node),
                query.filter(),
            )
            .await
            {
                Outcome::Answered(export) => match serde_json::to_vec(&export) {
                    Ok(bytes) => {
                        let len = bytes.len() as u64;
                        let id = exports.lock().unwrap_or_else(|e| e.into_inner()).insert(
                            req.from,
                            bytes,
                            Instant::now(),
                        );
                        json(&ViewAnswer::Opened { export: id, len })
                    }
                    Err(e) => Err(e.to_string()),
                },
                Outcome::Refused(m) => json(&ViewAnswer::Refused(m)),
                Outcome::Unreachable(m) | Outcome::Failed(m) => Err(m),
            };
            req.respond(answer);
        }
        ViewRequest::AuditChunk { export, offset } => {
            let bytes = exports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(export, req.from);
            let answer = match bytes {
                Some(b) => {
                    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                    let end = (start + CHUNK).min(b.len());
                    Ok(b[start..end].to_vec())
                }
                None => Err(format!(
                    "no audit export {export:x} here for {}: it expired after {} s or was never opened; ask again",
                    req.from,
                    wire::EXPORT_TTL.as_secs()
                )),
            };
            req.respond(answer);
        }
    }
}

/// The caller as the asked node records it: who the asking node says, and that it came over
/// the mesh.
fn mesh_caller(asker: &Asker) -> Caller {
    Caller {
        uid: asker.uid,
        gid: asker.gid,
        pid: None,
        user: asker.user.clone(),
        via: Via::Mesh,
    }
}

/// This node's RBAC for a view: allowed, or the refusal audited here (and counted).
async fn authorize(
    state: &AppState,
    caller: Caller,
    role: Role,
    action: &str,
    from: Option<&str>,
) -> Result<(), Outcome<std::convert::Infallible>> {
    match decide::authorize(action, role) {
        Ok(()) => {
            state.metrics().api_call(action, Some(role), false);
            Ok(())
        }
        Err(message) => {
            state.metrics().api_call(action, Some(role), true);
            let entry = Entry {
                caller,
                role: Some(role),
                action: action.into(),
                args: serde_json::json!({"view": "cluster", "asked_by": from}),
                result: AuditResult {
                    outcome: AuditOutcome::Denied,
                    status: 403,
                    message: Some(format!("needs role {}", decide::needed_role(action))),
                },
                time: None,
            };
            if let Err(e) = state.audit_append(entry).await {
                tracing::error!(error = %e, action, "cannot audit a denial");
                return Err(Outcome::Failed(
                    "the audit log of this node is unavailable; try again later".into(),
                ));
            }
            Err(Outcome::Refused(message))
        }
    }
}

fn refused<T>(o: Outcome<std::convert::Infallible>) -> Outcome<T> {
    match o {
        Outcome::Refused(m) => Outcome::Refused(m),
        Outcome::Unreachable(m) => Outcome::Unreachable(m),
        Outcome::Failed(m) => Outcome::Failed(m),
        Outcome::Answered(never) => match never {},
    }
}

/// This node's line, if `role` may read status here.
async fn local_status(
    state: &AppState,
    caller: Caller,
    role: Role,
    from: Option<&str>,
) -> Outcome<NodeLine> {
    if let Err(o) = authorize(state, caller, role, "status.get", from).await {
        return refused(o);
    }
    Outcome::Answered(node_line(state))
}

fn node_line(state: &AppState) -> NodeLine {
    let config = state.config();
    let engine = state.node().status();
    let gossip = engine.as_ref().map(crate::node::gossip_state);
    let formation = engine.map(crate::api::formation);
    NodeLine {
        name: config.node_name.clone(),
        role: config.spec.node.role,
        state: gossip.map_or_else(|| "ready".into(), |s| s.as_str().to_string()),
        phase: formation.as_ref().map(|f| f.phase.clone()),
        leader: formation.as_ref().and_then(|f| f.leader.clone()),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        image_version: crate::mesh::image_version(std::path::Path::new(crate::mesh::IMAGE_RECORD)),
        maintenance: gossip == Some(kubedna_mesh::NodeState::Maintenance),
        last_error: formation
            .and_then(|f| f.last_error)
            .map(|e| decide::cut(&e, LAST_ERROR_CHARS)),
    }
}

/// This node's audit lines matching `filter` and its own chain verification, if `role` may
/// list audit records here.
async fn local_audit(
    state: &AppState,
    caller: Caller,
    role: Role,
    from: Option<&str>,
    filter: ListFilter,
) -> Outcome<AuditExport> {
    if let Err(o) = authorize(state, caller, role, "audit.list", from).await {
        return refused(o);
    }
    let dir = state.audit().dir().to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let (lines, truncated) = kubedna_audit::list_lines(&dir, &filter)?;
        let (lines, cut) = decide::newest_within(lines, wire::MAX_EXPORT_BYTES);
        let truncated = truncated || cut;
        let verify = kubedna_audit::verify(&dir).map_err(|e| e.to_string());
        Ok::<_, kubedna_audit::AuditError>(AuditExport {
            lines,
            truncated,
            verify,
        })
    })
    .await;
    match read {
        Ok(Ok(export)) => Outcome::Answered(export),
        Ok(Err(e)) => Outcome::Failed(format!("cannot read its audit log: {e}")),
        Err(e) => Outcome::Failed(format!("reading its audit log failed: {e}")),
    }
}

/// Whom to ask: this node and every member the mesh knows.
async fn plan(state: &AppState) -> (Option<MeshHandle>, Vec<Target>) {
    let config = state.config();
    let expected: Vec<String> = config
        .spec
        .cluster
        .control_planes
        .as_ref()
        .map(|c| c.members.clone())
        .unwrap_or_default();
    let Some(handle) = state.mesh().get() else {
        return (
            None,
            decide::targets(&config.node_name, None, &[], &expected),
        );
    };
    let members: Vec<MemberView> = handle
        .members()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| MemberView {
            name: m.meta.as_ref().map(|x| x.name.clone()),
            addr: m.id.addr,
            liveness: match m.liveness {
                Liveness::Alive => PeerLiveness::Alive,
                Liveness::Suspect => PeerLiveness::Suspect,
                Liveness::Down => PeerLiveness::Down,
            },
            generation: m.id.generation,
        })
        .collect();
    let targets = decide::targets(
        &config.node_name,
        Some(handle.local_addr()),
        &members,
        &expected,
    );
    (Some(handle), targets)
}

fn asker(state: &AppState, caller: &Caller, role: Role) -> Asker {
    Asker {
        node: state.config().node_name.clone(),
        uid: caller.uid,
        gid: caller.gid,
        user: caller.user.clone(),
        role,
    }
}

async fn ask(
    handle: &MeshHandle,
    to: SocketAddr,
    req: &ViewRequest,
    timeout: Duration,
) -> Outcome<Vec<u8>> {
    let payload = serde_json::to_vec(req).expect("view requests serialize");
    decide::outcome(
        handle
            .request(to, request_kind::CLUSTER_VIEW, payload, timeout)
            .await,
        timeout,
    )
}

fn view_answer(o: Outcome<Vec<u8>>) -> Outcome<ViewAnswer> {
    match o {
        Outcome::Answered(bytes) => match serde_json::from_slice(&bytes) {
            Ok(a) => Outcome::Answered(a),
            Err(e) => Outcome::Failed(format!(
                "its answer is not understood ({e}): are both agents the same version?"
            )),
        },
        Outcome::Refused(m) => Outcome::Refused(m),
        Outcome::Unreachable(m) => Outcome::Unreachable(m),
        Outcome::Failed(m) => Outcome::Failed(m),
    }
}

/// `GET /v1/cluster/status`.
pub async fn status_view(
    state: &Arc<AppState>,
    caller: &Caller,
    role: Role,
) -> ClusterStatusResponse {
    let (handle, targets) = plan(state).await;
    let asker = asker(state, caller, role);
    let mut tasks = JoinSet::new();
    for t in targets {
        let (state, handle, caller, asker) = (
            Arc::clone(state),
            handle.clone(),
            caller.clone(),
            asker.clone(),
        );
        tasks.spawn(async move {
            let outcome = match (&t.plan, handle) {
                (Plan::Local, _) => local_status(&state, caller, role, None).await,
                (Plan::Unreachable(m), _) => Outcome::Unreachable(m.clone()),
                (Plan::Ask(_), None) => {
                    Outcome::Unreachable("the mesh is not running on this node".into())
                }
                (Plan::Ask(addr), Some(h)) => match view_answer(
                    ask(&h, *addr, &ViewRequest::Status(asker), ASK_TIMEOUT).await,
                ) {
                    Outcome::Answered(ViewAnswer::Status(line)) => Outcome::Answered(line),
                    Outcome::Answered(ViewAnswer::Refused(m)) => Outcome::Refused(m),
                    Outcome::Answered(ViewAnswer::Opened { .. }) => {
                        Outcome::Failed("answered another request".into())
                    }
                    other => refused_answer(other),
                },
            };
            let answered_name = match &outcome {
                Outcome::Answered(line) => Some(line.name.as_str()),
                _ => None,
            };
            ClusterStatusRow {
                node: decide::row_name(&t, answered_name),
                address: t.address.map(|a| a.to_string()),
                answer: outcome.answer(),
                message: outcome.message(),
                status: match outcome {
                    Outcome::Answered(line) => Some(line),
                    _ => None,
                },
            }
        });
    }
    let mut nodes: Vec<ClusterStatusRow> = tasks.join_all().await;
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    ClusterStatusResponse {
        asked_by: state.config().node_name.clone(),
        nodes,
    }
}

fn refused_answer<T>(o: Outcome<ViewAnswer>) -> Outcome<T> {
    match o {
        Outcome::Answered(_) => Outcome::Failed("answered another request".into()),
        Outcome::Refused(m) => Outcome::Refused(m),
        Outcome::Unreachable(m) => Outcome::Unreachable(m),
        Outcome::Failed(m) => Outcome::Failed(m),
    }
}

/// `GET /v1/cluster/audit/records`.
pub async fn audit_view(
    state: &Arc<AppState>,
    caller: &Caller,
    role: Role,
    filter: ListFilter,
) -> ClusterAuditResponse {
    let (handle, targets) = plan(state).await;
    let asker = asker(state, caller, role);
    let query = AuditQuery::from_filter(&filter);
    let limit = filter.limit;
    let mut tasks = JoinSet::new();
    for t in targets {
        let (state, handle, caller, asker, query, filter) = (
            Arc::clone(state),
            handle.clone(),
            caller.clone(),
            asker.clone(),
            query.clone(),
            filter.clone(),
        );
        tasks.spawn(async move {
            let outcome = match (&t.plan, handle) {
                (Plan::Local, _) => local_audit(&state, caller, role, None, filter).await,
                (Plan::Unreachable(m), _) => Outcome::Unreachable(m.clone()),
                (Plan::Ask(_), None) => {
                    Outcome::Unreachable("the mesh is not running on this node".into())
                }
                (Plan::Ask(addr), Some(h)) => remote_audit(&h, *addr, asker, query).await,
            };
            NodeAudit {
                node: t.node,
                address: t.address,
                outcome,
            }
        });
    }
    let nodes = tasks.join_all().await;
    decide::merge_audit(&state.config().node_name, nodes, limit)
}

/// Opens an export on `addr` and reads it in chunks, [`CHUNKS_IN_FLIGHT`] at a time.
async fn remote_audit(
    h: &MeshHandle,
    addr: SocketAddr,
    asker: Asker,
    query: AuditQuery,
) -> Outcome<AuditExport> {
    let (export, len) = match view_answer(
        ask(h, addr, &ViewRequest::AuditOpen(asker, query), OPEN_TIMEOUT).await,
    ) {
        Outcome::Answered(ViewAnswer::Opened { export, len }) => (export, len),
        Outcome::Answered(ViewAnswer::Refused(m)) => return Outcome::Refused(m),
        other => return refused_answer(other),
    };
    let offsets: Vec<u64> = (0..len).step_by(CHUNK).collect();
    let mut chunks: Vec<Vec<u8>> = vec![Vec::new(); offsets.len()];
    // A sliding window: a new chunk is asked for as soon as one arrives. Returning early drops
    // the set, which aborts the chunks still in flight.
    let mut set = JoinSet::new();
    let mut next = 0;
    loop {
        while set.len() < CHUNKS_IN_FLIGHT && next < offsets.len() {
            let (h, i, offset) = (h.clone(), next, offsets[next]);
            set.spawn(async move {
                let req = ViewRequest::AuditChunk { export, offset };
                (i, offset, ask(&h, addr, &req, ASK_TIMEOUT).await)
            });
            next += 1;
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let Ok((i, offset, o)) = done else {
            return Outcome::Failed("a task reading its records failed".into());
        };
        match o {
            Outcome::Answered(chunk) => chunks[i] = chunk,
            Outcome::Unreachable(m) => {
                return Outcome::Unreachable(format!("reading its records at byte {offset}: {m}"))
            }
            other => {
                return Outcome::Failed(format!(
                    "reading its records at byte {offset}: {}",
                    other.message().unwrap_or_default()
                ))
            }
        }
    }
    let bytes = chunks.concat();
    match serde_json::from_slice(&bytes) {
        Ok(export) => Outcome::Answered(export),
        Err(e) => Outcome::Failed(format!(
            "its audit export of {len} bytes is not understood: {e}"
        )),
    }
}
