//! One pass of the doctor, as the leader duty runs it: observe every node (mesh, Kubernetes,
//! provider), judge, decide under the guards, then drive the replacement in flight through
//! [`next_step`] until it must wait. The I/O is behind narrow traits: [`Store`] is etcd under
//! the leader term (progress, history, back-off, pause, the maintenance lease, etcd members),
//! implemented in `kubedna-controlplane`; [`Kube`] is the Node objects; [`Mesh`] the mesh's view;
//! [`Seeds`] renders a node's cloud-init; [`Provider`] the VMs. Every effect is taken only
//! after the progress that justifies it was read from the store in this pass, and every step
//! taken is recorded before the next one, so a pass dropped at any await (the term lost) leaves
//! a state the next leader resumes. It must never act on a decision of an earlier pass without
//! re-observing.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::events::{DoctorEvent, DoctorEvents, EventKind};
use crate::guard::{
    backoff_after, decide, Backoff, Decision, GuardConfig, InFlight, NodeView, Pause, Situation,
    Voter,
};
use crate::provider::{NewVm, Provider, ProviderError, Vm};
use crate::steps::{next_step, LeaseView, NodeObject, Observation, Outcome, Progress, Step};
use crate::verdict::{
    describe, judge, MeshState, Observed, ReadyState, Thresholds, Tracker, VmState,
};
use crate::{NodeRole, Unix};

/// The label every VM of the cluster carries, and the one naming its role.
pub const CLUSTER_LABEL: &str = "kubedna.io/cluster";
pub const ROLE_LABEL: &str = "kubedna.io/role";
/// How many finished replacements the history keeps.
pub const HISTORY_LEN: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A newer term holds the seat: this pass must stop.
    #[error("stale term: {0}")]
    Stale(String),
    #[error("{what}: {detail}")]
    Failed { what: &'static str, detail: String },
}

/// One finished replacement, kept in etcd for `kubedna doctor history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub node: String,
    pub role: NodeRole,
    pub signals: String,
    pub started: Unix,
    pub ended: Unix,
    pub outcome: Outcome,
    pub old_vm: Option<u64>,
    pub new_vm: Option<u64>,
    pub term: i64,
}

/// etcd under the leader term. Every write is fenced by the term the store was made for.
pub trait Store: Send + Sync {
    fn progress(&self) -> impl Future<Output = Result<Option<Progress>, StoreError>> + Send;
    fn put_progress(&self, p: &Progress) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn clear_progress(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn paused(&self) -> impl Future<Output = Result<Option<Pause>, StoreError>> + Send;
    fn backoff(&self)
        -> impl Future<Output = Result<BTreeMap<String, Backoff>, StoreError>> + Send;
    fn put_backoff(
        &self,
        b: &BTreeMap<String, Backoff>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn history(&self) -> impl Future<Output = Result<Vec<HistoryEntry>, StoreError>> + Send;
    fn put_history(
        &self,
        h: &[HistoryEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The maintenance lease as seen for this replacement.
    fn lease(&self, p: &Progress) -> impl Future<Output = Result<LeaseView, StoreError>> + Send;
    /// Takes (or takes over) the maintenance lease; false when held for other work.
    fn take_lease(&self, p: &Progress) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn release_lease(&self, p: &Progress) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// etcd's members with their health probed now.
    fn members(&self) -> impl Future<Output = Result<Vec<Voter>, StoreError>> + Send;
    /// Removes a member, re-checking quorum on the member list read just before.
    fn remove_member(&self, id: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A Node object as the doctor reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeNode {
    pub name: String,
    pub ready: ReadyState,
    /// The `Ready` condition's `lastTransitionTime`.
    pub since: Option<Unix>,
}

/// The Kubernetes API, as far as the doctor needs it.
pub trait Kube: Send + Sync {
    fn nodes(&self) -> impl Future<Output = Result<Vec<KubeNode>, String>> + Send;
    /// Deletes the Node object; an absent one is success.
    fn delete_node(&self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// One node as the mesh knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshNode {
    pub name: String,
    pub role: NodeRole,
    pub state: MeshState,
}

/// The mesh's view: every node ever seen, alive or not.
pub trait Mesh: Send + Sync {
    fn nodes(&self) -> Vec<MeshNode>;
}

/// Renders a node's fresh cloud-init (its seed), with the same name and role.
pub trait Seeds: Send + Sync {
    fn render(&self, node: &str, role: NodeRole) -> Result<String, String>;
}

/// The doctor's settings (`doctor:` in agent.yaml, resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorConfig {
    pub guard: GuardConfig,
    pub thresholds: Thresholds,
    pub node_startup: u64,
    pub cluster: String,
}

/// One node in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub role: NodeRole,
    pub verdict: crate::verdict::Verdict,
    pub signals: String,
}

/// What `kubedna doctor status` shows: the last pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    pub at: Unix,
    pub term: i64,
    pub nodes: Vec<NodeReport>,
    pub decision: Option<Decision>,
    pub in_flight: Option<Progress>,
    pub last_step: Option<Step>,
    pub paused: Option<Pause>,
    /// The last error (provider, API, etcd), in words.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("the doctor's store")]
    Store(#[from] StoreError),
}

impl DoctorError {
    pub fn is_stale(&self) -> bool {
        matches!(self, DoctorError::Store(StoreError::Stale(_)))
    }
}

/// The doctor of one leader: its signal clocks and its last report live here.
#[derive(Debug)]
pub struct Doctor<P, K, M, R, E> {
    pub provider: P,
    pub kube: K,
    pub mesh: M,
    pub seeds: R,
    pub events: E,
    pub cfg: DoctorConfig,
    /// This node's name (never replaced by itself).
    pub leader: String,
    memory: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    tracker: Tracker,
    /// The term the tracker's clocks belong to: a new term starts them afresh.
    term: i64,
    last_said: Option<String>,
    report: Report,
}

struct World {
    vms: Option<Vec<Vm>>,
    kube: Option<Vec<KubeNode>>,
    error: Option<String>,
    /// The nodes showing a sign of life at the pass's start (mesh alive or Node Ready).
    alive: BTreeSet<String>,
}

impl<P: Provider, K: Kube, M: Mesh, R: Seeds, E: DoctorEvents> Doctor<P, K, M, R, E> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        provider: P,
        kube: K,
        mesh: M,
        seeds: R,
        events: E,
        cfg: DoctorConfig,
        leader: &str,
    ) -> Self {
        Doctor {
            provider,
            kube,
            mesh,
            seeds,
            events,
            cfg,
            leader: leader.into(),
            memory: Mutex::new(Memory::default()),
        }
    }

    /// The last pass's report.
    pub fn report(&self) -> Report {
        self.memory
            .lock()
            .map(|m| m.report.clone())
            .unwrap_or_default()
    }

    async fn observe_world(&self) -> World {
        let mut error = None;
        let vms = match self.provider.list().await {
            Ok(v) => Some(v),
            Err(e) => {
                error = Some(e.to_string());
                None
            }
        };
        let kube = match self.kube.nodes().await {
            Ok(n) => Some(n),
            Err(e) => {
                error.get_or_insert(format!("Kubernetes API: {e}"));
                None
            }
        };
        World {
            vms,
            kube,
            error,
            alive: BTreeSet::new(),
        }
    }

    fn event(
        &self,
        kind: EventKind,
        node: &str,
        what: String,
        signals: &str,
        term: i64,
        now: Unix,
    ) {
        self.events.record(&DoctorEvent {
            at: now,
            kind,
            node: node.into(),
            what,
            signals: signals.into(),
            term,
        });
    }

    /// Records a wait once per change of reason, not every pass.
    fn said(&self, what: &str) -> bool {
        let mut m = match self.memory.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if m.last_said.as_deref() == Some(what) {
            return false;
        }
        m.last_said = Some(what.to_string());
        true
    }

    /// Each node's verdict, and the nodes showing a sign of life now (mesh alive or Node Ready).
    fn judge_all(&self, world: &World, term: i64, now: Unix) -> (Vec<NodeView>, BTreeSet<String>) {
        let mut roles: BTreeMap<String, NodeRole> = BTreeMap::new();
        let mesh: BTreeMap<String, MeshState> = self
            .mesh
            .nodes()
            .into_iter()
            .map(|n| {
                roles.insert(n.name.clone(), n.role);
                (n.name, n.state)
            })
            .collect();
        let mut names: BTreeSet<String> = mesh.keys().cloned().collect();
        for v in world.vms.iter().flatten() {
            names.insert(v.name.clone());
            if let Some(r) = v.labels.get(ROLE_LABEL) {
                let role = if r == "control-plane" {
                    NodeRole::ControlPlane
                } else {
                    NodeRole::Worker
                };
                roles.entry(v.name.clone()).or_insert(role);
            }
        }
        for k in world.kube.iter().flatten() {
            names.insert(k.name.clone());
        }
        let mut m = match self.memory.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if m.term != term {
            m.tracker = Tracker::default();
            m.term = term;
        }
        m.tracker.retain(|n| names.contains(n));
        let mut alive = BTreeSet::new();
        let views = names
            .into_iter()
            .map(|name| {
                let (ready, ready_since) = match &world.kube {
                    None => (ReadyState::Unobserved, None),
                    Some(ks) => ks
                        .iter()
                        .find(|k| k.name == name)
                        .map_or((ReadyState::Missing, None), |k| (k.ready, k.since)),
                };
                let vm = match &world.vms {
                    None => VmState::Unobserved,
                    Some(vs) => vs
                        .iter()
                        .find(|v| v.name == name)
                        .map_or(VmState::Missing, |v| v.status.signal()),
                };
                let o = Observed {
                    mesh: mesh.get(&name).copied().unwrap_or(MeshState::Unknown),
                    ready,
                    ready_since,
                    vm,
                };
                if o.mesh == MeshState::Alive || o.ready == ReadyState::Ready {
                    alive.insert(name.clone());
                }
                let s = m.tracker.observe(&name, o, &self.cfg.thresholds, now);
                NodeView {
                    role: roles.get(&name).copied().unwrap_or(NodeRole::Worker),
                    verdict: judge(s, &self.cfg.thresholds, now),
                    signals: describe(s, now),
                    name,
                }
            })
            .collect();
        (views, alive)
    }

    /// One pass under `term` at `now`.
    pub async fn pass<S: Store>(
        &self,
        store: &S,
        term: i64,
        now: Unix,
    ) -> Result<Report, DoctorError> {
        let mut world = self.observe_world().await;
        let (nodes, alive) = self.judge_all(&world, term, now);
        world.alive = alive;
        let mut report = Report {
            at: now,
            term,
            nodes: nodes
                .iter()
                .map(|n| NodeReport {
                    name: n.name.clone(),
                    role: n.role,
                    verdict: n.verdict,
                    signals: n.signals.clone(),
                })
                .collect(),
            error: world.error.clone(),
            ..Report::default()
        };
        let progress = store.progress().await?;
        let paused = store.paused().await?;
        let backoff = store.backoff().await?;
        let decision = decide(&Situation {
            config: &self.cfg.guard,
            leader: &self.leader,
            nodes: &nodes,
            in_flight: progress.as_ref().map(|p| InFlight {
                node: &p.node,
                fenced: p.fenced(),
            }),
            paused: paused.as_ref(),
            backoff: &backoff,
            now,
        });
        report.paused = paused;
        report.decision = Some(decision.clone());
        let progress = match (&decision, progress) {
            // Never start blind: which VM is the node's must be known before anything is
            // recorded, or the fence could not tell "none" from "not asked".
            (Decision::Replace { node, .. }, _) if world.vms.is_none() => {
                let text = format!(
                    "{node} looks dead, but the provider could not be asked for its VM; not starting"
                );
                if self.said(&text) {
                    self.event(EventKind::Wait, node, text, "", term, now);
                }
                self.remember(&report);
                return Ok(report);
            }
            (
                Decision::Replace {
                    node,
                    role,
                    signals,
                },
                _,
            ) => {
                let old_vm = world
                    .vms
                    .iter()
                    .flatten()
                    .find(|v| v.name == *node)
                    .map(|v| v.id);
                let p = Progress::start(node, *role, signals, old_vm, term, now);
                store.put_progress(&p).await?;
                self.event(
                    EventKind::Decision,
                    node,
                    format!("judged dead; replacing it as {role}"),
                    signals,
                    term,
                    now,
                );
                p
            }
            (Decision::Continue { .. }, Some(p)) => p,
            (Decision::Wait(why), p) => {
                let text = why.to_string();
                if self.said(&text) {
                    self.event(EventKind::Wait, "", text, "", term, now);
                }
                report.in_flight = p;
                self.remember(&report);
                return Ok(report);
            }
            (_, p) => {
                report.in_flight = p;
                self.remember(&report);
                return Ok(report);
            }
        };
        let result = self
            .drive(store, progress, world, term, now, &mut report)
            .await;
        self.remember(&report);
        result.map(|()| report)
    }

    fn remember(&self, report: &Report) {
        if let Ok(mut m) = self.memory.lock() {
            m.report = report.clone();
        }
    }

    /// Steps the replacement until it must wait, is released, or fails (retried next pass).
    async fn drive<S: Store>(
        &self,
        store: &S,
        mut p: Progress,
        mut world: World,
        term: i64,
        now: Unix,
        report: &mut Report,
    ) -> Result<(), DoctorError> {
        let alive = std::mem::take(&mut world.alive);
        for _ in 0..12 {
            report.in_flight = Some(p.clone());
            let lease = store.lease(&p).await?;
            let members = match p.role {
                NodeRole::ControlPlane => Some(store.members().await),
                NodeRole::Worker => None,
            };
            let members = match members {
                Some(Ok(m)) => Some(m),
                Some(Err(StoreError::Stale(s))) => return Err(StoreError::Stale(s).into()),
                Some(Err(e)) => {
                    report.error = Some(e.to_string());
                    None
                }
                None => Some(Vec::new()),
            };
            let node = match &world.kube {
                None => NodeObject::Unobserved,
                Some(ks) => ks
                    .iter()
                    .find(|k| k.name == p.node)
                    .map_or(NodeObject::Absent, |k| NodeObject::Present {
                        ready: k.ready == ReadyState::Ready,
                    }),
            };
            let o = Observation {
                came_back: alive.contains(&p.node),
                now,
                lease: &lease,
                vms: world.vms.as_deref(),
                members: members.as_deref(),
                node,
                startup_timeout: self.cfg.node_startup,
            };
            let step = next_step(&p, &o);
            report.last_step = Some(step.clone());
            if matches!(
                step,
                Step::PowerOff { .. }
                    | Step::DeleteVm { .. }
                    | Step::CreateVm
                    | Step::DeleteNode
                    | Step::RemoveMember { .. }
            ) {
                // No effect outside etcd without a fenced write in this same pass: a deposed
                // leader whose pass was not dropped yet is refused here, before acting.
                p.term = term;
                store.put_progress(&p).await?;
            }
            let acted: Result<(), String> = match &step {
                Step::Wait { why } => {
                    if self.said(why) {
                        self.event(EventKind::Wait, &p.node, why.clone(), &p.signals, term, now);
                    }
                    return Ok(());
                }
                Step::TakeLease => {
                    if !store.take_lease(&p).await? {
                        return Ok(());
                    }
                    Ok(())
                }
                Step::Advance { .. } | Step::RecordNewVm { .. } | Step::Finish { .. } => {
                    p = p.after(&step, term, now);
                    store.put_progress(&p).await?;
                    if let Step::Finish { outcome } = &step {
                        self.event(
                            EventKind::Finished,
                            &p.node,
                            format!("{outcome:?}"),
                            &p.signals,
                            term,
                            now,
                        );
                    }
                    continue;
                }
                Step::PowerOff { vm } => self
                    .provider
                    .power_off(*vm)
                    .await
                    .map_err(|e| e.to_string()),
                Step::DeleteVm { vm } => self.provider.delete(*vm).await.map_err(|e| e.to_string()),
                Step::CreateVm => self.create(&p).await,
                Step::DeleteNode => self.kube.delete_node(&p.node).await,
                Step::RemoveMember { id } => match store.remove_member(*id).await {
                    Err(StoreError::Stale(s)) => return Err(StoreError::Stale(s).into()),
                    r => r.map_err(|e| e.to_string()),
                },
                Step::Release => {
                    self.release(store, &p, term, now).await?;
                    report.in_flight = None;
                    return Ok(());
                }
            };
            match acted {
                Ok(()) => {
                    if !matches!(step, Step::TakeLease) {
                        self.event(
                            EventKind::Step,
                            &p.node,
                            format!("{step:?} done"),
                            &p.signals,
                            term,
                            now,
                        );
                    }
                }
                Err(e) => {
                    self.event(
                        EventKind::StepFailed,
                        &p.node,
                        format!("{step:?} failed: {e}; retried on the next pass"),
                        &p.signals,
                        term,
                        now,
                    );
                    report.error = Some(e);
                    return Ok(());
                }
            }
            // Effects change the world: look again before the next step.
            world = self.observe_world().await;
        }
        Ok(())
    }

    async fn create(&self, p: &Progress) -> Result<(), String> {
        let user_data = self
            .seeds
            .render(&p.node, p.role)
            .map_err(|e| format!("cannot render the seed of {}: {e}", p.node))?;
        let mut labels = BTreeMap::new();
        labels.insert(CLUSTER_LABEL.to_string(), self.cfg.cluster.clone());
        labels.insert(ROLE_LABEL.to_string(), p.role.as_str().to_string());
        let vm = NewVm {
            name: p.node.clone(),
            labels,
            user_data,
        };
        match self.provider.create(&vm).await {
            Ok(_) => Ok(()),
            // An earlier create went through: the next observation finds it by name.
            Err(e) if ProviderError::is_name_taken(&e) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn release<S: Store>(
        &self,
        store: &S,
        p: &Progress,
        term: i64,
        now: Unix,
    ) -> Result<(), DoctorError> {
        let outcome = p.outcome.clone().unwrap_or(Outcome::Replaced);
        let mut history = store.history().await?;
        if !history
            .iter()
            .any(|h| h.node == p.node && h.started == p.started)
        {
            history.push(HistoryEntry {
                node: p.node.clone(),
                role: p.role,
                signals: p.signals.clone(),
                started: p.started,
                ended: now,
                outcome: outcome.clone(),
                old_vm: p.old_vm,
                new_vm: p.new_vm,
                term,
            });
            let drop = history.len().saturating_sub(HISTORY_LEN);
            history.drain(..drop);
            store.put_history(&history).await?;
        }
        let mut backoff = store.backoff().await?;
        let b = backoff_after(
            backoff.get(&p.node),
            outcome == Outcome::Replaced,
            &self.cfg.guard,
            now,
        );
        backoff.insert(p.node.clone(), b);
        store.put_backoff(&backoff).await?;
        store.clear_progress().await?;
        store.release_lease(p).await?;
        self.event(
            EventKind::Step,
            &p.node,
            "released the maintenance lease".into(),
            &p.signals,
            term,
            now,
        );
        Ok(())
    }
}

#[cfg(test)]
#[path = "pass_tests.rs"]
mod tests;
