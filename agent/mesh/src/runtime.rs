//! A thin tokio driver for one [`Mesh`]: a UDP socket (and, for packets too large for one
//! datagram, the stream path of [`crate::stream`]), the clock, a command channel, and the handle
//! the rest of the daemon holds ([`MeshHandle`]).
//!
//! Owns the I/O loop only: datagrams in, timeouts, datagrams out, events and member snapshots to
//! the daemon, and the delivery of application requests to the handlers registered by kind
//! and of replies to the callers waiting (ids, resends, deadlines and the duplicate cache are
//! the core's, in [`crate::requests`]). All protocol decisions stay in [`Mesh`]. It must not grow protocol logic, and must never log packet contents or keys.
//! Discovery sources ([`crate::discovery`]) feed it through [`MeshHandle::announce`] and
//! [`MeshHandle::set_seeds`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::identity::NodeId;
use crate::mesh::{Event, KeyStatus, MemberInfo, Mesh, MeshConfig, MeshError, MAX_APP_PAYLOAD};
use crate::meta::NodeState;
pub use crate::requests::RequestError;
use crate::security::{KeyRing, KeyRingError, SecurityCounters};
use crate::stream::{self, StreamCounters, StreamStats};
use kubedna_proto::ClusterSecret;

/// What the daemon can ask of a running mesh.
#[derive(Debug)]
pub enum Command {
    /// Reply with every member we know.
    Members(oneshot::Sender<Vec<MemberInfo>>),
    /// Reply with the packet security counters.
    Counters(oneshot::Sender<SecurityCounters>),
    /// Gossip a new lifecycle state.
    SetState(NodeState),
    /// Announce to a peer found by discovery.
    Announce(SocketAddr),
    /// Replace the seed list (static seeds re-resolved); new ones are announced to.
    SetSeeds(Vec<SocketAddr>),
    /// Leave gracefully; the driver returns after [`Event::Left`].
    Leave,
    /// Rotate to the key of `secret` (see [`Mesh::rotate_secret`]).
    RotateSecret {
        /// The new cluster secret.
        secret: ClusterSecret,
        /// How long the other keys stay accepted.
        grace: Duration,
        /// The key ring after the change.
        reply: oneshot::Sender<Result<KeyStatus, KeyRingError>>,
    },
    /// Reply with the key ring's ids and the rotation in progress.
    Keys(oneshot::Sender<KeyStatus>),
    /// Reply with our current identity and incarnation.
    Identity(oneshot::Sender<(NodeId, foca::Incarnation)>),
    /// Send an application request; the reply (or error) goes to `reply`.
    Request {
        /// The peer's mesh address.
        to: SocketAddr,
        /// Request kind.
        kind: u8,
        /// At most [`MAX_APP_PAYLOAD`] bytes.
        payload: Vec<u8>,
        /// How long to wait for the answer (the core resends every quarter of it).
        timeout: Duration,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    },
    /// Answer an incoming request (sent by [`IncomingRequest::respond`]).
    Respond {
        /// The requester.
        to: SocketAddr,
        /// The request's id and kind.
        id: u64,
        /// See `id`.
        kind: u8,
        /// The handler's answer.
        result: Result<Vec<u8>, String>,
    },
}

/// The mesh stopped (after a leave, or the daemon is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("the mesh is not running on this node")]
pub struct MeshStopped;

/// Why a key rotation was not applied.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RotateError {
    /// See [`MeshStopped`].
    #[error(transparent)]
    Stopped(#[from] MeshStopped),
    /// The key ring refused the key.
    #[error("the mesh key ring refused the new key")]
    Ring(#[source] KeyRingError),
}

/// A request from a peer, delivered to the handler registered with [`MeshHandle::serve`].
/// Answer it with [`IncomingRequest::respond`]; dropping it answers with an error.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The peer's mesh address (authenticated: it holds the cluster key).
    pub from: SocketAddr,
    /// Request kind.
    pub kind: u8,
    /// The request payload.
    pub payload: Vec<u8>,
    id: u64,
    commands: mpsc::WeakSender<Command>,
    answered: bool,
}

impl IncomingRequest {
    /// Sends the answer: `Ok(payload)` (at most [`MAX_APP_PAYLOAD`] bytes), or `Err(message)`
    /// for the requester's error (never put a secret in it).
    pub fn respond(mut self, result: Result<Vec<u8>, String>) {
        self.answered = true;
        self.send(result);
    }

    fn send(&self, result: Result<Vec<u8>, String>) {
        if let Some(tx) = self.commands.upgrade() {
            let _ = tx.try_send(Command::Respond {
                to: self.from,
                id: self.id,
                kind: self.kind,
                result,
            });
        }
    }
}

impl Drop for IncomingRequest {
    fn drop(&mut self) {
        if !self.answered {
            self.send(Err(
                "the handler dropped the request without an answer".into()
            ));
        }
    }
}

type Handlers = Arc<Mutex<HashMap<u8, mpsc::Sender<IncomingRequest>>>>;

/// What the rest of the daemon holds: cheap to clone, usable from any task.
#[derive(Debug, Clone)]
pub struct MeshHandle {
    id: NodeId,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    active: watch::Receiver<usize>,
    ring: watch::Receiver<KeyRing>,
    handlers: Handlers,
    stream_stats: Arc<StreamStats>,
}

impl MeshHandle {
    /// Counters of the stream path for packets too large for one datagram.
    pub fn stream_counters(&self) -> StreamCounters {
        self.stream_stats.snapshot()
    }

    /// This node's mesh address (its identity in `kubedna peers`).
    pub fn local_addr(&self) -> SocketAddr {
        self.id.addr
    }

    /// Every member we know of (not us), with liveness, metadata, last heard and RTT.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, MeshStopped> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Members(tx)).await?;
        rx.await.map_err(|_| MeshStopped)
    }

    /// Packet accept/drop counters (foreign-cluster, bad tag, replayed, ...).
    pub async fn counters(&self) -> Result<SecurityCounters, MeshStopped> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Counters(tx)).await?;
        rx.await.map_err(|_| MeshStopped)
    }

    /// Gossips our new lifecycle state.
    pub async fn set_state(&self, state: NodeState) -> Result<(), MeshStopped> {
        self.send(Command::SetState(state)).await
    }

    /// Announces to a peer found by discovery.
    pub async fn announce(&self, addr: SocketAddr) -> Result<(), MeshStopped> {
        self.send(Command::Announce(addr)).await
    }

    /// Replaces the static seed list.
    pub async fn set_seeds(&self, seeds: Vec<SocketAddr>) -> Result<(), MeshStopped> {
        self.send(Command::SetSeeds(seeds)).await
    }

    /// Rotates the mesh to the key of `secret`: accepted at once, used for sending once every
    /// live member accepts it, the other keys accepted for `grace` more (see
    /// [`Mesh::rotate_secret`]).
    pub async fn rotate_secret(
        &self,
        secret: ClusterSecret,
        grace: Duration,
    ) -> Result<KeyStatus, RotateError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::RotateSecret {
            secret,
            grace,
            reply,
        })
        .await?;
        rx.await
            .map_err(|_| MeshStopped)?
            .map_err(RotateError::Ring)
    }

    /// The key ring's ids, its primary and the rotation in progress (never key material).
    pub async fn keys(&self) -> Result<KeyStatus, MeshStopped> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Keys(tx)).await?;
        rx.await.map_err(|_| MeshStopped)
    }

    /// Our current identity (the generation grows when we rejoin after a false death) and SWIM
    /// incarnation: what the daemon persists so a restart rejoins as the next life of this node.
    pub async fn identity(&self) -> Result<(NodeId, foca::Incarnation), MeshStopped> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Identity(tx)).await?;
        rx.await.map_err(|_| MeshStopped)
    }

    /// The mesh's key ring, updated whenever a key is installed, promoted or retired (the
    /// multicast beacons seal and open with it).
    pub fn key_ring(&self) -> watch::Receiver<KeyRing> {
        self.ring.clone()
    }

    /// Starts a graceful leave; the driver task ends once peers were told.
    pub async fn leave(&self) -> Result<(), MeshStopped> {
        self.send(Command::Leave).await
    }

    /// Membership events from now on (a slow receiver loses the oldest, see `broadcast`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The number of active members besides us, updated as it changes.
    pub fn active_members(&self) -> watch::Receiver<usize> {
        self.active.clone()
    }

    /// Sends `payload` to the peer at `peer` (its mesh address) as a request of `kind`, over the
    /// authenticated, encrypted mesh transport, and waits up to `timeout` for the answer. The
    /// request is resent (same id; the peer answers duplicates from a cache, its handler runs
    /// once) every `timeout / 4` until answered.
    pub async fn request(
        &self,
        peer: SocketAddr,
        kind: u8,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RequestError> {
        if payload.len() > MAX_APP_PAYLOAD {
            return Err(RequestError::TooLarge { len: payload.len() });
        }
        let (tx, rx) = oneshot::channel();
        let command = Command::Request {
            to: peer,
            kind,
            payload,
            timeout,
            reply: tx,
        };
        self.send(command)
            .await
            .map_err(|_| RequestError::Stopped)?;
        // The core answers by the deadline (a timeout is one of its replies).
        rx.await.unwrap_or(Err(RequestError::Stopped))
    }

    /// Registers this node's handler for requests of `kind`: they arrive on the returned
    /// channel (at most `capacity` waiting; more are refused as busy). Requests of a kind
    /// nobody serves are refused at once, so the requester does not wait for its timeout.
    pub fn serve(
        &self,
        kind: u8,
        capacity: usize,
    ) -> Result<mpsc::Receiver<IncomingRequest>, RequestError> {
        let mut handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        if handlers.get(&kind).is_some_and(|tx| !tx.is_closed()) {
            return Err(RequestError::AlreadyServed { kind });
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        handlers.insert(kind, tx);
        Ok(rx)
    }

    async fn send(&self, command: Command) -> Result<(), MeshStopped> {
        self.commands.send(command).await.map_err(|_| MeshStopped)
    }
}

/// Wall clock in ms since the epoch (dates packets against replays).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds a mesh for `socket`'s address, seeded from the OS clock and the address.
pub fn new_mesh(
    mut cfg: MeshConfig,
    socket: &UdpSocket,
    secret: &ClusterSecret,
    seed: u64,
) -> Result<Mesh, MeshError> {
    if let Ok(addr) = socket.local_addr() {
        cfg.addr = addr;
    }
    Mesh::new(cfg, secret, seed, Instant::now().into_std(), wall_ms())
}

/// Spawns the driver for `mesh` on `socket` and returns the handle and the task (which ends
/// with the mesh after a graceful leave, or when every handle is dropped).
pub fn spawn(mesh: Mesh, socket: UdpSocket) -> (MeshHandle, JoinHandle<io::Result<Mesh>>) {
    let (commands, rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(256);
    let (active_tx, active) = watch::channel(0);
    let (ring_tx, ring) = watch::channel(mesh.key_ring().clone());
    let handlers: Handlers = Arc::default();
    let stream_stats = Arc::new(StreamStats::default());
    let (frames_tx, frames) = mpsc::channel(64);
    let listener = match socket.local_addr() {
        Ok(addr) => match stream::listen(addr, frames_tx, stream_stats.clone()) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "mesh: no TCP listener on the mesh address; large syncs from peers fall back to datagrams");
                None
            }
        },
        Err(_) => None,
    };
    let handle = MeshHandle {
        id: mesh.id(),
        stream_stats: stream_stats.clone(),
        commands: commands.clone(),
        events: events.clone(),
        active,
        ring,
        handlers: handlers.clone(),
    };
    let driver = Driver {
        socket: Arc::new(socket),
        _listener: listener,
        frames,
        stream_stats,
        commands: commands.downgrade(),
        events,
        active: active_tx,
        ring: ring_tx,
        handlers,
        waiting: HashMap::new(),
    };
    drop(commands);
    let task = tokio::spawn(driver.run(mesh, rx));
    (handle, task)
}

struct Driver {
    socket: Arc<UdpSocket>,
    /// Aborted with the driver.
    _listener: Option<stream::Listener>,
    /// Frames from the stream path: (sender's mesh address, sealed packet).
    frames: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    stream_stats: Arc<StreamStats>,
    commands: mpsc::WeakSender<Command>,
    events: broadcast::Sender<Event>,
    active: watch::Sender<usize>,
    ring: watch::Sender<KeyRing>,
    handlers: Handlers,
    /// Our requests in the core, by id, and who waits for each answer.
    waiting: HashMap<u64, oneshot::Sender<Result<Vec<u8>, RequestError>>>,
}

impl Driver {
    async fn run(
        mut self,
        mut mesh: Mesh,
        mut commands: mpsc::Receiver<Command>,
    ) -> io::Result<Mesh> {
        let mut buf = vec![0u8; 65_536];
        mesh.join(Instant::now().into_std());
        loop {
            let now = Instant::now();
            self.deliver(&mut mesh, now);
            self.flush(&mut mesh).await;
            let mut left = false;
            while let Some(event) = mesh.poll_event() {
                left |= event == Event::Left;
                // Nobody subscribed is fine: events are advisory.
                let _ = self.events.send(event);
            }
            let active = mesh.num_active();
            self.active
                .send_if_modified(|n| std::mem::replace(n, active) != active);
            let ring = mesh.key_ring();
            self.ring.send_if_modified(|r| {
                let same = r.key_ids() == ring.key_ids() && r.primary_id() == ring.primary_id();
                if !same {
                    *r = ring.clone();
                }
                !same
            });
            if left {
                return Ok(mesh);
            }
            let deadline = mesh.poll_timeout().map(Instant::from_std);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    match received {
                        // Rejected packets are counted by the mesh; nothing else to do with them.
                        Ok((len, from)) => {
                            let _ = mesh.handle_packet(from, &buf[..len], Instant::now().into_std());
                        }
                        // An ICMP error from an earlier send (port unreachable) surfaces here
                        // on Linux; it is the failure detector's business, not fatal.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                        Err(e) => return Err(e),
                    }
                }
                Some((from, bytes)) = self.frames.recv() => {
                    let _ = mesh.handle_packet(from, &bytes, Instant::now().into_std());
                }
                () = sleep_until(deadline) => {
                    mesh.handle_timeout(Instant::now().into_std());
                }
                command = commands.recv() => {
                    let Some(command) = command else { return Ok(mesh) };
                    self.command(&mut mesh, command);
                }
            }
        }
    }

    fn command(&mut self, mesh: &mut Mesh, command: Command) {
        let now = Instant::now();
        let std_now = now.into_std();
        match command {
            Command::Members(reply) => {
                let _ = reply.send(mesh.members());
            }
            Command::Counters(reply) => {
                let _ = reply.send(mesh.security_counters());
            }
            Command::SetState(state) => mesh.set_state(state, std_now),
            Command::Announce(addr) => mesh.announce(addr, std_now),
            Command::SetSeeds(seeds) => mesh.set_seeds(seeds, std_now),
            Command::Leave => mesh.leave(std_now),
            Command::RotateSecret {
                secret,
                grace,
                reply,
            } => {
                let result = mesh
                    .rotate_secret(&secret, grace, std_now)
                    .map(|_| mesh.key_status(std_now));
                let _ = reply.send(result);
            }
            Command::Keys(reply) => {
                let _ = reply.send(mesh.key_status(std_now));
            }
            Command::Identity(reply) => {
                let _ = reply.send((mesh.id(), mesh.incarnation()));
            }
            Command::Request {
                to,
                kind,
                payload,
                timeout,
                reply,
            } => match mesh.request(to, kind, payload, timeout, std_now) {
                Ok(id) => {
                    self.waiting.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Respond {
                to,
                id,
                kind,
                result,
            } => mesh.respond(to, id, kind, result, std_now),
        }
    }

    /// Replies to their callers, requests to their handlers; requests whose caller gave up
    /// are cancelled in the core.
    fn deliver(&mut self, mesh: &mut Mesh, now: Instant) {
        while let Some(reply) = mesh.poll_reply() {
            if let Some(tx) = self.waiting.remove(&reply.id) {
                let _ = tx.send(reply.result);
            }
        }
        self.waiting.retain(|id, tx| {
            let waited_for = !tx.is_closed();
            if !waited_for {
                mesh.cancel_request(*id);
            }
            waited_for
        });
        while let Some(req) = mesh.poll_request() {
            let handler = self
                .handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&req.kind)
                .cloned();
            let no_handler = || format!("no handler for request kind {} on this node", req.kind);
            let (from, id, kind) = (req.from, req.id, req.kind);
            let refusal = match handler {
                None => Some(no_handler()),
                Some(tx) => {
                    let request = IncomingRequest {
                        from,
                        kind,
                        payload: req.payload.clone(),
                        id,
                        commands: self.commands.clone(),
                        answered: false,
                    };
                    match tx.try_send(request) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(mut r)) => {
                            r.answered = true;
                            Some(format!(
                                "busy: too many requests of kind {kind} waiting; retry later"
                            ))
                        }
                        Err(mpsc::error::TrySendError::Closed(mut r)) => {
                            r.answered = true;
                            Some(no_handler())
                        }
                    }
                }
            };
            if let Some(message) = refusal {
                mesh.respond(from, id, kind, Err(message), now.into_std());
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn flush(&mut self, mesh: &mut Mesh) {
        let own_port = mesh.id().addr.port();
        while let Some(t) = mesh.poll_transmit() {
            if t.reliable && t.bytes.len() > stream::DATAGRAM_LIMIT {
                stream::send(
                    t.to,
                    own_port,
                    t.bytes,
                    self.socket.clone(),
                    self.stream_stats.clone(),
                );
                continue;
            }
            // A send error (unreachable peer) is what failure detection is for.
            let _ = self.socket.send_to(&t.bytes, t.to).await;
        }
    }
}

#[cfg(test)]
mod tests;
