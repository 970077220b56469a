//! The node engine: it owns the node's formation life, from host preparation to `member`, and
//! the duties that keep it there (leader campaign, join material renewal). It decides nothing
//! the modules below it decide ([`crate::bootstrap`] whether etcd may start as `new`,
//! [`crate::coord`] who inits and who leads); it sequences them, retries a failed step with
//! the failure recorded in [`Status::last_error`], and persists every irreversible step in the
//! state directory *before* taking it, so a restarted engine resumes instead of repeating.
//!
//! # For the daemon
//! ```text
//! let engine = Engine::new(cfg, peers, systemd, kubeadm, SystemClock, state_dir)?;
//! let handle = engine.handle();          // cheap to clone
//! mesh.on_request(|from, req| handle.answer(&from, req));  // requests from other nodes
//! api.status(|| handle.status());        // `kubedna status`
//! engine.run(shutdown_rx).await;         // until the watch channel turns true
//! ```
//! The daemon implements [`Peers`] over the mesh (requests carry [`Request`]/[`Response`] as
//! serde values and must only travel authenticated), uses [`kubedna_host::systemd::DbusSystemd`]
//! for [`Systemd`], [`KubeadmCommand::system`] for [`Kubeadm`] and [`SystemClock`] for [`Clock`].
//!
//! # What it must never do
//! Run `kubeadm init` unless this node won the init transaction in etcd; start etcd as `new`
//! without the bootstrap rule's quorum; join two control planes at once (the join lock); put a
//! secret in a log line, an error or [`Status`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubedna_host::atomic::{write_atomic, AtomicWriteError};
use kubedna_host::systemd::Systemd;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::bootstrap::{
    decide, fallback, Decision, Fallback, MemberSet, MemberSetError, StartedAnswer,
};
use crate::coord::{CoordError, Coordinator, InitDecision, Leadership};
use crate::etcd_unit::{ClusterState, EtcdSpec, EtcdUnitError, MemberUrls};
use crate::joinmat::{self, JoinError, JoinMaterial};
use crate::kubeadm::{self as kcfg, ClusterParams, JoinParams};
use crate::kubelet::{self, KubeletError};
use crate::membership::MemberInfo;
use crate::pki::{EtcdCa, MemberFiles, PkiError};
use crate::progress::{decide_kubeadm, Claim, KubeadmFacts, KubeadmStep, Persisted, Progress};

// ---------------------------------------------------------------------------------------------
// What the daemon provides.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

/// A peer the mesh currently considers alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: String,
    pub role: Role,
    /// The mesh address, for the daemon's own use; the engine addresses peers by name.
    pub addr: Option<String>,
}

/// A small request from one node's engine to another's, carried authenticated by the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// "Have you started etcd?" (the bootstrap rule's question).
    Started,
    /// Join material, asked of a control plane by a joining node.
    JoinMaterial,
    /// Who leads now.
    Leader,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Started(StartedAnswer),
    /// Still sealed with the cluster secret as stored in etcd: the asker opens it.
    JoinMaterial {
        sealed: Vec<u8>,
        leader: Option<LeaderStatus>,
    },
    Leader(Option<LeaderStatus>),
    /// The answering node cannot answer yet (no etcd, no material); ask again later.
    NotReady(String),
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("peer {peer}: {reason}")]
pub struct PeerError {
    pub peer: String,
    pub reason: String,
}

/// The mesh, as the engine sees it.
pub trait Peers: Send + Sync + 'static {
    /// Peers alive now (never this node).
    fn alive(&self) -> Vec<PeerInfo>;
    /// Sends `req` to `peer` over the authenticated mesh and awaits its answer (the
    /// implementation applies its own timeout).
    fn ask(
        &self,
        peer: &str,
        req: Request,
    ) -> impl Future<Output = Result<Response, PeerError>> + Send;
}

pub use crate::kubeadm_run::{
    redact_args, Kubeadm, KubeadmCommand, KubeadmError, KubeadmOp, OpRecords,
};

/// Time for the engine: wall-clock time for join material expiry, and every wait the engine
/// makes (pauses between polls and retries, bounds on calls, deadlines), so a test clock can
/// run the engine's waiting in virtual time.
pub trait Clock: Send + Sync + 'static {
    fn now_unix(&self) -> u64;
    /// Monotonic now, for deadlines and "not seen for".
    fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// How etcd members are addressed.
#[derive(Debug, Clone)]
pub enum EtcdNetwork {
    /// Production: `https://<name>.<cluster>.kubedna:2380/2379` (names in `/etc/hosts`, kept by
    /// the daemon from mesh metadata), listening on all addresses.
    Named,
    /// Tests: explicit URLs per member name, listened on and advertised as given.
    Explicit(BTreeMap<String, MemberUrls>),
}

/// The secret, never shown by Debug.
#[derive(Clone)]
pub struct ClusterSecret(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret([redacted])")
    }
}

#[derive(Debug, Clone)]
pub struct Timings {
    /// Leader and join-lock lease TTL (default 15 s).
    pub lease_ttl: Duration,
    /// How often a waiting step looks again (default 500 ms).
    pub poll: Duration,
    /// Pause after a failed step before it is retried (default 2 s).
    pub retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_ttl: Duration::from_secs(15),
            poll: Duration::from_millis(500),
            retry: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub cluster: String,
    pub secret: ClusterSecret,
    pub node: String,
    pub role: Role,
    /// The expected control-plane set E (`cluster.controlPlanes.members`).
    pub control_planes: Vec<String>,
    /// This node's address for the API server.
    pub advertise_address: String,
    /// `host:6443` shared by all control planes.
    pub control_plane_endpoint: String,
    pub pod_subnet: String,
    pub service_subnet: String,
    pub etcd: EtcdNetwork,
    pub etcd_binary: PathBuf,
    /// The host's file system root (`/` in production); unit files, PKI, etcd data and kubeadm
    /// configs are written under it.
    pub root: PathBuf,
    pub timings: Timings,
}

impl EngineConfig {
    fn urls(&self, set: &MemberSet, name: &str) -> (MemberUrls, MemberUrls) {
        match &self.etcd {
            EtcdNetwork::Named => {
                let peer = set.peer_url(name);
                let client = format!("https://{name}.{}.kubedna:2379", self.cluster);
                (
                    MemberUrls {
                        peer: "https://0.0.0.0:2380".into(),
                        client: "https://0.0.0.0:2379".into(),
                    },
                    MemberUrls { peer, client },
                )
            }
            EtcdNetwork::Explicit(map) => {
                let u = map.get(name).cloned().unwrap_or(MemberUrls {
                    peer: set.peer_url(name),
                    client: format!("https://{name}.{}.kubedna:2379", self.cluster),
                });
                (u.clone(), u)
            }
        }
    }

    fn initial_cluster(&self, set: &MemberSet) -> String {
        set.names()
            .map(|n| format!("{n}={}", self.urls(set, n).1.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URLs of the set's members (this node's own first), without `except`.
    fn client_urls(&self, set: &MemberSet, except: Option<&str>) -> Vec<String> {
        let own = std::iter::once(self.node.as_str()).filter(|n| set.contains(n));
        own.chain(set.names().filter(|n| *n != self.node))
            .filter(|n| Some(*n) != except)
            .map(|n| self.urls(set, n).1.client)
            .collect()
    }
}

/// Paths kubeadm is told about (production paths; the host root prefixes them on disk).
const PKI_DIR: &str = "/etc/kubedna/pki/etcd";
const INIT_CONFIG: &str = "/etc/kubedna/kubeadm-init.yaml";
const JOIN_CONFIG: &str = "/etc/kubedna/kubeadm-join.yaml";
const STATE_FILE: &str = "controlplane.json";

fn rooted(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

// ---------------------------------------------------------------------------------------------
// Status and persisted state.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Starting,
    PreparingHost,
    WaitingForQuorum,
    StartingEtcd,
    Initialising,
    WaitingForJoinMaterial,
    Joining,
    StartingKubelet,
    Member,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    pub name: String,
    pub term: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberStatus {
    pub name: String,
    pub id: String,
    pub learner: bool,
}

/// What `kubedna status` shows about formation. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub role: Role,
    pub phase: Phase,
    /// What the current phase waits for, if it waits.
    pub waiting_for: Option<String>,
    pub etcd_members: Vec<EtcdMemberStatus>,
    pub leader: Option<LeaderStatus>,
    pub init_recorded: bool,
    pub cluster_id: Option<String>,
    /// The last failed step, naming the unit, node or command, with what to do next.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("node {node}: the control-plane configuration is invalid")]
    Config {
        node: String,
        #[source]
        source: MemberSetError,
    },
    #[error("node {node}: host preparation failed")]
    Prepare {
        node: String,
        #[source]
        source: Box<kubedna_host::prepare::PrepareError>,
    },
    #[error("node {node}: etcd's TLS files")]
    Pki {
        node: String,
        #[source]
        source: PkiError,
    },
    #[error("node {node}: etcd service")]
    EtcdUnit {
        node: String,
        #[source]
        source: Box<EtcdUnitError>,
    },
    #[error("node {node}: kubelet service")]
    Kubelet {
        node: String,
        #[source]
        source: Box<KubeletError>,
    },
    #[error("node {node}: {what}")]
    Coord {
        node: String,
        what: &'static str,
        #[source]
        source: Box<CoordError>,
    },
    #[error("node {node}: kubeadm")]
    Kubeadm {
        node: String,
        #[source]
        source: KubeadmError,
    },
    #[error("node {node}: cannot record progress in {path}; check the state directory's disk")]
    State {
        node: String,
        path: PathBuf,
        #[source]
        source: AtomicWriteError,
    },
    #[error("node {node}: {path} is not this engine's state; move it away only if this node is to rejoin as a new member")]
    StateCorrupt {
        node: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("node {node}: etcd records this node as the init winner, but its state directory has no record of running init (wiped disk?); it will not init again: restore its disk or `kubeadm reset` it and remove /kubedna/<cluster>/init after checking no control plane was initialised")]
    InitInterrupted { node: String },
    #[error("node {node}: etcd is not serving yet and a started member reports a formed cluster; waiting for a quorum of control planes to come back")]
    NoQuorum { node: String },
    #[error("node {node}: an earlier `kubeadm {op}` on this node did not succeed (no marker {marker}), and etcd already holds Kubernetes data under /registry/, so the agent will not `kubeadm reset` this node: a reset does not clean etcd and a second `kubeadm {op}` could split the cluster's certificates. Look at the node (journalctl -u 'kubedna-kubeadm-*'); if kubeadm did finish, create the marker file; otherwise reset the node by hand, knowing what it holds. Then restart the agent")]
    ResetRefused {
        node: String,
        op: &'static str,
        marker: PathBuf,
    },
    #[error(
        "node {node}: the join lock was lost before `{step}`; taking it again before going on"
    )]
    JoinLockLost { node: String, step: &'static str },
    #[error("node {node}: the learner {id:x} was not promoted within {secs} s; etcd promotes only a learner in sync with the leader: check this node's etcd journal (journalctl -u kubedna-etcd)")]
    NotPromoted { node: String, id: u64, secs: u64 },
    #[error("node {node}: join material from {from} does not open")]
    JoinMaterial {
        node: String,
        from: String,
        #[source]
        source: JoinError,
    },
    #[error("node {node}: cannot remove its own stale etcd member before rejoining")]
    RemovalRefused {
        node: String,
        #[source]
        source: crate::membership::RemoveRefused,
    },
    #[error(
        "node {node}: `kubeadm token create --print-join-command` printed no CA certificate hash"
    )]
    NoCaHash { node: String },
}

// ---------------------------------------------------------------------------------------------
// The engine and its handle.

struct Shared {
    cfg: EngineConfig,
    set: Option<MemberSet>,
    state_path: PathBuf,
    status: Mutex<Status>,
    persisted: Mutex<Persisted>,
    coord: Mutex<Option<Coordinator>>,
}

/// What the daemon keeps to answer peers and serve status; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("node", &self.shared.cfg.node)
            .finish()
    }
}

impl EngineHandle {
    /// A snapshot for `kubedna status`.
    pub fn status(&self) -> Status {
        lock(&self.shared.status).clone()
    }

    /// Answers a request from another node (the mesh authenticated it).
    pub async fn answer(&self, req: Request) -> Response {
        let s = &self.shared;
        match req {
            Request::Started => {
                let Some(set) = &s.set else {
                    return Response::NotReady("not a control plane".into());
                };
                let p = lock(&s.persisted).clone();
                // Formed but not recorded yet: the running etcd's own status says so (etcd
                // serves clients only once its cluster formed), so this answer never looks
                // like one from a member that never formed.
                let cluster_id = match p.cluster_id {
                    Some(id) => Some(id),
                    None if p.progress.etcd_started() => local_cluster_id(&s.cfg, set).await,
                    None => None,
                };
                Response::Started(StartedAnswer {
                    from: s.cfg.node.clone(),
                    members_digest: set.digest(),
                    started: p.progress.etcd_started(),
                    cluster_id,
                })
            }
            Request::Leader => Response::Leader(lock(&s.status).leader.clone()),
            Request::JoinMaterial => {
                let coord = lock(&s.coord).clone();
                let Some(coord) = coord else {
                    return Response::NotReady(format!("{} has no etcd client yet", s.cfg.node));
                };
                let key = coord.key("join-material");
                match coord.get(&key).await {
                    Ok(Some(sealed)) => Response::JoinMaterial {
                        sealed,
                        leader: lock(&s.status).leader.clone(),
                    },
                    Ok(None) => Response::NotReady("no join material yet".into()),
                    Err(e) => Response::NotReady(kubedna_host::error_chain(&e)),
                }
            }
        }
    }
}

/// The cluster ID in this node's own etcd member's status, if it answers within a second.
/// etcd 3.4 serves clients only once its member has joined a formed cluster, so an answer
/// proves the cluster formed; the status call is answered locally, without a quorum.
async fn local_cluster_id(cfg: &EngineConfig, set: &MemberSet) -> Option<String> {
    let files = MemberFiles::in_dir(&rooted(&cfg.root, PKI_DIR));
    let own = cfg.urls(set, &cfg.node).1.client;
    let probe = async {
        let c = Coordinator::connect_tls(&[own], &cfg.cluster, &files)
            .await
            .ok()?;
        let status = c.client().maintenance_client().status().await.ok()?;
        status.header().map(|h| format!("{:x}", h.cluster_id()))
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a follower has seen of the leader's node in the mesh during one term (see
/// `Engine::leader_gone`).
#[derive(Debug)]
struct Absence {
    node: String,
    term: i64,
    /// When this node last saw the leader's node among its alive peers (during this term).
    seen_alive: Option<tokio::time::Instant>,
}

/// One node's formation. See the module documentation for how the daemon runs it.
pub struct Engine<P, S, K, C> {
    shared: Arc<Shared>,
    absence: Mutex<Option<Absence>>,
    peers: Arc<P>,
    sd: Arc<S>,
    kubeadm: Arc<K>,
    clock: Arc<C>,
}

impl<P, S, K, C> std::fmt::Debug for Engine<P, S, K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.shared.cfg.node)
            .finish()
    }
}

impl<P: Peers, S: Systemd + 'static, K: Kubeadm, C: Clock> Engine<P, S, K, C> {
    /// Loads this node's record from `state_dir` (the agent's state directory).
    pub fn new(
        cfg: EngineConfig,
        peers: P,
        systemd: S,
        kubeadm: K,
        clock: C,
        state_dir: &Path,
    ) -> Result<Self, EngineError> {
        let node = cfg.node.clone();
        let set = match cfg.role {
            Role::ControlPlane => Some(
                MemberSet::new(&cfg.cluster, &cfg.control_planes)
                    .and_then(|s| {
                        if s.contains(&node) {
                            Ok(s)
                        } else {
                            Err(MemberSetError::NotMember(
                                node.clone(),
                                cfg.control_planes.clone(),
                            ))
                        }
                    })
                    .map_err(|source| EngineError::Config {
                        node: node.clone(),
                        source,
                    })?,
            ),
            Role::Worker => None,
        };
        let state_path = state_dir.join(STATE_FILE);
        let persisted = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| EngineError::StateCorrupt {
                node: node.clone(),
                path: state_path.clone(),
                source,
            })?,
            Err(_) => Persisted::default(),
        };
        let status = Status {
            node: node.clone(),
            role: cfg.role,
            phase: Phase::Starting,
            waiting_for: None,
            etcd_members: Vec::new(),
            leader: None,
            init_recorded: false,
            cluster_id: persisted.cluster_id.clone(),
            last_error: None,
        };
        Ok(Engine {
            shared: Arc::new(Shared {
                cfg,
                set,
                state_path,
                status: Mutex::new(status),
                persisted: Mutex::new(persisted),
                coord: Mutex::new(None),
            }),
            absence: Mutex::new(None),
            peers: Arc::new(peers),
            sd: Arc::new(systemd),
            kubeadm: Arc::new(kubeadm),
            clock: Arc::new(clock),
        })
    }

    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn status(&self) -> Status {
        self.handle().status()
    }

    /// Forms this node, then keeps its duties, until `shutdown` turns true. Every failed step is
    /// recorded in the status and retried; only shutdown ends it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::select! {
            _ = stop => {}
            _ = self.life() => {}
        }
    }

    async fn life(&self) {
        loop {
            let r = match self.cfg().role {
                Role::ControlPlane => self.form_control_plane().await,
                Role::Worker => self.form_worker().await,
            };
            match r {
                Ok(()) => break,
                Err(e) => self.failed(&e).await,
            }
        }
        self.set_phase(Phase::Member, None);
        // `last_error` shows what stands in the way now, not what once failed on the way.
        lock(&self.shared.status).last_error = None;
        loop {
            let r = match self.cfg().role {
                Role::ControlPlane => self.lead_or_follow().await,
                Role::Worker => self.follow_leader().await,
            };
            match r {
                Ok(()) => lock(&self.shared.status).last_error = None,
                Err(e) => {
                    self.failed(&e).await;
                    self.reconnect_after_failure().await;
                }
            }
        }
    }

    fn cfg(&self) -> &EngineConfig {
        &self.shared.cfg
    }

    /// `f`'s output, or None once `d` has passed on the engine's clock.
    async fn within<F: Future>(&self, d: Duration, f: F) -> Option<F::Output> {
        tokio::select! {
            out = f => Some(out),
            () = self.clock.sleep(d) => None,
        }
    }

    fn node(&self) -> String {
        self.cfg().node.clone()
    }

    async fn failed(&self, e: &EngineError) {
        let text = kubedna_host::error_chain(e);
        tracing::warn!(node = %self.cfg().node, error = %text, "formation step failed; retrying");
        lock(&self.shared.status).last_error = Some(text);
        self.clock.sleep(self.cfg().timings.retry).await;
    }

    fn set_phase(&self, phase: Phase, waiting_for: Option<String>) {
        let mut s = lock(&self.shared.status);
        if s.phase != phase {
            tracing::info!(node = %self.cfg().node, ?phase, "formation phase");
        }
        s.phase = phase;
        s.waiting_for = waiting_for;
    }

    fn persisted(&self) -> Persisted {
        lock(&self.shared.persisted).clone()
    }

    /// Writes the record durably, then publishes it to answers.
    fn persist(&self, p: &Persisted) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec_pretty(p).unwrap_or_default();
        if let Some(dir) = self.shared.state_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        write_atomic(&self.shared.state_path, &bytes, 0o600).map_err(|source| {
            EngineError::State {
                node: self.node(),
                path: self.shared.state_path.clone(),
                source,
            }
        })?;
        *lock(&self.shared.persisted) = p.clone();
        Ok(())
    }

    fn coord_err(&self, what: &'static str) -> impl FnOnce(CoordError) -> EngineError + '_ {
        move |source| EngineError::Coord {
            node: self.node(),
            what,
            source: Box::new(source),
        }
    }

    fn kubeadm_err(&self) -> impl FnOnce(KubeadmError) -> EngineError + '_ {
        move |source| EngineError::Kubeadm {
            node: self.node(),
            source,
        }
    }

    async fn prepare(&self) -> Result<(), EngineError> {
        self.set_phase(Phase::PreparingHost, None);
        kubedna_host::prepare::prepare(&*self.sd, &self.cfg().root)
            .await
            .map_err(|source| EngineError::Prepare {
                node: self.node(),
                source: Box::new(source),
            })?;
        kubelet::install(&*self.sd, &self.cfg().root)
            .await
            .map_err(|source| EngineError::Kubelet {
                node: self.node(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    async fn start_kubelet(&self) -> Result<(), EngineError> {
        self.set_phase(Phase::StartingKubelet, None);
        kubelet::start(&*self.sd)
            .await
            .map_err(|source| EngineError::Kubelet {
                node: self.node(),
                source: Box::new(source),
            })
    }

    // -- control planes ------------------------------------------------------------------------

    fn set(&self) -> &MemberSet {
        // Present for every control plane: `new` refused a control plane without it.
        self.shared
            .set
            .as_ref()
            .unwrap_or_else(|| unreachable!("control-plane engine without a member set"))
    }

    fn pki(&self) -> Result<MemberFiles, EngineError> {
        let dir = rooted(&self.cfg().root, PKI_DIR);
        let files = MemberFiles::in_dir(&dir);
        let complete = [
            &files.ca,
            &files.server_cert,
            &files.server_key,
            &files.peer_cert,
            &files.peer_key,
            &files.client_cert,
            &files.client_key,
        ]
        .iter()
        .all(|p| p.exists());
        if complete {
            return Ok(files);
        }
        let err = |source| EngineError::Pki {
            node: self.node(),
            source,
        };
        let ca = EtcdCa::derive(&self.cfg().cluster, &self.cfg().secret.0).map_err(err)?;
        let set = self.set();
        let (_, adv) = self.cfg().urls(set, &self.cfg().node);
        let mut names = vec![format!(
            "{}.{}.kubedna",
            self.cfg().node,
            self.cfg().cluster
        )];
        let mut ips = Vec::new();
        for url in [&adv.peer, &adv.client] {
            if let Some(host) = url_host(url) {
                match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => names.push(host.to_string()),
                }
            }
        }
        if let Ok(ip) = self.cfg().advertise_address.parse() {
            ips.push(ip);
        }
        names.sort();
        names.dedup();
        ips.sort();
        ips.dedup();
        ca.write_member(&dir, &self.cfg().node, &names, &ips)
            .map_err(err)
    }

    fn etcd_spec(&self, files: &MemberFiles, p: &Persisted) -> EtcdSpec {
        let set = self.set();
        let (listen, advertise) = self.cfg().urls(set, &self.cfg().node);
        EtcdSpec {
            binary: self.cfg().etcd_binary.clone(),
            name: self.node(),
            data_dir: rooted(&self.cfg().root, "/var/lib/etcd"),
            files: files.clone(),
            listen,
            advertise,
            initial_cluster: p
                .initial_cluster
                .clone()
                .unwrap_or_else(|| self.cfg().initial_cluster(set)),
            initial_cluster_state: p.etcd_state.unwrap_or(ClusterState::New),
            initial_cluster_token: set.initial_cluster_token(),
        }
    }

    /// A connection to every member of E that serves now (this node's own first).
    async fn connect_serving(&self) -> Option<Coordinator> {
        let files = MemberFiles::in_dir(&rooted(&self.cfg().root, PKI_DIR));
        Coordinator::connect_tls_serving(
            &self.cfg().client_urls(self.set(), None),
            &self.cfg().cluster,
            &files,
        )
        .await
        .ok()
    }

    /// After a failed duty round: rebuild the long-lived connection from the members that
    /// serve now, so one member refusing connections cannot keep failing this node's calls.
    async fn reconnect_after_failure(&self) {
        if self.cfg().role != Role::ControlPlane || self.coordinator().is_none() {
            return;
        }
        if let Some(c) = self.connect_serving().await {
            tracing::info!(node = %self.cfg().node, endpoints = ?c.endpoints(), "etcd: reconnected to the members that serve");
            *lock(&self.shared.coord) = Some(c);
        }
    }

    async fn connect(
        &self,
        endpoints: &[String],
        files: &MemberFiles,
    ) -> Result<Coordinator, EngineError> {
        Coordinator::connect_tls(endpoints, &self.cfg().cluster, files)
            .await
            .map_err(self.coord_err("cannot reach etcd"))
    }

    /// Asks the other members of E until the bootstrap rule decides.
    async fn bootstrap_decision(&self) -> Result<(Decision, Vec<StartedAnswer>), EngineError> {
        let set = self.set();
        let me = self.node();
        loop {
            let alive: BTreeSet<String> = self.peers.alive().into_iter().map(|p| p.name).collect();
            let mut answers = Vec::new();
            for name in set.names().filter(|n| *n != me && alive.contains(*n)) {
                if let Ok(Response::Started(a)) = self.peers.ask(name, Request::Started).await {
                    answers.push(a);
                }
            }
            let d = decide(&me, set, false, &answers).map_err(|source| EngineError::Config {
                node: me.clone(),
                source,
            })?;
            match d {
                Decision::Wait { have, need } => {
                    self.set_phase(
                        Phase::WaitingForQuorum,
                        Some(format!(
                            "{have} of {need} other control planes answered \"not started\""
                        )),
                    );
                    self.clock.sleep(self.cfg().timings.poll).await;
                }
                d => return Ok((d, answers)),
            }
        }
    }

    /// The member list as the running cluster sees it, if a quorum serves.
    async fn try_members(&self, files: &MemberFiles) -> Option<(Coordinator, Vec<MemberInfo>)> {
        let endpoints = self.cfg().client_urls(self.set(), Some(&self.cfg().node));
        let attempt = async {
            let c = self.connect(&endpoints, files).await.ok()?;
            // A linearizable read proves a quorum; the member list alone does not.
            c.get(&c.key("init")).await.ok()?;
            let m = c.members().await.ok()?;
            Some((c, m))
        };
        self.within(Duration::from_secs(5), attempt).await.flatten()
    }

    /// Takes the join lock: back from before a restart if this node's persisted lease still
    /// holds it (so a join in progress keeps its lock across an agent restart), else anew,
    /// persisting its lease.
    async fn acquire_join_lock(
        &self,
        coord: &Coordinator,
        p: &mut Persisted,
    ) -> Result<Leadership, EngineError> {
        let ttl = self.cfg().timings.lease_ttl;
        if let Some(lease) = p.join_lease {
            if let Some(l) = coord
                .resume("join", &self.cfg().node, lease, ttl)
                .await
                .map_err(self.coord_err("cannot take the join lock back"))?
            {
                tracing::info!(node = %self.cfg().node, "took back the join lock held before a restart");
                return Ok(l);
            }
        }
        loop {
            if let Some(l) = coord
                .acquire("join", &self.cfg().node, ttl)
                .await
                .map_err(self.coord_err("cannot take the join lock"))?
            {
                p.join_lease = Some(l.lease);
                self.persist(p)?;
                return Ok(l);
            }
            lock(&self.shared.status).waiting_for =
                Some("the join lock (another control plane is joining)".into());
            self.clock.sleep(self.cfg().timings.poll).await;
        }
    }

    /// Health of members by a TLS status call to each client URL.
    async fn healthy(&self, members: &[MemberInfo], files: &MemberFiles) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for m in members {
            let probe = async {
                let c = self.connect(&m.client_urls, files).await.ok()?;
                c.client().maintenance_client().status().await.ok()
            };
            if !m.client_urls.is_empty()
                && self
                    .within(Duration::from_secs(2), probe)
                    .await
                    .flatten()
                    .is_some()
            {
                out.insert(m.id);
            }
        }
        out
    }

    /// This node's etcd member is added as a learner (after removing a stale one of the same
    /// peer URL), under the join lock, which the caller keeps until the kubeadm join is done.
    async fn add_as_learner(
        &self,
        coord: &Coordinator,
        members: Vec<MemberInfo>,
        files: &MemberFiles,
        p: &mut Persisted,
    ) -> Result<Leadership, EngineError> {
        let join_lock = self.acquire_join_lock(coord, p).await?;
        let (_, adv) = self.cfg().urls(self.set(), &self.cfg().node);
        let mut members = members;
        if let Some(stale) = members
            .iter()
            .find(|m| m.peer_urls.contains(&adv.peer))
            .cloned()
        {
            tracing::info!(node = %self.cfg().node, id = format!("{:x}", stale.id), "removing this node's stale etcd member before rejoining");
            let healthy = self.healthy(&members, files).await;
            match coord
                .remove_member_within(stale.id, &healthy, Duration::from_secs(30))
                .await
                .map_err(self.coord_err("cannot remove this node's stale etcd member"))?
            {
                Ok(()) => {}
                Err(source) => {
                    return Err(EngineError::RemovalRefused {
                        node: self.node(),
                        source,
                    })
                }
            }
            members.retain(|m| m.id != stale.id);
        }
        let deadline = self.clock.instant() + Duration::from_secs(30);
        let (id, members) = loop {
            match coord.add_learner(&adv.peer).await {
                Ok(r) => break r,
                Err(_) if self.clock.instant() < deadline => {
                    self.clock.sleep(self.cfg().timings.poll).await
                }
                Err(e) => return Err(self.coord_err("cannot add this node as a learner")(e)),
            }
        };
        let initial = members
            .iter()
            .filter_map(|m| {
                let name = if m.id == id {
                    self.node()
                } else {
                    m.name.clone()
                };
                m.peer_urls.first().map(|u| format!("{name}={u}"))
            })
            .collect::<Vec<_>>()
            .join(",");
        p.etcd_state = Some(ClusterState::Existing);
        p.initial_cluster = Some(initial);
        p.learner_id = Some(id);
        Ok(join_lock)
    }

    async fn promote(&self, coord: &Coordinator, id: u64) -> Result<(), EngineError> {
        let secs = 60;
        let deadline = self.clock.instant() + Duration::from_secs(secs);
        loop {
            match coord.promote(id).await {
                Ok(()) => return Ok(()),
                Err(CoordError::Etcd { source, .. })
                    if source.to_string().contains("not found")
                        || source.to_string().contains("not a learner") =>
                {
                    return Ok(()); // promoted by an earlier attempt
                }
                Err(_) if self.clock.instant() < deadline => {
                    self.clock.sleep(self.cfg().timings.poll).await
                }
                Err(_) => {
                    return Err(EngineError::NotPromoted {
                        node: self.node(),
                        id,
                        secs,
                    })
                }
            }
        }
    }

    async fn form_control_plane(&self) -> Result<(), EngineError> {
        self.prepare().await?;
        let files = self.pki()?;
        let mut p = self.persisted();
        let mut join_lock: Option<Leadership> = None;
        let mut early: Option<Coordinator> = None;
        if !p.progress.etcd_started() {
            let (decision, answers) = self.bootstrap_decision().await?;
            let heard: Vec<String> = answers
                .iter()
                .map(|a| {
                    format!(
                        "{}: {}",
                        a.from,
                        match (&a.started, &a.cluster_id) {
                            (true, Some(id)) => format!("started, cluster {id}"),
                            (true, None) => "started".to_string(),
                            (false, _) => "not started".to_string(),
                        }
                    )
                })
                .collect();
            tracing::info!(node = %self.cfg().node, ?decision, answers = ?heard, "etcd bootstrap decision");
            match decision {
                Decision::StartNew => {
                    p.etcd_state = Some(ClusterState::New);
                    p.initial_cluster = Some(self.cfg().initial_cluster(self.set()));
                }
                Decision::Join { via } => {
                    self.set_phase(
                        Phase::StartingEtcd,
                        Some(format!("joining etcd ({via} started it)")),
                    );
                    let (_, adv) = self.cfg().urls(self.set(), &self.cfg().node);
                    match self.try_members(&files).await {
                        Some((coord, members)) => {
                            let mine = members.iter().find(|m| m.peer_urls.contains(&adv.peer));
                            match mine {
                                // In the initial set and never started: start it as `existing`.
                                Some(m) if m.name.is_empty() && !m.learner => {
                                    p.etcd_state = Some(ClusterState::Existing);
                                    p.initial_cluster =
                                        Some(self.cfg().initial_cluster(self.set()));
                                }
                                _ => {
                                    join_lock = Some(
                                        self.add_as_learner(&coord, members, &files, &mut p)
                                            .await?,
                                    );
                                }
                            }
                            early = Some(coord);
                        }
                        None => {
                            // No quorum serves. If no started member has ever seen one, the
                            // cluster is still forming (a staggered first boot) and waits for
                            // this node's initial member: start it as `new`, with the same
                            // initial cluster and token, as a simultaneous boot would have
                            // (etcd 3.4 refuses `existing` until a cluster version is decided).
                            // Otherwise wait for the formed cluster's quorum to come back.
                            if fallback(&self.node(), self.set(), &answers)
                                == Fallback::WaitForQuorum
                            {
                                return Err(EngineError::NoQuorum { node: self.node() });
                            }
                            p.etcd_state = Some(ClusterState::New);
                            p.initial_cluster = Some(self.cfg().initial_cluster(self.set()));
                        }
                    }
                }
                Decision::Resume | Decision::Wait { .. } => {}
            }
            p.progress = Progress::EtcdStarted;
            self.persist(&p)?;
        }

        self.set_phase(Phase::StartingEtcd, None);
        crate::etcd_unit::install_and_start(
            &*self.sd,
            &self.cfg().root,
            &self.etcd_spec(&files, &p),
        )
        .await
        .map_err(|source| EngineError::EtcdUnit {
            node: self.node(),
            source: Box::new(source),
        })?;
        // The start job is done once etcd serves, i.e. once its cluster formed: record the
        // cluster ID now, so this node answers "formed" from its record from here on.
        if p.cluster_id.is_none() {
            if let Some(id) = local_cluster_id(self.cfg(), self.set()).await {
                p.cluster_id = Some(id);
                self.persist(&p)?;
                lock(&self.shared.status).cluster_id = p.cluster_id.clone();
            }
        }
        let coord = match early {
            Some(c) => c,
            None => {
                self.connect(&self.cfg().client_urls(self.set(), None), &files)
                    .await?
            }
        };
        if let Some(id) = p.learner_id {
            if join_lock.as_ref().is_some_and(Leadership::is_lost) {
                return Err(EngineError::JoinLockLost {
                    node: self.node(),
                    step: "promoting the learner",
                });
            }
            self.promote(&coord, id).await?;
            p.learner_id = None;
            self.persist(&p)?;
        }
        // Now a voter: the long-lived connection reaches every member, this node's own first,
        // so losing any one member (the etcd leader included) leaves the engine connected.
        let coord = match self.connect_serving().await {
            Some(all) => all,
            None => coord,
        };
        *lock(&self.shared.coord) = Some(coord.clone());
        if p.cluster_id.is_none() {
            let resp = coord
                .client()
                .kv_client()
                .get(coord.key("init"), None)
                .await
                .map_err(|e| EngineError::Coord {
                    node: self.node(),
                    what: "cannot read the cluster ID",
                    source: Box::new(CoordError::Etcd {
                        endpoints: vec![],
                        what: "get",
                        source: e,
                    }),
                })?;
            if let Some(h) = resp.header() {
                p.cluster_id = Some(format!("{:x}", h.cluster_id()));
                self.persist(&p)?;
                lock(&self.shared.status).cluster_id = p.cluster_id.clone();
            }
        }
        self.refresh_members(&coord).await;

        if !p.progress.is_member() {
            if p.init_nonce.is_none() {
                let mut nonce = [0u8; 16];
                getrandom::fill(&mut nonce).expect("the kernel's random source is available");
                p.init_nonce = Some(hex::encode(nonce));
                self.persist(&p)?;
            }
            let nonce = p.init_nonce.clone().unwrap_or_default();
            let decision = coord
                .init_once(&self.cfg().node, &nonce)
                .await
                .map_err(self.coord_err("the init transaction failed"))?;
            lock(&self.shared.status).init_recorded = true;
            let claim = match decision {
                InitDecision::Won { .. } => Claim::Mine,
                InitDecision::Taken { by } if by == self.cfg().node => Claim::MyNameNotMine,
                InitDecision::Taken { .. } => Claim::Other,
            };
            self.kubeadm_steps(Some((&coord, claim)), &mut p, &mut join_lock)
                .await?;
        } else {
            lock(&self.shared.status).init_recorded = true;
        }
        if let Some(l) = join_lock {
            let _ = coord.resign(l).await;
        }
        if p.join_lease.take().is_some() {
            self.persist(&p)?;
        }
        self.start_kubelet().await?;
        Ok(())
    }

    /// What [`decide_kubeadm`] needs, observed after every kubeadm run an earlier agent left
    /// going has ended (they run to their end outside the agent: never race them).
    async fn observe_kubeadm(
        &self,
        coord: Option<(&Coordinator, Claim)>,
    ) -> Result<KubeadmFacts, EngineError> {
        let records = self.kubeadm.records();
        for op in [KubeadmOp::Init, KubeadmOp::Join, KubeadmOp::Reset] {
            records.settle(op).await.map_err(self.kubeadm_err())?;
        }
        let kubelet_conf = rooted(&self.cfg().root, "/etc/kubernetes/kubelet.conf").exists();
        let join_evidence = records.succeeded(KubeadmOp::Join) && kubelet_conf;
        let (claim, init_done, kubernetes_data) = match coord {
            Some((coord, claim)) => {
                let done = coord
                    .get(&coord.key("init-done"))
                    .await
                    .map_err(self.coord_err("cannot read the init record"))?;
                let data = coord
                    .any_key_under("/registry/")
                    .await
                    .map_err(self.coord_err("cannot check etcd for Kubernetes data"))?;
                (Some(claim), done.is_some(), data)
            }
            None => (None, false, false),
        };
        Ok(KubeadmFacts {
            claim,
            init_done,
            init_evidence: self.init_evidence(),
            join_evidence,
            half_joined: kubelet_conf && !join_evidence,
            kubernetes_data,
        })
    }

    /// Observes, decides ([`decide_kubeadm`]) and acts until kubeadm is done on this node.
    /// `coord` is the control plane's etcd with its init claim (None for a worker); a
    /// control plane joins under `join_lock`, taken here when needed.
    async fn kubeadm_steps(
        &self,
        coord: Option<(&Coordinator, Claim)>,
        p: &mut Persisted,
        join_lock: &mut Option<Leadership>,
    ) -> Result<(), EngineError> {
        loop {
            let facts = self.observe_kubeadm(coord).await?;
            let step = decide_kubeadm(p.progress, &facts);
            tracing::info!(node = %self.cfg().node, progress = ?p.progress, ?facts, ?step, "kubeadm step");
            match step {
                KubeadmStep::Done => {
                    p.progress = Progress::Member {
                        etcd_started: p.progress.etcd_started(),
                        init_ran: p.progress.init_ran(),
                    };
                    self.persist(p)?;
                    return Ok(());
                }
                KubeadmStep::RecordInitSucceeded => {
                    p.progress = Progress::InitSucceeded;
                    self.persist(p)?;
                    if let Some((coord, _)) = coord {
                        self.record_init_done(coord).await?;
                    }
                }
                KubeadmStep::RunInit { reset_first } => {
                    self.set_phase(Phase::Initialising, None);
                    if reset_first {
                        self.reset().await;
                    }
                    p.progress = Progress::InitRan;
                    self.persist(p)?;
                    self.run_init().await?;
                }
                KubeadmStep::Join { reset_first } => {
                    let material = match coord {
                        Some((coord, _)) => {
                            let m = self.material_from_etcd(coord).await?;
                            if join_lock.is_none() {
                                *join_lock = Some(self.acquire_join_lock(coord, p).await?);
                            }
                            m
                        }
                        None => self.material_from_peers().await?,
                    };
                    self.set_phase(Phase::Joining, None);
                    if reset_first {
                        self.reset().await;
                    }
                    self.join(&material, join_lock.as_ref()).await?;
                }
                KubeadmStep::RefuseReset { op } => {
                    let e = EngineError::ResetRefused {
                        node: self.node(),
                        op: op.name(),
                        marker: self.kubeadm.records().marker_path(op),
                    };
                    tracing::error!(node = %self.cfg().node, error = %kubedna_host::error_chain(&e), "will not reset this node");
                    return Err(e);
                }
                KubeadmStep::InitInterrupted => {
                    return Err(EngineError::InitInterrupted { node: self.node() })
                }
            }
        }
    }

    async fn record_init_done(&self, coord: &Coordinator) -> Result<(), EngineError> {
        let cfg = self.cfg();
        let rec = serde_json::json!({ "node": cfg.node }).to_string();
        coord
            .client()
            .kv_client()
            .put(coord.key("init-done"), rec, None)
            .await
            .map_err(|e| EngineError::Coord {
                node: self.node(),
                what: "cannot record that init is done",
                source: Box::new(CoordError::Etcd {
                    endpoints: vec![],
                    what: "put",
                    source: e,
                }),
            })?;
        tracing::info!(node = %cfg.node, "kubeadm init done");
        Ok(())
    }

    /// Whether `kubeadm init` succeeded on this disk, by evidence a crash cannot lose: the
    /// marker the init unit wrote when kubeadm exited 0, and the admin.conf kubeadm wrote.
    fn init_evidence(&self) -> bool {
        self.kubeadm.records().succeeded(KubeadmOp::Init)
            && rooted(&self.cfg().root, "/etc/kubernetes/admin.conf").exists()
    }

    /// `kubeadm reset --force` after an interrupted or failed run ([`decide_kubeadm`] decided
    /// it, having seen no Kubernetes data in etcd and no run still going).
    async fn reset(&self) {
        tracing::warn!(node = %self.cfg().node, "resetting what an unfinished kubeadm run left");
        let _ = self
            .kubeadm
            .run(KubeadmOp::Reset, &["reset".into(), "--force".into()])
            .await;
    }

    /// `kubeadm init` on this disk: the caller has recorded `init_ran` and found no evidence
    /// of an earlier success.
    async fn run_init(&self) -> Result<(), EngineError> {
        let cfg = self.cfg();
        let host = cfg
            .control_plane_endpoint
            .rsplit_once(':')
            .map_or(cfg.control_plane_endpoint.as_str(), |(h, _)| h);
        let mut sans = vec![cfg.advertise_address.clone(), host.to_string()];
        sans.dedup();
        let params = ClusterParams {
            cluster_name: cfg.cluster.clone(),
            node_name: cfg.node.clone(),
            advertise_address: cfg.advertise_address.clone(),
            control_plane_endpoint: cfg.control_plane_endpoint.clone(),
            etcd_endpoints: cfg.client_urls(self.set(), None),
            etcd_ca: format!("{PKI_DIR}/ca.crt"),
            etcd_cert: format!("{PKI_DIR}/client.crt"),
            etcd_key: format!("{PKI_DIR}/client.key"),
            pod_subnet: cfg.pod_subnet.clone(),
            service_subnet: cfg.service_subnet.clone(),
            cert_sans: sans,
        };
        let token = joinmat::new_token();
        let key = joinmat::certificate_key(&cfg.secret.0, &cfg.cluster);
        let text = Zeroizing::new(kcfg::render_init(&params, &token, &key));
        self.write_secret_file(INIT_CONFIG, &text)?;
        let r = self
            .kubeadm
            .run(KubeadmOp::Init, &kcfg::init_args(INIT_CONFIG))
            .await;
        let _ = std::fs::remove_file(rooted(&cfg.root, INIT_CONFIG));
        r.map_err(self.kubeadm_err())?;
        Ok(())
    }

    fn write_secret_file(&self, path: &str, text: &str) -> Result<(), EngineError> {
        let p = rooted(&self.cfg().root, path);
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        write_atomic(&p, text.as_bytes(), 0o600).map_err(|source| EngineError::State {
            node: self.node(),
            path: p.clone(),
            source,
        })
    }

    /// Waits for the leader's join material in etcd.
    async fn material_from_etcd(&self, coord: &Coordinator) -> Result<JoinMaterial, EngineError> {
        self.set_phase(
            Phase::WaitingForJoinMaterial,
            Some("the leader's join material in etcd".into()),
        );
        loop {
            let sealed = coord
                .get(&coord.key("join-material"))
                .await
                .map_err(self.coord_err("cannot read the join material"))?;
            if let Some(sealed) = sealed {
                return joinmat::open(&self.cfg().secret.0, &self.cfg().cluster, &sealed).map_err(
                    |source| EngineError::JoinMaterial {
                        node: self.node(),
                        from: "etcd".into(),
                        source,
                    },
                );
            }
            self.clock.sleep(self.cfg().timings.poll).await;
        }
    }

    /// `kubeadm join`, as a control plane when this node is one (then under `join_lock`).
    async fn join(
        &self,
        m: &JoinMaterial,
        join_lock: Option<&Leadership>,
    ) -> Result<(), EngineError> {
        let cfg = self.cfg();
        if join_lock.is_some_and(Leadership::is_lost) {
            return Err(EngineError::JoinLockLost {
                node: self.node(),
                step: "kubeadm join",
            });
        }
        let params = JoinParams {
            node_name: cfg.node.clone(),
            api_server_endpoint: m.api_endpoint.clone(),
            token: m.token.clone(),
            ca_cert_hash: m.ca_cert_hash.clone(),
            control_plane: (cfg.role == Role::ControlPlane)
                .then(|| (cfg.advertise_address.clone(), m.certificate_key.clone())),
        };
        let text = Zeroizing::new(kcfg::render_join(&params));
        self.write_secret_file(JOIN_CONFIG, &text)?;
        let r = self
            .kubeadm
            .run(KubeadmOp::Join, &kcfg::join_args(JOIN_CONFIG))
            .await;
        let _ = std::fs::remove_file(rooted(&cfg.root, JOIN_CONFIG));
        r.map_err(self.kubeadm_err())?;
        tracing::info!(node = %cfg.node, "kubeadm join done");
        Ok(())
    }

    async fn refresh_members(&self, coord: &Coordinator) {
        if let Ok(members) = coord.members().await {
            lock(&self.shared.status).etcd_members = members
                .iter()
                .map(|m| EtcdMemberStatus {
                    name: m.name.clone(),
                    id: format!("{:x}", m.id),
                    learner: m.learner,
                })
                .collect();
        }
    }

    fn coordinator(&self) -> Option<Coordinator> {
        lock(&self.shared.coord).clone()
    }

    /// Campaigns; while leading, keeps the join material fresh; while not, follows the leader.
    async fn lead_or_follow(&self) -> Result<(), EngineError> {
        let Some(coord) = self.coordinator() else {
            return Ok(());
        };
        let ttl = self.cfg().timings.lease_ttl;
        let campaign = coord.campaign(&self.cfg().node, ttl).await;
        if campaign.is_err() {
            // Unreachable etcd: who leads is unknown here; do not keep showing the old leader.
            lock(&self.shared.status).leader = None;
        }
        match campaign.map_err(self.coord_err("the leader campaign failed"))? {
            Some(mut leadership) => {
                let term = leadership.term;
                tracing::info!(node = %self.cfg().node, term, "leading");
                lock(&self.shared.status).leader = Some(LeaderStatus {
                    name: self.node(),
                    term,
                });
                loop {
                    // The seat may have been emptied under us (a follower that saw this node
                    // gone from the mesh): then this term is over, whatever the lease says.
                    if let Ok(seat) = coord.leader().await {
                        if seat.as_ref().map(|(_, t)| *t) != Some(term) {
                            tracing::warn!(node = %self.cfg().node, term, "leader seat lost");
                            lock(&self.shared.status).leader = None;
                            return Ok(());
                        }
                    }
                    // The duty ends the moment the seat is gone (lease expired, seat emptied or
                    // taken): dropping it stops its kubeadm call, so nothing of this term
                    // completes after a new term exists.
                    let duty = tokio::select! {
                        biased;
                        () = leadership.lost() => {
                            tracing::warn!(node = %self.cfg().node, term, "leadership lost during a duty; stopped it");
                            lock(&self.shared.status).leader = None;
                            return Ok(());
                        }
                        r = self.ensure_material(&coord, term) => r,
                    };
                    if duty.is_ok() {
                        lock(&self.shared.status).last_error = None;
                    }
                    if let Err(e) = duty {
                        if matches!(&e, EngineError::Coord { source, .. } if matches!(**source, CoordError::Stale { .. }))
                        {
                            lock(&self.shared.status).leader = None;
                            return Err(e);
                        }
                        lock(&self.shared.status).last_error = Some(kubedna_host::error_chain(&e));
                    }
                    self.refresh_members(&coord).await;
                    tokio::select! {
                        _ = leadership.lost() => {
                            tracing::warn!(node = %self.cfg().node, term, "leadership lost");
                            lock(&self.shared.status).leader = None;
                            return Ok(());
                        }
                        _ = self.clock.sleep(self.cfg().timings.poll * 2) => {}
                    }
                }
            }
            None => {
                let leader = coord
                    .leader()
                    .await
                    .map_err(self.coord_err("cannot read the leader"))?;
                if let Some((r, term)) = &leader {
                    if self.leader_gone(&r.node, *term)
                        && coord
                            .vacate(*term)
                            .await
                            .map_err(self.coord_err("cannot empty the leader seat"))?
                    {
                        tracing::warn!(node = %self.cfg().node, leader = %r.node, term,
                            "the leader's node is gone from the mesh: emptied its seat");
                        lock(&self.shared.status).leader = None;
                        return Ok(());
                    }
                }
                lock(&self.shared.status).leader =
                    leader.map(|(r, term)| LeaderStatus { name: r.node, term });
                self.refresh_members(&coord).await;
                tokio::select! {
                    r = coord.wait_vacant() => r.map_err(self.coord_err("cannot watch the leader"))?,
                    _ = self.clock.sleep(self.cfg().timings.poll * 2) => {}
                }
                Ok(())
            }
        }
    }

    /// Whether the leader's node (seat held under `term`) is gone as far as the mesh can tell:
    /// seen alive during this term, absent from the alive peers now and not seen alive for a
    /// third of the lease TTL, while this node sees a majority of the control-plane set (itself
    /// included). The majority rule keeps a node cut off from the mesh from emptying seats;
    /// having seen the leader alive keeps a node whose mesh has not converged yet (just started)
    /// from it. "Not seen for" counts from the last sighting, so time this node spent on failed
    /// etcd calls (the dead leader's etcd member, say) counts too.
    fn leader_gone(&self, node: &str, term: i64) -> bool {
        if node == self.cfg().node {
            return false;
        }
        let alive = self.peers.alive();
        let now = self.clock.instant();
        let mut slot = lock(&self.absence);
        let a = match slot.as_mut() {
            Some(a) if a.node == node && a.term == term => a,
            _ => slot.insert(Absence {
                node: node.to_string(),
                term,
                seen_alive: None,
            }),
        };
        if alive.iter().any(|p| p.name == node) {
            a.seen_alive = Some(now);
            return false;
        }
        let Some(seen) = a.seen_alive else {
            return false;
        };
        let set = self.set();
        let control_planes_seen = 1 + alive.iter().filter(|p| set.contains(&p.name)).count();
        control_planes_seen >= set.quorum()
            && now.duration_since(seen) >= self.cfg().timings.lease_ttl / 3
    }

    /// The leader's duty: join material present and not near expiry, written under its term.
    async fn ensure_material(&self, coord: &Coordinator, term: i64) -> Result<(), EngineError> {
        let cfg = self.cfg();
        let key = coord.key("join-material");
        let now = self.clock.now_unix();
        if let Some(sealed) = coord
            .get(&key)
            .await
            .map_err(self.coord_err("cannot read the join material"))?
        {
            if let Ok(m) = joinmat::open(&cfg.secret.0, &cfg.cluster, &sealed) {
                if !m.needs_renewal(now) {
                    return Ok(());
                }
            }
        }
        let token = joinmat::new_token();
        // Derived, not random: an upload by any leader, a deposed one resuming late included,
        // is equivalent to the current leader's.
        let certificate_key = joinmat::certificate_key(&cfg.secret.0, &cfg.cluster);
        let out = self
            .kubeadm
            .run(
                KubeadmOp::TokenCreate,
                &[
                    "token".into(),
                    "create".into(),
                    token.clone(),
                    "--ttl".into(),
                    "24h0m0s".into(),
                    "--print-join-command".into(),
                ],
            )
            .await
            .map_err(self.kubeadm_err())?;
        let ca_cert_hash =
            ca_hash_in(&out).ok_or_else(|| EngineError::NoCaHash { node: self.node() })?;
        self.kubeadm
            .run(
                KubeadmOp::UploadCerts,
                &[
                    "init".into(),
                    "phase".into(),
                    "upload-certs".into(),
                    "--upload-certs".into(),
                    "--certificate-key".into(),
                    certificate_key.to_string(),
                ],
            )
            .await
            .map_err(self.kubeadm_err())?;
        let m = JoinMaterial {
            token,
            ca_cert_hash,
            certificate_key: certificate_key.to_string(),
            api_endpoint: cfg.control_plane_endpoint.clone(),
            token_expires: now + joinmat::TOKEN_TTL_SECS,
            certificate_key_expires: now + joinmat::CERT_KEY_TTL_SECS,
        };
        let sealed = joinmat::seal(&cfg.secret.0, &cfg.cluster, &m);
        coord
            .fenced_put(term, &key, sealed)
            .await
            .map_err(self.coord_err("cannot store the join material"))?;
        tracing::info!(node = %cfg.node, term, "join material renewed");
        Ok(())
    }

    // -- workers -------------------------------------------------------------------------------

    async fn control_planes(&self) -> Vec<String> {
        let mut cps: Vec<String> = self
            .peers
            .alive()
            .into_iter()
            .filter(|p| p.role == Role::ControlPlane)
            .map(|p| p.name)
            .collect();
        cps.sort();
        cps
    }

    /// Join material from the first alive control plane that has it.
    async fn material_from_peers(&self) -> Result<JoinMaterial, EngineError> {
        loop {
            self.set_phase(
                Phase::WaitingForJoinMaterial,
                Some("join material from a control plane".into()),
            );
            for cp in self.control_planes().await {
                if let Ok(Response::JoinMaterial { sealed, leader }) =
                    self.peers.ask(&cp, Request::JoinMaterial).await
                {
                    let m = joinmat::open(&self.cfg().secret.0, &self.cfg().cluster, &sealed)
                        .map_err(|source| EngineError::JoinMaterial {
                            node: self.node(),
                            from: cp.clone(),
                            source,
                        })?;
                    let mut s = lock(&self.shared.status);
                    s.leader = leader;
                    s.init_recorded = true;
                    return Ok(m);
                }
            }
            self.clock.sleep(self.cfg().timings.poll).await;
        }
    }

    async fn form_worker(&self) -> Result<(), EngineError> {
        self.prepare().await?;
        let mut p = self.persisted();
        if !p.progress.is_member() {
            self.kubeadm_steps(None, &mut p, &mut None).await?;
        }
        lock(&self.shared.status).init_recorded = true;
        self.start_kubelet().await
    }

    async fn follow_leader(&self) -> Result<(), EngineError> {
        for cp in self.control_planes().await {
            if let Ok(Response::Leader(Some(l))) = self.peers.ask(&cp, Request::Leader).await {
                lock(&self.shared.status).leader = Some(l);
                break;
            }
        }
        self.clock.sleep(self.cfg().timings.poll * 2).await;
        Ok(())
    }
}

fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    Some(hostport.rsplit_once(':').map_or(hostport, |(h, _)| h))
}

/// The `sha256:<64 hex>` CA hash in kubeadm's printed join command.
pub fn ca_hash_in(out: &str) -> Option<String> {
    out.split_whitespace()
        .find(|w| {
            w.strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_found_and_secrets_redacted() {
        let h = format!("sha256:{}", "ab".repeat(32));
        let out = format!("kubeadm join 1.2.3.4:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {h}\n");
        assert_eq!(ca_hash_in(&out), Some(h));
        assert_eq!(ca_hash_in("nothing"), None);
        let args: Vec<String> = [
            "token",
            "create",
            "abcdef.0123456789abcdef",
            "--certificate-key",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([("cd".repeat(32))])
        .collect();
        let r = redact_args(&args);
        assert!(
            !r.contains("0123456789abcdef") && !r.contains(&"cd".repeat(32)),
            "{r}"
        );
        assert_eq!(url_host("https://127.0.0.3:2380"), Some("127.0.0.3"));
        assert_eq!(
            url_host("https://cp-1.lab.kubedna:2379"),
            Some("cp-1.lab.kubedna")
        );
    }
}
