//! The engine tests' harness: N engines in one process, one real etcd per control plane, the
//! kubeadm TEST DOUBLE and its call log, a systemd fake that runs the etcd unit's `ExecStart`,
//! an in-memory mesh whose links tests cut, a virtual clock and a seeded random source. The
//! scenarios are in `main.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubedna_controlplane::actions::{ActionLog, AgentAction};
use kubedna_controlplane::coord::Coordinator;
use kubedna_controlplane::engine::{
    Clock, ClusterSecret, Engine, EngineConfig, EngineHandle, EtcdNetwork, Kubeadm, KubeadmCommand,
    KubeadmError, KubeadmOp, LeaderStatus, NodeRole, OpRecords, PeerError, PeerInfo, Peers, Phase,
    Request, Response, Status, SystemClock, Timings,
};
use kubedna_controlplane::etcd_unit::{self, MemberUrls};
use kubedna_controlplane::pki::MemberFiles;
use kubedna_host::systemd::{Systemd, SystemdError};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::common;

pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
pub(crate) const TTL: Duration = Duration::from_secs(4);

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// -- the kubeadm double -------------------------------------------------------------------------

pub(crate) fn kubeadm_double() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBEADM_DOUBLE_BIN") {
        return p.into();
    }
    // target/debug/deps/engine-<hash> → target/debug/kubeadm
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kubeadm"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "the kubeadm TEST DOUBLE is not built at {}: run `cargo build -p kubeadm-double` (cargo test --workspace builds it) or set KUBEADM_DOUBLE_BIN",
        bin.display()
    );
    bin
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Calls {
    /// node → successful `kubeadm init` runs (not `init phase`).
    pub(crate) inits: BTreeMap<String, usize>,
    /// node → any `kubeadm init` attempt.
    pub(crate) init_attempts: BTreeMap<String, usize>,
    pub(crate) joins: BTreeMap<String, usize>,
    /// node → `kubeadm reset` calls.
    pub(crate) resets: BTreeMap<String, usize>,
}

/// One finished call of the double, as its log records it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) node: String,
    pub(crate) command: String,
    pub(crate) control_plane: bool,
    pub(crate) start_ms: u64,
    pub(crate) end_ms: u64,
    pub(crate) key_fingerprint: Option<String>,
}

pub(crate) fn finished_calls(root: &Path, node: &str) -> Vec<Call> {
    let text = std::fs::read_to_string(root.join("var/log/kubeadm-double/calls.jsonl"))
        .unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("call log line");
            Call {
                node: node.into(),
                command: v["command"].as_str().unwrap_or_default().into(),
                control_plane: v["args"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "--config"))
                    && node.starts_with("cp"),
                start_ms: v["start_ms"].as_u64().unwrap_or_default(),
                end_ms: v["end_ms"].as_u64().unwrap_or_default(),
                key_fingerprint: v["certificate_key_sha256"].as_str().map(String::from),
            }
        })
        .collect()
}

/// Every call of the double on a node, finished or not: a call that started and never logged
/// its end (the process died, or still runs) counts as running until the end of time.
pub(crate) fn all_calls(root: &Path, node: &str) -> Vec<Call> {
    let finished = finished_calls(root, node);
    let text = std::fs::read_to_string(root.join("var/log/kubeadm-double/started.jsonl"))
        .unwrap_or_default();
    let mut out = finished.clone();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let start_ms = v["start_ms"].as_u64().unwrap_or_default();
        let command = v["command"].as_str().unwrap_or_default().to_string();
        if !finished
            .iter()
            .any(|k| k.start_ms == start_ms && k.command == command)
        {
            out.push(Call {
                node: node.into(),
                control_plane: node.starts_with("cp"),
                command,
                start_ms,
                end_ms: u64::MAX,
                key_fingerprint: None,
            });
        }
    }
    out
}

/// Commands the double has started on a node (finished or not).
pub(crate) fn started_commands(root: &Path) -> Vec<String> {
    started_since(root, 0)
}

/// Commands the double has started on a node at or after `ms` (Unix milliseconds).
pub(crate) fn started_since(root: &Path, ms: u64) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("var/log/kubeadm-double/started.jsonl"))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["start_ms"].as_u64().unwrap_or_default() >= ms)
        .map(|v| v["command"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn key_fingerprint(key: &str) -> String {
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8])
}

/// The double, with one fault the harness can switch on: after a `kubeadm init` that exited 0
/// the call never returns, so a test can kill the agent between kubeadm's exit and anything
/// the agent does next.
pub(crate) struct TestKubeadm {
    pub(crate) inner: KubeadmCommand,
    pub(crate) hold_after_init: Arc<AtomicBool>,
}

impl Kubeadm for TestKubeadm {
    async fn run(&self, op: KubeadmOp, args: &[String]) -> Result<String, KubeadmError> {
        let out = self.inner.run(op, args).await?;
        if op == KubeadmOp::Init && self.hold_after_init.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(out)
    }

    fn records(&self) -> &OpRecords {
        self.inner.records()
    }
}

/// The wall clock plus an offset the test moves forward (join material expiry).
#[derive(Clone, Default)]
pub(crate) struct TestClock(pub(crate) Arc<AtomicU64>);

impl Clock for TestClock {
    fn now_unix(&self) -> u64 {
        SystemClock.now_unix() + self.0.load(Ordering::SeqCst)
    }
}

pub(crate) fn read_calls(root: &Path, node: &str, into: &mut Calls) {
    let text = std::fs::read_to_string(root.join("var/log/kubeadm-double/calls.jsonl"))
        .unwrap_or_default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("call log line");
        let a0 = v["args"][0].as_str().unwrap_or_default();
        let a1 = v["args"][1].as_str().unwrap_or_default();
        let ok = v["exit"] == 0;
        if a0 == "init" && a1 != "phase" {
            *into.init_attempts.entry(node.into()).or_default() += 1;
            if ok {
                *into.inits.entry(node.into()).or_default() += 1;
            }
        }
        if a0 == "join" && ok {
            *into.joins.entry(node.into()).or_default() += 1;
        }
        if a0 == "reset" {
            *into.resets.entry(node.into()).or_default() += 1;
        }
    }
}

// -- systemd fake that runs etcd for real -------------------------------------------------------

pub(crate) struct EtcdProc {
    pub(crate) child: tokio::process::Child,
}

/// One host's systemd: `kubedna-etcd.service` runs the unit's ExecStart; other units are
/// recorded. Jobs on a unit are serialized, as systemd does.
pub(crate) struct HostSystemd {
    pub(crate) root: PathBuf,
    pub(crate) etcd: tokio::sync::Mutex<Option<EtcdProc>>,
    pub(crate) calls: Mutex<Vec<String>>,
    pub(crate) enabled: Mutex<BTreeSet<String>>,
    /// Whether etcd should be running (the unit was started and not stopped by the agent).
    pub(crate) wanted: Mutex<bool>,
}

impl HostSystemd {
    pub(crate) fn new(root: &Path) -> Arc<Self> {
        Arc::new(HostSystemd {
            root: root.into(),
            etcd: tokio::sync::Mutex::new(None),
            calls: Mutex::new(Vec::new()),
            enabled: Mutex::new(BTreeSet::new()),
            wanted: Mutex::new(false),
        })
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    pub(crate) async fn spawn_etcd(&self, slot: &mut Option<EtcdProc>) -> Result<(), SystemdError> {
        let unit = etcd_unit::UNIT;
        let failed = |result: &str, journal: String| SystemdError::JobFailed {
            unit: unit.into(),
            verb: "start",
            result: result.into(),
            journal,
        };
        let text = std::fs::read_to_string(etcd_unit::unit_path(&self.root))
            .map_err(|e| failed("failed", format!("no unit file: {e}")))?;
        let args =
            etcd_unit::exec_start(&text).ok_or_else(|| failed("failed", "no ExecStart".into()))?;
        let mut child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed("failed", e.to_string()))?;
        let stderr = child.stderr.take().expect("stderr");
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<String>>();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("ready to serve client requests") {
                    let _ = tx.send(None);
                } else {
                    let _ = tx.send(Some(l));
                }
            }
        });
        *slot = Some(EtcdProc { child });
        // Type=notify: the job is done when etcd is ready (a quorum of its cluster runs).
        let mut journal = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(None) => return Ok(()),
                    Some(Some(l)) => { journal.push(l); if journal.len() > 15 { journal.remove(0); } }
                    None => {
                        *slot = None;
                        return Err(failed("failed", journal.join("\n")));
                    }
                },
                _ = &mut deadline => {
                    *slot = None;
                    return Err(failed("timeout", journal.join("\n")));
                }
            }
        }
    }

    pub(crate) async fn etcd_job(&self, verb: &str) -> Result<(), SystemdError> {
        let mut slot = self.etcd.lock().await;
        if let Some(p) = slot.as_mut() {
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                *slot = None;
            }
        }
        match verb {
            "start" if slot.is_some() => Ok(()),
            "stop" => {
                *lock(&self.wanted) = false;
                if let Some(mut p) = slot.take() {
                    let _ = p.child.kill().await;
                }
                Ok(())
            }
            _ => {
                if let Some(mut p) = slot.take() {
                    let _ = p.child.kill().await;
                }
                *lock(&self.wanted) = true;
                self.spawn_etcd(&mut slot).await
            }
        }
    }

    /// A crash of the etcd process (the agent did not ask for it).
    pub(crate) async fn crash_etcd(&self) {
        if let Some(mut p) = self.etcd.lock().await.take() {
            let _ = p.child.kill().await;
        }
    }

    /// What `Restart=always` does after a crash.
    pub(crate) async fn restart_if_wanted(self: &Arc<Self>) {
        if *lock(&self.wanted) {
            let _ = self.etcd_job("start").await;
        }
    }

    pub(crate) async fn running(&self) -> bool {
        let mut slot = self.etcd.lock().await;
        match slot.as_mut() {
            Some(p) => matches!(p.child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Sd(pub(crate) Arc<HostSystemd>);

impl Systemd for Sd {
    async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        lock(&self.0.calls).push(format!("start {unit}"));
        if unit == etcd_unit::UNIT {
            return self.0.etcd_job("start").await;
        }
        Ok(())
    }
    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        lock(&self.0.calls).push(format!("restart {unit}"));
        if unit == etcd_unit::UNIT {
            return self.0.etcd_job("restart").await;
        }
        Ok(())
    }
    async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        lock(&self.0.calls).push(format!("stop {unit}"));
        if unit == etcd_unit::UNIT {
            return self.0.etcd_job("stop").await;
        }
        Ok(())
    }
    async fn enable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let mut e = lock(&self.0.enabled);
        let n = e.len();
        e.extend(units.iter().map(|u| u.to_string()));
        Ok(e.len() != n)
    }
    async fn mask(&self, _: &[&str]) -> Result<bool, SystemdError> {
        Ok(false)
    }
    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        lock(&self.0.calls).push("daemon-reload".into());
        Ok(())
    }
    async fn units(&self, _: &str, _: &str) -> Result<Vec<String>, SystemdError> {
        Ok(Vec::new())
    }
}

// -- in-memory mesh -----------------------------------------------------------------------------

#[derive(Default)]
pub(crate) struct Net {
    pub(crate) nodes: Mutex<BTreeMap<String, (NodeRole, Option<EngineHandle>)>>,
    pub(crate) cuts: Mutex<BTreeSet<(String, String)>>,
}

impl Net {
    pub(crate) fn cut(&self, a: &str, b: &str) -> bool {
        let c = lock(&self.cuts);
        c.contains(&(a.into(), b.into())) || c.contains(&(b.into(), a.into()))
    }
}

pub(crate) struct NetPeers {
    pub(crate) me: String,
    pub(crate) net: Arc<Net>,
}

impl Peers for NetPeers {
    fn alive(&self) -> Vec<PeerInfo> {
        lock(&self.net.nodes)
            .iter()
            .filter(|(n, (_, h))| **n != self.me && h.is_some() && !self.net.cut(&self.me, n))
            .map(|(n, (role, _))| PeerInfo {
                name: n.clone(),
                role: *role,
                addr: None,
            })
            .collect()
    }

    /// This in-memory mesh has no suspicion: a killed or cut-off node is down at once, as the
    /// real mesh declares it once its pause tolerance has passed.
    fn suspect(&self) -> Vec<String> {
        Vec::new()
    }

    async fn ask(&self, peer: &str, req: Request) -> Result<Response, PeerError> {
        let err = |reason: &str| PeerError {
            peer: peer.into(),
            reason: reason.into(),
        };
        if self.net.cut(&self.me, peer) {
            return Err(err("partitioned"));
        }
        let h = lock(&self.net.nodes)
            .get(peer)
            .and_then(|(_, h)| h.clone())
            .ok_or_else(|| err("not running"))?;
        tokio::time::timeout(Duration::from_secs(2), h.answer(req))
            .await
            .map_err(|_| err("timeout"))
    }
}

// -- the harness --------------------------------------------------------------------------------

pub(crate) struct Node {
    pub(crate) cfg: EngineConfig,
    pub(crate) state: PathBuf,
    pub(crate) sd: Arc<HostSystemd>,
    pub(crate) task: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    pub(crate) handle: Option<EngineHandle>,
    /// Calls made on disks since wiped.
    pub(crate) wiped_calls: Calls,
}

pub(crate) struct Cluster {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) net: Arc<Net>,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) urls: BTreeMap<String, MemberUrls>,
    pub(crate) kubeadm: PathBuf,
    pub(crate) hold_after_init: Arc<AtomicBool>,
    pub(crate) clock: TestClock,
    /// What each node's engine reported for the audit log, in order.
    pub(crate) actions: Arc<Mutex<Vec<(String, AgentAction)>>>,
}

impl Cluster {
    pub(crate) fn new(control_planes: usize, workers: usize, ttl: Duration) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let cps: Vec<String> = (1..=control_planes).map(|i| format!("cp-{i}")).collect();
        let urls: BTreeMap<String, MemberUrls> = cps
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    MemberUrls {
                        peer: format!("https://127.0.0.1:{}", common::free_port()),
                        client: format!("https://127.0.0.1:{}", common::free_port()),
                    },
                )
            })
            .collect();
        let net = Arc::new(Net::default());
        let mut nodes = BTreeMap::new();
        let actions = Arc::new(Mutex::new(Vec::new()));
        let names = cps
            .iter()
            .map(|n| (n.clone(), NodeRole::ControlPlane))
            .chain((1..=workers).map(|i| (format!("w-{i}"), NodeRole::Worker)));
        for (i, (name, role)) in names.enumerate() {
            let root = dir.path().join(&name).join("root");
            let state = dir.path().join(&name).join("state");
            std::fs::create_dir_all(&root).expect("mkdir");
            let cfg = EngineConfig {
                cluster: "lab".into(),
                secret: ClusterSecret::new(SECRET.to_vec()).expect("a long secret"),
                node: name.clone(),
                role,
                control_planes: cps.clone(),
                advertise_address: std::net::Ipv4Addr::new(127, 0, 0, 11 + i as u8).into(),
                control_plane_endpoint: "127.0.0.11:6443".parse().expect("endpoint"),
                kubernetes_version: "v1.30.3".parse().expect("version"),
                pod_subnet: "10.244.0.0/16".parse().expect("cidr"),
                service_subnet: "10.96.0.0/12".parse().expect("cidr"),
                etcd: EtcdNetwork::Explicit(urls.clone()),
                etcd_binary: common::etcd_binary().into(),
                root: root.clone(),
                timings: Timings {
                    lease_ttl: ttl,
                    poll: Duration::from_millis(200),
                    retry: Duration::from_millis(500),
                },
                actions: {
                    let (log, mut rx) = ActionLog::channel();
                    let (all, node) = (actions.clone(), name.clone());
                    tokio::spawn(async move {
                        while let Some(a) = rx.recv().await {
                            lock(&all).push((node.clone(), a));
                        }
                    });
                    log
                },
            };
            lock(&net.nodes).insert(name.clone(), (role, None));
            nodes.insert(
                name,
                Node {
                    cfg,
                    state,
                    sd: HostSystemd::new(&root),
                    task: None,
                    handle: None,
                    wiped_calls: Calls::default(),
                },
            );
        }
        Cluster {
            _dir: dir,
            net,
            nodes,
            urls,
            kubeadm: kubeadm_double(),
            hold_after_init: Arc::new(AtomicBool::new(false)),
            clock: TestClock::default(),
            actions,
        }
    }

    /// The reported actions named `action` (with `phase` when given), by node.
    pub(crate) fn actions(&self, action: &str, phase: Option<&str>) -> Vec<(String, AgentAction)> {
        lock(&self.actions)
            .iter()
            .filter(|(_, a)| a.action == action)
            .filter(|(_, a)| phase.is_none_or(|p| a.args["phase"] == p))
            .cloned()
            .collect()
    }

    /// Sets (or with None removes) one of the double's knobs on a node.
    pub(crate) fn knob(&self, node: &str, name: &str, value: Option<&str>) {
        let dir = self.nodes[node].cfg.root.join("etc/kubeadm-double");
        std::fs::create_dir_all(&dir).expect("knob dir");
        match value {
            Some(v) => std::fs::write(dir.join(name), v).expect("knob"),
            None => {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
    }

    pub(crate) fn knob_all(&self, name: &str, value: Option<&str>) {
        for n in self.nodes.keys() {
            self.knob(n, name, value);
        }
    }

    /// Every finished call of the double on every node, wiped disks excepted.
    pub(crate) fn finished(&self) -> Vec<Call> {
        self.nodes
            .iter()
            .flat_map(|(name, n)| finished_calls(&n.cfg.root, name))
            .collect()
    }

    /// Waits until `command` has started on some node; returns the first such node.
    pub(crate) async fn wait_started(&self, command: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(n) = self
                .nodes
                .iter()
                .find(|(_, n)| started_commands(&n.cfg.root).iter().any(|c| c == command))
            {
                return n.0.clone();
            }
            assert!(
                t0.elapsed() < within,
                "no `{command}` started within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn start(&mut self, name: &str) {
        let n = self.nodes.get_mut(name).expect("node");
        if n.task.is_some() {
            return;
        }
        let engine = Engine::new(
            n.cfg.clone(),
            NetPeers {
                me: name.into(),
                net: self.net.clone(),
            },
            Sd(n.sd.clone()),
            TestKubeadm {
                inner: KubeadmCommand {
                    binary: self.kubeadm.clone(),
                    env: vec![(
                        "KUBEADM_DOUBLE_ROOT".into(),
                        n.cfg.root.display().to_string(),
                    )],
                    records: OpRecords::new(n.state.join("kubeadm")),
                },
                hold_after_init: self.hold_after_init.clone(),
            },
            self.clock.clone(),
            &n.state,
        )
        .expect("engine");
        let handle = engine.handle();
        let (tx, rx) = watch::channel(false);
        n.task = Some((tokio::spawn(engine.run(rx)), tx));
        n.handle = Some(handle.clone());
        lock(&self.net.nodes).insert(name.into(), (n.cfg.role, Some(handle)));
    }

    pub(crate) fn start_all(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.start(&n);
        }
    }

    /// The agent dies (its etcd, a separate unit, keeps running).
    pub(crate) fn kill(&mut self, name: &str) {
        let n = self.nodes.get_mut(name).expect("node");
        if let Some((task, _)) = n.task.take() {
            task.abort();
        }
        if let Some(slot) = lock(&self.net.nodes).get_mut(name) {
            slot.1 = None;
        }
    }

    pub(crate) fn status(&self, name: &str) -> Option<Status> {
        self.nodes[name].handle.as_ref().map(|h| h.status())
    }

    /// The node that leads, by its own status and the others' (term included).
    pub(crate) fn leader(&self) -> Option<LeaderStatus> {
        self.nodes
            .keys()
            .filter_map(|n| self.status(n).and_then(|s| s.leader))
            .find(|l| self.status(&l.name).and_then(|s| s.leader).as_ref() == Some(l))
    }

    /// Waits until a node other than `old`'s shows a leader other than `old` with a higher term;
    /// panics after `within`.
    pub(crate) async fn new_leader_after(
        &self,
        old: &LeaderStatus,
        within: Duration,
    ) -> LeaderStatus {
        let t0 = Instant::now();
        loop {
            let seen = self
                .nodes
                .keys()
                .filter(|n| **n != old.name)
                .filter_map(|n| self.status(n).and_then(|s| s.leader))
                .find(|l| l.term > old.term && l.name != old.name);
            if let Some(l) = seen {
                return l;
            }
            assert!(
                t0.elapsed() < within,
                "no new leader after {old:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn all_member(&self) -> bool {
        let statuses: Vec<Status> = self.nodes.keys().filter_map(|n| self.status(n)).collect();
        let leader = statuses.first().and_then(|s| s.leader.clone());
        statuses.len() == self.nodes.len()
            && leader.is_some()
            && statuses
                .iter()
                .all(|s| s.phase == Phase::Member && s.leader == leader)
    }

    pub(crate) async fn wait_member(&self, within: Duration) -> Duration {
        let t0 = Instant::now();
        while !self.all_member() {
            if t0.elapsed() > within {
                let all: Vec<String> = self
                    .nodes
                    .keys()
                    .map(|n| format!("{n}: {:?}", self.status(n)))
                    .collect();
                panic!("not formed within {within:?}:\n{}", all.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t0.elapsed()
    }

    pub(crate) fn calls(&self) -> Calls {
        let mut c = Calls::default();
        for (name, n) in &self.nodes {
            read_calls(&n.cfg.root, name, &mut c);
            for (k, v) in &n.wiped_calls.inits {
                *c.inits.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &n.wiped_calls.init_attempts {
                *c.init_attempts.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &n.wiped_calls.joins {
                *c.joins.entry(k.clone()).or_default() += v;
            }
        }
        c
    }

    pub(crate) async fn coordinator(&self, name: &str) -> Coordinator {
        let files = MemberFiles::in_dir(&self.nodes[name].cfg.root.join("etc/kubedna/pki/etcd"));
        let endpoints: Vec<String> = self.urls.values().map(|u| u.client.clone()).collect();
        Coordinator::connect_tls(&endpoints, "lab", &files)
            .await
            .expect("connect")
    }

    pub(crate) async fn shutdown(mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in &names {
            self.kill(n);
            self.nodes[n].sd.crash_etcd().await;
        }
    }
}

/// A tiny seeded generator (xorshift64*), so fault runs replay by seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) fn voters(statuses: &Status) -> usize {
    statuses.etcd_members.iter().filter(|m| !m.learner).count()
}
