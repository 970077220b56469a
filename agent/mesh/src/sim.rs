//! A deterministic in-process network of mesh cores, in virtual time.
//!
//! Owns the virtual clock, the event queue, a seeded RNG and an in-memory transport on which tests
//! lose packets (everywhere, or on one node's link), cut and heal links, pause and crash nodes.
//! A pause is a process freeze as SIGSTOP/SIGCONT or a VM's live migration makes it: the node's
//! timers do not fire, its socket buffer queues inbound datagrams up to the kernel's default
//! `rmem` (later ones are dropped), and on resume its clock has jumped and the backlog is read in
//! one burst. It drives [`Mesh`] exactly as a runtime
//! would (packets, timeouts, polls) and records the events each node emits, so tests and the bench
//! measure detection, convergence and load. It must never touch a real clock or socket: a run is a
//! pure function of its seed and script.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::mesh::{Event, Mesh, MeshConfig};
use crate::meta::{NodeMeta, NodeRole, NodeState};
use crate::requests::{Reply, RequestError};
use kubedna_proto::ClusterSecret;

/// Wall clock the simulated nodes believe in at virtual time zero (any fixed value works).
const WALL_START_MS: u64 = 1_800_000_000_000;

/// A paused node's socket receive buffer: Linux's default `net.core.rmem_default`.
pub const RMEM_DEFAULT: usize = 212_992;

/// What one queued datagram costs against [`RMEM_DEFAULT`] beyond its bytes: the kernel charges
/// an skb's `truesize` (buffer and metadata), about 768 bytes more than a small datagram on
/// virtio-net and veth.
const SKB_OVERHEAD: usize = 768;

/// Network behaviour of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice (network and nodes).
    pub seed: u64,
    /// One-way latency floor.
    pub latency: Duration,
    /// Extra one-way latency, uniform in `[0, jitter)`.
    pub jitter: Duration,
    /// Probability that a datagram is lost (stream messages are not).
    pub loss: f64,
    /// Record `MemberUpdated` events (memory-heavy for large clusters).
    pub record_updates: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(1500),
            loss: 0.0,
            record_updates: false,
        }
    }
}

/// False failure declarations in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FalsePositives {
    /// Distinct live identities declared down (each is a forced rejoin).
    pub identities: usize,
    /// (observer, live member) pairs that saw a failure.
    pub observer_events: usize,
}

/// One event emitted by one node, at a virtual time.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Virtual time since the start.
    pub at: Duration,
    /// Index of the node that emitted it.
    pub node: usize,
    /// The event.
    pub event: Event,
}

#[derive(Debug)]
enum SimEvent {
    Deliver {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Wake(usize),
    Resume(usize),
}

/// A queue entry, earliest first, in push order among equals (for determinism).
#[derive(Debug)]
struct Queued {
    at: Duration,
    seq: u64,
    event: SimEvent,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug)]
struct SimNode {
    addr: SocketAddr,
    mesh: Option<Mesh>,
    paused: bool,
    inbox: Vec<(SocketAddr, Vec<u8>)>,
    /// Bytes charged against the receive buffer while paused.
    inbox_bytes: usize,
    /// Loss on this node's link, both ways, on top of [`SimConfig::loss`].
    link_loss: f64,
    /// Answers requests with their payload (else refuses them, as a node without a handler).
    echo: bool,
    /// Requests its handler ran.
    handled: u64,
    wake_at: Option<Duration>,
    crashed_at: Option<Duration>,
}

/// A simulated cluster.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: Duration,
    rng: StdRng,
    secret: ClusterSecret,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    cut: HashSet<(usize, usize)>,
    records: Vec<Record>,
    replies: Vec<(Duration, usize, Reply)>,
    /// Datagrams dropped by loss or cut links.
    pub dropped: u64,
    /// Datagrams dropped because a paused node's receive buffer was full.
    pub buffer_overflows: u64,
}

/// The simulated address of node `i` (in the lab's 198.18.0.0/15 test range).
pub fn sim_addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1);
    SocketAddr::new(IpAddr::V4(ip), 7946)
}

/// Metadata for simulated node `i`.
pub fn sim_meta(i: usize) -> NodeMeta {
    NodeMeta {
        name: format!("node-{i}"),
        role: if i < 3 {
            NodeRole::ControlPlane
        } else {
            NodeRole::Worker
        },
        addresses: vec![sim_addr(i).ip()],
        agent_version: "0.1.0".into(),
        image_version: "2026.11.0".into(),
        state: NodeState::Booting,
    }
}

impl Sim {
    /// An empty simulation.
    pub fn new(cfg: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Self {
            cfg,
            base: Instant::now(),
            now: Duration::ZERO,
            rng,
            secret: ClusterSecret::new(b"simulated-cluster-secret-0123456789".to_vec())
                .unwrap_or_else(|_| unreachable!("the constant is long enough")),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            cut: HashSet::new(),
            records: Vec::new(),
            replies: Vec::new(),
            dropped: 0,
            buffer_overflows: 0,
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The `Instant` the nodes see at virtual time `at`.
    pub fn instant(&self, at: Duration) -> Instant {
        self.base + at
    }

    /// Adds node number `len()`; `tweak` adjusts its config (seeds default to nodes 0..3).
    pub fn add_node(&mut self, tweak: impl FnOnce(&mut MeshConfig)) -> usize {
        let i = self.nodes.len();
        let addr = sim_addr(i);
        let mut cfg = MeshConfig::lan("sim", addr, sim_meta(i));
        cfg.seeds = (0..3).map(sim_addr).collect();
        tweak(&mut cfg);
        let seed = self.rng.random();
        let now = self.instant(self.now);
        let mesh = Mesh::new(
            cfg,
            &self.secret,
            seed,
            now,
            WALL_START_MS + self.now.as_millis() as u64,
        )
        .unwrap_or_else(|e| panic!("simulated config is valid: {e}"));
        self.nodes.push(SimNode {
            addr,
            mesh: Some(mesh),
            paused: false,
            inbox: Vec::new(),
            inbox_bytes: 0,
            link_loss: 0.0,
            echo: false,
            handled: 0,
            wake_at: None,
            crashed_at: None,
        });
        self.by_addr.insert(addr, i);
        i
    }

    /// Number of nodes ever added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s core, unless it crashed.
    pub fn mesh(&self, i: usize) -> Option<&Mesh> {
        self.nodes[i].mesh.as_ref()
    }

    /// Runs `f` on node `i`'s core now (unless crashed) and sends what it produced.
    pub fn with_mesh(&mut self, i: usize, f: impl FnOnce(&mut Mesh, Instant)) {
        let now = self.instant(self.now);
        if let Some(mesh) = self.nodes[i].mesh.as_mut() {
            f(mesh, now);
            self.pump(i);
        }
    }

    /// Gives every node the full membership and metadata at once, as if restored from a saved
    /// view: a converged cluster without simulating the join storm.
    pub fn bootstrap_converged(&mut self) {
        let ids: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|n| n.mesh.as_ref().map(Mesh::id))
            .collect();
        let metas: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|n| n.mesh.as_ref().map(Mesh::meta_record))
            .collect();
        for i in 0..self.nodes.len() {
            self.with_mesh(i, |m, now| m.restore(&ids, &metas, now));
        }
    }

    /// Node `i` joins through its seeds.
    pub fn join(&mut self, i: usize) {
        self.with_mesh(i, |m, now| m.join(now));
    }

    /// Node `i` stops for good, without a word.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].mesh = None;
        self.nodes[i].crashed_at = Some(self.now);
    }

    /// When node `i` crashed.
    pub fn crashed_at(&self, i: usize) -> Option<Duration> {
        self.nodes[i].crashed_at
    }

    /// Node `i`'s process freezes for `d` (SIGSTOP then SIGCONT; a VM's live migration, a
    /// snapshot, host memory pressure). Its timers do not fire; datagrams sent to it queue in its
    /// socket buffer until [`RMEM_DEFAULT`] is used up and are dropped after that; on resume its
    /// clock has jumped by `d`, the timers that expired meanwhile run first (the harsh order, in
    /// which a resumed node could accuse peers whose acks sit in its buffer), then the backlog
    /// is read in one burst.
    pub fn pause(&mut self, i: usize, d: Duration) {
        if self.nodes[i].paused || self.nodes[i].mesh.is_none() {
            return;
        }
        self.nodes[i].paused = true;
        let at = self.now + d;
        self.push(at, SimEvent::Resume(i));
    }

    /// Whether node `i` is paused right now.
    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&mut self, a: usize, b: usize) {
        self.cut.remove(&(a.min(b), a.max(b)));
    }

    /// Cuts every link of `i`.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Heals every link of `i`.
    pub fn heal_all(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            self.heal(i, j);
        }
    }

    /// Changes the datagram loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.loss = loss;
    }

    /// Loses datagrams to and from node `i` with probability `loss` (a bad NIC or a congested
    /// link on that node; `tc netem loss` in the lab), on top of the loss everywhere.
    pub fn set_link_loss(&mut self, i: usize, loss: f64) {
        self.nodes[i].link_loss = loss;
    }

    /// Node `i` serves requests of every kind by answering with the payload, as a daemon's
    /// handler would (the call is counted in [`Sim::handled`]).
    pub fn serve_echo(&mut self, i: usize) {
        self.nodes[i].echo = true;
    }

    /// How many requests node `i`'s handler ran.
    pub fn handled(&self, i: usize) -> u64 {
        self.nodes[i].handled
    }

    /// Node `i` sends a request to node `to`; its outcome shows in [`Sim::replies`].
    pub fn request(
        &mut self,
        i: usize,
        to: usize,
        kind: u8,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<u64, RequestError> {
        let to = self.nodes[to].addr;
        let mut out = Err(RequestError::Stopped);
        self.with_mesh(i, |m, now| out = m.request(to, kind, payload, timeout, now));
        out
    }

    /// Outcomes of requests: (virtual time, requesting node, reply).
    pub fn replies(&self) -> &[(Duration, usize, Reply)] {
        &self.replies
    }

    /// Every event recorded so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Forgets the recorded events (to bound memory between phases).
    pub fn clear_records(&mut self) {
        self.records.clear();
    }

    /// Delivers a raw datagram to node `to` as if sent from `from` (for forged-packet tests).
    pub fn inject(&mut self, to: usize, from: SocketAddr, bytes: Vec<u8>) {
        let at = self.now;
        self.push(at, SimEvent::Deliver { to, from, bytes });
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.queue.peek().is_some_and(|q| q.at <= until) {
            let Some(Queued { at, event, .. }) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.step(event);
        }
        self.now = until;
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Indexes of nodes that have not crashed.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].mesh.is_some())
            .collect()
    }

    /// Whether every live node sees every other live node active and no crashed node active.
    pub fn converged(&self) -> bool {
        let live = self.live();
        live.iter().all(|&i| {
            let Some(mesh) = self.nodes[i].mesh.as_ref() else {
                return true;
            };
            mesh.num_active() == live.len() - 1
                && self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(j, n)| *j != i && n.mesh.is_none())
                    .all(|(_, n)| !mesh.sees_active(n.addr))
        })
    }

    /// How many live nodes still see a crashed node `c` as active.
    pub fn still_seeing(&self, c: usize) -> usize {
        let addr = self.nodes[c].addr;
        self.live()
            .iter()
            .filter(|&&i| {
                self.nodes[i]
                    .mesh
                    .as_ref()
                    .is_some_and(|m| m.sees_active(addr))
            })
            .count()
    }

    /// The index of the node at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    /// For a node `c` that crashed, how long after the crash each live node declared it down
    /// (`None` for an observer that has not yet).
    pub fn detection_times(&self, c: usize) -> Vec<Option<Duration>> {
        let Some(crashed_at) = self.nodes[c].crashed_at else {
            return Vec::new();
        };
        let addr = self.nodes[c].addr;
        let mut first: HashMap<usize, Duration> = HashMap::new();
        for r in &self.records {
            if let Event::MemberDown(id, _) = &r.event {
                if id.addr == addr && r.at >= crashed_at {
                    first.entry(r.node).or_insert(r.at - crashed_at);
                }
            }
        }
        self.live()
            .into_iter()
            .map(|o| first.get(&o).copied())
            .collect()
    }

    /// Failure declarations about nodes that were alive (maybe paused) at the time.
    pub fn false_positives(&self) -> FalsePositives {
        let mut fp = FalsePositives::default();
        let mut ids = HashSet::new();
        for r in &self.records {
            if let Event::MemberDown(id, crate::mesh::DownReason::Failed) = &r.event {
                let Some(&x) = self.by_addr.get(&id.addr) else {
                    continue;
                };
                if self.nodes[x].crashed_at.is_none_or(|c| c > r.at) {
                    fp.observer_events += 1;
                    ids.insert(*id);
                }
            }
        }
        fp.identities = ids.len();
        fp
    }

    fn push(&mut self, at: Duration, event: SimEvent) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            event,
        });
    }

    fn step(&mut self, event: SimEvent) {
        let now = self.instant(self.now);
        match event {
            SimEvent::Deliver { to, from, bytes } => {
                let node = &mut self.nodes[to];
                if node.paused {
                    let cost = bytes.len() + SKB_OVERHEAD;
                    if node.inbox_bytes + cost > RMEM_DEFAULT {
                        self.buffer_overflows += 1;
                    } else {
                        node.inbox_bytes += cost;
                        node.inbox.push((from, bytes));
                    }
                    return;
                }
                if let Some(mesh) = node.mesh.as_mut() {
                    // Rejected packets are counted by the mesh itself.
                    let _ = mesh.handle_packet(from, &bytes, now);
                    self.pump(to);
                }
            }
            SimEvent::Wake(i) => {
                let node = &mut self.nodes[i];
                if node.paused || node.wake_at != Some(self.now) {
                    return;
                }
                node.wake_at = None;
                if let Some(mesh) = node.mesh.as_mut() {
                    mesh.handle_timeout(now);
                    self.pump(i);
                }
            }
            SimEvent::Resume(i) => {
                let node = &mut self.nodes[i];
                node.paused = false;
                node.wake_at = None;
                node.inbox_bytes = 0;
                let inbox = std::mem::take(&mut node.inbox);
                if let Some(mesh) = node.mesh.as_mut() {
                    // Timers that expired during the stall run before the queued packets are
                    // read: the harsh order, in which a resumed node accuses peers whose acks
                    // are still in its socket buffer. `now` has jumped by the pause.
                    mesh.handle_timeout(now);
                    for (from, bytes) in inbox {
                        let _ = mesh.handle_packet(from, &bytes, now);
                    }
                    self.pump(i);
                }
            }
        }
    }

    /// Sends what node `i` produced and re-arms its wake-up.
    fn pump(&mut self, i: usize) {
        let now = self.instant(self.now);
        let node = &mut self.nodes[i];
        let Some(mesh) = node.mesh.as_mut() else {
            return;
        };
        while let Some(req) = mesh.poll_request() {
            let result = if node.echo {
                node.handled += 1;
                Ok(req.payload)
            } else {
                Err(format!("no handler for request kind {}", req.kind))
            };
            mesh.respond(req.from, req.id, req.kind, result, now);
        }
        while let Some(reply) = mesh.poll_reply() {
            self.replies.push((self.now, i, reply));
        }
        let mut out = Vec::new();
        while let Some(t) = mesh.poll_transmit() {
            out.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = mesh.poll_event() {
            events.push(e);
        }
        let next = mesh.poll_timeout();
        for event in events {
            if matches!(event, Event::MemberUpdated(..)) && !self.cfg.record_updates {
                continue;
            }
            self.records.push(Record {
                at: self.now,
                node: i,
                event,
            });
        }
        if let Some(next) = next {
            let at = next.saturating_duration_since(self.base).max(self.now);
            if self.nodes[i].wake_at.is_none_or(|w| at < w) {
                self.nodes[i].wake_at = Some(at);
                self.push(at, SimEvent::Wake(i));
            }
        }
        for t in out {
            let Some(&to) = self.by_addr.get(&t.to) else {
                self.dropped += 1;
                continue;
            };
            let (a, b) = (self.nodes[i].link_loss, self.nodes[to].link_loss);
            let loss = if a == 0.0 && b == 0.0 {
                self.cfg.loss
            } else {
                1.0 - (1.0 - self.cfg.loss) * (1.0 - a) * (1.0 - b)
            };
            let lost = !t.reliable && loss > 0.0 && self.rng.random_bool(loss.min(1.0));
            if lost || self.cut.contains(&(i.min(to), i.max(to))) {
                self.dropped += 1;
                continue;
            }
            let jitter = if self.cfg.jitter.is_zero() {
                Duration::ZERO
            } else {
                self.cfg.jitter.mul_f64(self.rng.random::<f64>())
            };
            let at = self.now + self.cfg.latency + jitter;
            let from = self.nodes[i].addr;
            self.push(
                at,
                SimEvent::Deliver {
                    to,
                    from,
                    bytes: t.bytes,
                },
            );
        }
    }
}
