//! The node engine: it owns the node's formation life, from host preparation to `member`, and
//! the duties that keep it there (leader campaign, join material renewal). It decides nothing
//! the modules below it decide ([`crate::bootstrap`] whether etcd may start as `new`,
//! [`crate::coord`] who inits and who leads); it sequences them, retries a failed step with
//! the failure recorded in [`Status::last_error`], and persists every irreversible step in the
//! state directory *before* taking it, so a restarted engine resumes instead of repeating.
//! This module holds the engine, its handle and its life loop; [`wire`] the messages,
//! [`config`] the configuration and the [`Clock`], [`status`] the status and errors,
//! `formation` and `worker` how control planes and workers form, `leader` the campaign and
//! the [`crate::duties`] it runs under its term.
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
use crate::duties::{Duties, DutyError, JoinMaterialDuty, Term};
use crate::etcd_unit::{ClusterState, EtcdSpec, EtcdUnitError, MemberUrls};
use crate::joinmat::{self, JoinError, JoinMaterial};
use crate::kubeadm::{self as kcfg, ClusterParams, JoinParams};
use crate::kubelet::{self, KubeletError};
use crate::membership::MemberInfo;
use crate::pki::{EtcdCa, MemberFiles, PkiError};
use crate::progress::{decide_kubeadm, Claim, KubeadmFacts, KubeadmStep, Persisted, Progress};

pub mod config;
mod formation;
mod kubeadm_steps;
mod leader;
pub mod status;
pub mod wire;
mod worker;

pub use config::*;
pub use status::*;
pub use wire::*;

pub use crate::kubeadm_run::{
    redact_args, Kubeadm, KubeadmCommand, KubeadmError, KubeadmOp, OpRecords,
};

// ---------------------------------------------------------------------------------------------
// The engine and its handle.

struct Shared {
    cfg: EngineConfig,
    set: Option<MemberSet>,
    state_path: PathBuf,
    status: Mutex<Status>,
    persisted: Mutex<Persisted>,
    coord: Mutex<Option<Coordinator>>,
    /// The catalogue settings, when the duty is on (for `catalogue diff`).
    catalogue: Mutex<Option<crate::duties::CatalogueSettings>>,
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
    /// The etcd connection once this control plane has one (for `kubedna doctor` on any
    /// control plane); None on a worker or before etcd serves.
    pub fn coordinator(&self) -> Option<Coordinator> {
        lock(&self.shared.coord).clone()
    }

    /// A snapshot for `kubedna status`.
    pub fn status(&self) -> Status {
        lock(&self.shared.status).clone()
    }

    /// The catalogue's progress record in etcd (`kubedna catalogue status`); `Err` says why it
    /// cannot be read here (a worker, etcd not reached).
    pub async fn catalogue_record(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(coord) = lock(&self.shared.coord).clone() else {
            return Err("this node has no etcd connection (a worker, or a control plane not formed yet): ask a control plane".into());
        };
        coord
            .get(&coord.key(kubedna_catalogue::progress::PROGRESS_KEY))
            .await
            .map_err(|e| kubedna_host::error_chain(&e))
    }

    /// What a catalogue pass would change now (`kubedna catalogue diff`).
    pub async fn catalogue_diff(&self) -> Result<(String, Vec<crate::duties::Planned>), String> {
        let Some(settings) = lock(&self.shared.catalogue).clone() else {
            return Err("the agent config has no `catalogue` section".into());
        };
        let Some(coord) = lock(&self.shared.coord).clone() else {
            return Err("this node has no etcd connection (a worker, or a control plane not formed yet): ask a control plane".into());
        };
        crate::duties::catalogue_diff(&settings, &coord)
            .await
            .map_err(|e| kubedna_host::error_chain(&e))
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

/// One node's formation. See the module documentation for how the daemon runs it.
pub struct Engine<P, S, K, C> {
    shared: Arc<Shared>,
    /// What this follower saw of the leader's node in the leader's current term.
    sightings: Mutex<Option<crate::takeover::Sightings>>,
    peers: Arc<P>,
    sd: Arc<S>,
    kubeadm: Arc<K>,
    clock: Arc<C>,
    duties: Duties<K, C>,
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
            NodeRole::ControlPlane => Some(
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
            NodeRole::Worker => None,
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
        let (kubeadm, clock) = (Arc::new(kubeadm), Arc::new(clock));
        let upload_config = set.as_ref().map(|set| crate::duties::UploadConfig {
            on_disk: rooted(&cfg.root, UPLOAD_CERTS_CONFIG),
            path: UPLOAD_CERTS_CONFIG.to_string(),
            params: crate::kubeadm::ClusterParams {
                etcd_ca: format!("{NOT_UPLOADED_ETCD_DIR}/ca.crt"),
                etcd_cert: format!("{NOT_UPLOADED_ETCD_DIR}/client.crt"),
                etcd_key: format!("{NOT_UPLOADED_ETCD_DIR}/client.key"),
                ..config::cluster_params(&cfg, set)
            },
        });
        let (cfg_secret, cfg_cluster, cfg_endpoint) = (
            cfg.secret.clone(),
            cfg.cluster.clone(),
            cfg.control_plane_endpoint.clone(),
        );
        Ok(Engine {
            shared: Arc::new(Shared {
                cfg,
                set,
                state_path,
                status: Mutex::new(status),
                persisted: Mutex::new(persisted),
                coord: Mutex::new(None),
                catalogue: Mutex::new(None),
            }),
            sightings: Mutex::new(None),
            peers: Arc::new(peers),
            sd: Arc::new(systemd),
            duties: Duties {
                join_material: JoinMaterialDuty {
                    kubeadm: kubeadm.clone(),
                    clock: clock.clone(),
                    secret: cfg_secret,
                    cluster: cfg_cluster,
                    api_endpoint: cfg_endpoint,
                    upload_config,
                },
                doctor: None,
                catalogue: None,
            },
            kubeadm,
            clock,
        })
    }

    /// Adds the doctor to the leader's duties (docs/doctor.md); the daemon calls this when
    /// `doctor.enabled` is set and a provider is configured.
    pub fn set_doctor(&mut self, doctor: Arc<dyn crate::doctor_duty::LeaderDuty>) {
        self.duties.doctor = Some(doctor);
    }

    /// Adds the catalogue duty (the agent config has a `catalogue` section).
    pub fn with_catalogue(mut self, duty: crate::duties::CatalogueDuty) -> Self {
        *lock(&self.shared.catalogue) = Some(duty.settings.clone());
        self.duties.catalogue = Some(duty);
        self
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
                NodeRole::ControlPlane => self.form_control_plane().await,
                NodeRole::Worker => self.form_worker().await,
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
                NodeRole::ControlPlane => self.lead_or_follow().await,
                NodeRole::Worker => self.follow_leader().await,
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

    /// Where this engine reports what it changes on its own ([`crate::actions`]).
    pub(super) fn actions(&self) -> &crate::actions::ActionLog {
        &self.cfg().actions
    }

    fn kubeadm_err(&self) -> impl FnOnce(KubeadmError) -> EngineError + '_ {
        move |source| EngineError::Kubeadm {
            node: self.node(),
            source,
        }
    }

    async fn prepare(&self) -> Result<(), EngineError> {
        self.set_phase(Phase::PreparingHost, None);
        let prepared = kubedna_host::prepare::prepare(&*self.sd, &self.cfg().root).await;
        match &prepared {
            // Nothing changed (a restart on a prepared host): nothing to audit.
            Ok(r) if *r == Default::default() => {}
            _ => self.actions().done(
                "host.prepare",
                "the node needs kernel settings, containerd's config and its units for Kubernetes",
                prepared.as_ref().map_or(serde_json::Value::Null, |r| {
                    serde_json::json!({
                        "filesWritten": r.files_written,
                        "restarted": r.restarted,
                        "stopped": r.stopped,
                    })
                }),
                &prepared,
            ),
        }
        prepared.map_err(|source| EngineError::Prepare {
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
}

/// The host of an etcd URL such as `https://[fd00::3]:2380` (parsed, never split on `:`).
fn url_host(url: &str) -> Option<Host> {
    Endpoint::in_url(url).map(|e| e.host().clone())
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
    }

    /// (etcd URL, its host as a certificate wants it, whether it is an address)
    #[test]
    fn url_hosts_of_ipv4_ipv6_and_names() {
        for (url, host, is_ip) in [
            ("https://127.0.0.3:2380", Some("127.0.0.3"), true),
            ("https://[fd00::3]:2380", Some("fd00::3"), true),
            ("https://[fd00::3]:2379/health", Some("fd00::3"), true),
            (
                "https://cp-1.lab.kubedna:2379",
                Some("cp-1.lab.kubedna"),
                false,
            ),
            ("https://fd00::3:2379", None, false),
            ("https://cp-1.lab.kubedna", None, false),
        ] {
            let got = url_host(url);
            assert_eq!(
                got.as_ref().map(ToString::to_string).as_deref(),
                host,
                "{url}"
            );
            assert_eq!(got.and_then(|h| h.as_ip()).is_some(), is_ip, "{url}");
        }
    }
}
