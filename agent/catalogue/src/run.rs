//! The runner: one pass of the catalogue under a leader term. It validates the catalogue
//! against discovery (refused: an event, the reason recorded, nothing applied), reads our live
//! objects, plans, dry-runs every write server-side before the first real one, then carries
//! the plan out. Before every write to the cluster it asks the [`Ledger`]'s fence, so a leader
//! that lost its term stops before its next write; progress goes to the ledger (etcd, fenced
//! by the term) after each component, and the next leader's pass starts from the live objects
//! and that record, so it resumes rather than repeats (an unchanged object is not written).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use kubedna_proto::error_chain;
use serde_json::Value;

use crate::bundle::Catalogue;
use crate::cluster::{BoxError, Cluster, ClusterError};
use crate::format::Selection;
use crate::object::{
    applyset_id, covers, group_kind, LiveObject, Object, ObjectKey, APPLYSET_GROUP_KINDS,
    APPLYSET_ID, APPLYSET_TOOLING, DIGEST_ANNOTATION, PARENT_NAME, PARENT_NAMESPACE,
};
use crate::plan::{plan, Guard, Plan, Step, Write};
use crate::progress::{ComponentRecord, Event, EventSink, Health, Progress};
use crate::validate::{validate, Scope, Selected};
use crate::{CatalogueError, Component};

/// The leader's side: the term fence and the progress record in etcd.
pub trait Ledger: Send + Sync {
    /// `Ok` while this node still holds the term it runs under.
    fn fence(&self) -> impl Future<Output = Result<(), LedgerError>> + Send;
    fn load(&self) -> impl Future<Output = Result<Option<Vec<u8>>, LedgerError>> + Send;
    /// Writes the progress, fenced by the term.
    fn save(&self, value: Vec<u8>) -> impl Future<Output = Result<(), LedgerError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the leader term is over")]
    Stale(#[source] BoxError),
    #[error("cannot reach the progress record")]
    Store(#[source] BoxError),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Refused(CatalogueError),
    #[error("stopped before the next write")]
    Ledger(#[source] LedgerError),
    #[error("the recorded progress is not readable")]
    Progress(#[source] serde_json::Error),
    #[error("cannot read the cluster")]
    Read(#[source] ClusterError),
    #[error("server-side dry run refused {object} of component {component}; nothing applied")]
    DryRun {
        component: String,
        object: ObjectKey,
        #[source]
        source: ClusterError,
    },
    #[error("component {component}: {object}")]
    Write {
        component: String,
        object: ObjectKey,
        #[source]
        source: ClusterError,
    },
    #[error("component {component} is not healthy; the rollout stops here")]
    Health {
        component: String,
        #[source]
        source: ClusterError,
    },
}

impl RunError {
    pub fn is_stale(&self) -> bool {
        matches!(self, RunError::Ledger(LedgerError::Stale(_)))
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub writes: usize,
    pub deletes: usize,
    pub dry_runs: usize,
    pub conflicts: usize,
    pub elapsed: Duration,
}

#[derive(Clone)]
pub struct Runner<'a, C, L> {
    pub cluster: &'a C,
    pub ledger: &'a L,
    pub events: &'a EventSink,
    pub health_timeout: Duration,
    /// Recorded with the progress.
    pub term: i64,
}

impl<C, L> std::fmt::Debug for Runner<'_, C, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

/// The catalogue, validated, with the live view and the plan: what `catalogue diff` shows.
#[derive(Debug, Clone)]
pub struct Planned {
    pub selected: Selected,
    pub live: BTreeMap<ObjectKey, LiveObject>,
    pub progress: Progress,
    pub plan: Plan,
    facts: crate::ClusterFacts,
}

impl<C: Cluster, L: Ledger> Runner<'_, C, L> {
    /// Validates and plans, writing nothing (`catalogue diff`).
    pub async fn plan(&self, cat: &Catalogue, selection: &Selection) -> Result<Planned, RunError> {
        let progress = match self.ledger.load().await.map_err(RunError::Ledger)? {
            Some(b) => serde_json::from_slice(&b).map_err(RunError::Progress)?,
            None => Progress::default(),
        };
        let facts = self.cluster.facts().await.map_err(RunError::Read)?;
        let selected = validate(cat, selection, &facts).map_err(RunError::Refused)?;
        let mut gks = progress.group_kinds.clone();
        gks.extend(desired_group_kinds(&selected));
        let raw = self.cluster.list_ours(&gks).await.map_err(RunError::Read)?;
        let index = objects(&selected);
        let live = raw
            .into_iter()
            .map(|(k, v)| {
                let l = live_object(&v, index.get(&k).map(|(c, o)| o.intent(&c.name)));
                (k, l)
            })
            .collect();
        let plan = plan(&selected, &live, &progress);
        Ok(Planned {
            selected,
            live,
            progress,
            plan,
            facts,
        })
    }

    /// One pass: validate, plan, dry-run, apply, wait, prune, record.
    pub async fn pass(&self, cat: &Catalogue, selection: &Selection) -> Result<Report, RunError> {
        let started = Instant::now();
        let planned = match self.plan(cat, selection).await {
            Err(RunError::Refused(e)) => {
                let problems = match &e {
                    CatalogueError::Invalid { problems } => {
                        problems.iter().map(ToString::to_string).collect()
                    }
                    other => vec![other.to_string()],
                };
                (self.events)(&Event::Refused { problems });
                self.record_refusal(&e).await?;
                return Err(RunError::Refused(e));
            }
            r => r?,
        };
        let mut report = Report::default();
        let mut progress = planned.progress.clone();
        let before = progress.clone();
        let r = self.carry_out(&planned, &mut progress, &mut report).await;
        progress.last_error = r.as_ref().err().map(|e| error_chain(e));
        progress.catalogue_version = Some(planned.selected.version.clone());
        progress.catalogue_digest = Some(planned.selected.digest.clone());
        if progress != before {
            progress.term = self.term;
            progress.last_pass_unix = Some(unix_now());
            if let Err(e) = self.save(&progress).await {
                return Err(r.err().unwrap_or(e));
            }
        }
        report.elapsed = started.elapsed();
        r.map(|()| report)
    }

    async fn carry_out(
        &self,
        planned: &Planned,
        progress: &mut Progress,
        report: &mut Report,
    ) -> Result<(), RunError> {
        let index = objects(&planned.selected);
        let plan = &planned.plan;
        let mut skip: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut deferred = Vec::new();
        if plan.changes_cluster() {
            // The dry run of the whole set, before the first write. An object of a kind a CRD of
            // this pass defines, or in a namespace this pass creates, cannot be dry-run yet: it
            // is, right after the namespaces and CRDs are in, before any other write.
            for w in plan.writes() {
                let (c, o) = index[&w.key];
                if dry_runnable(o, &planned.facts) {
                    self.dry_run(c, o, w, report, &mut skip).await?;
                } else {
                    deferred.push(w);
                }
            }
            let mut gks = progress.group_kinds.clone();
            gks.extend(desired_group_kinds(&planned.selected));
            // The ApplySet parent lists the superset of kinds before members of a new kind are
            // written; a pass that only prunes leaves it as it is.
            if gks != progress.group_kinds || plan.writes().next().is_some() {
                self.fence().await?;
                self.apply_parent(&gks).await?;
                report.writes += 1;
            }
            if gks != progress.group_kinds {
                progress.group_kinds = gks;
                self.save(progress).await?;
            }
        }
        let mut foundation_done = false;
        let mut failed_prunes: BTreeSet<String> = BTreeSet::new();
        for step in &plan.steps {
            let foundation = matches!(step, Step::Apply(w) if is_foundation(&w.key));
            if !foundation && !matches!(step, Step::WaitEstablished { .. }) && !foundation_done {
                foundation_done = true;
                for w in std::mem::take(&mut deferred) {
                    let (c, o) = index[&w.key];
                    self.dry_run(c, o, w, report, &mut skip).await?;
                }
            }
            match step {
                Step::Apply(w) => {
                    if skip.contains(&w.key) {
                        continue;
                    }
                    let (c, o) = index[&w.key];
                    self.fence().await?;
                    match self
                        .cluster
                        .apply(&o.api_version, &o.key, &o.intent(&c.name), w.force, false)
                        .await
                    {
                        Ok(()) => {}
                        Err(ClusterError::Conflict { message, .. }) => {
                            self.conflict(w, message, report);
                            continue;
                        }
                        Err(source) => {
                            let e = RunError::Write {
                                component: c.name.clone(),
                                object: o.key.clone(),
                                source,
                            };
                            self.component_failed(progress, c, Health::Unknown, &e);
                            return Err(e);
                        }
                    }
                    report.writes += 1;
                    (self.events)(&Event::Applied {
                        component: c.name.clone(),
                        object: o.key.clone(),
                        change: w.change,
                    });
                }
                Step::WaitEstablished { component, crd } => {
                    let check = crate::HealthCheck::CrdEstablished { name: crd.clone() };
                    self.health(progress, &planned.selected, component, &[check])
                        .await?;
                }
                Step::Health { component } => {
                    let c = planned.selected.component(component);
                    let checks = c.map(|c| c.health.clone()).unwrap_or_default();
                    self.health(progress, &planned.selected, component, &checks)
                        .await?;
                }
                Step::Record { component } => {
                    let Some((order, c)) = planned
                        .selected
                        .components
                        .iter()
                        .enumerate()
                        .find(|(_, c)| &c.name == component)
                    else {
                        continue;
                    };
                    let r = progress.components.entry(c.name.clone()).or_default();
                    let new = ComponentRecord {
                        wanted_version: c.version.clone(),
                        applied_version: Some(c.version.clone()),
                        order,
                        health: Health::Healthy,
                        last_error: None,
                    };
                    if *r != new {
                        *r = new;
                        self.save(progress).await?;
                    }
                }
                Step::Prune {
                    component,
                    key,
                    uid,
                    guard,
                } => {
                    if *guard == Guard::NoForeignObjects
                        && self
                            .cluster
                            .foreign_objects(&key.name)
                            .await
                            .map_err(RunError::Read)?
                    {
                        self.release(
                            component,
                            key,
                            "its kinds still have objects that are not ours",
                            report,
                        )
                        .await?;
                        continue;
                    }
                    self.fence().await?;
                    match self.cluster.delete(key, uid).await {
                        Ok(()) => {
                            report.deletes += 1;
                            (self.events)(&Event::Pruned {
                                component: component.clone(),
                                object: key.clone(),
                            });
                        }
                        Err(e) => {
                            tracing::warn!(component, object = %key, error = %error_chain(&e), "prune failed");
                            failed_prunes.insert(component.clone());
                        }
                    }
                }
                Step::Release {
                    component,
                    key,
                    why,
                } => self.release(component, key, why, report).await?,
                Step::Forget { component } => {
                    if !failed_prunes.contains(component)
                        && progress.components.remove(component).is_some()
                    {
                        self.save(progress).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn dry_run(
        &self,
        c: &Component,
        o: &Object,
        w: &Write,
        report: &mut Report,
        skip: &mut BTreeSet<ObjectKey>,
    ) -> Result<(), RunError> {
        report.dry_runs += 1;
        match self
            .cluster
            .apply(&o.api_version, &o.key, &o.intent(&c.name), w.force, true)
            .await
        {
            Ok(()) => Ok(()),
            Err(ClusterError::Conflict { message, .. }) => {
                self.conflict(w, message, report);
                skip.insert(w.key.clone());
                Ok(())
            }
            Err(source) => Err(RunError::DryRun {
                component: c.name.clone(),
                object: o.key.clone(),
                source,
            }),
        }
    }

    fn conflict(&self, w: &Write, message: String, report: &mut Report) {
        report.conflicts += 1;
        (self.events)(&Event::Conflict {
            component: w.component.clone(),
            object: w.key.clone(),
            message,
        });
    }

    async fn health(
        &self,
        progress: &mut Progress,
        selected: &Selected,
        component: &str,
        checks: &[crate::HealthCheck],
    ) -> Result<(), RunError> {
        for check in checks {
            if let Err(source) = self.cluster.health(check, self.health_timeout).await {
                (self.events)(&Event::HealthFailed {
                    component: component.to_string(),
                    check: check.to_string(),
                    message: error_chain(&source),
                });
                let e = RunError::Health {
                    component: component.to_string(),
                    source,
                };
                if let Some(c) = selected.component(component) {
                    self.component_failed(progress, c, Health::Unhealthy, &e);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Keeps the last good record of a failed component, with the failure.
    fn component_failed(
        &self,
        progress: &mut Progress,
        c: &Component,
        health: Health,
        e: &RunError,
    ) {
        let r = progress.components.entry(c.name.clone()).or_default();
        r.wanted_version = c.version.clone();
        r.health = health;
        r.last_error = Some(error_chain(e));
    }

    async fn release(
        &self,
        component: &str,
        key: &ObjectKey,
        why: &str,
        report: &mut Report,
    ) -> Result<(), RunError> {
        self.fence().await?;
        self.cluster
            .release(key)
            .await
            .map_err(|source| RunError::Write {
                component: component.to_string(),
                object: key.clone(),
                source,
            })?;
        report.writes += 1;
        (self.events)(&Event::PruneKept {
            component: component.to_string(),
            object: key.clone(),
            why: why.to_string(),
        });
        Ok(())
    }

    /// The ApplySet parent (KEP-3659): a ConfigMap whose annotations list every group-kind our
    /// members may have, written before members of a new kind are.
    async fn apply_parent(&self, gks: &BTreeSet<String>) -> Result<(), RunError> {
        let key = ObjectKey {
            group: String::new(),
            kind: "ConfigMap".into(),
            namespace: Some(PARENT_NAMESPACE.into()),
            name: PARENT_NAME.into(),
        };
        let list: Vec<&str> = gks.iter().map(String::as_str).collect();
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": PARENT_NAME,
                "namespace": PARENT_NAMESPACE,
                "labels": { APPLYSET_ID: applyset_id() },
                "annotations": {
                    APPLYSET_TOOLING: "kubedna/v1",
                    APPLYSET_GROUP_KINDS: list.join(","),
                },
            },
        });
        self.cluster
            .apply("v1", &key, &body, true, false)
            .await
            .map_err(|source| RunError::Write {
                component: "(applyset parent)".into(),
                object: key,
                source,
            })
    }

    async fn fence(&self) -> Result<(), RunError> {
        self.ledger.fence().await.map_err(RunError::Ledger)
    }

    async fn save(&self, progress: &Progress) -> Result<(), RunError> {
        let bytes = serde_json::to_vec(progress).map_err(RunError::Progress)?;
        self.ledger.save(bytes).await.map_err(RunError::Ledger)
    }

    async fn record_refusal(&self, e: &CatalogueError) -> Result<(), RunError> {
        let mut progress: Progress = match self.ledger.load().await.map_err(RunError::Ledger)? {
            Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
            None => Progress::default(),
        };
        let text = Some(error_chain(e));
        if progress.last_error != text {
            progress.last_error = text;
            progress.term = self.term;
            self.save(&progress).await?;
        }
        Ok(())
    }
}

fn is_foundation(k: &ObjectKey) -> bool {
    crate::object::kind_rank(&k.group, &k.kind) <= 1
}

fn dry_runnable(o: &Object, facts: &crate::ClusterFacts) -> bool {
    let gvk = (
        o.key.group.clone(),
        o.version().to_string(),
        o.key.kind.clone(),
    );
    match (facts.kinds.get(&gvk), &o.key.namespace) {
        (Some(Scope::Namespaced), Some(ns)) => facts.namespaces.contains(ns),
        (Some(_), _) => true,
        (None, _) => false,
    }
}

fn objects(selected: &Selected) -> BTreeMap<ObjectKey, (&Component, &Object)> {
    selected
        .components
        .iter()
        .flat_map(|c| c.objects.iter().map(move |o| (o.key.clone(), (c, o))))
        .collect()
}

fn desired_group_kinds(selected: &Selected) -> BTreeSet<String> {
    selected
        .components
        .iter()
        .flat_map(|c| &c.objects)
        .map(|o| group_kind(&o.key.group, &o.key.kind))
        .collect()
}

/// What a live object says about us, and whether it holds `intent`.
pub fn live_object(v: &Value, intent: Option<Value>) -> LiveObject {
    let meta = &v["metadata"];
    let labels = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    LiveObject {
        uid: meta["uid"].as_str().unwrap_or_default().to_string(),
        labels,
        digest: meta["annotations"][DIGEST_ANNOTATION]
            .as_str()
            .map(str::to_string),
        // A list gives items at the recommended version, maybe not the manifest's, and may
        // leave apiVersion and kind out: identity is compared by key, not here.
        covers_intent: intent.is_some_and(|mut i| {
            if let Some(m) = i.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            covers(&i, v)
        }),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
