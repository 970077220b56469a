//! What must happen once, decided in etcd. Keys live under `/kubedna/<cluster>/`.
//!
//! - `init`: [`Coordinator::init_once`] is one transaction, `create_revision(init) == 0 → put`,
//!   so among any number of racing callers exactly one is told [`InitDecision::Won`].
//! - `leader`: [`Coordinator::campaign`] puts the key bound to a lease; the key's create revision
//!   is the leader's **term**, strictly increasing across leaders. Every leader write goes through
//!   [`Coordinator::fenced_put`], a transaction that commits only while `create_revision(leader)`
//!   still equals the writer's term, so a deposed leader's writes are refused.
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
    lost: watch::Receiver<bool>,
    renew: JoinHandle<()>,
}

impl Leadership {
    /// Resolves when renewal fails or the lease is gone.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
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
        Ok(Coordinator::with_client(client, endpoints, cluster))
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
        Ok(Coordinator::with_client(client, endpoints, cluster))
    }

    fn with_client(client: Client, endpoints: &[String], cluster: &str) -> Self {
        Coordinator {
            client,
            endpoints: endpoints.to_vec(),
            prefix: format!("/kubedna/{cluster}/"),
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

    /// Decides, once for the whole cluster, which node runs `kubeadm init`.
    pub async fn init_once(&self, node: &str) -> Result<InitDecision, CoordError> {
        let key = self.key("init");
        let value = serde_json::to_vec(&InitRecord { node: node.into() }).expect("serializes");
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
        let by = first_value::<InitRecord>(resp.op_responses(), &key)?.node;
        Ok(InitDecision::Taken { by })
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
        let (keeper, stream) = lease_client
            .keep_alive(lease)
            .await
            .map_err(self.err("cannot renew the lease"))?;
        let (lost_tx, lost) = watch::channel(false);
        let every = Duration::from_millis((ttl.as_millis() / 3).max(100) as u64);
        let renew = tokio::spawn(renew_loop(keeper, stream, every, lost_tx));
        Ok(Some(Leadership {
            node: node.into(),
            term,
            lease,
            lost,
            renew,
        }))
    }

    /// Gives up leadership at once.
    pub async fn resign(&self, leadership: Leadership) -> Result<(), CoordError> {
        leadership.renew.abort();
        self.client
            .lease_client()
            .revoke(leadership.lease)
            .await
            .map_err(self.err("cannot revoke the lease"))?;
        Ok(())
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

async fn renew_loop(
    mut keeper: etcd_client::LeaseKeeper,
    mut stream: etcd_client::LeaseKeepAliveStream,
    every: Duration,
    lost: watch::Sender<bool>,
) {
    loop {
        if keeper.keep_alive().await.is_err() {
            break;
        }
        match stream.message().await {
            Ok(Some(r)) if r.ttl() > 0 => {}
            _ => break,
        }
        tokio::time::sleep(every).await;
    }
    let _ = lost.send(true);
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
