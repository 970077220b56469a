//! The doctor as a leader duty (docs/doctor.md): [`DoctorDuty`] runs one
//! [`kubedna_doctor::pass::Doctor`] pass under the term, with [`EtcdStore`] as its store: the
//! replacement's progress, history, back-off and the admin's pause under
//! `/kubedna/<cluster>/doctor/`, every write fenced by the term; the cluster's maintenance lease
//! ([`crate::maintenance`]); etcd members with their health probed, removed only through
//! [`Coordinator::remove_member`]'s own quorum check. The maintenance hold is kept between
//! passes of one term and dropped (renewal stopped) the moment a pass runs under another term.
//! The pause is the one key written without the term: it is an admin's intent, set from any
//! control plane ([`set_paused`]). Never writes anything else outside a fenced transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubedna_doctor::guard::{Backoff, Pause, Voter};
use kubedna_doctor::pass::{Doctor, HistoryEntry, Kube, Mesh, Report, Seeds, Store, StoreError};
use kubedna_doctor::provider::Provider;
use kubedna_doctor::steps::{LeaseView, Progress};
use kubedna_doctor::DoctorEvents;

use crate::coord::{CoordError, Coordinator};
use crate::duties::{DutyError, Term};
use crate::maintenance::{MaintenanceHold, Take};
use crate::membership::RemoveRefused;

pub const PROGRESS_KEY: &str = "doctor/replacement";
pub const HISTORY_KEY: &str = "doctor/history";
pub const BACKOFF_KEY: &str = "doctor/backoff";
pub const PAUSED_KEY: &str = "doctor/paused";

/// A duty whose type the engine need not know (the doctor is generic over its boundaries).
pub trait LeaderDuty: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn pass<'a>(
        &'a self,
        term: Term<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), DutyError>> + Send + 'a>>;
}

fn stale_or<'a>(what: &'static str) -> impl FnOnce(CoordError) -> StoreError + 'a {
    move |e| match e {
        CoordError::Stale { .. } => StoreError::Stale(e.to_string()),
        other => StoreError::Failed {
            what,
            detail: kubedna_host::error_chain(&other),
        },
    }
}

/// The doctor's store: etcd under one term.
#[derive(Debug)]
pub struct EtcdStore<'a> {
    pub term: Term<'a>,
    /// This node (the lease's holder).
    pub holder: &'a str,
    pub hold: &'a Mutex<Option<MaintenanceHold>>,
    pub lease_ttl: Duration,
    pub now: u64,
}

impl EtcdStore<'_> {
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let raw = self.term.get(name).await.map_err(stale_or(what))?;
        match raw {
            None => Ok(None),
            Some(b) if b.is_empty() => Ok(None),
            Some(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Failed {
                what,
                detail: format!(
                    "/kubedna/<cluster>/{name} is not a doctor record ({e}); delete the key with etcdctl to reset it"
                ),
            }),
        }
    }

    async fn write<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        what: &'static str,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("doctor records serialize");
        self.term.put(name, bytes).await.map_err(stale_or(what))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<MaintenanceHold>> {
        match self.hold.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Store for EtcdStore<'_> {
    async fn progress(&self) -> Result<Option<Progress>, StoreError> {
        self.read(PROGRESS_KEY, "cannot read the replacement in progress")
            .await
    }

    async fn put_progress(&self, p: &Progress) -> Result<(), StoreError> {
        self.write(PROGRESS_KEY, p, "cannot record the replacement's step")
            .await
    }

    async fn clear_progress(&self) -> Result<(), StoreError> {
        self.term
            .put(PROGRESS_KEY, Vec::new())
            .await
            .map_err(stale_or("cannot clear the replacement record"))
    }

    async fn paused(&self) -> Result<Option<Pause>, StoreError> {
        self.read(PAUSED_KEY, "cannot read the doctor's pause")
            .await
    }

    async fn backoff(&self) -> Result<BTreeMap<String, Backoff>, StoreError> {
        Ok(self
            .read(BACKOFF_KEY, "cannot read the doctor's back-off")
            .await?
            .unwrap_or_default())
    }

    async fn put_backoff(&self, b: &BTreeMap<String, Backoff>) -> Result<(), StoreError> {
        self.write(BACKOFF_KEY, b, "cannot record the back-off")
            .await
    }

    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(self
            .read(HISTORY_KEY, "cannot read the doctor's history")
            .await?
            .unwrap_or_default())
    }

    async fn put_history(&self, h: &[HistoryEntry]) -> Result<(), StoreError> {
        self.write(HISTORY_KEY, &h, "cannot record the doctor's history")
            .await
    }

    async fn lease(&self, p: &Progress) -> Result<LeaseView, StoreError> {
        let seen = self
            .term
            .coord
            .maintenance()
            .await
            .map_err(stale_or("cannot read the maintenance lease"))?;
        let reason = p.lease_reason();
        Ok(match seen {
            None => LeaseView::Absent,
            Some(s) if s.record.same_work(&p.node, &reason) => {
                let ours = self.held().as_ref().is_some_and(|h| {
                    h.mod_revision == s.mod_revision
                        && h.record.term == self.term.term
                        && !h.is_lost()
                });
                if ours {
                    LeaseView::Ours
                } else {
                    LeaseView::Resumable
                }
            }
            Some(s) => LeaseView::Other {
                holder: s.record.holder,
                node: s.record.node,
                reason: s.record.reason,
            },
        })
    }

    async fn take_lease(&self, p: &Progress) -> Result<bool, StoreError> {
        let taken = self
            .term
            .coord
            .take_maintenance(
                self.term.term,
                self.holder,
                &p.node,
                &p.lease_reason(),
                self.lease_ttl,
                self.now,
            )
            .await
            .map_err(stale_or("cannot take the maintenance lease"))?;
        match taken {
            Take::Held(h) => {
                *self.held() = Some(h);
                Ok(true)
            }
            Take::Busy(_) => Ok(false),
        }
    }

    async fn release_lease(&self, p: &Progress) -> Result<(), StoreError> {
        let hold = self.held().take();
        let coord = self.term.coord;
        match hold {
            Some(h) => coord
                .release_maintenance(self.term.term, h)
                .await
                .map(|_| ())
                .map_err(stale_or("cannot release the maintenance lease")),
            None => {
                let seen = coord
                    .maintenance()
                    .await
                    .map_err(stale_or("cannot read the maintenance lease"))?;
                match seen {
                    Some(s) if s.record.same_work(&p.node, &p.lease_reason()) => coord
                        .release_maintenance_at(self.term.term, s.mod_revision)
                        .await
                        .map(|_| ())
                        .map_err(stale_or("cannot release the maintenance lease")),
                    _ => Ok(()),
                }
            }
        }
    }

    async fn members(&self) -> Result<Vec<Voter>, StoreError> {
        let members = self
            .term
            .coord
            .members()
            .await
            .map_err(stale_or("cannot list etcd's members"))?;
        let healthy = self
            .term
            .coord
            .probe_health(&members, Duration::from_secs(2))
            .await;
        Ok(members
            .into_iter()
            .map(|m| Voter {
                healthy: healthy.contains(&m.id),
                id: m.id,
                name: m.name,
                peer_urls: m.peer_urls,
                learner: m.learner,
            })
            .collect())
    }

    async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let coord = self.term.coord;
        let members = coord
            .members()
            .await
            .map_err(stale_or("cannot list etcd's members"))?;
        let healthy: BTreeSet<u64> = coord.probe_health(&members, Duration::from_secs(2)).await;
        match coord
            .remove_member_within(id, &healthy, Duration::from_secs(10))
            .await
            .map_err(stale_or("cannot remove the etcd member"))?
        {
            Ok(()) => Ok(()),
            Err(RemoveRefused::Unknown(_)) => Ok(()),
            Err(refused) => Err(StoreError::Failed {
                what: "etcd member removal refused",
                detail: refused.to_string(),
            }),
        }
    }
}

/// Sets or clears the admin's pause (`kubedna doctor pause|resume`). Not fenced by a term: any
/// control plane's agent writes the admin's intent; the leader reads it before every step.
pub async fn set_paused(coord: &Coordinator, pause: Option<&Pause>) -> Result<(), CoordError> {
    let value = match pause {
        Some(p) => serde_json::to_vec(p).expect("serializes"),
        None => Vec::new(),
    };
    coord
        .client()
        .kv_client()
        .put(coord.key(PAUSED_KEY), value, None)
        .await
        .map_err(coord.etcd_err("cannot write the doctor's pause"))?;
    Ok(())
}

/// What `kubedna doctor status|history` reads from etcd on any control plane.
pub async fn read_records(
    coord: &Coordinator,
) -> Result<(Option<Progress>, Option<Pause>, Vec<HistoryEntry>), CoordError> {
    async fn one<T: serde::de::DeserializeOwned>(
        coord: &Coordinator,
        name: &str,
    ) -> Result<Option<T>, CoordError> {
        let key = coord.key(name);
        match coord.get(&key).await? {
            None => Ok(None),
            Some(b) if b.is_empty() => Ok(None),
            Some(b) => serde_json::from_slice(&b).map_err(|_| CoordError::Corrupt { key }),
        }
    }
    Ok((
        one(coord, PROGRESS_KEY).await?,
        one(coord, PAUSED_KEY).await?,
        one(coord, HISTORY_KEY).await?.unwrap_or_default(),
    ))
}

/// The doctor as a leader duty.
pub struct DoctorDuty<P, K, M, R, E> {
    pub doctor: Doctor<P, K, M, R, E>,
    hold: Mutex<Option<MaintenanceHold>>,
    pub lease_ttl: Duration,
    /// The least time between two passes, in seconds (default 10): each pass lists the
    /// provider's VMs, and Hetzner allows 3600 requests an hour per project.
    pub every: u64,
    last: Mutex<Option<(i64, u64)>>,
    now: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl<P, K, M, R, E> std::fmt::Debug for DoctorDuty<P, K, M, R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoctorDuty")
            .field("leader", &self.doctor.leader)
            .finish_non_exhaustive()
    }
}

impl<P: Provider, K: Kube, M: Mesh, R: Seeds, E: DoctorEvents> DoctorDuty<P, K, M, R, E> {
    /// `now` gives Unix seconds (the engine's clock in production).
    pub fn new(doctor: Doctor<P, K, M, R, E>, now: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        DoctorDuty {
            doctor,
            hold: Mutex::new(None),
            lease_ttl: crate::maintenance::DEFAULT_TTL,
            every: 10,
            last: Mutex::new(None),
            now,
        }
    }

    /// The last pass's report (`kubedna doctor status` on the leader).
    pub fn report(&self) -> Report {
        self.doctor.report()
    }

    async fn run(&self, term: Term<'_>) -> Result<(), DutyError> {
        let now = (self.now)();
        {
            let mut last = match self.last.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if last.is_some_and(|(t, at)| t == term.term && now < at + self.every) {
                return Ok(());
            }
            *last = Some((term.term, now));
        }
        {
            let mut h = match self.hold.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            // A hold from an earlier term of this node: stop renewing it now.
            if h.as_ref().is_some_and(|h| h.record.term != term.term) {
                *h = None;
            }
        }
        let store = EtcdStore {
            term,
            holder: &self.doctor.leader,
            hold: &self.hold,
            lease_ttl: self.lease_ttl,
            now,
        };
        self.doctor
            .pass(&store, term.term, store.now)
            .await
            .map(|_| ())
            .map_err(|source| DutyError::Doctor {
                duty: "doctor",
                source,
            })
    }
}

impl<P, K, M, R, E> LeaderDuty for DoctorDuty<P, K, M, R, E>
where
    P: Provider + 'static,
    K: Kube + 'static,
    M: Mesh + 'static,
    R: Seeds + 'static,
    E: DoctorEvents + 'static,
{
    fn name(&self) -> &'static str {
        "doctor"
    }

    fn pass<'a>(
        &'a self,
        term: Term<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), DutyError>> + Send + 'a>> {
        Box::pin(self.run(term))
    }
}
