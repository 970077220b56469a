//! The doctor duty on a real etcd (Debian's etcd-server 3.4): a powered-off worker is replaced
//! through fakes of the provider, the Node API and the mesh, with its progress, the maintenance
//! lease, the back-off and the history in etcd under the leader term; an admin's pause holds it;
//! a deposed leader's pass is refused by term; on a real three-member etcd, a powered-off
//! control plane's member is removed (its health probed for real) before its new VM is created.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubedna_controlplane::actions::ActionLog;
use kubedna_controlplane::coord::Coordinator;
use kubedna_controlplane::doctor_duty::{read_records, set_paused, DoctorDuty, LeaderDuty};
use kubedna_controlplane::duties::Term;
use kubedna_doctor::events::Collected;
use kubedna_doctor::guard::{GuardConfig, Pause};
use kubedna_doctor::pass::{Doctor, DoctorConfig, Kube, KubeNode, Mesh, MeshNode, Seeds};
use kubedna_doctor::provider::{NewVm, Provider, ProviderError, Vm, VmStatus};
use kubedna_doctor::steps::Outcome;
use kubedna_doctor::verdict::{MeshState, ReadyState, Thresholds};
use kubedna_doctor::{DoctorEvent, DoctorEvents, NodeRole};

#[derive(Debug, Default)]
struct World {
    vms: Vec<Vm>,
    ready: BTreeMap<String, bool>,
    next: u64,
}

#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Provider for Fake {
    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        Ok(self.0.lock().expect("world").vms.clone())
    }
    async fn power_off(&self, id: u64) -> Result<(), ProviderError> {
        let mut w = self.0.lock().expect("world");
        w.vms
            .iter_mut()
            .filter(|v| v.id == id)
            .for_each(|v| v.status = VmStatus::Off);
        Ok(())
    }
    async fn delete(&self, id: u64) -> Result<(), ProviderError> {
        self.0.lock().expect("world").vms.retain(|v| v.id != id);
        Ok(())
    }
    async fn create(&self, vm: &NewVm) -> Result<Vm, ProviderError> {
        let mut w = self.0.lock().expect("world");
        w.next += 1;
        let v = Vm {
            id: w.next,
            name: vm.name.clone(),
            status: VmStatus::Running,
            labels: vm.labels.clone(),
        };
        w.vms.push(v.clone());
        w.ready.insert(vm.name.clone(), true);
        Ok(v)
    }
}

impl Kube for Fake {
    async fn nodes(&self) -> Result<Vec<KubeNode>, String> {
        Ok(self
            .0
            .lock()
            .expect("world")
            .ready
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
        self.0.lock().expect("world").ready.remove(name);
        Ok(())
    }
}

impl Mesh for Fake {
    fn nodes(&self) -> Vec<MeshNode> {
        let w = self.0.lock().expect("world");
        w.ready
            .keys()
            .map(|n| MeshNode {
                name: n.clone(),
                role: if n.starts_with("cp-") {
                    NodeRole::ControlPlane
                } else {
                    NodeRole::Worker
                },
                state: if w.ready[n] {
                    MeshState::Alive
                } else {
                    MeshState::Down
                },
            })
            .collect()
    }
}

impl Seeds for Fake {
    fn render(&self, node: &str, _: NodeRole) -> Result<String, String> {
        Ok(format!("#cloud-config\n# {node}\n"))
    }
}

#[derive(Debug, Clone, Default)]
struct Events(Arc<Collected>);

impl DoctorEvents for Events {
    fn record(&self, e: &DoctorEvent) {
        self.0.record(e);
    }
}

/// The doctor's own events are checked here; the engine's action log goes nowhere.
static NO_LOG: std::sync::LazyLock<ActionLog> = std::sync::LazyLock::new(ActionLog::default);

type Duty = DoctorDuty<Fake, Fake, Fake, Fake, Events>;

fn duty(world: &Fake, events: &Events, leader: &str, clock: Arc<Mutex<u64>>) -> Duty {
    let cfg = DoctorConfig {
        guard: GuardConfig {
            enabled: true,
            ..GuardConfig::default()
        },
        thresholds: Thresholds::default(),
        node_startup: 600,
        cluster: "lab".into(),
    };
    let doctor = Doctor::new(
        world.clone(),
        world.clone(),
        world.clone(),
        world.clone(),
        events.clone(),
        cfg,
        leader,
    );
    let mut d = DoctorDuty::new(doctor, Arc::new(move || *clock.lock().expect("clock")));
    d.lease_ttl = Duration::from_secs(3);
    d.every = 0;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_powered_off_worker_is_replaced_with_its_records_in_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = common::single(dir.path());
    let a = Coordinator::connect(std::slice::from_ref(&e.client_url), "lab")
        .await
        .expect("connect");
    let lead = a
        .campaign("cp-1", Duration::from_secs(4))
        .await
        .expect("campaign")
        .expect("leads");
    let world = Fake::default();
    {
        let mut w = world.0.lock().expect("world");
        for (i, n) in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"].iter().enumerate() {
            w.vms.push(Vm {
                id: 10 + i as u64,
                name: n.to_string(),
                status: VmStatus::Running,
                labels: BTreeMap::new(),
            });
            w.ready.insert(n.to_string(), true);
        }
        w.next = 100;
    }
    let clock = Arc::new(Mutex::new(1_000_000u64));
    let events = Events::default();
    let d = duty(&world, &events, "cp-1", clock.clone());
    let term = Term {
        coord: &a,
        term: lead.term,
        actions: &NO_LOG,
    };
    d.pass(term).await.expect("healthy pass");

    // w-1 loses power; an admin pause holds the doctor back.
    {
        let mut w = world.0.lock().expect("world");
        w.vms[3].status = VmStatus::Off;
        w.ready.insert("w-1".into(), false);
    }
    let pause = Pause {
        by: "uid 0".into(),
        since: 1,
        reason: Some("test".into()),
    };
    set_paused(&a, Some(&pause)).await.expect("pause");
    for _ in 0..10 {
        *clock.lock().expect("clock") += 5;
        d.pass(term).await.expect("paused pass");
    }
    let (progress, paused, history) = read_records(&a).await.expect("records");
    assert!(
        progress.is_none() && history.is_empty(),
        "nothing while paused"
    );
    assert_eq!(paused, Some(pause));
    assert!(format!("{:?}", d.report().decision).contains("Paused"));

    set_paused(&a, None).await.expect("resume");
    for _ in 0..4 {
        *clock.lock().expect("clock") += 5;
        d.pass(term).await.expect("pass");
    }
    let (progress, paused, history) = read_records(&a).await.expect("records");
    assert!(paused.is_none());
    assert!(progress.is_none(), "released: {progress:?}");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, Outcome::Replaced);
    assert_eq!(history[0].old_vm, Some(13));
    assert!(
        a.maintenance().await.expect("read").is_none(),
        "lease released"
    );
    let w = world.0.lock().expect("world");
    let named: Vec<&Vm> = w.vms.iter().filter(|v| v.name == "w-1").collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].id, 101);
    assert_eq!(
        named[0]
            .labels
            .get("kubedna.io/cluster")
            .map(String::as_str),
        Some("lab")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_doctor_is_refused_by_term_and_the_next_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = common::single(dir.path());
    let url = std::slice::from_ref(&e.client_url);
    let a = Coordinator::connect(url, "lab").await.expect("connect");
    let b = Coordinator::connect(url, "lab").await.expect("connect");
    let ttl = Duration::from_secs(2);
    let lead_a = a.campaign("cp-1", ttl).await.expect("campaign").expect("a");
    let world = Fake::default();
    {
        let mut w = world.0.lock().expect("world");
        for (i, n) in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"].iter().enumerate() {
            w.vms.push(Vm {
                id: 10 + i as u64,
                name: n.to_string(),
                status: if *n == "w-2" {
                    VmStatus::Off
                } else {
                    VmStatus::Running
                },
                labels: BTreeMap::new(),
            });
            w.ready.insert(n.to_string(), *n != "w-2");
        }
        w.next = 100;
    }
    let clock = Arc::new(Mutex::new(1_000_000u64));
    let events = Events::default();
    let da = duty(&world, &events, "cp-1", clock.clone());
    // w-2 is off from the start: replaced under a's term.
    let term_a = Term {
        coord: &a,
        term: lead_a.term,
        actions: &NO_LOG,
    };
    for _ in 0..8 {
        *clock.lock().expect("clock") += 5;
        da.pass(term_a).await.expect("pass");
    }
    let (_, _, history) = read_records(&a).await.expect("records");
    assert_eq!(history.len(), 1, "replaced under term a");

    // a is deposed (its duty not dropped, as if the engine had not noticed yet) and w-1 loses
    // power: a's doctor reads freely but its first write, which comes before any effect, is
    // refused by term; nothing is recorded and nothing is powered off or created.
    lead_a.abandon();
    b.wait_vacant().await.expect("vacant");
    let lead_b = b.campaign("cp-2", ttl).await.expect("campaign").expect("b");
    {
        let mut w = world.0.lock().expect("world");
        w.vms
            .iter_mut()
            .filter(|v| v.name == "w-1")
            .for_each(|v| v.status = VmStatus::Off);
        w.ready.insert("w-1".into(), false);
    }
    let mut refused = false;
    for _ in 0..8 {
        *clock.lock().expect("clock") += 5;
        match da.pass(term_a).await {
            Err(e) if e.is_stale() => {
                refused = true;
                break;
            }
            Err(e) => panic!("unexpected: {e}"),
            Ok(()) => {}
        }
    }
    assert!(refused, "a deposed leader's doctor must be refused");
    assert_eq!(
        world
            .0
            .lock()
            .expect("world")
            .vms
            .iter()
            .filter(|v| v.name == "w-1")
            .map(|v| v.id)
            .collect::<Vec<_>>(),
        [13],
        "the old VM untouched, no new one"
    );
    let (progress, _, _) = read_records(&b).await.expect("records");
    assert!(progress.is_none(), "the stale term recorded nothing");
    assert!(b.maintenance().await.expect("read").is_none());

    // The next leader's doctor replaces w-1.
    let db = duty(&world, &events, "cp-2", clock.clone());
    let term_b = Term {
        coord: &b,
        term: lead_b.term,
        actions: &NO_LOG,
    };
    for _ in 0..8 {
        *clock.lock().expect("clock") += 5;
        db.pass(term_b).await.expect("pass");
    }
    let (progress, _, history) = read_records(&b).await.expect("records");
    assert!(progress.is_none());
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].node, "w-1");
    assert_eq!(history[1].term, lead_b.term);
}

/// etcd refuses a member add until every voter has been connected for 5 s; retried with a
/// deadline (as in tests/membership.rs).
async fn add_learner(c: &Coordinator, peer_url: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.add_learner(peer_url).await {
            Ok((id, _)) => return id,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("etcd") => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("cannot add the learner: {e}"),
        }
    }
}

/// etcd offers no event for "the learner caught up": promotion is retried with a deadline.
async fn promote(c: &Coordinator, id: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.promote(id).await {
            Ok(()) => return,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("promotion never accepted: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_powered_off_control_plane_loses_its_member_before_its_new_vm_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m1 = common::EtcdMember::plan("cp-1", dir.path(), "http");
    let initial = m1.initial();
    m1.start(&initial, "new", &[]);
    let c = Coordinator::connect(std::slice::from_ref(&m1.client_url), "lab")
        .await
        .expect("connect");
    let mut members = Vec::new();
    let mut cluster = vec![m1.initial()];
    for name in ["cp-2", "cp-3"] {
        let mut m = common::EtcdMember::plan(name, dir.path(), "http");
        let id = add_learner(&c, &m.peer_url).await;
        cluster.push(m.initial());
        m.start(&cluster.join(","), "existing", &[]);
        promote(&c, id).await;
        members.push(m);
    }
    let lead = c
        .campaign("cp-1", Duration::from_secs(10))
        .await
        .expect("campaign")
        .expect("leads");
    let world = Fake::default();
    {
        let mut w = world.0.lock().expect("world");
        for (i, n) in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"].iter().enumerate() {
            w.vms.push(Vm {
                id: 10 + i as u64,
                name: n.to_string(),
                status: VmStatus::Running,
                labels: BTreeMap::new(),
            });
            w.ready.insert(n.to_string(), true);
        }
        w.next = 100;
    }
    let clock = Arc::new(Mutex::new(1_000_000u64));
    let events = Events::default();
    let d = duty(&world, &events, "cp-1", clock.clone());
    let term = Term {
        coord: &c,
        term: lead.term,
        actions: &NO_LOG,
    };
    // cp-3 loses power: its etcd member dies with it.
    members[1].kill();
    {
        let mut w = world.0.lock().expect("world");
        w.vms[2].status = VmStatus::Off;
        w.ready.insert("cp-3".into(), false);
    }
    let mut step = None;
    for _ in 0..20 {
        *clock.lock().expect("clock") += 5;
        d.pass(term).await.expect("pass");
        let (progress, _, _) = read_records(&c).await.expect("records");
        step = progress.map(|p| p.step);
        if step == Some(kubedna_doctor::steps::StepName::WaitReady) {
            break;
        }
    }
    // The new VM cannot start an etcd member here: the replacement waits for it to join.
    assert_eq!(step, Some(kubedna_doctor::steps::StepName::WaitReady));
    let left = c.members().await.expect("members");
    let names: Vec<&str> = left.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        !names.contains(&"cp-3"),
        "the dead member is removed: {names:?}"
    );
    let w = world.0.lock().expect("world");
    let cp3: Vec<&Vm> = w.vms.iter().filter(|v| v.name == "cp-3").collect();
    assert_eq!(cp3.len(), 1);
    assert_eq!(cp3[0].id, 101, "a new VM under the same name");
    // The order, from the audit events: member removed, Node deleted, old VM deleted, created.
    let steps: Vec<String> = events
        .0
         .0
        .lock()
        .expect("events")
        .iter()
        .filter(|e| e.what.ends_with(" done"))
        .map(|e| e.what.clone())
        .collect();
    let at = |s: &str| steps.iter().position(|x| x.starts_with(s));
    assert!(
        at("RemoveMember") < at("DeleteNode") && at("DeleteNode") < at("CreateVm"),
        "{steps:?}"
    );
    assert!(at("RemoveMember").is_some(), "{steps:?}");
}
