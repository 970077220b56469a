//! The cluster's maintenance lease: one key, `/kubedna/<cluster>/maintenance`, meaning "a node
//! is under maintenance" for patching, upgrades and the doctor alike (docs/doctor.md section 3).
//!
//! Only the leader takes it, in one transaction fenced by its term (the leader seat's create
//! revision) that also requires the key absent, or, to resume the same work after a change of
//! leader, unchanged since it was read and naming the same node and reason. The key is attached
//! to an etcd lease with a TTL that the holder's [`MaintenanceHold`] renews; dropping the hold
//! (the duty dropped when the term is lost, the process dead) stops renewal, and etcd deletes
//! the key once the TTL passes. So a dead node, or a deposed leader, never keeps it. Release is
//! a fenced delete compared on the holder's own write, then a revoke. This module must never
//! write the key without the term compare.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coord::{CoordError, Coordinator};

/// The key's name under the cluster prefix.
pub const MAINTENANCE: &str = "maintenance";
/// Default TTL: long enough to ride out a slow etcd call, short enough that a dead holder's
/// lease is free within a minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// What the key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    /// The leader node that took it and renews it.
    pub holder: String,
    /// The node under maintenance.
    pub node: String,
    /// Why: `doctor: replace w-1`, `patch: reboot`.
    pub reason: String,
    /// The term that took it.
    pub term: i64,
    /// When it was taken (Unix seconds).
    pub since: u64,
}

impl MaintenanceRecord {
    /// Whether `other` is the same work (same node and reason), whoever holds it.
    pub fn same_work(&self, node: &str, reason: &str) -> bool {
        self.node == node && self.reason == reason
    }
}

/// The key as read, with the revision a takeover compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSeen {
    pub record: MaintenanceRecord,
    pub mod_revision: i64,
    pub lease: i64,
}

/// Held while the holder renews the lease; dropping it stops renewal (the key then lives at most
/// the TTL), [`Coordinator::release_maintenance`] deletes it at once.
#[derive(Debug)]
pub struct MaintenanceHold {
    pub record: MaintenanceRecord,
    pub lease: i64,
    /// The revision of the holder's own write: release compares on it.
    pub mod_revision: i64,
    lost: watch::Receiver<bool>,
    renew: JoinHandle<()>,
}

impl MaintenanceHold {
    /// Whether renewal failed until the TTL ran out (the key is gone or about to be).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once renewal has stopped for good (TTL run out, lease gone, term over).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }
}

impl Drop for MaintenanceHold {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// The outcome of [`Coordinator::take_maintenance`].
#[derive(Debug)]
pub enum Take {
    Held(MaintenanceHold),
    /// Someone holds it for other work.
    Busy(MaintenanceRecord),
}

impl Coordinator {
    /// The maintenance key, if held.
    pub async fn maintenance(&self) -> Result<Option<MaintenanceSeen>, CoordError> {
        let key = self.key(MAINTENANCE);
        let resp = self
            .client()
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(self.etcd_err("cannot read the maintenance lease"))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let record: MaintenanceRecord =
            serde_json::from_slice(kv.value()).map_err(|_| CoordError::Corrupt { key })?;
        Ok(Some(MaintenanceSeen {
            record,
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }))
    }

    /// Takes the maintenance lease for `node` and `reason` under `term`, or takes it over when it
    /// is held for the same node and reason (a new leader resuming the work). Returns
    /// [`Take::Busy`] when it is held for other work, [`CoordError::Stale`] when `term` no longer
    /// leads.
    pub async fn take_maintenance(
        &self,
        term: i64,
        holder: &str,
        node: &str,
        reason: &str,
        ttl: Duration,
        now_unix: u64,
    ) -> Result<Take, CoordError> {
        let seen = self.maintenance().await?;
        if let Some(s) = &seen {
            if !s.record.same_work(node, reason) {
                return Ok(Take::Busy(s.record.clone()));
            }
        }
        let mut leases = self.client().lease_client();
        let lease = leases
            .grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(self.etcd_err("cannot grant the maintenance lease"))?
            .id();
        let record = MaintenanceRecord {
            holder: holder.into(),
            node: node.into(),
            reason: reason.into(),
            term,
            since: seen.as_ref().map_or(now_unix, |s| s.record.since),
        };
        let key = self.key(MAINTENANCE);
        let leader = self.key("leader");
        let unchanged = match &seen {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(s) => Compare::mod_revision(key.as_str(), CompareOp::Equal, s.mod_revision),
        };
        let value = serde_json::to_vec(&record).expect("serializes");
        let txn = Txn::new()
            .when([
                Compare::create_revision(leader.as_str(), CompareOp::Equal, term),
                unchanged,
            ])
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self
            .client()
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.etcd_err("cannot take the maintenance lease"));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let _ = leases.revoke(lease).await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            let _ = leases.revoke(lease).await;
            // Either the term is gone or the key moved under us: say which.
            let current = self.leader().await?;
            if current.as_ref().map(|(_, t)| *t) != Some(term) {
                return Err(CoordError::Stale {
                    term,
                    current: current.map_or("nobody".into(), |(r, _)| r.node),
                });
            }
            return match self.maintenance().await? {
                Some(s) => Ok(Take::Busy(s.record)),
                // It expired between the read and the write: the caller retries.
                None => Ok(Take::Busy(record)),
            };
        }
        if let Some(old) = seen.filter(|s| s.lease != 0) {
            // The previous holder's lease no longer carries the key; free it.
            let _ = leases.revoke(old.lease).await;
        }
        let mod_revision = resp.header().map_or(0, |h| h.revision());
        let (lost_tx, lost) = watch::channel(false);
        let renew = tokio::spawn(renew(
            self.client(),
            lease,
            ttl,
            (self.key("leader"), term),
            lost_tx,
        ));
        Ok(Take::Held(MaintenanceHold {
            record,
            lease,
            mod_revision,
            lost,
            renew,
        }))
    }

    /// Deletes the key if it is still this hold's write and `term` still leads, then revokes the
    /// lease. Returns whether the key was deleted (false: it had expired or was taken over).
    pub async fn release_maintenance(
        &self,
        term: i64,
        hold: MaintenanceHold,
    ) -> Result<bool, CoordError> {
        hold.renew.abort();
        let deleted = self.release_maintenance_at(term, hold.mod_revision).await?;
        let _ = self.client().lease_client().revoke(hold.lease).await;
        Ok(deleted)
    }

    /// Deletes the key if its mod revision is still `mod_revision` and `term` still leads: the
    /// release of a hold whose handle was lost (a new leader finishing its predecessor's work
    /// passes the revision it read).
    pub async fn release_maintenance_at(
        &self,
        term: i64,
        mod_revision: i64,
    ) -> Result<bool, CoordError> {
        let key = self.key(MAINTENANCE);
        let leader = self.key("leader");
        let txn = Txn::new()
            .when([
                Compare::create_revision(leader.as_str(), CompareOp::Equal, term),
                Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_revision),
            ])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let resp = self
            .client()
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.etcd_err("cannot release the maintenance lease"))?;
        if resp.succeeded() {
            return Ok(true);
        }
        let current = self.leader().await?;
        if current.as_ref().map(|(_, t)| *t) != Some(term) {
            return Err(CoordError::Stale {
                term,
                current: current.map_or("nobody".into(), |(r, _)| r.node),
            });
        }
        Ok(false)
    }
}

/// Renews the lease every TTL/3 until etcd says it is gone, the TTL passed without an
/// acknowledged renewal, or the leader seat is no longer held under the taker's term (a deposed
/// leader stops keeping the key alive even if its duty was not dropped); then `lost` turns
/// true. Errors are retried on a fresh stream.
async fn renew(
    client: etcd_client::Client,
    lease: i64,
    ttl: Duration,
    (seat, term): (String, i64),
    lost: watch::Sender<bool>,
) {
    let every = Duration::from_millis((ttl.as_millis() / 3).max(100) as u64);
    let retry = Duration::from_millis((ttl.as_millis() / 20).max(50) as u64);
    let mut valid_until = tokio::time::Instant::now() + ttl;
    let mut stream = None;
    loop {
        if tokio::time::Instant::now() >= valid_until {
            break;
        }
        let sent = tokio::time::Instant::now();
        let attempt = async {
            let leader = client.kv_client().get(seat.as_str(), None).await.ok()?;
            if leader.kvs().first().map(|kv| kv.create_revision()) != Some(term) {
                return Some(-1);
            }
            if stream.is_none() {
                stream = client.lease_client().keep_alive(lease).await.ok();
            }
            let (keeper, replies) = stream.as_mut()?;
            keeper.keep_alive().await.ok()?;
            replies.message().await.ok().flatten().map(|r| r.ttl())
        };
        let left = valid_until.saturating_duration_since(sent);
        match tokio::time::timeout(every.min(left), attempt).await {
            Ok(Some(t)) if t > 0 => {
                valid_until = sent + Duration::from_secs(t as u64);
                tokio::time::sleep(every).await;
            }
            // etcd says the lease is gone, or (-1) the term is over: stop renewing; etcd frees
            // the key within the TTL.
            Ok(Some(_)) => break,
            _ => {
                stream = None;
                tokio::time::sleep(retry).await;
            }
        }
    }
    let _ = lost.send(true);
}
