//! What must happen once, decided in etcd. Keys live under `/kubedna/<cluster>/`.
//!
//! - `init`: [`Coordinator::init_once`] is one transaction, `create_revision(init) == 0 → put`,
//!   so among any number of racing callers exactly one is told [`InitDecision::Won`]. The record
//!   carries the caller's nonce (persisted by the caller before the transaction), so a caller
//!   whose transaction committed but whose reply was lost is told `Won` again on retry.
//! - `leader`: [`Coordinator::campaign`] puts the key bound to a lease; the key's create revision
//!   is the leader's **term**, strictly increasing across leaders. Every leader write goes through
//!   [`Coordinator::fenced_put`], a transaction that commits only while `create_revision(leader)`
//!   still equals the writer's term, so a deposed leader's writes are refused.
//!
//! A lease-bound key's holder ([`Leadership`]) keeps renewing through errors (a crashed member,
//! a dropped stream) until the TTL has truly run out, and learns at once, by a watch on the key,
//! when the key is deleted or taken over ([`Leadership::lost`]). A restarted holder takes its
//! own lease back with [`Coordinator::resume`] before the TTL runs out, so a lock held across
//! an agent restart is never free in between.
//!
//! A leader that stops renewing (crashed, paused, cut off) loses its lease after the TTL and etcd
//! deletes the key; [`Coordinator::wait_vacant`] wakes on that delete through a watch. Sooner, a
//! follower that saw the leader's node leave the mesh empties the seat with
//! [`Coordinator::vacate`], a delete guarded by the same term compare (docs/control-plane.md).

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd at {endpoints:?}: {what}")]
    Etcd {
        endpoints: Vec<String>,
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("stale term {term}: {current} now leads; this node is no longer leader and its write was refused")]
    Stale { term: i64, current: String },
    #[error("etcd answered {key} with something that is not a KubeDNA record")]
    Corrupt { key: String },
}

/// What a lease-bound key's renewal needs: the lease, its TTL, the key and the term it holds.
struct Seat {
    lease: i64,
    ttl: Duration,
    key: String,
    term: i64,
}

/// Who initialises the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitDecision {
    /// This node won: it alone runs `kubeadm init`.
    Won { revision: i64 },
    /// Another node already won.
    Taken { by: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InitRecord {
    node: String,
    /// The claimant's nonce; absent in records written before nonces existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub node: String,
}

/// Held while this node leads; dropping it stops renewal (as a crash would), [`Leadership::resign`]
/// gives the lease back at once.
#[derive(Debug)]
pub struct Leadership {
    pub node: String,
    pub term: i64,
    pub lease: i64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    renew: JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the key is gone or held under another term, or the lease's TTL ran out
    /// without a successful renewal. Errors alone never resolve it: renewal is retried until
    /// the TTL has truly run out.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Whether [`Leadership::lost`] has resolved, without waiting.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops renewing without revoking: what a crash or a pause looks like to etcd.
    pub fn abandon(self) {
        self.renew.abort();
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

#[derive(Clone)]
pub struct Coordinator {
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    /// The member certificate it connected with (None: plain, for tests' etcd): probes of
    /// single members use the same.
    files: Option<crate::pki::MemberFiles>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Coordinator {
    pub async fn connect(endpoints: &[String], cluster: &str) -> Result<Self, CoordError> {
        let client = Client::connect(endpoints, None)
            .await
            .map_err(|source| CoordError::Etcd {
                endpoints: endpoints.to_vec(),
                what: "cannot connect",
                source,
            })?;
        Ok(Coordinator::with_client(client, endpoints, cluster, None))
    }

    /// The members that answer a status call on one of their client URLs within `timeout`,
    /// reached with this coordinator's own credentials (mutual TLS in production).
    pub async fn probe_health(
        &self,
        members: &[crate::membership::MemberInfo],
        timeout: Duration,
    ) -> std::collections::BTreeSet<u64> {
        let mut healthy = std::collections::BTreeSet::new();
        for m in members {
            for url in &m.client_urls {
                let probe = async {
                    let endpoint = std::slice::from_ref(url);
                    let mut c = match &self.files {
                        Some(files) => Self::connect_tls(endpoint, "", files).await.ok()?,
                        None => Self::connect(endpoint, "").await.ok()?,
                    };
                    c.client.status().await.ok()
                };
                if tokio::time::timeout(timeout, probe)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    healthy.insert(m.id);
                    break;
                }
            }
        }
        healthy
    }

    /// [`Coordinator::connect_tls`] to the endpoints that answer a status call within 2 s each
    /// (all of them if none does). The client spreads calls over its endpoints and a call sent
    /// to one that refuses connections fails instead of moving on (etcd-client#39), so a
    /// long-lived connection should hold only members that serve.
    pub async fn connect_tls_serving(
        endpoints: &[String],
        cluster: &str,
        files: &crate::pki::MemberFiles,
    ) -> Result<Self, CoordError> {
        let mut serving = Vec::new();
        for e in endpoints {
            let probe = async {
                let mut c = Self::connect_tls(std::slice::from_ref(e), cluster, files)
                    .await
                    .ok()?;
                c.client.status().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                serving.push(e.clone());
            }
        }
        let chosen = if serving.is_empty() {
            endpoints
        } else {
            &serving[..]
        };
        Self::connect_tls(chosen, cluster, files).await
    }

    /// The endpoints this coordinator was connected with.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Connects with mutual TLS using a member's client certificate (see [`crate::pki`]).
    pub async fn connect_tls(
        endpoints: &[String],
        cluster: &str,
        files: &crate::pki::MemberFiles,
    ) -> Result<Self, CoordError> {
        let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&files.ca)))
            .identity(etcd_client::Identity::from_pem(
                read(&files.client_cert),
                read(&files.client_key),
            ));
        // A member that dies without closing its connections (power cut, partition) must not
        // hang calls routed to it: HTTP/2 keep-alive drops the dead connection within ~4 s, and
        // every unary call gives up after 10 s (a stream's lifetime is not limited by it).
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| CoordError::Etcd {
                endpoints: endpoints.to_vec(),
                what: "cannot connect with TLS",
                source,
            })?;
        Ok(Coordinator::with_client(
            client,
            endpoints,
            cluster,
            Some(files.clone()),
        ))
    }

    fn with_client(
        client: Client,
        endpoints: &[String],
        cluster: &str,
        files: Option<crate::pki::MemberFiles>,
    ) -> Self {
        Coordinator {
            client,
            endpoints: endpoints.to_vec(),
            prefix: format!("/kubedna/{cluster}/"),
            files,
        }
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(crate) fn etcd_err(
        &self,
        what: &'static str,
    ) -> impl FnOnce(etcd_client::Error) -> CoordError + '_ {
        self.err(what)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(etcd_client::Error) -> CoordError + '_ {
        move |source| CoordError::Etcd {
            endpoints: self.endpoints.clone(),
            what,
            source,
        }
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Decides, once for the whole cluster, which node runs `kubeadm init`. `nonce` identifies
    /// this claim: the caller persists it before calling, so a retry after a lost reply (the
    /// transaction committed, the answer never arrived) is told `Won` again.
    pub async fn init_once(&self, node: &str, nonce: &str) -> Result<InitDecision, CoordError> {
        let key = self.key("init");
        let value = serde_json::to_vec(&InitRecord {
            node: node.into(),
            nonce: Some(nonce.into()),
        })
        .expect("serializes");
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.err("init transaction failed"))?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            return Ok(InitDecision::Won { revision });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        let rec = first_value::<InitRecord>(resp.op_responses(), &key)?;
        if rec.node == node && rec.nonce.as_deref() == Some(nonce) {
            return Ok(InitDecision::Won { revision });
        }
        Ok(InitDecision::Taken { by: rec.node })
    }

    /// The current leader and its term, if any.
    pub async fn leader(&self) -> Result<Option<(LeaderRecord, i64)>, CoordError> {
        let key = self.key("leader");
        let resp = self
            .client
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(self.err("cannot read the leader"))?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let rec: LeaderRecord =
                    serde_json::from_slice(kv.value()).map_err(|_| CoordError::Corrupt { key })?;
                Ok(Some((rec, kv.create_revision())))
            }
        }
    }

    /// Tries once to become leader with a lease of `ttl`. Returns None while another node leads.
    pub async fn campaign(
        &self,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Leadership>, CoordError> {
        self.acquire("leader", node, ttl).await
    }

    /// Tries once to hold the lease-bound key `name` (the leader seat, the join lock). The
    /// returned term is the key's create revision. Returns None while another node holds it.
    pub async fn acquire(
        &self,
        name: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Leadership>, CoordError> {
        let mut lease_client = self.client.lease_client();
        let ttl_s = ttl.as_secs().max(1) as i64;
        let lease = lease_client
            .grant(ttl_s, None)
            .await
            .map_err(self.err("cannot grant a lease"))?
            .id();
        let key = self.key(name);
        let value = serde_json::to_vec(&LeaderRecord { node: node.into() }).expect("serializes");
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.err("campaign transaction failed"))?;
        if !resp.succeeded() {
            let _ = lease_client.revoke(lease).await;
            return Ok(None);
        }
        let term = resp.header().map_or(0, |h| h.revision());
        Ok(Some(self.hold(node, lease, ttl, key, term)))
    }

    /// Takes back a lease-bound key this node held before a restart (the lease ID persisted
    /// when it was acquired): only if the key still exists under that lease and names `node`,
    /// and the lease still has time left. Returns None otherwise (the key is free or taken).
    pub async fn resume(
        &self,
        name: &str,
        node: &str,
        lease: i64,
        ttl: Duration,
    ) -> Result<Option<Leadership>, CoordError> {
        let key = self.key(name);
        let resp = self
            .client
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(self.err("cannot read a lease-bound key"))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let holder: Option<LeaderRecord> = serde_json::from_slice(kv.value()).ok();
        if kv.lease() != lease || holder.is_none_or(|h| h.node != node) {
            return Ok(None);
        }
        let term = kv.create_revision();
        let (mut keeper, mut stream) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(self.err("cannot renew the lease"))?;
        keeper
            .keep_alive()
            .await
            .map_err(self.err("cannot renew the lease"))?;
        match stream.message().await {
            Ok(Some(r)) if r.ttl() > 0 => Ok(Some(self.hold(node, lease, ttl, key, term))),
            _ => Ok(None),
        }
    }

    fn hold(&self, node: &str, lease: i64, ttl: Duration, key: String, term: i64) -> Leadership {
        let (lost_tx, lost) = watch::channel(false);
        let seat = Seat {
            lease,
            ttl,
            key,
            term,
        };
        let renew = tokio::spawn(hold_loop(self.client.clone(), seat, lost_tx));
        Leadership {
            node: node.into(),
            term,
            lease,
            ttl,
            lost,
            renew,
        }
    }

    /// Whether etcd holds any key under `prefix` (`/registry/`: Kubernetes has written data).
    pub async fn any_key_under(&self, prefix: &str) -> Result<bool, CoordError> {
        let resp = self
            .client
            .kv_client()
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            )
            .await
            .map_err(self.err("cannot read"))?;
        Ok(!resp.kvs().is_empty())
    }

    /// Gives up leadership at once.
    ///
    /// The revoke is retried until the lease's TTL would have run out anyway: after an etcd
    /// member restarts, the client's first call to it fails before it reconnects, and a revoke
    /// given up on that error left the key held for a whole TTL (seen in the lab: the next
    /// control-plane join waited 15 s for a lock whose holder had finished). A lease etcd no
    /// longer knows is already given back.
    pub async fn resign(&self, leadership: Leadership) -> Result<(), CoordError> {
        leadership.renew.abort();
        let deadline = tokio::time::Instant::now() + leadership.ttl;
        let retry = Duration::from_millis((leadership.ttl.as_millis() / 20).max(50) as u64);
        loop {
            match self.client.lease_client().revoke(leadership.lease).await {
                Ok(_) => return Ok(()),
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("lease not found") =>
                {
                    return Ok(())
                }
                Err(e) if tokio::time::Instant::now() + retry >= deadline => {
                    return Err(self.err("cannot revoke the lease")(e))
                }
                Err(_) => tokio::time::sleep(retry).await,
            }
        }
    }

    /// Waits until no node leads (the leader key is absent or deleted).
    pub async fn wait_vacant(&self) -> Result<(), CoordError> {
        let key = self.key("leader");
        let resp = self
            .client
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(self.err("cannot read the leader"))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(());
        };
        let from = resp.header().map_or(kv.mod_revision(), |h| h.revision()) + 1;
        let mut stream = self
            .client
            .watch_client()
            .watch(
                key.as_str(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await
            .map_err(self.err("cannot watch the leader"))?;
        while let Some(msg) = stream
            .message()
            .await
            .map_err(self.err("the leader watch failed"))?
        {
            if msg
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes `key` only while `term` is the current leader's term.
    pub async fn fenced_put(&self, term: i64, key: &str, value: Vec<u8>) -> Result<(), CoordError> {
        let leader = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.as_str(),
                CompareOp::Equal,
                term,
            )])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(leader.as_str(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.err("fenced write failed"))?;
        if resp.succeeded() {
            return Ok(());
        }
        let current = match first_value::<LeaderRecord>(resp.op_responses(), &leader) {
            Ok(r) => r.node,
            Err(_) => "nobody".into(),
        };
        Err(CoordError::Stale { term, current })
    }

    /// Whether the seat is still held under `term`: a transaction that only compares, so it
    /// is answered by the etcd leader with the same linearizability as a fenced write.
    pub async fn holds(&self, term: i64) -> Result<bool, CoordError> {
        let leader = self.key("leader");
        let txn = Txn::new().when([Compare::create_revision(
            leader.as_str(),
            CompareOp::Equal,
            term,
        )]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.err("term check failed"))?;
        Ok(resp.succeeded())
    }

    /// Empties the leader seat if, and only if, it is still held under `term`: a compare (the
    /// key's create revision) and delete in one transaction, so a seat taken again since (a new
    /// term) is never touched. The old holder's lease lives on without the key; its fenced
    /// writes are refused from here on. Returns whether the seat was emptied.
    pub async fn vacate(&self, term: i64) -> Result<bool, CoordError> {
        let leader = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.as_str(),
                CompareOp::Equal,
                term,
            )])
            .and_then([TxnOp::delete(leader.as_str(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.err("cannot empty the leader seat"))?;
        Ok(resp.succeeded())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CoordError> {
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(self.err("cannot read"))?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }
}

/// Keeps a lease-bound key held: renews the lease every TTL/3 and watches the key, until the
/// key is gone (deleted, or recreated under another term), etcd reports the lease expired, or
/// the TTL has passed since the last renewal etcd acknowledged. Failed calls (a crashed member,
/// a broken stream) are retried on a fresh stream, which the client may route to another
/// member, until then: a single error never gives the key up early.
async fn hold_loop(client: Client, seat: Seat, lost: watch::Sender<bool>) {
    tokio::select! {
        () = renew(client.clone(), &seat) => {}
        () = watch_gone(client, &seat) => {}
    }
    let _ = lost.send(true);
}

async fn renew(client: Client, seat: &Seat) {
    let every = Duration::from_millis((seat.ttl.as_millis() / 3).max(100) as u64);
    let retry = Duration::from_millis((seat.ttl.as_millis() / 20).max(50) as u64);
    // The lease was granted or renewed just before this loop started.
    let mut valid_until = tokio::time::Instant::now() + seat.ttl;
    let mut stream = None;
    loop {
        if tokio::time::Instant::now() >= valid_until {
            return;
        }
        let sent = tokio::time::Instant::now();
        let attempt = async {
            if stream.is_none() {
                stream = client.lease_client().keep_alive(seat.lease).await.ok();
            }
            let (keeper, replies) = stream.as_mut()?;
            keeper.keep_alive().await.ok()?;
            replies.message().await.ok().flatten().map(|r| r.ttl())
        };
        let left = valid_until.saturating_duration_since(sent);
        match tokio::time::timeout(every.min(left), attempt).await {
            Ok(Some(ttl)) if ttl > 0 => {
                valid_until = sent + Duration::from_secs(ttl as u64);
                tokio::time::sleep(every).await;
            }
            // etcd says the lease is gone.
            Ok(Some(_)) => return,
            _ => {
                stream = None;
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Returns once the key is deleted or held under another term.
async fn watch_gone(client: Client, seat: &Seat) {
    let retry = Duration::from_millis((seat.ttl.as_millis() / 20).max(50) as u64);
    loop {
        let from = match client.kv_client().get(seat.key.as_str(), None).await {
            Ok(resp) => match resp.kvs().first() {
                Some(kv) if kv.create_revision() == seat.term => {
                    resp.header().map_or(kv.mod_revision(), |h| h.revision()) + 1
                }
                _ => return,
            },
            Err(_) => {
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let opened = client
            .watch_client()
            .watch(
                seat.key.as_str(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await;
        if let Ok(mut events) = opened {
            while let Ok(Some(msg)) = events.message().await {
                if msg.events().iter().any(|e| {
                    e.event_type() == EventType::Delete
                        || e.kv().is_some_and(|kv| kv.create_revision() != seat.term)
                }) {
                    return;
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

fn first_value<T: for<'de> Deserialize<'de>>(
    ops: Vec<TxnOpResponse>,
    key: &str,
) -> Result<T, CoordError> {
    ops.into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or_else(|| CoordError::Corrupt { key: key.into() })
}
