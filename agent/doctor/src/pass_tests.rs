//! The pass against in-memory fakes of every boundary sharing one world: a powered-off worker
//! is replaced over a few passes with every step audited; provider failures move nothing; a
//! stale term stops the pass.

use std::sync::{Arc, Mutex};

use super::*;
use crate::events::Collected;
use crate::provider::VmStatus;
use crate::steps::StepName;

#[derive(Debug, Default)]
struct FakeWorld {
    vms: Vec<Vm>,
    next_id: u64,
    /// Node name → Ready.
    kube: BTreeMap<String, bool>,
    mesh: BTreeMap<String, (NodeRole, MeshState)>,
    // The store.
    progress: Option<Progress>,
    history: Vec<HistoryEntry>,
    backoff: BTreeMap<String, Backoff>,
    lease: Option<(String, i64)>,
    term: i64,
    provider_fails: u32,
    create_fails: bool,
}

type Shared = Arc<Mutex<FakeWorld>>;

#[derive(Debug, Clone)]
struct Fake(Shared);

impl Fake {
    fn w(&self) -> std::sync::MutexGuard<'_, FakeWorld> {
        self.0.lock().expect("world")
    }
}

fn failing(w: &mut FakeWorld) -> Result<(), ProviderError> {
    if w.provider_fails > 0 {
        w.provider_fails -= 1;
        return Err(ProviderError::Api {
            request: "GET /servers".into(),
            status: 503,
            code: "unavailable".into(),
            message: "injected".into(),
            hint: "",
        });
    }
    Ok(())
}

impl Provider for Fake {
    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        let mut w = self.w();
        failing(&mut w)?;
        Ok(w.vms.clone())
    }
    async fn power_off(&self, id: u64) -> Result<(), ProviderError> {
        let mut w = self.w();
        failing(&mut w)?;
        w.vms
            .iter_mut()
            .filter(|v| v.id == id)
            .for_each(|v| v.status = VmStatus::Off);
        Ok(())
    }
    async fn delete(&self, id: u64) -> Result<(), ProviderError> {
        let mut w = self.w();
        failing(&mut w)?;
        w.vms.retain(|v| v.id != id);
        Ok(())
    }
    async fn create(&self, vm: &NewVm) -> Result<Vm, ProviderError> {
        let mut w = self.w();
        failing(&mut w)?;
        if w.create_fails {
            return Err(ProviderError::RateLimited {
                request: "POST /servers".into(),
                reset_in_secs: 900,
                max_wait_secs: 60,
            });
        }
        assert!(
            w.vms.iter().all(|v| v.name != vm.name),
            "two VMs named {}",
            vm.name
        );
        assert!(vm.user_data.starts_with("#cloud-config"));
        w.next_id += 1;
        let v = Vm {
            id: w.next_id,
            name: vm.name.clone(),
            status: VmStatus::Running,
            labels: vm.labels.clone(),
        };
        w.vms.push(v.clone());
        // It boots and joins at once in this fake.
        w.kube.insert(vm.name.clone(), true);
        let role = if vm.labels.get(ROLE_LABEL).map(String::as_str) == Some("worker") {
            NodeRole::Worker
        } else {
            NodeRole::ControlPlane
        };
        w.mesh.insert(vm.name.clone(), (role, MeshState::Alive));
        Ok(v)
    }
}

impl Kube for Fake {
    async fn nodes(&self) -> Result<Vec<KubeNode>, String> {
        Ok(self
            .w()
            .kube
            .iter()
            .map(|(n, r)| KubeNode {
                name: n.clone(),
                ready: if *r {
                    ReadyState::Ready
                } else {
                    ReadyState::Unknown
                },
                since: None,
            })
            .collect())
    }
    async fn delete_node(&self, name: &str) -> Result<(), String> {
        self.w().kube.remove(name);
        Ok(())
    }
}

impl Mesh for Fake {
    fn nodes(&self) -> Vec<MeshNode> {
        self.w()
            .mesh
            .iter()
            .map(|(n, (role, state))| MeshNode {
                name: n.clone(),
                role: *role,
                state: *state,
            })
            .collect()
    }
}

impl Seeds for Fake {
    fn render(&self, node: &str, role: NodeRole) -> Result<String, String> {
        Ok(format!("#cloud-config\n# {node} {role}\n"))
    }
}

/// The store of one term.
struct FakeStore(Shared, i64);

impl FakeStore {
    fn w(&self) -> Result<std::sync::MutexGuard<'_, FakeWorld>, StoreError> {
        let w = self.0.lock().expect("world");
        if w.term != self.1 {
            return Err(StoreError::Stale(format!("term {} is over", self.1)));
        }
        Ok(w)
    }
}

impl Store for FakeStore {
    async fn progress(&self) -> Result<Option<Progress>, StoreError> {
        Ok(self.w()?.progress.clone())
    }
    async fn put_progress(&self, p: &Progress) -> Result<(), StoreError> {
        self.w()?.progress = Some(p.clone());
        Ok(())
    }
    async fn clear_progress(&self) -> Result<(), StoreError> {
        self.w()?.progress = None;
        Ok(())
    }
    async fn paused(&self) -> Result<Option<Pause>, StoreError> {
        Ok(None)
    }
    async fn backoff(&self) -> Result<BTreeMap<String, Backoff>, StoreError> {
        Ok(self.w()?.backoff.clone())
    }
    async fn put_backoff(&self, b: &BTreeMap<String, Backoff>) -> Result<(), StoreError> {
        self.w()?.backoff = b.clone();
        Ok(())
    }
    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(self.w()?.history.clone())
    }
    async fn put_history(&self, h: &[HistoryEntry]) -> Result<(), StoreError> {
        self.w()?.history = h.to_vec();
        Ok(())
    }
    async fn lease(&self, p: &Progress) -> Result<LeaseView, StoreError> {
        let w = self.w()?;
        Ok(match &w.lease {
            None => LeaseView::Absent,
            Some((n, t)) if *n == p.node && *t == self.1 => LeaseView::Ours,
            Some((n, _)) if *n == p.node => LeaseView::Resumable,
            Some((n, _)) => LeaseView::Other {
                holder: "x".into(),
                node: n.clone(),
                reason: "patch".into(),
            },
        })
    }
    async fn take_lease(&self, p: &Progress) -> Result<bool, StoreError> {
        let mut w = self.w()?;
        w.lease = Some((p.node.clone(), self.1));
        Ok(true)
    }
    async fn release_lease(&self, _: &Progress) -> Result<(), StoreError> {
        self.w()?.lease = None;
        Ok(())
    }
    async fn members(&self) -> Result<Vec<Voter>, StoreError> {
        Ok(Vec::new())
    }
    async fn remove_member(&self, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

type TestDoctor = Doctor<Fake, Fake, Fake, Fake, Arc<Collected>>;

fn cluster() -> (Shared, TestDoctor, Arc<Collected>) {
    let mut w = FakeWorld {
        next_id: 500,
        term: 3,
        ..FakeWorld::default()
    };
    for (i, n) in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"].iter().enumerate() {
        let role = if n.starts_with("cp") {
            NodeRole::ControlPlane
        } else {
            NodeRole::Worker
        };
        w.vms.push(Vm {
            id: 100 + i as u64,
            name: n.to_string(),
            status: VmStatus::Running,
            labels: BTreeMap::new(),
        });
        w.kube.insert(n.to_string(), true);
        w.mesh.insert(n.to_string(), (role, MeshState::Alive));
    }
    let shared = Arc::new(Mutex::new(w));
    let events = Arc::new(Collected::default());
    let fake = Fake(shared.clone());
    let cfg = DoctorConfig {
        guard: GuardConfig {
            enabled: true,
            ..GuardConfig::default()
        },
        thresholds: Thresholds::default(),
        node_startup: 600,
        cluster: "lab".into(),
    };
    let d = Doctor::new(
        fake.clone(),
        fake.clone(),
        fake.clone(),
        fake,
        events.clone(),
        cfg,
        "cp-1",
    );
    (shared, d, events)
}

impl DoctorEvents for Arc<Collected> {
    fn record(&self, event: &DoctorEvent) {
        self.as_ref().record(event);
    }
}

fn power_off(w: &Shared, node: &str) {
    let mut w = w.lock().expect("world");
    w.vms
        .iter_mut()
        .filter(|v| v.name == node)
        .for_each(|v| v.status = VmStatus::Off);
    w.kube.insert(node.into(), false);
    if let Some(m) = w.mesh.get_mut(node) {
        m.1 = MeshState::Down;
    }
}

#[tokio::test]
async fn a_powered_off_worker_is_replaced_and_every_step_is_audited() {
    let (w, d, events) = cluster();
    let store = FakeStore(w.clone(), 3);
    let t0 = 1_000_000;
    d.pass(&store, 3, t0).await.expect("healthy pass");
    power_off(&w, "w-1");
    let mut now = t0;
    while now < t0 + 60 && w.lock().expect("world").history.is_empty() {
        now += 5;
        d.pass(&store, 3, now).await.expect("pass");
    }
    let w = w.lock().expect("world");
    assert_eq!(
        w.history.len(),
        1,
        "replaced within a minute of the power cut"
    );
    assert_eq!(w.history[0].outcome, Outcome::Replaced);
    assert!(w.progress.is_none() && w.lease.is_none());
    let named: Vec<&Vm> = w.vms.iter().filter(|v| v.name == "w-1").collect();
    assert_eq!(named.len(), 1);
    assert_ne!(named[0].id, 103, "a new VM");
    assert_eq!(
        named[0].labels.get(ROLE_LABEL).map(String::as_str),
        Some("worker")
    );
    assert!(w.backoff.contains_key("w-1"));
    let events = events.0.lock().expect("events");
    let decision = events
        .iter()
        .find(|e| e.kind == EventKind::Decision)
        .expect("decision audited");
    assert!(decision.signals.contains("vm=off for 30s"), "{decision:?}");
    let kinds: Vec<String> = events
        .iter()
        .filter(|e| e.kind == EventKind::Step)
        .map(|e| e.what.clone())
        .collect();
    for want in ["DeleteNode", "DeleteVm", "CreateVm", "released"] {
        assert!(
            kinds.iter().any(|k| k.contains(want)),
            "{want} not audited: {kinds:?}"
        );
    }
}

#[tokio::test]
async fn provider_failures_move_nothing_and_a_stale_term_stops_the_pass() {
    let (w, d, events) = cluster();
    let store = FakeStore(w.clone(), 3);
    let t0 = 1_000_000;
    d.pass(&store, 3, t0).await.expect("pass");
    power_off(&w, "w-2");
    // Creating fails (rate limited for long): the replacement stops before it, every pass.
    w.lock().expect("world").create_fails = true;
    for i in 1..=8 {
        d.pass(&store, 3, t0 + 5 * i).await.expect("pass");
    }
    let before = w.lock().expect("world").progress.clone();
    assert_eq!(before.as_ref().map(|p| p.step), Some(StepName::CreateVm));
    for i in 9..=12 {
        let r = d.pass(&store, 3, t0 + 5 * i).await.expect("pass");
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("rate limited")),
            "{r:?}"
        );
    }
    assert_eq!(w.lock().expect("world").progress, before, "nothing moved");
    assert_eq!(
        w.lock()
            .expect("world")
            .vms
            .iter()
            .filter(|v| v.name == "w-2")
            .count(),
        0
    );
    let failed = events
        .0
        .lock()
        .expect("events")
        .iter()
        .filter(|e| e.kind == EventKind::StepFailed)
        .count();
    assert!(failed >= 4, "each failure audited: {failed}");
    // A new term: the old doctor's store is stale, and its pass stops with that error.
    {
        let mut w = w.lock().expect("world");
        w.create_fails = false;
        w.term = 4;
    }
    let e = d.pass(&store, 3, t0 + 70).await.expect_err("stale");
    assert!(e.is_stale());
    // The next leader's doctor (a fresh one) finishes it.
    let (_, old, _) = cluster();
    let next = Doctor::new(
        Fake(w.clone()),
        Fake(w.clone()),
        Fake(w.clone()),
        Fake(w.clone()),
        events.clone(),
        old.cfg.clone(),
        "cp-2",
    );
    let store4 = FakeStore(w.clone(), 4);
    let mut now = t0 + 75;
    while w.lock().expect("world").progress.is_some() && now < t0 + 200 {
        next.pass(&store4, 4, now).await.expect("pass");
        now += 5;
    }
    let w = w.lock().expect("world");
    assert_eq!(w.history.len(), 1);
    assert_eq!(w.history[0].term, 4, "finished by the next leader");
    assert_eq!(w.vms.iter().filter(|v| v.name == "w-2").count(), 1);
}

#[tokio::test]
async fn a_resumed_replacement_of_a_node_that_came_back_is_abandoned_unfenced() {
    let (w, d, _) = cluster();
    let store = FakeStore(w.clone(), 3);
    let t0 = 1_000_000;
    // A replacement of w-1 recorded at the fence by an earlier leader; w-1 is alive and running.
    {
        let mut p = Progress::start("w-1", NodeRole::Worker, "vm=off for 30s", Some(103), 2, t0);
        p.step = StepName::Fence;
        w.lock().expect("world").progress = Some(p);
    }
    d.pass(&store, 3, t0 + 5).await.expect("pass");
    let w = w.lock().expect("world");
    assert!(w.progress.is_none(), "released");
    assert!(
        matches!(&w.history[0].outcome, Outcome::Abandoned { why } if why.contains("came back")),
        "{:?}",
        w.history
    );
    let vm = w.vms.iter().find(|v| v.id == 103).expect("old VM kept");
    assert_eq!(vm.status, VmStatus::Running, "never powered off");
}
