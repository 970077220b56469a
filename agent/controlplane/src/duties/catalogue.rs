//! The catalogue duty: the leader keeps the cluster at the catalogue's pinned state
//! ([`kubedna_catalogue`]). It runs a pass when the bundle changed (its digest) and every
//! `interval` otherwise (drift), under the term: the runner asks [`Term::holds`] before every
//! write to the API server, and records its progress under `/kubedna/<cluster>/catalogue`
//! with [`Term::put`], so a deposed leader stops before its next write and the next leader
//! resumes from the live objects and that record. It never uses `admin.conf`: the API client
//! comes from the agent's own kubeconfig (`catalogue.kubeconfig`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubedna_catalogue::credentials;
use kubedna_catalogue::kube_cluster::KubeCluster;
use kubedna_catalogue::progress::{Event, EventSink, Progress, PROGRESS_KEY};
use kubedna_catalogue::run::{Ledger, LedgerError, RunError, Runner};
use kubedna_catalogue::{CatalogueError, Selection};
use kubedna_host::atomic::write_atomic;
use kubedna_proto::error_chain;

use super::{DutyError, Term};
use crate::coord::{CoordError, Coordinator};
use kubedna_catalogue::plan::Step;

/// What the agent config says about the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueSettings {
    /// The bundle directory (`catalogue.yaml` and the manifests).
    pub bundle: PathBuf,
    /// The agent's own kubeconfig for the API server.
    pub kubeconfig: PathBuf,
    pub selection: Selection,
    /// Re-apply (drift correction) this often when the bundle did not change.
    pub interval: Duration,
    /// How long one health check may take before the rollout stops.
    pub health_timeout: Duration,
    /// The cluster admin's kubeconfig (`/etc/kubernetes/admin.conf` on a control plane): used
    /// only to issue and renew the catalogue's own ServiceAccount, role and token
    /// ([`kubedna_catalogue::credentials`]) into `kubeconfig`. None: `kubeconfig` is provided.
    pub admin_kubeconfig: Option<PathBuf>,
}

pub struct CatalogueDuty {
    pub settings: CatalogueSettings,
    pub events: EventSink,
    cluster: tokio::sync::Mutex<Option<Arc<KubeCluster>>>,
    /// The digest and time of the last pass of this node (any outcome).
    last: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for CatalogueDuty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogueDuty")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CatalogueDuty {
    pub fn new(settings: CatalogueSettings, events: EventSink) -> Self {
        CatalogueDuty {
            settings,
            events,
            cluster: tokio::sync::Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    async fn cluster(&self) -> Result<Arc<KubeCluster>, DutyError> {
        let mut slot = self.cluster.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = KubeCluster::from_kubeconfig(&self.settings.kubeconfig)
            .await
            .map_err(|e| DutyError::Catalogue {
                source: Box::new(RunError::Read(e)),
            })?;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn due(&self, digest: &str) -> bool {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((d, at)) => d != digest || at.elapsed() >= self.settings.interval,
            None => true,
        }
    }

    fn last_key(&self) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref().map(|(k, _)| k.clone())
    }

    fn done(&self, digest: String) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((digest, Instant::now()));
    }

    /// One pass under `term`, if due.
    pub async fn pass(&self, term: Term<'_>) -> Result<(), DutyError> {
        let ledger = TermLedger { term };
        let cat = match kubedna_catalogue::load(&self.settings.bundle) {
            Ok(c) => c,
            Err(e) => {
                // Audited and recorded once per distinct refusal, not every interval.
                let text = error_chain(&e);
                if self.last_key().as_deref() != Some(text.as_str()) {
                    self.done(text);
                    self.refused(&ledger, &e).await?;
                }
                return Err(DutyError::Catalogue {
                    source: Box::new(RunError::Refused(e)),
                });
            }
        };
        if let Some(admin) = self.settings.admin_kubeconfig.as_deref() {
            if admin.exists() {
                self.credentials(term, admin, &cat).await?;
            }
        }
        if !self.due(&cat.digest) {
            return Ok(());
        }
        let cluster = self.cluster().await?;
        let runner = Runner {
            cluster: &*cluster,
            ledger: &ledger,
            events: &self.events,
            health_timeout: self.settings.health_timeout,
            term: term.term,
        };
        let r = runner.pass(&cat, &self.settings.selection).await;
        self.done(cat.digest.clone());
        match r {
            Ok(report) => {
                if report.writes + report.deletes > 0 {
                    tracing::info!(
                        term = term.term,
                        version = %cat.version,
                        writes = report.writes,
                        deletes = report.deletes,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        "catalogue applied"
                    );
                }
                Ok(())
            }
            Err(e) => Err(DutyError::Catalogue {
                source: Box::new(e),
            }),
        }
    }

    /// Issues the catalogue's credentials when due (missing, a third of the token's life left,
    /// or the catalogue's API groups changed), under the term: a deposed leader does not.
    async fn credentials(
        &self,
        term: Term<'_>,
        admin: &std::path::Path,
        cat: &kubedna_catalogue::Catalogue,
    ) -> Result<(), DutyError> {
        let kubeconfig = &self.settings.kubeconfig;
        let sidecar = PathBuf::from(format!("{}.json", kubeconfig.display()));
        let issued: Option<credentials::Issued> = std::fs::read(&sidecar)
            .ok()
            .filter(|_| kubeconfig.exists())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let groups = credentials::groups(cat);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if !credentials::due(issued.as_ref(), &groups, now) {
            return Ok(());
        }
        let read = |e| DutyError::Catalogue {
            source: Box::new(RunError::Read(e)),
        };
        match term.holds().await {
            Ok(true) => {}
            Ok(false) => {
                return Err(DutyError::Catalogue {
                    source: Box::new(RunError::Ledger(LedgerError::Stale(
                        format!("term {} no longer holds the leader seat", term.term).into(),
                    ))),
                })
            }
            Err(e) => {
                return Err(DutyError::Catalogue {
                    source: Box::new(RunError::Ledger(ledger_err(e))),
                })
            }
        }
        let (text, issued) = credentials::issue(admin, &groups, now)
            .await
            .map_err(read)?;
        let write = |source| DutyError::Write {
            duty: "catalogue",
            source,
        };
        write_atomic(kubeconfig, text.as_bytes(), 0o600).map_err(write)?;
        let record = serde_json::to_vec(&issued).unwrap_or_default();
        write_atomic(&sidecar, &record, 0o600).map_err(write)?;
        // The next pass connects with the new token.
        *self.cluster.lock().await = None;
        tracing::info!(
            kubeconfig = %kubeconfig.display(),
            expires_unix = issued.expires_unix,
            "catalogue credentials issued"
        );
        Ok(())
    }

    /// A bundle that does not load: the event, and the reason in the record.
    async fn refused(&self, ledger: &TermLedger<'_>, e: &CatalogueError) -> Result<(), DutyError> {
        let problems = match e {
            CatalogueError::Invalid { problems } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![error_chain(other)],
        };
        (self.events)(&Event::Refused { problems });
        let wrap = |e: LedgerError| DutyError::Catalogue {
            source: Box::new(RunError::Ledger(e)),
        };
        let mut p: Progress = ledger
            .load()
            .await
            .map_err(wrap)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        p.last_error = Some(error_chain(e));
        p.term = ledger.term.term;
        let bytes = serde_json::to_vec(&p).unwrap_or_default();
        ledger.save(bytes).await.map_err(wrap)
    }
}

/// The runner's ledger over the leader term: fence = the seat still held under the term;
/// progress under `/kubedna/<cluster>/catalogue`, written fenced.
struct TermLedger<'a> {
    term: Term<'a>,
}

fn ledger_err(e: CoordError) -> LedgerError {
    match e {
        e @ CoordError::Stale { .. } => LedgerError::Stale(Box::new(e)),
        e => LedgerError::Store(Box::new(e)),
    }
}

impl Ledger for TermLedger<'_> {
    async fn fence(&self) -> Result<(), LedgerError> {
        match self.term.coord.holds(self.term.term).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(LedgerError::Stale(
                format!("term {} no longer holds the leader seat", self.term.term).into(),
            )),
            Err(e) => Err(ledger_err(e)),
        }
    }

    async fn load(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.term.get(PROGRESS_KEY).await.map_err(ledger_err)
    }

    async fn save(&self, value: Vec<u8>) -> Result<(), LedgerError> {
        self.term.put(PROGRESS_KEY, value).await.map_err(ledger_err)
    }
}

/// A ledger that only reads: `catalogue diff` plans with it and must never write.
struct ReadOnly<'a> {
    coord: &'a Coordinator,
}

impl Ledger for ReadOnly<'_> {
    async fn fence(&self) -> Result<(), LedgerError> {
        Err(LedgerError::Stale("a diff never writes".into()))
    }

    async fn load(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.coord
            .get(&self.coord.key(PROGRESS_KEY))
            .await
            .map_err(ledger_err)
    }

    async fn save(&self, _: Vec<u8>) -> Result<(), LedgerError> {
        Err(LedgerError::Stale("a diff never writes".into()))
    }
}

/// What a pass would change now (`kubedna catalogue diff`), from this node: its bundle, its
/// kubeconfig, the progress in etcd. Reads only.
pub async fn diff(
    settings: &CatalogueSettings,
    coord: &Coordinator,
) -> Result<(String, Vec<Planned>), RunError> {
    let cat = kubedna_catalogue::load(&settings.bundle).map_err(RunError::Refused)?;
    let cluster = KubeCluster::from_kubeconfig(&settings.kubeconfig)
        .await
        .map_err(RunError::Read)?;
    let events: EventSink = Arc::new(|_| {});
    let ledger = ReadOnly { coord };
    let runner = Runner {
        cluster: &cluster,
        ledger: &ledger,
        events: &events,
        health_timeout: settings.health_timeout,
        term: 0,
    };
    let planned = runner.plan(&cat, &settings.selection).await?;
    let changes = planned
        .plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Apply(w) => Some(Planned {
                action: w.change.to_string(),
                component: w.component.clone(),
                object: w.key.to_string(),
            }),
            Step::Prune { component, key, .. } => Some(Planned {
                action: "prune".into(),
                component: component.clone(),
                object: key.to_string(),
            }),
            Step::Release { component, key, .. } => Some(Planned {
                action: "release".into(),
                component: component.clone(),
                object: key.to_string(),
            }),
            _ => None,
        })
        .collect();
    Ok((cat.version, changes))
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub action: String,
    pub component: String,
    pub object: String,
}
