//! The control-plane engine in the daemon: turns the config and the running mesh into a
//! [`kubedna_controlplane::engine::Engine`] and runs it until shutdown.
//!
//! Owns the production implementations of the engine's traits: [`MeshPeers`] (who is alive,
//! and requests to peers by name carried by the mesh's authenticated, encrypted request path
//! as postcard-encoded [`Request`]/[`Response`]), [`KubeadmUnit`] (kubeadm runs as a transient
//! systemd service, outside the agent's sandbox, as `units/kubedna-agent.service` promises),
//! systemd over D-Bus, and the wall clock. It also keeps a managed block in `/etc/hosts` with
//! `<node>.<cluster>.kubedna` for every live node and `api.<cluster>.kubedna` for the API
//! endpoint, because etcd's peer URLs and kubeadm's `controlPlaneEndpoint` use those names.
//! It serves other nodes' engine requests, answering only nodes the mesh lists as alive.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kubedna_config::Config;
use kubedna_controlplane::engine::{
    Engine, EngineHandle, Kubeadm, KubeadmError, KubeadmOp, OpRecords, PeerError, PeerInfo, Peers,
    Request, Response, Status, SystemClock,
};
use kubedna_host::systemd::DbusSystemd;
use kubedna_mesh::{Liveness, NodeState};
use kubedna_proto::NodeRole;
use tokio::sync::watch;

use crate::mesh::{request_kind, MeshHandle, MeshSlot};
use crate::tasks::{Done, Tasks};

mod engine_config;

pub use engine_config::{api_endpoint, api_name, engine_config};

/// The file whose managed block maps node names and the API name to addresses.
pub const HOSTS_FILE: &str = "/etc/hosts";
/// How long a request to a peer may take, resends included.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// The engine's status once it runs, for `kubedna status`, and its doctor (`kubedna doctor`).
#[derive(Debug, Clone, Default)]
pub struct NodeSlot(Arc<OnceLock<EngineHandle>>, crate::doctor::DoctorSlot);

impl NodeSlot {
    pub fn status(&self) -> Option<Status> {
        self.0.get().map(EngineHandle::status)
    }

    /// The engine's handle once it runs (`kubedna doctor` reads etcd through it).
    pub fn handle(&self) -> Option<EngineHandle> {
        self.0.get().cloned()
    }

    /// The leader's doctor, when this node runs it.
    pub fn doctor(&self) -> &crate::doctor::DoctorSlot {
        &self.1
    }

    fn engine(&self) -> Result<&EngineHandle, String> {
        self.0
            .get()
            .ok_or_else(|| "the control-plane engine is not running on this node".to_string())
    }

    /// `kubedna catalogue status`: the leader's record in etcd.
    pub async fn catalogue_status(&self) -> kubedna_proto::CatalogueStatusResponse {
        let r = match self.engine() {
            Ok(e) => e.catalogue_record().await,
            Err(e) => Err(e),
        };
        crate::catalogue::status(r)
    }

    /// `kubedna catalogue diff`.
    pub async fn catalogue_diff(&self) -> kubedna_proto::CatalogueDiffResponse {
        let r = match self.engine() {
            Ok(e) => e.catalogue_diff().await,
            Err(e) => Err(e),
        };
        crate::catalogue::diff(r)
    }
}

/// Starts the engine in the background once the mesh runs; it stops when `shutdown` turns true.
/// Returns `None` (and logs why) when this node has no control-plane set to form with.
pub fn start(
    config: &Config,
    mesh: MeshSlot,
    slot: NodeSlot,
    audit: kubedna_audit::AuditHandle,
    shutdown: watch::Receiver<bool>,
    tasks: &Tasks,
) -> Option<Done<()>> {
    let Some(cps) = config.spec.cluster.control_planes.as_ref() else {
        tracing::warn!(
            file = %config.file.display(),
            "cluster.controlPlanes is not set: this node will not form or join a cluster; \
             set cluster.controlPlanes.expected and .members (kubedna-image seed writes them)"
        );
        return None;
    };
    if cps.members.is_empty() {
        tracing::warn!(
            file = %config.file.display(),
            "cluster.controlPlanes.members is empty: control planes bootstrap etcd only from a \
             listed set (docs/control-plane.md); list the {} control-plane names",
            cps.expected
        );
        return None;
    }
    let config = config.clone();
    let t = tasks.clone();
    Some(tasks.spawn("control-plane engine", async move {
        run(config, mesh, slot, audit, shutdown, t).await;
    }))
}

async fn run(
    config: Config,
    mesh: MeshSlot,
    slot: NodeSlot,
    audit: kubedna_audit::AuditHandle,
    mut shutdown: watch::Receiver<bool>,
    tasks: Tasks,
) {
    let handle = tokio::select! {
        h = mesh.running() => h,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let systemd = loop {
        match DbusSystemd::connect().await {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(error = %kubedna_host::error_chain(&e), "control plane: cannot reach systemd over D-Bus; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    };
    let cluster = config.spec.cluster.name.clone();
    let view = PeerView::default();
    let peers = MeshPeers {
        mesh: handle.clone(),
        view: view.clone(),
    };
    let actions = crate::selfaudit::log(audit, &tasks);
    let cfg = engine_config(&config, handle.local_addr().ip(), actions.clone());
    let api_port = cfg.api_port();
    let kubeadm = KubeadmUnit {
        systemd: systemd.clone(),
        runs: Arc::new(AtomicU64::new(0)),
        records: OpRecords::new(config.state_dir().join("kubeadm")),
        out_dir: config.runtime_dir().to_path_buf(),
        tasks: tasks.clone(),
    };
    if let Err(e) = std::fs::create_dir_all(&kubeadm.out_dir) {
        tracing::error!(dir = %kubeadm.out_dir.display(), error = %e, "control plane: cannot create state.runtimeDir, where kubeadm's output is read from; fix the directory or the setting and restart the agent");
        return;
    }
    let podnet = (systemd.clone(), kubeadm.out_dir.clone());
    let mut engine = match Engine::new(
        cfg,
        peers,
        systemd,
        kubeadm,
        SystemClock,
        config.state_dir(),
    ) {
        Ok(e) => match &config.spec.catalogue {
            Some(c) => e.with_catalogue(catalogue_duty(c, actions.clone())),
            None => e,
        },
        Err(e) => {
            tracing::error!(error = %kubedna_host::error_chain(&e), "control plane: the engine cannot start; fix the configuration and restart the agent");
            return;
        }
    };
    if let Some(doctor) =
        crate::doctor::build(&config, &handle, &slot.1, actions, shutdown.clone(), &tasks)
    {
        engine.set_doctor(doctor);
    }
    let engine_handle = engine.handle();
    let _ = slot.0.set(engine_handle.clone());
    // Keep the view, /etc/hosts and the gossiped state current; answer other nodes.
    let local = (config.node_name.clone(), handle.local_addr());
    tasks.spawn(
        "peer view keeper",
        keep_view(
            handle.clone(),
            view.clone(),
            engine_handle.clone(),
            cluster,
            local,
            api_port,
            shutdown.clone(),
        ),
    );
    serve(&handle, view, engine_handle, &tasks);
    tasks.spawn(
        "pod network keeper",
        keep_pod_network(
            podnet.0,
            config.node_name.clone(),
            podnet.1,
            shutdown.clone(),
        ),
    );
    tracing::info!(node = %config.node_name, "control plane: engine running");
    engine.run(shutdown).await;
    tracing::info!("control plane: engine stopped");
}

/// The catalogue duty from the agent config. Each of its events (apply, prune, drift
/// correction, conflict, failed health check, refusal) is one of the agent's own audit records.
fn catalogue_duty(
    c: &kubedna_config::CatalogueSpec,
    actions: kubedna_controlplane::actions::ActionLog,
) -> kubedna_controlplane::duties::CatalogueDuty {
    use kubedna_controlplane::duties::{CatalogueDuty, CatalogueSettings};
    let settings = CatalogueSettings {
        bundle: c.bundle.clone(),
        kubeconfig: c.kubeconfig.clone(),
        selection: kubedna_catalogue::Selection {
            optional: c.optional.iter().cloned().collect(),
        },
        interval: Duration::from_secs(c.interval_seconds),
        health_timeout: Duration::from_secs(c.health_timeout_seconds),
        admin_kubeconfig: Some(PathBuf::from("/etc/kubernetes/admin.conf")),
    };
    let sink: kubedna_catalogue::progress::EventSink = Arc::new(move |e| {
        let detail = serde_json::to_value(e).unwrap_or_default();
        tracing::info!(action = e.action(), %detail, "catalogue");
        // The reason says why in words; a conflict, a failed health check or a refusal carries
        // its message as the failure.
        actions.record(
            e.action(),
            e.reason(),
            detail,
            e.failure().map_or(Ok(()), Err),
        );
    });
    CatalogueDuty::new(settings, sink)
}

/// The live peers by name, and the names of the suspect ones (none of them alive), refreshed
/// from the mesh (the engine's `alive` and `suspect` are synchronous).
#[derive(Debug, Clone, Default)]
struct PeerView(
    Arc<Mutex<BTreeMap<String, (PeerInfo, SocketAddr)>>>,
    Arc<Mutex<std::collections::BTreeSet<String>>>,
);

impl PeerView {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (PeerInfo, SocketAddr)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn suspects(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.1.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn by_addr(&self, addr: SocketAddr) -> Option<String> {
        self.lock()
            .values()
            .find(|(_, a)| *a == addr)
            .map(|(p, _)| p.name.clone())
    }
}

async fn keep_view(
    mesh: MeshHandle,
    view: PeerView,
    engine: EngineHandle,
    cluster: String,
    local: (String, SocketAddr),
    api_port: u16,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = mesh.subscribe();
    let mut last_hosts = String::new();
    let mut last_state = None;
    let mut known: BTreeMap<String, IpAddr> = BTreeMap::new();
    let mut serving: std::collections::BTreeSet<String> = Default::default();
    loop {
        if let Ok(members) = mesh.members().await {
            let mut next = BTreeMap::new();
            let mut suspects = std::collections::BTreeSet::new();
            serving.clear();
            for m in members {
                let Some(meta) = m.meta else { continue };
                if m.id.addr == local.1 {
                    continue;
                }
                // Names stay resolvable while a node is down: etcd keeps dialling its peers.
                known.insert(meta.name.clone(), m.id.addr.ip());
                if m.liveness == Liveness::Suspect {
                    suspects.insert(meta.name.clone());
                }
                if m.liveness != Liveness::Alive {
                    continue;
                }
                let role = meta.role;
                if role == NodeRole::ControlPlane && meta.state == NodeState::Member {
                    serving.insert(meta.name.clone());
                }
                let info = PeerInfo {
                    name: meta.name.clone(),
                    role,
                    addr: Some(m.id.addr.ip().to_string()),
                };
                next.insert(meta.name, (info, m.id.addr));
            }
            // A restarted node can be listed twice (its old identity suspect, its new one
            // alive): alive wins.
            suspects.retain(|n| !next.contains_key(n));
            *view.lock() = next;
            *view.suspects() = suspects;
        }
        let status = engine.status();
        let own_api = status.role == NodeRole::ControlPlane
            && Path::new(LOCAL_API_MANIFEST).exists()
            && (status.phase == kubedna_controlplane::engine::Phase::Initialising
                || api_listens(SocketAddr::new(local.1.ip(), api_port)).await);
        let hosts = hosts_entries(&cluster, &local, &known, &view, &status, own_api, &serving);
        if hosts != last_hosts {
            match update_hosts(Path::new(HOSTS_FILE), &hosts) {
                Ok(()) => last_hosts = hosts,
                Err(e) => {
                    tracing::warn!(file = HOSTS_FILE, error = %e, "control plane: cannot update the node names; etcd peers may not resolve")
                }
            }
        }
        let state = gossip_state(&status);
        if last_state != Some(state) && mesh.set_state(state).await.is_ok() {
            last_state = Some(state);
        }
        tokio::select! {
            _ = events.recv() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Whether this node's own API server accepts connections. A joining control plane's API name
/// points at it only then: a join that failed after writing the manifest must not send the next
/// join's discovery to an API server that does not run. (`kubeadm init` is different: there is
/// no other API, and init waits for its own.)
async fn api_listens(api: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(api);
    matches!(
        tokio::time::timeout(Duration::from_millis(300), connect).await,
        Ok(Ok(_))
    )
}

/// The lifecycle state this node gossips for its engine phase.
pub fn gossip_state(status: &Status) -> NodeState {
    use kubedna_controlplane::engine::Phase;
    match status.phase {
        Phase::Member => NodeState::Member,
        Phase::Starting | Phase::PreparingHost | Phase::WaitingForQuorum => NodeState::Ready,
        _ => NodeState::Joining,
    }
}

/// Lines for the managed block: this node, every peer ever seen (down ones too), and the API
/// name (the leader, else the first live control plane by name).
/// Present once kubeadm (init, or a control-plane join) runs an API server on this node.
const LOCAL_API_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";

/// The managed `/etc/hosts` block. The API name points at this node itself when it runs an API
/// server (`own_api`: the init node while `kubeadm init` waits for it, a joined control plane
/// always, so a control plane never depends on another's API), else at the leader, else at a
/// live control plane the mesh says is a member (its API serves; workers know no leader), else
/// at the first live control plane.
fn hosts_entries(
    cluster: &str,
    local: &(String, SocketAddr),
    known: &BTreeMap<String, IpAddr>,
    view: &PeerView,
    status: &Status,
    own_api: bool,
    serving: &std::collections::BTreeSet<String>,
) -> String {
    let mut alive: BTreeMap<String, (IpAddr, NodeRole)> = view
        .lock()
        .values()
        .map(|(p, a)| (p.name.clone(), (a.ip(), p.role)))
        .collect();
    alive.insert(local.0.clone(), (local.1.ip(), status.role));
    let own = own_api.then(|| alive.get(&local.0)).flatten();
    let api = own
        .or_else(|| status.leader.as_ref().and_then(|l| alive.get(&l.name)))
        .or_else(|| serving.iter().find_map(|n| alive.get(n)))
        .or_else(|| alive.values().find(|(_, r)| *r == NodeRole::ControlPlane))
        .map(|(ip, _)| *ip);
    let mut names = known.clone();
    names.extend(alive.iter().map(|(n, (ip, _))| (n.clone(), *ip)));
    let mut out = String::new();
    for (name, ip) in &names {
        out.push_str(&format!("{ip} {name}.{cluster}.kubedna\n"));
    }
    if let Some(ip) = api {
        out.push_str(&format!("{ip} {}\n", api_name(cluster)));
    }
    out
}

const BEGIN: &str = "# BEGIN kubedna: managed by kubedna-agent, do not edit";
const END: &str = "# END kubedna";

/// `existing` with its managed block replaced by `entries` (appended if absent).
pub fn render_hosts(existing: &str, entries: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in existing.lines() {
        if line == BEGIN {
            inside = true;
            continue;
        }
        if line == END {
            inside = false;
            continue;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(BEGIN);
    out.push('\n');
    out.push_str(entries);
    out.push_str(END);
    out.push('\n');
    out
}

/// Rewrites `path` in place (it is bind-mounted writable into the agent's sandbox, so it cannot
/// be replaced by rename) with one write, then fsyncs it. Unchanged content is not rewritten.
fn update_hosts(path: &Path, entries: &str) -> std::io::Result<()> {
    use std::io::Write;
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let next = render_hosts(&existing, entries);
    if next == existing {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(next.as_bytes())?;
    f.sync_all()
}

/// The engine's [`Peers`] over the mesh.
struct MeshPeers {
    mesh: MeshHandle,
    view: PeerView,
}

impl Peers for MeshPeers {
    fn alive(&self) -> Vec<PeerInfo> {
        self.view.lock().values().map(|(p, _)| p.clone()).collect()
    }

    fn suspect(&self) -> Vec<String> {
        self.view.suspects().iter().cloned().collect()
    }

    async fn ask(&self, peer: &str, req: Request) -> Result<Response, PeerError> {
        let err = |reason: String| PeerError {
            peer: peer.to_string(),
            reason,
        };
        let addr = self
            .view
            .lock()
            .get(peer)
            .map(|(_, a)| *a)
            .ok_or_else(|| err("not alive in the mesh".into()))?;
        let payload = postcard::to_allocvec(&req).map_err(|e| err(e.to_string()))?;
        let answer = self
            .mesh
            .request(addr, request_kind::CONTROL_PLANE, payload, ASK_TIMEOUT)
            .await
            .map_err(|e| err(format!("request over the mesh to {addr}: {e}")))?;
        postcard::from_bytes(&answer)
            .map_err(|e| err(format!("answer from {addr} is not an engine response: {e}")))
    }
}

/// Answers other nodes' engine requests, only from nodes the mesh lists as alive.
fn serve(mesh: &MeshHandle, view: PeerView, engine: EngineHandle, tasks: &Tasks) {
    let mut requests = match mesh.serve(request_kind::CONTROL_PLANE, 32) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "control plane: cannot serve engine requests");
            return;
        }
    };
    let t = tasks.clone();
    tasks.spawn("engine request server", async move {
        while let Some(req) = requests.recv().await {
            let Some(from) = view.by_addr(req.from) else {
                let from = req.from;
                req.respond(Err(format!(
                    "{from} is not an alive member of this node's mesh view yet; ask again"
                )));
                continue;
            };
            let engine = engine.clone();
            t.spawn("engine request", async move {
                let answer = match postcard::from_bytes::<Request>(&req.payload) {
                    Ok(r) => {
                        tracing::debug!(peer = %from, request = ?r, "control plane: request");
                        let response = engine.answer(r).await;
                        postcard::to_allocvec(&response).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(format!("not an engine request: {e}")),
                };
                req.respond(answer);
            });
        }
    });
}

/// Once this node has joined (kubelet.conf exists), keeps its pod network in line with the
/// cluster every [`POD_NETWORK_INTERVAL`]: `kubedna-agent pod-network` as a transient oneshot
/// unit, outside the agent's sandbox (it writes the CNI config and routes).
async fn keep_pod_network(
    systemd: DbusSystemd,
    node: String,
    out_dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut n: u64 = 0;
    let mut last_error = String::new();
    loop {
        if Path::new(kubedna_host::podnet::KUBECONFIG).exists() {
            n += 1;
            let unit = format!("kubedna-pod-network-{}-{n}.service", std::process::id());
            let argv = [
                "/usr/bin/kubedna-agent".to_string(),
                "pod-network".into(),
                "--node".into(),
                node.clone(),
            ];
            let out = out_dir.join("pod-network.out");
            match systemd
                .run_oneshot(
                    &unit,
                    "KubeDNA: pod network (CNI config, routes)",
                    &argv,
                    &out,
                )
                .await
            {
                Ok(o) => {
                    if o.contains("written: true") || !o.contains("changes: []") {
                        tracing::info!(output = %o.trim(), "pod network updated");
                    }
                    last_error.clear();
                }
                Err(e) => {
                    let e = kubedna_host::error_chain(&e);
                    if e != last_error {
                        tracing::warn!(error = %e, "pod network: update failed; retrying");
                        last_error = e;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POD_NETWORK_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// How often the pod network is brought in line (a new node's pods are reachable within this).
const POD_NETWORK_INTERVAL: Duration = Duration::from_secs(5);

/// [`Kubeadm`] as transient oneshot units `kubedna-kubeadm-<op>-<pid>-<n>.service`, stdout
/// captured in the agent's runtime directory. A node operation's unit runs under the
/// operation's lock and writes its success marker ([`OpRecords::wrap`]), and outlives the
/// agent; a duty's unit is stopped when its caller drops the call.
struct KubeadmUnit {
    systemd: DbusSystemd,
    runs: Arc<AtomicU64>,
    records: OpRecords,
    out_dir: PathBuf,
    tasks: Tasks,
}

/// Stops a duty's unit if the call is dropped before the unit ended.
struct StopOnDrop {
    systemd: DbusSystemd,
    unit: String,
    armed: bool,
    tasks: Tasks,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let (sd, unit) = (self.systemd.clone(), self.unit.clone());
            self.tasks.spawn("stop an abandoned unit", async move {
                use kubedna_host::systemd::Systemd;
                let _ = sd.stop(&unit).await;
            });
        }
    }
}

impl Kubeadm for KubeadmUnit {
    async fn run(&self, op: KubeadmOp, args: &[String]) -> Result<String, KubeadmError> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let unit = format!(
            "kubedna-kubeadm-{}-{}-{n}.service",
            op.name(),
            std::process::id()
        );
        let mut argv = vec!["/usr/bin/kubeadm".to_string()];
        argv.extend(args.iter().cloned());
        let command = format!(
            "kubeadm {} (unit {unit})",
            kubedna_controlplane::engine::redact_args(args)
        );
        let failed = |e: String| KubeadmError::Failed {
            command: command.clone(),
            code: None,
            stderr: e,
        };
        let argv = if op.is_node_operation() {
            self.records
                .wrap(op, &argv)
                .map_err(|e| failed(e.to_string()))?
        } else {
            argv
        };
        let out = self.out_dir.join(format!("kubeadm-{n}.out"));
        let mut guard = StopOnDrop {
            systemd: self.systemd.clone(),
            unit: unit.clone(),
            armed: !op.is_node_operation(),
            tasks: self.tasks.clone(),
        };
        let r = self
            .systemd
            .run_oneshot(&unit, &format!("KubeDNA: {command}"), &argv, &out)
            .await
            .map_err(|e| failed(kubedna_host::error_chain(&e)));
        guard.armed = false;
        r
    }

    fn records(&self) -> &OpRecords {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_hosts_block_is_replaced_and_the_rest_kept() {
        let base = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";
        let once = render_hosts(base, "198.18.0.2 cp-1.demo.kubedna\n");
        assert!(once.starts_with(base), "{once}");
        assert!(once.contains("198.18.0.2 cp-1.demo.kubedna\n"));
        let twice = render_hosts(&once, "198.18.0.3 cp-2.demo.kubedna\n");
        assert!(twice.starts_with(base), "{twice}");
        assert!(!twice.contains("cp-1"), "{twice}");
        assert_eq!(twice.matches(BEGIN).count(), 1);
        assert_eq!(
            render_hosts(&twice, "198.18.0.3 cp-2.demo.kubedna\n"),
            twice
        );
    }

    #[test]
    fn engine_messages_fit_one_mesh_request() {
        let sealed = vec![0xa5u8; 400];
        let r = Response::JoinMaterial {
            sealed,
            leader: Some(kubedna_controlplane::engine::LeaderStatus {
                name: "control-plane-with-a-long-name-1".into(),
                term: i64::MAX,
            }),
        };
        let bytes = postcard::to_allocvec(&r).expect("encodes");
        assert!(bytes.len() < 1_200, "{} bytes", bytes.len());
        assert_eq!(
            postcard::from_bytes::<Response>(&bytes).expect("decodes"),
            r
        );
    }
}
