//! [`Cluster`] over kube-rs: server-side apply of dynamic objects with the field manager
//! `kubedna`, kinds resolved through discovery (refreshed when a kind is missing, since a new
//! CRD's kinds appear there a moment after it is Established and discovery has no watch), the
//! health checks awaited on watches (`kube::runtime::wait::await_condition`), deletes with a
//! uid precondition. It holds no state but the client and the last discovery.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Discovery, Scope as KubeScope};
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::cluster::{Cluster, ClusterError};
use crate::format::HealthCheck;
use crate::object::{
    applyset_id, ObjectKey, COMPONENT_LABEL, DIGEST_ANNOTATION, FIELD_MANAGER, PART_OF,
};
use crate::validate::{ClusterFacts, Scope};

pub struct KubeCluster {
    client: Client,
    discovery: Mutex<Option<Arc<Discovery>>>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").finish_non_exhaustive()
    }
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
    let what = what.into();
    move |e| match e {
        kube::Error::Api(r) if r.code == 409 => ClusterError::Conflict {
            object: what,
            message: r.message,
        },
        e => ClusterError::Api {
            what,
            source: Box::new(e),
        },
    }
}

impl KubeCluster {
    pub fn new(client: Client) -> Self {
        KubeCluster {
            client,
            discovery: Mutex::new(None),
        }
    }

    /// A client from a kubeconfig file (the agent's own, not `admin.conf`).
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, ClusterError> {
        let what = format!("kubeconfig {}", path.display());
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| ClusterError::Api {
            what: what.clone(),
            source: Box::new(e),
        })?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| ClusterError::Api {
                what: what.clone(),
                source: Box::new(e),
            })?;
        let client = Client::try_from(config).map_err(api_err(what))?;
        Ok(KubeCluster::new(client))
    }

    async fn discover(&self) -> Result<Arc<Discovery>, ClusterError> {
        let d = Discovery::new(self.client.clone())
            .run()
            .await
            .map_err(api_err("API discovery"))?;
        let d = Arc::new(d);
        *self.discovery.lock().await = Some(d.clone());
        Ok(d)
    }

    async fn cached(&self) -> Result<Arc<Discovery>, ClusterError> {
        let d = self.discovery.lock().await.clone();
        match d {
            Some(d) => Ok(d),
            None => self.discover().await,
        }
    }

    /// The resource of `group/version` `kind`, refreshing discovery once if it is not known.
    async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, bool), ClusterError> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        for refresh in [false, true] {
            let d = if refresh {
                self.discover().await?
            } else {
                self.cached().await?
            };
            if let Some((ar, caps)) = d.resolve_gvk(&gvk) {
                return Ok((ar, caps.scope == KubeScope::Namespaced));
            }
        }
        Err(ClusterError::NotServed {
            what: format!("{kind} {api_version}"),
        })
    }

    /// The served resource of a `Kind.group`, at the group's recommended version.
    async fn resource_of_group_kind(&self, gk: &str) -> Result<Option<ApiResource>, ClusterError> {
        let (kind, group) = gk.split_once('.').unwrap_or((gk, ""));
        let d = self.cached().await?;
        Ok(d.get(group)
            .and_then(|g| g.recommended_kind(kind))
            .map(|(ar, _)| ar))
    }

    fn dynamic(&self, ar: &ApiResource, namespaced: bool, ns: Option<&str>) -> Api<DynamicObject> {
        match (namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            _ => Api::all_with(self.client.clone(), ar),
        }
    }

    async fn kinds_served(&self, crd: &str, timeout: Duration) -> Result<(), ClusterError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let Some(def) = api
            .get_opt(crd)
            .await
            .map_err(api_err(format!("CRD {crd}")))?
        else {
            return Ok(());
        };
        let group = def.spec.group.clone();
        let kind = def.spec.names.kind.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        // Discovery has nothing to watch: ask again until the kind is there.
        loop {
            let d = self.discover().await?;
            if d.get(&group)
                .and_then(|g| g.recommended_kind(&kind))
                .is_some()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Unhealthy {
                    check: format!("CRD {crd} served"),
                    message: "established, but discovery does not list its kind".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn unhealthy(check: &HealthCheck, message: impl Into<String>) -> ClusterError {
    ClusterError::Unhealthy {
        check: check.to_string(),
        message: message.into(),
    }
}

impl Cluster for KubeCluster {
    async fn facts(&self) -> Result<ClusterFacts, ClusterError> {
        let d = self.discover().await?;
        let mut facts = ClusterFacts::default();
        for g in d.groups() {
            for v in g.versions() {
                for (ar, caps) in g.versioned_resources(v) {
                    let scope = match caps.scope {
                        KubeScope::Namespaced => Scope::Namespaced,
                        KubeScope::Cluster => Scope::Cluster,
                    };
                    facts.serve(&ar.group, &ar.version, &ar.kind, scope);
                }
            }
        }
        let ns: Api<Namespace> = Api::all(self.client.clone());
        for n in ns
            .list_metadata(&ListParams::default())
            .await
            .map_err(api_err("namespaces"))?
        {
            if let Some(name) = n.metadata.name {
                facts.namespaces.insert(name);
            }
        }
        Ok(facts)
    }

    async fn list_ours(
        &self,
        group_kinds: &BTreeSet<String>,
    ) -> Result<Vec<(ObjectKey, Value)>, ClusterError> {
        let selector = format!("{PART_OF}={}", applyset_id());
        let mut out = Vec::new();
        for gk in group_kinds {
            let Some(ar) = self.resource_of_group_kind(gk).await? else {
                continue;
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(api_err(format!("list {gk}")))?;
            for o in list {
                let key = ObjectKey {
                    group: ar.group.clone(),
                    kind: ar.kind.clone(),
                    namespace: o.metadata.namespace.clone(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                };
                let v = serde_json::to_value(&o).map_err(|e| ClusterError::Api {
                    what: key.to_string(),
                    source: Box::new(e),
                })?;
                out.push((key, v));
            }
        }
        Ok(out)
    }

    async fn apply(
        &self,
        api_version: &str,
        key: &ObjectKey,
        intent: &Value,
        force: bool,
        dry_run: bool,
    ) -> Result<(), ClusterError> {
        let (ar, namespaced) = self.resource(api_version, &key.kind).await?;
        let api = self.dynamic(&ar, namespaced, key.namespace.as_deref());
        let mut pp = PatchParams::apply(FIELD_MANAGER);
        if force {
            pp = pp.force();
        }
        if dry_run {
            pp = pp.dry_run();
        }
        api.patch(&key.name, &pp, &Patch::Apply(intent))
            .await
            .map(|_| ())
            .map_err(api_err(key.to_string()))
    }

    async fn delete(&self, key: &ObjectKey, uid: &str) -> Result<(), ClusterError> {
        let Some(ar) = self.resource_of_group_kind(&key.group_kind()).await? else {
            return Ok(());
        };
        let namespaced = key.namespace.is_some();
        let api = self.dynamic(&ar, namespaced, key.namespace.as_deref());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&key.name, &dp).await {
            Ok(_) => Ok(()),
            // Gone already, or replaced by a look-alike since we listed it (uid precondition).
            Err(kube::Error::Api(r)) if r.code == 404 || r.code == 409 => Ok(()),
            Err(e) => Err(api_err(key.to_string())(e)),
        }
    }

    async fn release(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let Some(ar) = self.resource_of_group_kind(&key.group_kind()).await? else {
            return Ok(());
        };
        let api = self.dynamic(&ar, key.namespace.is_some(), key.namespace.as_deref());
        let patch = serde_json::json!({"metadata": {
            "labels": { PART_OF: null, COMPONENT_LABEL: null },
            "annotations": { DIGEST_ANNOTATION: null },
        }});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match api.patch(&key.name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(r)) if r.code == 404 => Ok(()),
            Err(e) => Err(api_err(key.to_string())(e)),
        }
    }

    async fn foreign_objects(&self, crd: &str) -> Result<bool, ClusterError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let Some(def) = api
            .get_opt(crd)
            .await
            .map_err(api_err(format!("CRD {crd}")))?
        else {
            return Ok(false);
        };
        let gk = crate::object::group_kind(&def.spec.group, &def.spec.names.kind);
        let Some(ar) = self.resource_of_group_kind(&gk).await? else {
            return Ok(false);
        };
        let objects: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let list = objects
            .list_metadata(&ListParams::default())
            .await
            .map_err(api_err(format!("list {gk}")))?;
        let id = applyset_id();
        Ok(list
            .items
            .iter()
            .any(|o| o.metadata.labels.as_ref().and_then(|l| l.get(PART_OF)) != Some(&id)))
    }

    async fn health(&self, check: &HealthCheck, timeout: Duration) -> Result<(), ClusterError> {
        let c = self.client.clone();
        let wait = async {
            match check {
                HealthCheck::CrdEstablished { name } => {
                    let api: Api<CustomResourceDefinition> = Api::all(c);
                    await_condition(api, name, conditions::is_crd_established())
                        .await
                        .map_err(|e| unhealthy(check, e.to_string()))?;
                    self.kinds_served(name, timeout).await
                }
                HealthCheck::DeploymentAvailable { namespace, name } => {
                    let api: Api<Deployment> = Api::namespaced(c, namespace);
                    await_condition(api, name, |d: Option<&Deployment>| {
                        d.is_some_and(deployment_available)
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| unhealthy(check, e.to_string()))
                }
                HealthCheck::DaemonSetAvailable { namespace, name } => {
                    let api: Api<DaemonSet> = Api::namespaced(c, namespace);
                    await_condition(api, name, |d: Option<&DaemonSet>| {
                        d.is_some_and(daemonset_available)
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| unhealthy(check, e.to_string()))
                }
                HealthCheck::JobComplete { namespace, name } => {
                    let api: Api<Job> = Api::namespaced(c, namespace);
                    let job = await_condition(api, name, |j: Option<&Job>| {
                        j.is_some_and(|j| {
                            job_condition(j, "Complete") || job_condition(j, "Failed")
                        })
                    })
                    .await
                    .map_err(|e| unhealthy(check, e.to_string()))?;
                    if job.as_ref().is_some_and(|j| job_condition(j, "Failed")) {
                        return Err(unhealthy(check, "the Job failed"));
                    }
                    Ok(())
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(unhealthy(
                check,
                format!("not reached within {}s", timeout.as_secs()),
            )),
        }
    }
}

/// The current generation observed, every replica updated and available.
pub fn deployment_available(d: &Deployment) -> bool {
    let (Some(spec), Some(st)) = (&d.spec, &d.status) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    st.observed_generation >= d.metadata.generation
        && st.updated_replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) == want
        && st.replicas.unwrap_or(0) == want
}

pub fn daemonset_available(d: &DaemonSet) -> bool {
    let Some(st) = &d.status else {
        return false;
    };
    st.observed_generation >= d.metadata.generation
        && st.updated_number_scheduled.unwrap_or(0) == st.desired_number_scheduled
        && st.number_available.unwrap_or(0) == st.desired_number_scheduled
}

fn job_condition(j: &Job, kind: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}
