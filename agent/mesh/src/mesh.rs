//! The sans-IO mesh core: one node's membership, failure detection and metadata.
//!
//! Owns a foca instance and everything we add around it: the secure envelope on every packet, the
//! timer wheel (with Lifeguard's scaling and confirmation-driven suspicion), metadata broadcasts,
//! push/pull anti-entropy, re-announcing to seeds when every peer is gone, graceful leave, the
//! per-peer view (last heard, RTT), and carrying application requests whose bookkeeping
//! ([`crate::requests`]) it drives with the same clock. It is driven by `handle_packet`, `handle_timeout` and the
//! `poll_*` methods with a caller-supplied `now`; it must never read a clock, open a socket, sleep
//! or spawn.

mod config;
mod failure;
mod gossip;
mod requests;
mod rotation;
mod sync;

pub use config::{MeshConfig, MeshError, DEFAULT_PAUSE_TOLERANCE, MAX_PAUSE_TOLERANCE};
use gossip::{lock, Handler, Item, ObservingCodec, Shared, MAX_CLAIMERS};
use rotation::Rotation;
pub use rotation::{KeyStatus, RotationStatus};
use sync::SyncState;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use foca::{
    BroadcastHandler, Codec, Foca, Header, Incarnation, Invalidates, Member, Message, Notification,
    PeriodicParams, PostcardCodec, Runtime, State, Timer,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::lifeguard::{self, LifeguardConfig, LocalHealth};
use crate::meta::{MetaRecord, NodeMeta, NodeState};
pub use crate::requests::{AppBody, AppFrame, Incoming, Reply, RequestError, MAX_APP_PAYLOAD};
use crate::requests::{Arrival, Requests};
use crate::security::{
    KeyId, KeyRing, KeyRingError, PacketSecurity, Reject, SecurityCounters, OVERHEAD,
};
use kubedna_proto::ClusterSecret;

/// A datagram to send. `reliable` marks anti-entropy messages that may exceed one datagram: a
/// runtime sends those over a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Sealed packet.
    pub bytes: Vec<u8>,
    /// Send over a stream rather than a datagram.
    pub reliable: bool,
}

/// Why a member went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// It announced `Leaving` first: a planned shutdown or reboot.
    Left,
    /// It stopped answering and was declared down.
    Failed,
}

/// Something the daemon may want to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A member became active.
    MemberUp(NodeId),
    /// A member went down.
    MemberDown(NodeId, DownReason),
    /// A member published new metadata.
    MemberUpdated(NodeId, NodeMeta),
    /// We are known by at least one active member.
    Joined,
    /// Every known member is gone; re-announcing to seeds.
    Isolated,
    /// We were declared down and rejoined under a new generation.
    Rejoined(NodeId),
    /// The graceful leave finished.
    Left,
    /// Packets are sealed with this key from now on (key rotation, see [`Mesh::rotate_secret`]).
    KeyPromoted(KeyId),
    /// These keys are no longer accepted: their grace period ended.
    KeysRetired(Vec<KeyId>),
}

/// Liveness of a member in our view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Answering.
    Alive,
    /// Missed a probe; will be declared down unless it refutes.
    Suspect,
    /// Declared down, or left.
    Down,
}

/// One member as we see it, for `kubedna peers`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// Identity.
    pub id: NodeId,
    /// Liveness in our view.
    pub liveness: Liveness,
    /// SWIM incarnation.
    pub incarnation: Incarnation,
    /// Its metadata, once received.
    pub meta: Option<NodeMeta>,
    /// When a packet from it was last accepted.
    pub last_heard: Option<Instant>,
    /// Last measured round-trip time of a direct probe.
    pub rtt: Option<Duration>,
}

/// Traffic counters of this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Packets handed to the runtime.
    pub packets_sent: u64,
    /// Their bytes, envelope included.
    pub bytes_sent: u64,
    /// Packets received (before checks).
    pub packets_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
}

const KIND_FOCA: u8 = 0;
const KIND_SYNC_REQ: u8 = 1;
const KIND_SYNC_RESP: u8 = 2;
const KIND_SYNC_METAS: u8 = 3;
const KIND_APP: u8 = 4;

/// What foca asked for during one call.
#[derive(Debug, Default)]
struct Collector {
    sends: Vec<(NodeId, Vec<u8>)>,
    timers: Vec<(Duration, Timer<NodeId>)>,
    notes: Vec<foca::OwnedNotification<NodeId>>,
}

impl Runtime<NodeId> for Collector {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((after, event));
    }
}

#[derive(Debug)]
enum TimerKind {
    Foca(Timer<NodeId>),
    /// Re-evaluate the Lifeguard suspicion of a member.
    Suspicion(NodeId),
    PushPull,
    Reannounce,
    Leave,
    Housekeeping,
    /// The grace period of a key rotation ends.
    RetireKeys,
}

#[derive(Debug)]
struct Suspicion {
    incarnation: Incarnation,
    started: Instant,
    foca_timer: Timer<NodeId>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PeerStats {
    last_heard: Option<Instant>,
    rtt: Option<Duration>,
}

type FocaCore = Foca<NodeId, ObservingCodec, StdRng, Handler>;

/// One node's mesh: feed it packets and timeouts, drain transmits and events.
pub struct Mesh {
    cfg: MeshConfig,
    foca: FocaCore,
    security: PacketSecurity,
    rng: StdRng,
    start: Instant,
    wall_start_ms: u64,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_kinds: HashMap<u64, TimerKind>,
    timer_seq: u64,
    shared: Arc<Mutex<Shared>>,
    /// One more than the highest incarnation of ours a peer has claimed suspect (0: none yet),
    /// written by the codec and by anti-entropy.
    suspected_upto: Arc<AtomicU32>,
    /// Incarnations of ours below this were already counted against our health: Lifeguard
    /// counts a refutation once per incarnation, not once per claimer or per repeat.
    refuted_below: u32,
    health: LocalHealth,
    suspicions: HashMap<NodeId, Suspicion>,
    peers: HashMap<SocketAddr, PeerStats>,
    pings: VecDeque<(SocketAddr, u8, Instant)>,
    known_addrs: HashSet<SocketAddr>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    own_meta: MetaRecord,
    reannounce_delay: Duration,
    reannounce_pending: bool,
    connected: bool,
    own_incarnation: Incarnation,
    stalls: u64,
    judge_after: Option<Instant>,
    seen_updates: HashSet<(NodeId, Incarnation, u8)>,
    leaving: bool,
    left: bool,
    traffic: TrafficStats,
    requests: Requests,
    rotation: Option<Rotation>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("id", self.foca.identity())
            .field("members", &self.foca.num_members())
            .field("security", &self.security)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// A node that has not joined yet. `seed` feeds its RNG (the boot id, nonces' half, comes from
    /// it: pass OS randomness in production, a fixed value in simulation). `wall_ms` is the wall
    /// clock at `now`, used only to date packets against replays.
    pub fn new(
        cfg: MeshConfig,
        secret: &ClusterSecret,
        seed: u64,
        now: Instant,
        wall_ms: u64,
    ) -> Result<Self, MeshError> {
        if cfg.probe_rtt.is_zero() || cfg.probe_rtt >= cfg.probe_period {
            return Err(MeshError::Config(
                "probe_rtt must be above zero and below probe_period",
            ));
        }
        if cfg.pause_tolerance.is_zero() || cfg.pause_tolerance > MAX_PAUSE_TOLERANCE {
            return Err(MeshError::Config(
                "pause_tolerance must be above zero and at most 60 s",
            ));
        }
        if cfg.max_packet_size <= OVERHEAD + 64 {
            return Err(MeshError::Config(
                "max_packet_size too small for the envelope",
            ));
        }
        let indirect = NonZeroUsize::new(cfg.indirect_probes)
            .ok_or(MeshError::Config("indirect_probes must be at least 1"))?;
        let fanout = NonZeroUsize::new(cfg.gossip_fanout)
            .ok_or(MeshError::Config("gossip_fanout must be at least 1"))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut boot = [0u8; 16];
        rng.fill(&mut boot);
        // Request ids must not repeat across lives of a node at one address (peers answer a
        // repeated id from their cache); the boot id is random per start. Room is left below
        // u64::MAX, ids count up.
        let first_request_id = u64::from_le_bytes(boot[8..].try_into().unwrap_or_default()) >> 1;
        let security = PacketSecurity::new(
            KeyRing::new(&cfg.cluster_name, secret),
            boot,
            cfg.max_clock_skew.as_millis() as u64,
        );
        let id = NodeId {
            addr: cfg.addr,
            generation: cfg.generation,
        };
        // memberlist's retransmit limit, 4 · ⌈log10(N + 1)⌉: with fewer, a crash's `Down` missed
        // one member in about one crash of ten at 50 nodes, which then waited for its own
        // probe of the dead node (up to N probe periods).
        let max_tx = (f64::from(cfg.expected_size.saturating_add(1))
            .log10()
            .ceil()
            * 4.0)
            .clamp(3.0, 255.0);
        let foca_cfg = foca::Config {
            probe_period: cfg.probe_period,
            probe_rtt: cfg.probe_rtt,
            num_indirect_probes: indirect,
            max_transmissions: NonZeroU8::new(max_tx as u8).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: cfg.suspect_timeout.max(cfg.pause_tolerance),
            remove_down_after: Some(Duration::from_secs(3600)),
            max_packet_size: NonZeroUsize::new(cfg.max_packet_size - OVERHEAD - 1)
                .ok_or(MeshError::Config("max_packet_size too small"))?,
            notify_down_members: true,
            periodic_announce: Some(PeriodicParams {
                frequency: Duration::from_secs(30),
                num_members: NonZeroUsize::MIN,
            }),
            periodic_announce_to_down_members: Some(PeriodicParams {
                frequency: Duration::from_secs(65),
                num_members: NonZeroUsize::MIN.saturating_add(1),
            }),
            periodic_gossip: Some(PeriodicParams {
                frequency: cfg.gossip_interval,
                num_members: fanout,
            }),
        };
        let shared = Arc::new(Mutex::new(Shared::default()));
        let suspected_upto = Arc::new(AtomicU32::new(0));
        let codec = ObservingCodec {
            me: cfg.addr,
            suspected_upto: suspected_upto.clone(),
        };
        let foca = Foca::with_custom_broadcast(
            id,
            foca_cfg,
            StdRng::seed_from_u64(rng.random()),
            codec,
            Handler(shared.clone()),
        );
        let own_meta = MetaRecord {
            id,
            version: 1,
            meta: cfg.meta.clone(),
            keys: security.ring().key_ids(),
        };
        let health = LocalHealth::new(cfg.lifeguard.as_ref().map_or(0, |l| l.max_lhm));
        let reannounce_delay = cfg.reannounce_min;
        let known_addrs: HashSet<SocketAddr> = cfg
            .known
            .iter()
            .copied()
            .filter(|a| *a != cfg.addr)
            .collect();
        let mut mesh = Self {
            cfg,
            foca,
            security,
            rng,
            start: now,
            wall_start_ms: wall_ms,
            timers: BinaryHeap::new(),
            timer_kinds: HashMap::new(),
            timer_seq: 0,
            shared,
            suspected_upto,
            refuted_below: 0,
            health,
            suspicions: HashMap::new(),
            peers: HashMap::new(),
            pings: VecDeque::new(),
            known_addrs,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            own_meta,
            reannounce_delay,
            reannounce_pending: false,
            connected: false,
            own_incarnation: 0,
            stalls: 0,
            judge_after: None,
            seen_updates: HashSet::new(),
            leaving: false,
            left: false,
            traffic: TrafficStats::default(),
            requests: Requests::new(first_request_id),
            rotation: None,
        };
        mesh.publish_meta(now);
        let first_sync = mesh.push_pull_interval().mul_f64(mesh.rng.random::<f64>());
        mesh.schedule(now + first_sync, TimerKind::PushPull);
        mesh.schedule(now + Duration::from_secs(10), TimerKind::Housekeeping);
        Ok(mesh)
    }

    /// Our current identity.
    pub fn id(&self) -> NodeId {
        *self.foca.identity()
    }

    /// Announces to the configured seeds and keeps re-announcing until a peer answers.
    pub fn join(&mut self, now: Instant) {
        self.announce_to_seeds(now);
        self.arm_reannounce(now);
    }

    /// Seeds the view from a saved list of peers (the daemon's last-known members, or a
    /// simulation's bootstrap): they are added as alive without gossiping them, then probed as
    /// usual; their metadata is merged. A wrong entry costs one failed probe cycle.
    pub fn restore(&mut self, peers: &[NodeId], metas: &[MetaRecord], now: Instant) {
        {
            let mut shared = lock(&self.shared);
            for record in metas {
                if record.id.addr != self.cfg.addr {
                    shared.merge_meta(record.clone());
                }
            }
        }
        let me = self.cfg.addr;
        let members = peers
            .iter()
            .filter(|id| id.addr != me)
            .map(|id| Member::new(*id, 0, State::Alive));
        let mut rt = Collector::default();
        let _ = self.foca.apply_many(members, false, &mut rt);
        self.drain(rt, now);
    }

    /// Our own metadata record (what [`Mesh::restore`] takes for peers).
    pub fn meta_record(&self) -> MetaRecord {
        self.own_meta.clone()
    }

    /// Announces to `addr` (a peer found by multicast or the provider) right away.
    pub fn announce(&mut self, addr: SocketAddr, now: Instant) {
        if addr == self.cfg.addr {
            return;
        }
        let mut rt = Collector::default();
        // An announce only fails to encode on a codec bug; the reannounce timer retries anyway.
        let _ = self.foca.announce(NodeId::new(addr), &mut rt);
        self.drain(rt, now);
    }

    /// Replaces the seed list (re-resolved DNS names) and announces to seeds not listed before.
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>, now: Instant) {
        let new: Vec<SocketAddr> = seeds
            .iter()
            .filter(|s| !self.cfg.seeds.contains(s))
            .copied()
            .collect();
        self.cfg.seeds = seeds;
        for addr in new {
            self.announce(addr, now);
        }
    }

    /// The current seed list.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.cfg.seeds
    }

    /// Changes our lifecycle state and gossips it.
    pub fn set_state(&mut self, state: NodeState, now: Instant) {
        let mut meta = self.own_meta.meta.clone();
        meta.state = state;
        self.set_meta(meta, now);
    }

    /// Replaces our metadata and gossips it.
    pub fn set_meta(&mut self, meta: NodeMeta, now: Instant) {
        self.own_meta.meta = meta;
        self.own_meta.version += 1;
        self.publish_meta(now);
    }

    /// Our metadata as last published.
    pub fn meta(&self) -> &NodeMeta {
        &self.own_meta.meta
    }

    /// Starts a graceful leave: gossips `Leaving`, then tells peers we are down on purpose after
    /// `leave_grace`; [`Event::Left`] follows.
    pub fn leave(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.set_state(NodeState::Leaving, now);
        let mut rt = Collector::default();
        let _ = self.foca.gossip(&mut rt);
        self.drain(rt, now);
        self.schedule(now + self.cfg.leave_grace, TimerKind::Leave);
    }

    /// Packet accept/drop counters.
    pub fn security_counters(&self) -> SecurityCounters {
        self.security.counters()
    }

    /// Traffic counters.
    pub fn traffic(&self) -> TrafficStats {
        self.traffic
    }

    /// Current local health score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.health.score()
    }

    /// Our SWIM incarnation (bumped each time we refute a suspicion of us).
    pub fn incarnation(&self) -> Incarnation {
        self.own_incarnation
    }

    /// Whether at least one active peer knows us.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Number of active members besides us.
    pub fn num_active(&self) -> usize {
        self.foca.num_members()
    }

    /// Whether `id`'s address is active in our view (any generation).
    pub fn sees_active(&self, addr: SocketAddr) -> bool {
        self.foca.iter_members().any(|m| m.id().addr == addr)
    }

    /// Every member we know of, with liveness, metadata, last heard and RTT.
    pub fn members(&self) -> Vec<MemberInfo> {
        let shared = lock(&self.shared);
        self.foca
            .iter_membership_state()
            .map(|m| {
                let stats = self.peers.get(&m.id().addr).copied().unwrap_or_default();
                MemberInfo {
                    id: *m.id(),
                    liveness: match m.state() {
                        State::Alive => Liveness::Alive,
                        State::Suspect => Liveness::Suspect,
                        State::Down => Liveness::Down,
                    },
                    incarnation: m.incarnation(),
                    meta: shared.metas.get(&m.id().addr).map(|r| r.meta.clone()),
                    last_heard: stats.last_heard,
                    rtt: stats.rtt,
                }
            })
            .collect()
    }

    /// Metadata of the member at `addr`, if received.
    pub fn meta_of(&self, addr: SocketAddr) -> Option<NodeMeta> {
        lock(&self.shared).metas.get(&addr).map(|r| r.meta.clone())
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Mesh::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        match (timer, self.requests.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one datagram from `from`. Bad packets are dropped and counted, never parsed.
    pub fn handle_packet(
        &mut self,
        from: SocketAddr,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), Reject> {
        self.traffic.packets_received += 1;
        self.traffic.bytes_received += packet.len() as u64;
        let body = self.security.open(from, packet, self.wall_ms(now))?;
        self.peers.entry(from).or_default().last_heard = Some(now);
        if self.left {
            return Ok(());
        }
        let Some((&kind, payload)) = body.split_first() else {
            return Ok(());
        };
        match kind {
            KIND_FOCA => {
                let mut rt = Collector::default();
                let deduped = self.drop_known_updates(payload);
                // foca rejects malformed or stale data (from a peer with the key: a bug, not an
                // attack); there is nothing to do about it but drop it.
                let _ = self
                    .foca
                    .handle_data(deduped.as_deref().unwrap_or(payload), &mut rt);
                self.drain(rt, now);
            }
            KIND_SYNC_REQ | KIND_SYNC_RESP | KIND_SYNC_METAS => {
                if let Ok(state) = postcard::from_bytes::<SyncState>(payload) {
                    self.handle_sync(kind, from, state, now);
                }
            }
            KIND_APP => {
                if let Ok(frame) = postcard::from_bytes::<AppFrame>(payload) {
                    if let Arrival::Answer(answer) = self.requests.arrived(from, frame) {
                        self.send_app(from, &answer, now);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.wall_start_ms + now.saturating_duration_since(self.start).as_millis() as u64
    }

    fn schedule(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq)));
        self.timer_kinds.insert(self.timer_seq, kind);
    }

    fn publish_meta(&mut self, now: Instant) {
        self.own_meta.id = self.id();
        let item = Item::Meta(self.own_meta.clone());
        if let Ok(bytes) = postcard::to_allocvec(&item) {
            // Rejected only when it exceeds a packet; metadata is far smaller.
            let _ = self.foca.add_broadcast(&bytes);
        }
        let mut rt = Collector::default();
        let _ = self.foca.broadcast(&mut rt);
        self.drain(rt, now);
    }

    fn send_body(
        &mut self,
        to: SocketAddr,
        kind: u8,
        payload: &[u8],
        reliable: bool,
        now: Instant,
    ) {
        let mut body = Vec::with_capacity(payload.len() + 1);
        body.push(kind);
        body.extend_from_slice(payload);
        let bytes = self.security.seal(&body, self.wall_ms(now));
        self.traffic.packets_sent += 1;
        self.traffic.bytes_sent += bytes.len() as u64;
        self.transmits.push_back(Transmit {
            to,
            bytes,
            reliable,
        });
    }

    fn cluster_size(&self) -> usize {
        self.foca.num_members() + 1
    }

    fn fire(&mut self, kind: TimerKind, now: Instant) {
        match kind {
            TimerKind::Foca(timer) => self.foca_timer(timer, now),
            TimerKind::Suspicion(id) => self.check_suspicion(id, now),
            TimerKind::PushPull => {
                if !self.left {
                    self.start_sync(now);
                }
                let next = self.push_pull_interval();
                self.schedule(now + next, TimerKind::PushPull);
            }
            TimerKind::Reannounce => {
                self.reannounce_pending = false;
                if !self.connected && !self.left {
                    self.announce_to_seeds(now);
                    self.reannounce_delay =
                        (self.reannounce_delay * 2).min(self.cfg.reannounce_max);
                    self.arm_reannounce(now);
                }
            }
            TimerKind::Leave => {
                let mut rt = Collector::default();
                let _ = self.foca.leave_cluster(&mut rt);
                self.drain(rt, now);
                self.left = true;
                self.events.push_back(Event::Left);
            }
            TimerKind::RetireKeys => {
                // A rotation started later has its own, later timer.
                if self.rotation.is_some_and(|r| r.retire_at <= now) {
                    self.check_rotation(now);
                }
            }
            TimerKind::Housekeeping => {
                self.housekeeping();
                self.schedule(now + Duration::from_secs(10), TimerKind::Housekeeping);
            }
        }
    }

    fn arm_reannounce(&mut self, now: Instant) {
        if !self.reannounce_pending {
            self.reannounce_pending = true;
            let at = now + self.reannounce_delay;
            self.schedule(at, TimerKind::Reannounce);
        }
    }

    fn announce_to_seeds(&mut self, now: Instant) {
        let mut targets: Vec<SocketAddr> = self.cfg.seeds.clone();
        // Members we knew may still be up even if every seed is gone.
        let mut known: Vec<SocketAddr> = self.known_addrs.iter().copied().collect();
        known.sort();
        for _ in 0..3.min(known.len()) {
            let i = self.rng.random_range(0..known.len());
            targets.push(known.swap_remove(i));
        }
        targets.retain(|a| *a != self.cfg.addr);
        targets.sort();
        targets.dedup();
        let mut rt = Collector::default();
        for addr in targets {
            let _ = self.foca.announce(NodeId::new(addr), &mut rt);
        }
        self.drain(rt, now);
    }

    /// Applies what foca asked for during one call.
    fn drain(&mut self, rt: Collector, now: Instant) {
        let Collector {
            sends,
            timers,
            notes,
        } = rt;
        for (to, data) in sends {
            self.send_body(to.addr, KIND_FOCA, &data, false, now);
        }
        for note in notes {
            self.on_notification(note, now);
        }
        for (after, timer) in timers {
            self.on_foca_timer(after, timer, now);
        }
        let upto = self.suspected_upto.load(Ordering::Relaxed);
        if let Some(incarnation) = upto.checked_sub(1) {
            self.count_refutation(incarnation);
        }
        let (new_metas, new_claims) = {
            let mut shared = lock(&self.shared);
            (
                std::mem::take(&mut shared.new_metas),
                std::mem::take(&mut shared.new_claims),
            )
        };
        let views_changed = !new_metas.is_empty()
            || self
                .events
                .iter()
                .any(|e| matches!(e, Event::MemberDown(..)));
        for record in new_metas {
            if record.id.addr != self.cfg.addr {
                self.events
                    .push_back(Event::MemberUpdated(record.id, record.meta));
            }
        }
        if views_changed {
            // A member that now accepts the new key, or a member gone, may unblock promotion.
            self.check_rotation(now);
        }
        for (target, incarnation) in new_claims {
            if target.addr == self.cfg.addr {
                self.answer_claim(incarnation, now);
            } else if self.suspicions.contains_key(&target) {
                self.check_suspicion(target, now);
            }
        }
    }
}
