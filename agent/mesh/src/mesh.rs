//! The sans-IO mesh core: one node's membership, failure detection and metadata.
//!
//! Owns a foca instance and everything we add around it: the secure envelope on every packet, the
//! timer wheel (with Lifeguard's scaling and confirmation-driven suspicion), metadata broadcasts,
//! push/pull anti-entropy, re-announcing to seeds when every peer is gone, graceful leave, the
//! per-peer view (last heard, RTT), and carrying application requests whose bookkeeping
//! ([`crate::requests`]) it drives with the same clock. It is driven by `handle_packet`, `handle_timeout` and the
//! `poll_*` methods with a caller-supplied `now`; it must never read a clock, open a socket, sleep
//! or spawn.

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
use crate::secret::ClusterSecret;
use crate::security::{
    KeyId, KeyRing, KeyRingError, PacketSecurity, Reject, SecurityCounters, OVERHEAD,
};

/// Mesh parameters. [`MeshConfig::lan`] gives the defaults.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Cluster name: bound into the keys and the packet tag.
    pub cluster_name: String,
    /// This node's mesh address (its identity).
    pub addr: SocketAddr,
    /// Initial metadata.
    pub meta: NodeMeta,
    /// Where to announce when joining or when every peer is gone.
    pub seeds: Vec<SocketAddr>,
    /// How often one member is probed.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How often pending updates are gossiped, and to how many members.
    pub gossip_interval: Duration,
    /// See `gossip_interval`.
    pub gossip_fanout: usize,
    /// Suspicion timeout when Lifeguard is off (plain SWIM); never below `pause_tolerance`.
    pub suspect_timeout: Duration,
    /// The longest pause of a live node (a frozen process or VM: live migration, snapshot,
    /// memory pressure) that must not get it declared down: no suspicion ends sooner than this
    /// after it started, and after the suspect was last heard from, however many members confirm
    /// it. A crash is seen down this long plus about a second after it (see docs/mesh.md).
    /// Default [`DEFAULT_PAUSE_TOLERANCE`].
    pub pause_tolerance: Duration,
    /// Lifeguard; `None` runs plain SWIM (the baseline of our figures).
    pub lifeguard: Option<LifeguardConfig>,
    /// Base push/pull anti-entropy interval; stretched for clusters above 32 members.
    pub push_pull_interval: Duration,
    /// First and longest delay between re-announcements while no peer is known.
    pub reannounce_min: Duration,
    /// See `reannounce_min`.
    pub reannounce_max: Duration,
    /// How long the `Leaving` state is gossiped before the node leaves.
    pub leave_grace: Duration,
    /// Largest UDP datagram sent.
    pub max_packet_size: usize,
    /// Accepted clock difference between nodes (replay protection).
    pub max_clock_skew: Duration,
    /// Expected cluster size, for how many times an update is retransmitted.
    pub expected_size: u32,
    /// Generation of our identity (`addr#generation`): 0 on a first start; the daemon passes
    /// the persisted generation + 1 after a restart, so peers replace the previous life's entry
    /// at once (a higher generation wins the address) instead of first declaring it down.
    pub generation: u16,
    /// Members known before a restart (persisted by the daemon): announced to like seeds until
    /// we joined, so a node without seeds finds its cluster again.
    pub known: Vec<SocketAddr>,
}

impl MeshConfig {
    /// LAN defaults (memberlist's, with a faster gossip-driven suspicion; see docs/mesh.md).
    pub fn lan(cluster_name: &str, addr: SocketAddr, meta: NodeMeta) -> Self {
        Self {
            cluster_name: cluster_name.to_owned(),
            addr,
            meta,
            seeds: Vec::new(),
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            indirect_probes: 3,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            suspect_timeout: Duration::from_secs(2),
            pause_tolerance: DEFAULT_PAUSE_TOLERANCE,
            lifeguard: Some(LifeguardConfig::default()),
            push_pull_interval: Duration::from_secs(30),
            reannounce_min: Duration::from_secs(1),
            reannounce_max: Duration::from_secs(30),
            leave_grace: Duration::from_secs(1),
            max_packet_size: 1400,
            max_clock_skew: Duration::from_secs(120),
            expected_size: 100,
            generation: 0,
            known: Vec::new(),
        }
    }
}

/// Default of [`MeshConfig::pause_tolerance`]: 5 s covers the freezes cloud VMs are documented
/// to have (live migration "typically no more than 5 seconds" on Azure, sub-second to a few
/// seconds elsewhere) and what memberlist's defaults survive at small N. Why: docs/mesh.md.
pub const DEFAULT_PAUSE_TOLERANCE: Duration = Duration::from_secs(5);

/// Longest accepted [`MeshConfig::pause_tolerance`]: a crash is seen only after it.
pub const MAX_PAUSE_TOLERANCE: Duration = Duration::from_secs(60);

/// Why the mesh refused to start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A timing parameter is out of range.
    #[error("invalid mesh config: {0}")]
    Config(&'static str),
}

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

/// The key ring as the admin sees it: key ids only, never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Every key accepted, in install order.
    pub keys: Vec<KeyId>,
    /// The key packets are sealed with.
    pub primary: KeyId,
    /// A rotation in progress, if any.
    pub rotation: Option<RotationStatus>,
}

/// A key rotation in progress (see [`Mesh::rotate_secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationStatus {
    /// The key being rotated to.
    pub target: KeyId,
    /// Time left until the other keys stop being accepted (and `target` becomes primary if it
    /// is not yet).
    pub retire_in: Duration,
    /// Live members that do not accept `target` yet: while any is left, we keep sending with
    /// the old primary so they can still read us.
    pub waiting_for: Vec<NodeId>,
}

#[derive(Debug, Clone, Copy)]
struct Rotation {
    target: KeyId,
    retire_at: Instant,
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

#[derive(Debug, Serialize, Deserialize)]
struct SyncState {
    members: Vec<Member<NodeId>>,
    meta_versions: Vec<(NodeId, u64)>,
    metas: Vec<MetaRecord>,
}

/// What travels in foca custom broadcasts.
#[derive(Debug, Serialize, Deserialize)]
enum Item {
    Meta(MetaRecord),
    Suspect {
        target: NodeId,
        incarnation: Incarnation,
        from: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemKey {
    Meta { addr: SocketAddr, rank: (u16, u64) },
    Suspect(NodeId, Incarnation, NodeId),
}

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (ItemKey::Meta { addr, rank }, ItemKey::Meta { addr: a, rank: r }) => {
                addr == a && rank >= r
            }
            (a @ ItemKey::Suspect(..), b @ ItemKey::Suspect(..)) => a == b,
            _ => false,
        }
    }
}

/// Suspicion claims kept per member and incarnation: Lifeguard's K (3) others plus our own.
const MAX_CLAIMERS: usize = 5;

/// State shared between the mesh and foca's broadcast handler (which foca owns).
#[derive(Debug, Default)]
struct Shared {
    metas: HashMap<SocketAddr, MetaRecord>,
    new_metas: Vec<MetaRecord>,
    /// Who claimed to suspect a member at an incarnation (a handful at most: see `MAX_CLAIMERS`).
    claims: HashMap<(NodeId, Incarnation), Vec<SocketAddr>>,
    new_claims: Vec<(NodeId, Incarnation)>,
}

impl Shared {
    fn merge_meta(&mut self, record: MetaRecord) -> bool {
        let newer = match self.metas.get(&record.id.addr) {
            Some(known) => record.newer_than(known),
            None => true,
        };
        if newer {
            self.new_metas.push(record.clone());
            self.metas.insert(record.id.addr, record);
        }
        newer
    }
}

#[derive(Debug)]
struct Handler(Arc<Mutex<Shared>>);

#[derive(Debug, thiserror::Error)]
#[error("undecodable broadcast item")]
struct BadItem(#[source] postcard::Error);

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Nothing panics while holding the lock; a poisoned lock still holds consistent data.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BroadcastHandler<NodeId> for Handler {
    type Key = ItemKey;
    type Error = BadItem;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<ItemKey>, BadItem> {
        let item: Item = postcard::from_bytes(data).map_err(BadItem)?;
        let mut shared = lock(&self.0);
        Ok(match item {
            Item::Meta(record) => {
                let key = ItemKey::Meta {
                    addr: record.id.addr,
                    rank: (record.id.generation, record.version),
                };
                shared.merge_meta(record).then_some(key)
            }
            Item::Suspect {
                target,
                incarnation,
                from,
            } => {
                let claimers = shared.claims.entry((target, incarnation)).or_default();
                // Past K+1 claimers every suspicion is at its minimum: more claims change nothing,
                // so they are neither kept nor passed on.
                let fresh = claimers.len() < MAX_CLAIMERS && !claimers.contains(&from.addr);
                if fresh {
                    claimers.push(from.addr);
                    shared.new_claims.push((target, incarnation));
                }
                fresh.then_some(ItemKey::Suspect(target, incarnation, from))
            }
        })
    }
}

/// foca's postcard codec, noticing when a peer gossips that we are suspect (we then refute it,
/// which Lifeguard counts against our own health).
#[derive(Debug)]
struct ObservingCodec {
    me: SocketAddr,
    suspected: Arc<AtomicU32>,
}

impl Codec<NodeId> for ObservingCodec {
    type Error = postcard::Error;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_header(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeId>, Self::Error> {
        PostcardCodec.decode_header(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_member(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeId>, Self::Error> {
        let member: Member<NodeId> = PostcardCodec.decode_member(buf)?;
        if member.id().addr == self.me && member.state() == State::Suspect {
            self.suspected.fetch_add(1, Ordering::Relaxed);
        }
        Ok(member)
    }
}

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
    suspected_count: Arc<AtomicU32>,
    suspected_seen: u32,
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
        let suspected_count = Arc::new(AtomicU32::new(0));
        let codec = ObservingCodec {
            me: cfg.addr,
            suspected: suspected_count.clone(),
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
            suspected_count,
            suspected_seen: 0,
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

    /// Sends `payload` to the peer at `to` (its mesh address) as a request of `kind` and
    /// returns its id; the outcome comes from [`Mesh::poll_reply`] with that id: the answer,
    /// the peer's refusal, or a timeout after `timeout`. Until answered the request is resent
    /// (same id) every `timeout / 4` (at least 50 ms); the peer answers a resend from its
    /// cache, so its handler runs once.
    pub fn request(
        &mut self,
        to: SocketAddr,
        kind: u8,
        payload: Vec<u8>,
        timeout: Duration,
        now: Instant,
    ) -> Result<u64, RequestError> {
        if self.left {
            return Err(RequestError::Stopped);
        }
        let (id, frame) = self.requests.start(to, kind, payload, timeout, now)?;
        self.send_app(to, &frame, now);
        Ok(id)
    }

    /// Stops resending request `id` (its caller gave up); no reply will come for it.
    pub fn cancel_request(&mut self, id: u64) {
        self.requests.cancel(id);
    }

    /// The next outcome of one of our requests.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.requests.poll_reply()
    }

    /// The next request from a peer for a handler (each request once, however often resent).
    /// Answer it with [`Mesh::respond`]; until then resends are ignored.
    pub fn poll_request(&mut self) -> Option<Incoming> {
        self.requests.poll_incoming()
    }

    /// Answers request `id` of `to`: `Ok(payload)` (at most [`MAX_APP_PAYLOAD`] bytes, else an
    /// error is sent) or `Err(message)` for the requester's error (never a secret). The answer
    /// is kept for resends of the request.
    pub fn respond(
        &mut self,
        to: SocketAddr,
        id: u64,
        kind: u8,
        result: Result<Vec<u8>, String>,
        now: Instant,
    ) {
        let frame = self.requests.respond(to, id, kind, result);
        self.send_app(to, &frame, now);
    }

    /// Seals `frame` for `to` and queues it as one datagram (not after we left).
    fn send_app(&mut self, to: SocketAddr, frame: &AppFrame, now: Instant) {
        if frame.body.len() > MAX_APP_PAYLOAD || self.left {
            return;
        }
        if let Ok(bytes) = postcard::to_allocvec(frame) {
            self.send_body(to, KIND_APP, &bytes, false, now);
        }
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

    /// Key ring, to install, promote and remove keys by hand (tests, simulations). The daemon
    /// uses [`Mesh::rotate_secret`], which also tells peers which keys we accept.
    pub fn key_ring_mut(&mut self) -> &mut KeyRing {
        self.security.ring_mut()
    }

    /// The key ring (a clone holds the same keys: the multicast beacons follow it).
    pub fn key_ring(&self) -> &KeyRing {
        self.security.ring()
    }

    /// Rotates to the key of `secret` without a restart and without false deaths:
    ///
    /// 1. the new key is installed at once (we accept old and new) and gossiped in our metadata
    ///    as accepted;
    /// 2. we keep sealing with the old primary until every live member lists the new key as
    ///    accepted (so a peer not rotated yet can still read us), then seal with the new one;
    /// 3. after `grace`, every other key is removed (and the new key made primary if some
    ///    member never took it): a node that still has only an old key can no longer talk to us,
    ///    is failed by the detector, and its packets are dropped as `unknown_key`.
    ///
    /// Rotating again before the grace period ends starts over towards the newest key (the ring
    /// holds at most [`crate::security::MAX_KEYS`]; the oldest retiring key makes room).
    /// Rotating to the key already primary with nothing retiring changes nothing.
    pub fn rotate_secret(
        &mut self,
        secret: &ClusterSecret,
        grace: Duration,
        now: Instant,
    ) -> Result<KeyId, KeyRingError> {
        let ring = self.security.ring_mut();
        let target = ring.id_of(secret);
        let ids = ring.key_ids();
        if ids == [target] {
            return Ok(target);
        }
        if !ids.contains(&target) && ids.len() >= crate::security::MAX_KEYS {
            let primary = ring.primary_id();
            if let Some(oldest) = ids.iter().copied().find(|id| *id != primary) {
                ring.remove(oldest)?;
            }
        }
        ring.install(secret)?;
        let retire_at = now + grace;
        self.rotation = Some(Rotation { target, retire_at });
        self.schedule(retire_at, TimerKind::RetireKeys);
        self.publish_keys(now);
        self.check_rotation(now);
        Ok(target)
    }

    /// The key ring's ids, the primary and the rotation in progress.
    pub fn key_status(&self, now: Instant) -> KeyStatus {
        let ring = self.security.ring();
        KeyStatus {
            keys: ring.key_ids(),
            primary: ring.primary_id(),
            rotation: self.rotation.map(|r| RotationStatus {
                target: r.target,
                retire_in: r.retire_at.saturating_duration_since(now),
                waiting_for: self.lacking_key(r.target),
            }),
        }
    }

    /// Live members whose metadata does not list `key` as accepted (or has not arrived).
    fn lacking_key(&self, key: KeyId) -> Vec<NodeId> {
        let shared = lock(&self.shared);
        let mut out: Vec<NodeId> = self
            .foca
            .iter_members()
            .map(|m| *m.id())
            .filter(|id| {
                shared
                    .metas
                    .get(&id.addr)
                    .is_none_or(|r| !r.keys.contains(&key))
            })
            .collect();
        out.sort();
        out
    }

    /// Promotes the rotation's key once every live member accepts it (or the grace period is
    /// over), and retires the other keys when the grace period is over.
    fn check_rotation(&mut self, now: Instant) {
        let Some(rotation) = self.rotation else {
            return;
        };
        let expired = now >= rotation.retire_at;
        let mut changed = false;
        if self.security.ring().primary_id() != rotation.target
            && (expired || self.lacking_key(rotation.target).is_empty())
            && self
                .security
                .ring_mut()
                .set_primary(rotation.target)
                .is_ok()
        {
            self.events.push_back(Event::KeyPromoted(rotation.target));
            changed = true;
        }
        if expired {
            let ring = self.security.ring_mut();
            let retired: Vec<KeyId> = ring
                .key_ids()
                .into_iter()
                .filter(|id| *id != rotation.target)
                .collect();
            for id in &retired {
                // Only the primary cannot be removed, and the target is the primary by now.
                let _ = ring.remove(*id);
            }
            self.rotation = None;
            if !retired.is_empty() {
                self.events.push_back(Event::KeysRetired(retired));
                changed = true;
            }
        }
        if changed {
            self.publish_keys(now);
        }
    }

    fn publish_keys(&mut self, now: Instant) {
        let keys = self.security.ring().key_ids();
        if self.own_meta.keys != keys {
            self.own_meta.keys = keys;
            self.own_meta.version += 1;
            self.publish_meta(now);
        }
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

    /// Runs every timer due at `now`.
    ///
    /// With Lifeguard, timers that run much later than due reveal that this node stalled (GC,
    /// stolen CPU, a frozen VM). Then it does not judge peers on them: it refutes the suspicion
    /// its silence has likely raised, and defers its probe and suspicion timers by one probe RTT
    /// so that what arrived during the stall is read first.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late = self
            .poll_timeout()
            .map_or(Duration::ZERO, |due| now.saturating_duration_since(due));
        let stalled = self.cfg.lifeguard.is_some() && late > self.cfg.probe_period / 2;
        if stalled {
            self.on_stall(late, now);
        }
        for (to, frame) in self.requests.on_timeout(now) {
            self.send_app(to, &frame, now);
        }
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(kind) = self.timer_kinds.remove(&seq) else {
                continue;
            };
            let judges_peers = matches!(
                kind,
                TimerKind::Suspicion(_)
                    | TimerKind::Foca(
                        Timer::ProbeRandomMember(_)
                            | Timer::SendIndirectProbe { .. }
                            | Timer::ChangeSuspectToDown { .. }
                    )
            );
            if stalled && judges_peers {
                self.schedule(now + self.cfg.probe_rtt, kind);
            } else {
                self.fire(kind, now);
            }
        }
    }

    /// We were frozen for at least `late`. Our own suspicions do not count that time: while
    /// frozen we could not spread them, so their suspects could not hear of them and refute,
    /// and a resumed node must not declare a live peer down on a stale timer.
    fn on_stall(&mut self, late: Duration, now: Instant) {
        self.stalls += 1;
        self.health.refuted();
        self.judge_after = Some(now + self.cfg.probe_rtt);
        for s in self.suspicions.values_mut() {
            s.started += late;
        }
        if !self.connected || self.left {
            return;
        }
        // Applying a suspicion of ourselves at our own incarnation makes foca refute it: bump the
        // incarnation (every packet we send now refutes) and gossip.
        let me = Member::new(self.id(), self.own_incarnation, State::Suspect);
        let mut rt = Collector::default();
        let _ = self.foca.apply_many(std::iter::once(me), true, &mut rt);
        self.drain(rt, now);
    }

    /// How many stalls of this node Lifeguard noticed.
    pub fn stalls(&self) -> u64 {
        self.stalls
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

    /// Removes from a foca packet the membership updates already handed to foca once.
    ///
    /// SWIM's merge is idempotent, so a repeat changes nothing; but foca finds a member by a
    /// linear scan, and while 1,000 nodes join each update arrives a dozen times at every node.
    /// Returns `None` when nothing was removed (or the packet is foca's to reject).
    fn drop_known_updates(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let mut rest = payload;
        let header: Header<NodeId> = PostcardCodec.decode_header(&mut rest).ok()?;
        if header.message == Message::Broadcast || rest.len() < 2 {
            return None;
        }
        let header_len = payload.len() - rest.len();
        let count = rest.get_u16();
        if count < 4 {
            // Steady state: a few updates cost less to apply than to filter.
            return None;
        }
        // foca ignores the updates of a packet not addressed to our current identity or sent by
        // a member it holds down: those must not be remembered as handed over.
        if header.dst != self.id() || !self.foca.iter_members().any(|m| m.id() == &header.src) {
            return None;
        }
        let mut kept: Vec<&[u8]> = Vec::with_capacity(usize::from(count));
        let mut dropped = false;
        for _ in 0..count {
            let before = rest;
            let member: Member<NodeId> = PostcardCodec.decode_member(&mut rest).ok()?;
            let raw = &before[..before.len() - rest.len()];
            let key = (*member.id(), member.incarnation(), member.state() as u8);
            if self.seen_updates.insert(key) {
                kept.push(raw);
            } else {
                dropped = true;
            }
        }
        if !dropped {
            return None;
        }
        if self.seen_updates.len() > 8 * (self.cluster_size() + 64) {
            // Forgetting costs only the scans this cache saves.
            self.seen_updates.clear();
        }
        let mut out = Vec::with_capacity(payload.len());
        out.extend_from_slice(&payload[..header_len]);
        out.put_u16(kept.len() as u16);
        for raw in kept {
            out.extend_from_slice(raw);
        }
        out.extend_from_slice(rest);
        Some(out)
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

    fn push_pull_interval(&self) -> Duration {
        // memberlist's pushPullScale: one more interval per doubling above 32 members.
        let n = self.cluster_size() as f64;
        let mult = if n <= 32.0 {
            1.0
        } else {
            (n.log2() - 32f64.log2()).ceil() + 1.0
        };
        self.cfg.push_pull_interval.mul_f64(mult)
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

    fn foca_timer(&mut self, timer: Timer<NodeId>, now: Instant) {
        if let Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = &timer
        {
            // foca 2.0 sends TurnUndead to the member even when it refuted the suspicion in the
            // meantime (the incarnation check fails but the courtesy message still goes out),
            // which forces a live node to rejoin under a new identity. Only hand foca timers
            // for suspicions that still stand.
            let stands = self.foca.iter_membership_state().any(|m| {
                m.id() == member_id
                    && m.incarnation() == *incarnation
                    && m.state() == State::Suspect
            });
            if !stands {
                return;
            }
        }
        let mut rt = Collector::default();
        let _ = self.foca.handle_timer(timer, &mut rt);
        self.drain(rt, now);
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
        let suspected = self.suspected_count.load(Ordering::Relaxed);
        if suspected != self.suspected_seen {
            self.suspected_seen = suspected;
            if self.cfg.lifeguard.is_some() {
                self.health.refuted();
            }
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

    /// Someone claims we are suspect. At our current incarnation: refute (foca bumps it and
    /// gossips). At an older one, the claimer missed our last refutation and the cluster will not
    /// relay its stale suspicion back to us. Either way the claimers also hear it directly: an
    /// announce carries our current incarnation in its header.
    fn answer_claim(&mut self, incarnation: Incarnation, now: Instant) {
        if self.left || self.leaving {
            return;
        }
        self.health.refuted();
        let mut rt = Collector::default();
        if incarnation >= self.own_incarnation {
            let me = Member::new(self.id(), incarnation, State::Suspect);
            let _ = self.foca.apply_many(std::iter::once(me), true, &mut rt);
        }
        // Gossip may not bring the refutation back to the suspecters in time (or at all, for a
        // stale suspicion): tell them directly.
        let claimers = lock(&self.shared)
            .claims
            .get(&(self.id(), incarnation))
            .cloned()
            .unwrap_or_default();
        for addr in claimers.into_iter().filter(|a| *a != self.cfg.addr) {
            let _ = self.foca.announce(NodeId::new(addr), &mut rt);
        }
        self.drain(rt, now);
    }

    fn on_foca_timer(&mut self, after: Duration, timer: Timer<NodeId>, now: Instant) {
        let lifeguard = self.cfg.lifeguard.is_some();
        match timer {
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } if lifeguard => {
                let at = now + self.health.scale(after);
                self.schedule(at, TimerKind::Foca(timer));
            }
            Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } if lifeguard => {
                let fresh = self
                    .suspicions
                    .get(&member_id)
                    .is_none_or(|s| s.incarnation != incarnation);
                if fresh {
                    let started = self.silent_since(member_id.addr, now);
                    self.suspicions.insert(
                        member_id,
                        Suspicion {
                            incarnation,
                            started,
                            foca_timer: timer,
                        },
                    );
                }
                self.check_suspicion(member_id, now);
            }
            _ => self.schedule(now + after, TimerKind::Foca(timer)),
        }
    }

    /// Since when `addr` is known to be silent. When our own direct probe of it just failed,
    /// that is one probe RTT after the ping left: a node that answers within the RTT was frozen
    /// (or gone) by then. foca notices only at the end of the probe period, which would add its
    /// wait for indirect acks to every crash's detection. Otherwise (a suspicion we heard of),
    /// `now`.
    fn silent_since(&self, addr: SocketAddr, now: Instant) -> Instant {
        let window = self.health.scale(self.cfg.probe_period) + self.cfg.probe_rtt;
        self.pings
            .iter()
            .rev()
            .find(|(a, _, sent)| *a == addr && now.saturating_duration_since(*sent) <= window)
            .map_or(now, |(_, _, sent)| (*sent + self.cfg.probe_rtt).min(now))
    }

    /// Fires the suspicion if its confirmation-shrunk timeout has passed, else re-arms it.
    fn check_suspicion(&mut self, id: NodeId, now: Instant) {
        let Some(lg) = self.cfg.lifeguard.clone() else {
            return;
        };
        let Some(s) = self.suspicions.get(&id) else {
            return;
        };
        let confirmations = lock(&self.shared)
            .claims
            .get(&(id, s.incarnation))
            .map_or(0, |from| {
                from.iter().filter(|a| **a != self.cfg.addr).count()
            });
        let timeout = lifeguard::suspicion_timeout(
            &lg,
            self.cluster_size(),
            self.cfg.probe_period,
            self.cfg.pause_tolerance,
            confirmations as u32,
        );
        // A packet from the suspect after our suspicion began shows it was not frozen yet: its
        // silence, which a pause must not outlast, started later.
        let heard = self.peers.get(&id.addr).and_then(|p| p.last_heard);
        let mut deadline = s.started.max(heard.unwrap_or(s.started)) + timeout;
        if let Some(after) = self.judge_after.filter(|after| *after > now) {
            deadline = deadline.max(after);
        }
        if now >= deadline {
            if let Some(s) = self.suspicions.remove(&id) {
                self.foca_timer(s.foca_timer, now);
            }
        } else {
            self.schedule(deadline, TimerKind::Suspicion(id));
        }
    }

    fn on_notification(&mut self, note: foca::OwnedNotification<NodeId>, now: Instant) {
        use foca::OwnedNotification as N;
        match note {
            N::MemberUp(id) => {
                self.known_addrs.insert(id.addr);
                self.events.push_back(Event::MemberUp(id));
            }
            N::MemberDown(id) => {
                self.suspicions.remove(&id);
                let left = lock(&self.shared)
                    .metas
                    .get(&id.addr)
                    .is_some_and(|r| r.id == id && r.meta.state == NodeState::Leaving);
                let reason = if left {
                    DownReason::Left
                } else {
                    DownReason::Failed
                };
                self.events.push_back(Event::MemberDown(id, reason));
            }
            N::Rename(..) => {}
            N::Active => {
                self.connected = true;
                self.reannounce_delay = self.cfg.reannounce_min;
                self.events.push_back(Event::Joined);
                // Catch up on metadata gossiped before we joined.
                self.start_sync(now);
            }
            N::Idle => {
                self.connected = false;
                if !self.left && !self.leaving {
                    self.events.push_back(Event::Isolated);
                    self.arm_reannounce(now);
                }
            }
            N::Defunct => {
                self.connected = false;
            }
            N::Rejoin(id) => {
                self.events.push_back(Event::Rejoined(id));
                self.own_meta.version += 1;
                self.publish_meta(now);
            }
            N::DataSent(header) => {
                self.own_incarnation = header.src_incarnation;
                if let Message::Ping(n) = header.message {
                    self.pings.push_back((header.dst.addr, n, now));
                    if self.pings.len() > 16 {
                        self.pings.pop_front();
                    }
                }
            }
            N::DataReceived(header) => match header.message {
                Message::Ack(n) => {
                    let from = header.src.addr;
                    if let Some(pos) = self
                        .pings
                        .iter()
                        .position(|(a, p, _)| *a == from && *p == n)
                    {
                        let (_, _, sent) = self.pings.remove(pos).unwrap_or((from, n, now));
                        self.peers.entry(from).or_default().rtt = Some(now - sent);
                        self.health.probe_succeeded();
                    }
                }
                Message::ForwardedAck { .. } => self.health.probe_succeeded(),
                _ => {}
            },
            N::ProbeFailed(_, id) => {
                if self.cfg.lifeguard.is_some() {
                    self.health.probe_failed();
                    let incarnation = self
                        .foca
                        .iter_membership_state()
                        .find(|m| m.id() == &id)
                        .map(|m| m.incarnation());
                    let enough = incarnation.is_some_and(|inc| {
                        lock(&self.shared)
                            .claims
                            .get(&(id, inc))
                            .is_some_and(|c| c.len() >= MAX_CLAIMERS)
                    });
                    if let Some(incarnation) = incarnation.filter(|_| !enough) {
                        let item = Item::Suspect {
                            target: id,
                            incarnation,
                            from: self.id(),
                        };
                        if let Ok(bytes) = postcard::to_allocvec(&item) {
                            let _ = self.foca.add_broadcast(&bytes);
                        }
                    }
                }
            }
        }
    }

    fn snapshot(&self, metas_for: Option<&HashMap<SocketAddr, (u16, u64)>>) -> SyncState {
        let shared = lock(&self.shared);
        let members: Vec<Member<NodeId>> = self
            .foca
            .iter_membership_state()
            .cloned()
            .chain(std::iter::once(Member::new(self.id(), 0, State::Alive)))
            .collect();
        // Sorted so a simulated run does not depend on hash order.
        let mut meta_versions: Vec<(NodeId, u64)> =
            shared.metas.values().map(|r| (r.id, r.version)).collect();
        meta_versions.sort_unstable_by_key(|(id, _)| id.addr);
        let metas = match metas_for {
            None => Vec::new(),
            Some(theirs) => shared
                .metas
                .values()
                .filter(|r| {
                    theirs
                        .get(&r.id.addr)
                        .is_none_or(|rank| (r.id.generation, r.version) > *rank)
                })
                .cloned()
                .collect(),
        };
        let mut metas = metas;
        metas.sort_unstable_by_key(|r| r.id.addr);
        SyncState {
            members,
            meta_versions,
            metas,
        }
    }

    fn start_sync(&mut self, now: Instant) {
        let candidates: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        if candidates.is_empty() {
            return;
        }
        let to = candidates[self.rng.random_range(0..candidates.len())];
        let state = self.snapshot(None);
        if let Ok(bytes) = postcard::to_allocvec(&state) {
            self.send_body(to, KIND_SYNC_REQ, &bytes, true, now);
        }
    }

    fn handle_sync(&mut self, kind: u8, from: SocketAddr, state: SyncState, now: Instant) {
        let SyncState {
            members,
            meta_versions,
            metas,
        } = state;
        if !members.is_empty() {
            let mut rt = Collector::default();
            let me = self.id();
            let known: HashMap<NodeId, (Incarnation, State)> = self
                .foca
                .iter_membership_state()
                .map(|m| (*m.id(), (m.incarnation(), m.state())))
                .collect();
            let mine: Vec<Member<NodeId>> = members
                .into_iter()
                .filter(|m| known.get(m.id()) != Some(&(m.incarnation(), m.state())))
                .filter(|m| {
                    if m.id().addr == me.addr && m.state() == State::Suspect {
                        self.suspected_count.fetch_add(1, Ordering::Relaxed);
                    }
                    // Our own entry (incarnation 0) in a peer's list is no news.
                    !(m.id() == &me && m.state() == State::Alive)
                })
                .collect();
            let _ = self.foca.apply_many(mine.into_iter(), true, &mut rt);
            self.drain(rt, now);
        }
        {
            let mut shared = lock(&self.shared);
            for record in metas {
                shared.merge_meta(record);
            }
        }
        let theirs: HashMap<SocketAddr, (u16, u64)> = meta_versions
            .into_iter()
            .map(|(id, v)| (id.addr, (id.generation, v)))
            .collect();
        match kind {
            KIND_SYNC_REQ => {
                let reply = self.snapshot(Some(&theirs));
                if let Ok(bytes) = postcard::to_allocvec(&reply) {
                    self.send_body(from, KIND_SYNC_RESP, &bytes, true, now);
                }
            }
            KIND_SYNC_RESP => {
                let missing = self.snapshot(Some(&theirs)).metas;
                if !missing.is_empty() {
                    let state = SyncState {
                        members: Vec::new(),
                        meta_versions: Vec::new(),
                        metas: missing,
                    };
                    if let Ok(bytes) = postcard::to_allocvec(&state) {
                        self.send_body(from, KIND_SYNC_METAS, &bytes, true, now);
                    }
                }
            }
            _ => {}
        }
        self.drain(Collector::default(), now);
    }

    /// Forgets suspicion claims that no longer match a suspect member.
    fn housekeeping(&mut self) {
        let current: HashMap<NodeId, (Incarnation, State)> = self
            .foca
            .iter_membership_state()
            .map(|m| (*m.id(), (m.incarnation(), m.state())))
            .collect();
        lock(&self.shared).claims.retain(|(target, inc), _| {
            current
                .get(target)
                .is_some_and(|(i, s)| i == inc && *s == State::Suspect)
        });
    }
}
