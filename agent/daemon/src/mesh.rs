//! The mesh in the daemon: turns the config into a running mesh and its discovery sources,
//! gives the rest of the daemon a [`MeshHandle`], and leaves gracefully on shutdown.
//!
//! Owns start-up of the mesh (this node's mesh address, the UDP socket, [`NodeMeta`] from the
//! config, `/etc/kubedna/image.json` and the host's addresses), the slot through which the admin
//! API and later the control-plane work reach the handle ([`MeshSlot`]), the event log lines,
//! and the bounded leave at SIGTERM. Start-up never blocks readiness and never fails the agent:
//! a network that is not up yet, or a port in use, is logged and retried. It must never log the
//! cluster secret or any key.
//!
//! A config reload that changes the cluster secret rotates the mesh's keys ([`rotate_secret`]):
//! the new key is accepted at once and used once every live member accepts it, the old one is
//! accepted for `cluster.secretGraceSeconds`. The control-plane engine keeps the secret it started
//! with until the agent restarts.
//!
//! The node's mesh identity (address, generation, incarnation) and its last-known members are
//! kept in `<state.dir>/mesh.json` ([`SavedMesh`], written atomically every few seconds when they
//! change and at shutdown), so a restarted agent rejoins as the next generation of itself and
//! announces to the members it knew, even without seeds.
//!
//! Request kinds for [`MeshHandle::request`] and [`MeshHandle::serve`] are listed in
//! [`request_kind`]; docs/mesh.md documents the API.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubedna_config::{Config, ProviderKind};
use kubedna_mesh::discovery::multicast::MulticastConfig;
use kubedna_mesh::discovery::provider::{HetznerConfig, HETZNER_API, LAB_PEERS_FILE};
use kubedna_mesh::discovery::{self, DiscoveryConfig, ProviderSource};
use kubedna_mesh::runtime::{self, RotateError};
use kubedna_mesh::{ClusterSecret, DownReason, Event, KeyStatus, MeshConfig, NodeMeta, NodeState};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::tasks::{Done, Tasks};

pub use kubedna_mesh::runtime::{IncomingRequest, MeshHandle, MeshStopped, RequestError};
pub use kubedna_mesh::{Liveness, MemberInfo};

/// Request kinds of the daemon's application requests over the mesh (one byte on the wire).
/// Add new kinds here so two subsystems never share one.
pub mod request_kind {
    /// Liveness/latency check: the peer echoes the payload.
    pub const PING: u8 = 1;
    /// The control-plane engine's requests (`Started`, `JoinMaterial`, `Leader`; see
    /// [`crate::node`]), postcard-encoded.
    pub const CONTROL_PLANE: u8 = 2;
    /// The cluster-wide views (`kubedna status --cluster`, `audit list --cluster`; see
    /// [`crate::cluster`]), JSON.
    pub const CLUSTER_VIEW: u8 = 3;
}

/// Where the image records its version.
pub const IMAGE_RECORD: &str = "/etc/kubedna/image.json";

/// The mesh handle once the mesh runs; empty before (network not up yet) and after a failure.
/// Filled once, through a `watch` channel, so a task that needs the mesh awaits it without
/// polling.
#[derive(Debug, Clone)]
pub struct MeshSlot(
    Arc<watch::Sender<Option<MeshHandle>>>,
    Arc<Mutex<Option<PendingRotation>>>,
);

impl Default for MeshSlot {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(None)), Arc::default())
    }
}

/// A secret rotation asked for before the mesh ran: applied as soon as it runs.
#[derive(Debug)]
struct PendingRotation {
    secret: ClusterSecret,
    grace: Duration,
}

impl MeshSlot {
    /// The handle, if the mesh is running.
    pub fn get(&self) -> Option<MeshHandle> {
        self.0.borrow().clone()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<PendingRotation>> {
        self.1.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills the slot (once: a later fill changes nothing), then applies a rotation that a
    /// reload asked for meanwhile.
    async fn fill(&self, handle: MeshHandle) {
        let pending = {
            let mut pending = self.pending();
            self.0.send_if_modified(|slot| {
                let empty = slot.is_none();
                if empty {
                    *slot = Some(handle.clone());
                }
                empty
            });
            pending.take()
        };
        if let Some(p) = pending {
            log_rotation(handle.rotate_secret(p.secret, p.grace).await);
        }
    }

    /// The handle once the mesh runs: now if it does, else when it starts. Never returns if
    /// the mesh never starts; callers select it against their shutdown.
    pub async fn running(&self) -> MeshHandle {
        let mut rx = self.0.subscribe();
        let handle = rx
            .wait_for(Option::is_some)
            .await
            .expect("the slot owns its sender, so the channel never closes");
        handle.clone().expect("waited for Some")
    }
}

/// The file in `state.dir` that keeps the mesh identity and last-known members across restarts.
pub const SAVED_MESH_FILE: &str = "mesh.json";

/// How often the saved identity and members are rewritten when they changed.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// Most members kept in [`SavedMesh`] (announced to a few at a time at start).
const SAVED_MEMBERS: usize = 64;

/// What survives a restart in `<state.dir>/mesh.json`. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedMesh {
    /// The mesh address of the saved life; a different address now means a different identity.
    pub address: SocketAddr,
    /// Its generation: the next start uses generation + 1.
    pub generation: u16,
    /// Its last SWIM incarnation (for diagnosis; a new life starts at 0).
    pub incarnation: u64,
    /// Members known when saved, alive and suspect ones first, then down ones (the previous
    /// list is kept when none is known: an isolated node keeps what it knew).
    pub members: Vec<SocketAddr>,
}

/// Reads `<state_dir>/mesh.json`; a missing file is a first start, an unreadable or corrupt one
/// is logged and ignored (the node then joins as on a first start).
pub fn load_saved(state_dir: &Path) -> Option<SavedMesh> {
    let path = state_dir.join(SAVED_MESH_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the saved mesh identity; joining as a new node");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(saved) => Some(saved),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the saved mesh identity is not valid JSON of this agent; joining as a new node (the file is rewritten)");
            None
        }
    }
}

/// Applies a saved life to the mesh config: the next generation if the address is the same, and
/// the saved members as announce targets.
pub fn apply_saved(cfg: &mut MeshConfig, saved: Option<&SavedMesh>) {
    let Some(saved) = saved else { return };
    if saved.address == cfg.addr {
        cfg.generation = saved.generation.wrapping_add(1);
    }
    cfg.known = saved
        .members
        .iter()
        .copied()
        .filter(|a| *a != cfg.addr)
        .collect();
}

/// Reads the mesh's identity and members and writes them if they differ from `last`.
async fn save_if_changed(
    handle: &MeshHandle,
    path: &Path,
    last: &mut Option<SavedMesh>,
) -> Result<(), String> {
    let (id, incarnation) = handle.identity().await.map_err(|e| e.to_string())?;
    let members = handle.members().await.map_err(|e| e.to_string())?;
    // Alive and suspect members first, then down ones (a member that left may be rebooting
    // too); foca forgets down members after an hour.
    let mut known: Vec<(bool, SocketAddr)> = members
        .iter()
        .map(|m| (m.liveness == Liveness::Down, m.id.addr))
        .collect();
    known.sort();
    let mut alive: Vec<SocketAddr> = Vec::new();
    for (_, addr) in known {
        if !alive.contains(&addr) && alive.len() < SAVED_MEMBERS {
            alive.push(addr);
        }
    }
    if alive.is_empty() {
        alive = last.as_ref().map(|l| l.members.clone()).unwrap_or_default();
    }
    let next = SavedMesh {
        address: id.addr,
        generation: id.generation,
        incarnation: u64::from(incarnation),
        members: alive,
    };
    if last.as_ref() == Some(&next) {
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(&next).map_err(|e| e.to_string())?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || kubedna_host::atomic::write_atomic(&path, &bytes, 0o600))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| kubedna_host::error_chain(&e))?;
    *last = Some(next);
    Ok(())
}

/// Keeps `<state.dir>/mesh.json` current: rewritten at most every [`SAVE_EVERY`] after a
/// membership change or a new generation, until `stop`.
async fn keep_saved(
    handle: MeshHandle,
    path: PathBuf,
    mut last: Option<SavedMesh>,
    mut stop: watch::Receiver<bool>,
) {
    let mut events = handle.subscribe();
    let mut dirty = true;
    let mut reported = false;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(Event::MemberUp(_) | Event::MemberDown(..) | Event::Rejoined(_) | Event::Joined)
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => dirty = true,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            () = tokio::time::sleep(SAVE_EVERY), if dirty => {
                dirty = false;
                match save_if_changed(&handle, &path, &mut last).await {
                    Ok(()) => reported = false,
                    Err(e) if !reported => {
                        reported = true;
                        tracing::warn!(file = %path.display(), error = %e, "cannot save the mesh identity; a restart will join as a new generation of this node; check the state directory");
                    }
                    Err(_) => {}
                }
            }
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
    }
}

/// The running mesh service: what [`stop`] needs.
#[derive(Debug)]
pub struct MeshService {
    state_file: PathBuf,
    slot: MeshSlot,
    stop: watch::Sender<bool>,
    starter: Done<Option<JoinHandle<std::io::Result<kubedna_mesh::Mesh>>>>,
}

/// Starts the mesh for `config` in the background and fills `slot` once it runs.
pub fn start(config: &Config, slot: MeshSlot, tasks: &Tasks) -> MeshService {
    let (stop, stop_rx) = watch::channel(false);
    let config = config.clone();
    let task_slot = slot.clone();
    let state_file = config.state_dir().join(SAVED_MESH_FILE);
    let t = tasks.clone();
    let starter = tasks.spawn("mesh start", async move {
        run_start(config, task_slot, stop_rx, t).await
    });
    MeshService {
        state_file,
        slot,
        stop,
        starter,
    }
}

/// Leaves the mesh gracefully (peers see the node as `Left`, not failed) and stops discovery,
/// within `deadline`.
pub async fn stop(service: MeshService, deadline: Duration) {
    let _ = service.stop.send(true);
    if let Some(handle) = service.slot.get() {
        let mut last = load_saved(service.state_file.parent().unwrap_or(Path::new("/")));
        if let Err(e) = save_if_changed(&handle, &service.state_file, &mut last).await {
            tracing::warn!(file = %service.state_file.display(), error = %e, "cannot save the mesh identity at shutdown");
        }
        let _ = handle.set_state(NodeState::Leaving).await;
        let _ = handle.leave().await;
    }
    let finished = tokio::time::timeout(deadline, async {
        if let Some(Some(task)) = service.starter.await {
            let _ = task.await;
        }
    })
    .await;
    match finished {
        Ok(()) => tracing::info!("left the mesh"),
        Err(_) => tracing::warn!(
            deadline = ?deadline,
            "the mesh did not finish leaving in time; peers will detect this node as failed"
        ),
    }
}

async fn run_start(
    config: Config,
    slot: MeshSlot,
    mut stop: watch::Receiver<bool>,
    tasks: Tasks,
) -> Option<JoinHandle<std::io::Result<kubedna_mesh::Mesh>>> {
    let spec = &config.spec.discovery;
    // Its length was checked when the config was read.
    let secret = config.cluster_secret.clone();
    let saved = load_saved(config.state_dir());
    let mut reported = None::<String>;
    let socket = loop {
        let attempt = match local_ip(&config, saved.as_ref()).await {
            Some(ip) => UdpSocket::bind(SocketAddr::new(ip, spec.port))
                .await
                .map_err(|e| format!("cannot bind the mesh port {ip}:{}: {e}; free the port or change discovery.port", spec.port)),
            None => Err("no IPv4 address on this node yet (or none on discovery.multicast.interface); waiting for the network".to_string()),
        };
        match attempt {
            Ok(s) => break s,
            Err(message) => {
                if reported.as_deref() != Some(message.as_str()) {
                    tracing::warn!("{message}; retrying");
                    reported = Some(message);
                }
                if pause(Duration::from_secs(2), &mut stop).await {
                    return None;
                }
            }
        }
    };
    let addr = match socket.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "the mesh socket has no address; the mesh is not started");
            return None;
        }
    };
    let meta = node_meta(&config, addr.ip(), Path::new(IMAGE_RECORD));
    let mut cfg = MeshConfig::lan(&config.spec.cluster.name, addr, meta);
    cfg.pause_tolerance = Duration::from_secs(config.spec.mesh.pause_tolerance_seconds.into());
    apply_saved(&mut cfg, saved.as_ref());
    if let Some(s) = &saved {
        tracing::info!(
            generation = cfg.generation,
            known = cfg.known.len(),
            previous = %s.address,
            "mesh: rejoining as the next generation of this node; announcing to known members"
        );
    }
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        seed = (u64::from(std::process::id()) ^ wall_nanos()).to_le_bytes();
    }
    let mesh = match runtime::new_mesh(cfg, &socket, &secret, u64::from_le_bytes(seed)) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "the mesh is not started");
            return None;
        }
    };
    let (handle, task) = runtime::spawn(mesh, socket);
    tasks.spawn("mesh event log", log_events(handle.subscribe()));
    serve_ping(&handle, &tasks);
    tasks.spawn(
        "mesh identity saver",
        keep_saved(
            handle.clone(),
            config.state_dir().join(SAVED_MESH_FILE),
            saved,
            stop.clone(),
        ),
    );
    let discovery_cfg = discovery_config(&config, addr);
    let sources = discovery::spawn(discovery_cfg, handle.clone(), stop.clone());
    tracing::info!(
        address = %addr,
        sources = sources.len(),
        "mesh running"
    );
    slot.fill(handle).await;
    Some(task)
}

/// Installs `new`'s cluster secret into the running mesh's key ring (beacons follow), or, if the
/// mesh does not run yet, as soon as it does. Never logs the secret: only key ids.
pub async fn rotate_secret(
    slot: &MeshSlot,
    new: &Config,
    rotation: &crate::reload::SecretRotation,
) {
    let secret = new.cluster_secret.clone();
    let handle = {
        let mut pending = slot.pending();
        match slot.get() {
            Some(h) => h,
            None => {
                tracing::info!(key = %rotation.key, "mesh not running yet; the new cluster secret applies when it starts");
                *pending = Some(PendingRotation {
                    secret,
                    grace: rotation.grace,
                });
                return;
            }
        }
    };
    log_rotation(handle.rotate_secret(secret, rotation.grace).await);
}

fn log_rotation(result: Result<KeyStatus, RotateError>) {
    match result {
        Ok(status) => {
            let keys: Vec<String> = status.keys.iter().map(ToString::to_string).collect();
            match &status.rotation {
                Some(r) => tracing::info!(
                    keys = ?keys,
                    primary = %status.primary,
                    target = %r.target,
                    waiting_for = r.waiting_for.len(),
                    retire_in_s = r.retire_in.as_secs(),
                    "mesh key rotation started: the new key is accepted; it is used once every live member accepts it"
                ),
                None => {
                    tracing::info!(keys = ?keys, primary = %status.primary, "mesh key unchanged")
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %kubedna_host::error_chain(&e), "mesh key rotation not applied; restart the agent to use the new cluster secret")
        }
    }
}

fn wall_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn pause(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

/// Answers [`request_kind::PING`] with the payload: a cheap end-to-end check of the
/// authenticated request path.
fn serve_ping(handle: &MeshHandle, tasks: &Tasks) {
    if let Ok(mut requests) = handle.serve(request_kind::PING, 16) {
        tasks.spawn("mesh ping server", async move {
            while let Some(req) = requests.recv().await {
                let payload = req.payload.clone();
                req.respond(Ok(payload));
            }
        });
    }
}

async fn log_events(mut events: tokio::sync::broadcast::Receiver<Event>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(Event::MemberUp(id)) => tracing::info!(peer = %id, "mesh: member up"),
            Ok(Event::MemberDown(id, DownReason::Left)) => {
                tracing::info!(peer = %id, "mesh: member left")
            }
            Ok(Event::MemberDown(id, DownReason::Failed)) => {
                tracing::warn!(peer = %id, "mesh: member failed")
            }
            Ok(Event::Joined) => tracing::info!("mesh: joined"),
            Ok(Event::Isolated) => {
                tracing::warn!("mesh: no member left; announcing to seeds and discovered peers")
            }
            Ok(Event::Rejoined(id)) => {
                tracing::warn!(id = %id, "mesh: we were declared down and rejoined")
            }
            Ok(Event::KeyPromoted(id)) => {
                tracing::info!(key = %id, "mesh: sealing packets with the new key")
            }
            Ok(Event::KeysRetired(ids)) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                tracing::warn!(keys = ?ids, "mesh: grace period over; packets sealed with these keys are dropped from now on")
            }
            Ok(Event::Left | Event::MemberUpdated(..)) => {}
            Err(RecvError::Lagged(n)) => tracing::debug!(skipped = n, "mesh events skipped"),
            Err(RecvError::Closed) => return,
        }
    }
}

/// The discovery sources the config asks for.
pub fn discovery_config(config: &Config, mesh_addr: SocketAddr) -> DiscoveryConfig {
    let spec = &config.spec.discovery;
    let multicast = spec.multicast.enabled.then(|| MulticastConfig {
        group: spec.multicast.group,
        port: spec.multicast.port,
        interface: match mesh_addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        },
    });
    let provider = if spec.provider {
        match config.spec.provider.kind {
            ProviderKind::None => None,
            ProviderKind::Lab => Some(ProviderSource::Lab {
                path: LAB_PEERS_FILE.into(),
            }),
            ProviderKind::Hetzner => config.spec.provider.hetzner.as_ref().map(|h| {
                ProviderSource::Hetzner(HetznerConfig {
                    base_url: HETZNER_API.into(),
                    token_file: h.token_file.clone(),
                    label_selector: h.label_selector.clone().unwrap_or_else(|| {
                        format!("kubedna.io/cluster={}", config.spec.cluster.name)
                    }),
                })
            }),
        }
    } else {
        None
    };
    DiscoveryConfig {
        cluster_name: config.spec.cluster.name.clone(),
        port: spec.port,
        seeds: spec.seeds.clone(),
        multicast,
        provider,
    }
}

/// This node's metadata as gossiped: `addresses` are the host's global addresses (the mesh
/// address first).
pub fn node_meta(config: &Config, mesh_ip: IpAddr, image_record: &Path) -> NodeMeta {
    let mut addresses = vec![mesh_ip];
    addresses.extend(host_addresses().into_iter().filter(|a| *a != mesh_ip));
    NodeMeta {
        name: config.node_name.clone(),
        role: config.spec.node.role,
        addresses,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        image_version: image_version(image_record),
        state: NodeState::Ready,
    }
}

/// `kubedna_image_version` (and base) from the image's record, or `unknown`.
pub fn image_version(path: &Path) -> String {
    #[derive(serde::Deserialize)]
    struct Record {
        kubedna_image_version: String,
        #[serde(default)]
        base: Option<String>,
    }
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        .map_or_else(
            || "unknown".to_string(),
            |r| match r.base {
                Some(base) => format!("{} ({base})", r.kubedna_image_version),
                None => r.kubedna_image_version,
            },
        )
}

/// Up, non-loopback, non-link-local addresses of the host.
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| {
            let s = a.address?;
            if let Some(v4) = s.as_sockaddr_in() {
                let ip = v4.ip();
                return (!ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
                    .then_some(IpAddr::V4(ip));
            }
            let v6 = s.as_sockaddr_in6()?.ip();
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            (!v6.is_loopback() && !link_local).then_some(IpAddr::V6(v6))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The IPv4 address of `interface`.
fn interface_ipv4(interface: &str) -> Option<IpAddr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        (a.interface_name == interface)
            .then(|| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
            .flatten()
    })
}

/// The address this node's mesh listens on: the multicast interface's, else the source address
/// the kernel picks towards the first seed that resolves, else towards the first member saved
/// before a restart, else towards the multicast group (the default route's interface).
async fn local_ip(config: &Config, saved: Option<&SavedMesh>) -> Option<IpAddr> {
    let spec = &config.spec.discovery;
    if let Some(name) = &spec.multicast.interface {
        return interface_ipv4(name);
    }
    for seed in &spec.seeds {
        if let Ok(addrs) = discovery::seeds::resolve(seed, spec.port).await {
            for target in addrs.into_iter().filter(SocketAddr::is_ipv4) {
                if let Some(ip) = source_ip_towards(target).await {
                    return Some(ip);
                }
            }
        }
    }
    // Without seeds, the members saved before a restart say where the cluster is.
    for target in saved
        .iter()
        .flat_map(|s| &s.members)
        .filter(|a| a.is_ipv4())
    {
        if let Some(ip) = source_ip_towards(*target).await {
            return Some(ip);
        }
    }
    source_ip_towards(SocketAddr::from((
        spec.multicast.group,
        spec.multicast.port,
    )))
    .await
    .or_else(|| host_addresses().into_iter().find(IpAddr::is_ipv4))
}

/// The local address the kernel's routing picks to reach `target` (no packet is sent).
async fn source_ip_towards(target: SocketAddr) -> Option<IpAddr> {
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    probe.connect(target).await.ok()?;
    let ip = probe.local_addr().ok()?.ip();
    // Loopback only for a loopback target (single-host tests): peers must be able to reach us.
    (!ip.is_unspecified() && (!ip.is_loopback() || target.ip().is_loopback())).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_life_gives_the_next_generation_and_known_members() {
        let me: SocketAddr = ([198, 18, 0, 2], 7946).into();
        let peer: SocketAddr = ([198, 18, 0, 3], 7946).into();
        let meta = NodeMeta {
            name: "n".into(),
            role: kubedna_proto::NodeRole::Worker,
            addresses: vec![],
            agent_version: "0".into(),
            image_version: "0".into(),
            state: NodeState::Ready,
        };
        let saved = SavedMesh {
            address: me,
            generation: 4,
            incarnation: 9,
            members: vec![me, peer],
        };
        let mut cfg = MeshConfig::lan("c", me, meta.clone());
        apply_saved(&mut cfg, Some(&saved));
        assert_eq!((cfg.generation, cfg.known.clone()), (5, vec![peer]));
        let moved: SocketAddr = ([198, 18, 0, 9], 7946).into();
        let mut cfg = MeshConfig::lan("c", moved, meta);
        apply_saved(&mut cfg, Some(&saved));
        assert_eq!(cfg.generation, 0, "another address is another identity");
        assert_eq!(cfg.known, vec![me, peer]);

        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(load_saved(dir.path()), None);
        std::fs::write(dir.path().join(SAVED_MESH_FILE), b"{not json").expect("write");
        assert_eq!(load_saved(dir.path()), None, "corrupt file ignored");
        std::fs::write(
            dir.path().join(SAVED_MESH_FILE),
            serde_json::to_vec(&saved).expect("json"),
        )
        .expect("write");
        assert_eq!(load_saved(dir.path()), Some(saved));
    }

    #[test]
    fn the_image_version_comes_from_the_image_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("image.json");
        assert_eq!(image_version(&path), "unknown");
        std::fs::write(
            &path,
            r#"{"kubedna_image_version":"0.1.0","base":"debian-12","suite":"bookworm","units":[]}"#,
        )
        .expect("write");
        assert_eq!(image_version(&path), "0.1.0 (debian-12)");
    }
}
