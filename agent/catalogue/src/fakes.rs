//! In-memory [`Cluster`] and [`Ledger`] for tests of the runner (and of the duty that drives
//! it). The fake API server keeps objects by key, serves the kinds it was told plus those of
//! the CRDs applied to it, refuses namespaced objects in a namespace it does not have, and
//! counts every call; the fake ledger can lose its term after a given number of fences.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Cluster, ClusterError};
use crate::format::HealthCheck;
use crate::object::{applyset_id, ObjectKey, PART_OF};
use crate::run::{Ledger, LedgerError};
use crate::validate::{crd_kinds, ClusterFacts, Scope};

#[derive(Debug, Default)]
pub struct FakeCluster {
    pub state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
pub struct FakeState {
    pub facts: ClusterFacts,
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Objects a hand edit took fields of: applying them without force conflicts.
    pub taken: BTreeSet<ObjectKey>,
    /// Objects the API server refuses (dry run or not), as an admission webhook would.
    pub refuse: BTreeSet<ObjectKey>,
    /// Health checks that fail (by their display text).
    pub unhealthy: BTreeSet<String>,
    /// Every call that changes something, in order: `apply KEY`, `dry-run KEY`, `delete KEY`.
    pub log: Vec<String>,
    next_uid: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeCluster {
    /// A cluster serving the core kinds the tests use.
    pub fn new() -> Self {
        let mut facts = ClusterFacts::default();
        for (g, k, s) in [
            ("", "Namespace", Scope::Cluster),
            ("", "ConfigMap", Scope::Namespaced),
            ("", "Secret", Scope::Namespaced),
            ("", "ServiceAccount", Scope::Namespaced),
            ("apps", "Deployment", Scope::Namespaced),
            ("rbac.authorization.k8s.io", "ClusterRole", Scope::Cluster),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                Scope::Cluster,
            ),
        ] {
            facts.serve(g, "v1", k, s);
        }
        for ns in ["default", "kube-system"] {
            facts.namespaces.insert(ns.into());
        }
        FakeCluster {
            state: Mutex::new(FakeState {
                facts,
                ..FakeState::default()
            }),
        }
    }

    pub fn log(&self) -> Vec<String> {
        lock(&self.state).log.clone()
    }

    pub fn clear_log(&self) {
        lock(&self.state).log.clear();
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        lock(&self.state).objects.get(key).cloned()
    }

    /// Someone else's write: replaces the object (or creates one without our label).
    pub fn put_by_hand(&self, key: &ObjectKey, body: Value) {
        let mut s = lock(&self.state);
        s.next_uid += 1;
        let uid = format!("uid-{}", s.next_uid);
        let mut body = body;
        if body["metadata"]["uid"].is_null() {
            body["metadata"]["uid"] = uid.into();
        }
        s.taken.insert(key.clone());
        s.objects.insert(key.clone(), body);
    }
}

impl Cluster for FakeCluster {
    async fn facts(&self) -> Result<ClusterFacts, ClusterError> {
        Ok(lock(&self.state).facts.clone())
    }

    async fn list_ours(
        &self,
        group_kinds: &BTreeSet<String>,
    ) -> Result<Vec<(ObjectKey, Value)>, ClusterError> {
        let s = lock(&self.state);
        Ok(s.objects
            .iter()
            .filter(|(k, _)| group_kinds.contains(&k.group_kind()))
            .filter(|(_, v)| {
                v["metadata"]["labels"][PART_OF].as_str() == Some(applyset_id().as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn apply(
        &self,
        api_version: &str,
        key: &ObjectKey,
        intent: &Value,
        force: bool,
        dry_run: bool,
    ) -> Result<(), ClusterError> {
        let mut s = lock(&self.state);
        let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
        let gvk = (key.group.clone(), version.to_string(), key.kind.clone());
        let what = key.to_string();
        match (s.facts.kinds.get(&gvk), &key.namespace) {
            (None, _) => return Err(ClusterError::NotServed { what }),
            (Some(Scope::Namespaced), Some(ns)) if !s.facts.namespaces.contains(ns) => {
                return Err(ClusterError::Api {
                    what,
                    source: format!("namespaces \"{ns}\" not found").into(),
                })
            }
            _ => {}
        }
        if s.refuse.contains(key) {
            return Err(ClusterError::Api {
                what,
                source: "admission webhook denied the request".into(),
            });
        }
        if s.taken.contains(key) && !force {
            return Err(ClusterError::Conflict {
                object: what,
                message: "conflict with \"kubectl-edit\"".into(),
            });
        }
        s.log.push(format!(
            "{} {key}",
            if dry_run { "dry-run" } else { "apply" }
        ));
        if dry_run {
            return Ok(());
        }
        s.taken.remove(key);
        let uid = match s.objects.get(key) {
            Some(old) => old["metadata"]["uid"].clone(),
            None => {
                s.next_uid += 1;
                format!("uid-{}", s.next_uid).into()
            }
        };
        // Server-side apply by one manager: the object becomes the intent (fields of other
        // managers are not modelled).
        let mut body = intent.clone();
        body["metadata"]["uid"] = uid;
        if key.kind == "Namespace" && key.group.is_empty() {
            s.facts.namespaces.insert(key.name.clone());
        }
        if key.kind == "CustomResourceDefinition" {
            for ((g, v, k), scope) in crd_kinds(intent) {
                s.facts.serve(&g, &v, &k, scope);
            }
        }
        s.objects.insert(key.clone(), body);
        Ok(())
    }

    async fn delete(&self, key: &ObjectKey, uid: &str) -> Result<(), ClusterError> {
        let mut s = lock(&self.state);
        s.log.push(format!("delete {key}"));
        if s.objects
            .get(key)
            .and_then(|o| o["metadata"]["uid"].as_str())
            == Some(uid)
        {
            s.objects.remove(key);
        }
        Ok(())
    }

    async fn release(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let mut s = lock(&self.state);
        s.log.push(format!("release {key}"));
        if let Some(o) = s.objects.get_mut(key) {
            if let Some(l) = o["metadata"]["labels"].as_object_mut() {
                l.remove(PART_OF);
                l.remove(crate::object::COMPONENT_LABEL);
            }
            if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
                a.remove(crate::object::DIGEST_ANNOTATION);
            }
        }
        Ok(())
    }

    async fn foreign_objects(&self, crd: &str) -> Result<bool, ClusterError> {
        let s = lock(&self.state);
        let Some(def) = s
            .objects
            .iter()
            .find(|(k, _)| k.kind == "CustomResourceDefinition" && k.name == crd)
            .map(|(_, v)| v.clone())
        else {
            return Ok(false);
        };
        let kinds = crd_kinds(&def);
        Ok(s.objects.iter().any(|(k, v)| {
            kinds
                .iter()
                .any(|((g, _, kind), _)| *g == k.group && *kind == k.kind)
                && v["metadata"]["labels"][PART_OF].as_str() != Some(applyset_id().as_str())
        }))
    }

    async fn health(&self, check: &HealthCheck, _timeout: Duration) -> Result<(), ClusterError> {
        let s = lock(&self.state);
        if s.unhealthy.contains(&check.to_string()) {
            return Err(ClusterError::Unhealthy {
                check: check.to_string(),
                message: "not ready before the timeout".into(),
            });
        }
        Ok(())
    }
}

/// A ledger in memory. `stale_after`: the fence fails from that many fences on (the term lost).
#[derive(Debug, Default)]
pub struct FakeLedger {
    pub value: Mutex<Option<Vec<u8>>>,
    pub fences: AtomicUsize,
    pub stale_after: Mutex<Option<usize>>,
}

impl FakeLedger {
    pub fn progress(&self) -> crate::progress::Progress {
        lock(&self.value)
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    fn stale(&self) -> bool {
        lock(&self.stale_after).is_some_and(|n| self.fences.load(Ordering::SeqCst) >= n)
    }
}

impl Ledger for FakeLedger {
    async fn fence(&self) -> Result<(), LedgerError> {
        if self.stale() {
            return Err(LedgerError::Stale("a newer term holds the seat".into()));
        }
        self.fences.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn load(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(lock(&self.value).clone())
    }

    async fn save(&self, value: Vec<u8>) -> Result<(), LedgerError> {
        if self.stale() {
            return Err(LedgerError::Stale("a newer term holds the seat".into()));
        }
        *lock(&self.value) = Some(value);
        Ok(())
    }
}
