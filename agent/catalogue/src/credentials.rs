//! The catalogue's own credentials: a ServiceAccount `kube-system/kubedna-catalogue` bound to a
//! ClusterRole limited to the API groups the catalogue's manifests use, and a kubeconfig with a
//! token of that ServiceAccount (TokenRequest API, 24 h). Made with the control plane's
//! `admin.conf`, which is used for nothing else; the catalogue itself applies with the token.
//! [`due`] says when to make them again (missing, a third of the token's life left, or the
//! catalogue's groups changed); [`issue`] makes them and returns the kubeconfig text, which the
//! caller writes (mode 0600, atomically). Never logs or returns the token in an error.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bundle::Catalogue;
use crate::cluster::ClusterError;
use crate::object::FIELD_MANAGER;

pub const SERVICE_ACCOUNT: &str = "kubedna-catalogue";
pub const NAMESPACE: &str = "kube-system";
/// Lifetime of a token; renewed when a third is left.
pub const TOKEN_SECONDS: i64 = 24 * 3600;

/// What is recorded beside the kubeconfig (`<kubeconfig>.json`): when the token expires and for
/// which groups the role was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    pub expires_unix: i64,
    pub groups: BTreeSet<String>,
}

/// The API groups the catalogue writes (its objects' and its CRDs'), plus the core group (for
/// namespaces and discovery's lists) and RBAC (its components' roles).
pub fn groups(cat: &Catalogue) -> BTreeSet<String> {
    let mut g: BTreeSet<String> = ["", "rbac.authorization.k8s.io"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for o in cat.components.iter().flat_map(|c| &c.objects) {
        g.insert(o.key.group.clone());
        if o.is_crd() {
            if let Some(group) = o.body["spec"]["group"].as_str() {
                g.insert(group.to_string());
            }
        }
    }
    g
}

/// Whether to issue again: nothing issued, the groups changed, or a third of the lifetime left.
pub fn due(issued: Option<&Issued>, groups: &BTreeSet<String>, now_unix: i64) -> bool {
    match issued {
        None => true,
        Some(i) => i.groups != *groups || now_unix >= i.expires_unix - TOKEN_SECONDS / 3,
    }
}

/// The ClusterRole: every resource of those groups, and `escalate`/`bind` so it can write the
/// RBAC objects of its components (which makes it powerful: limited in groups, not in reach).
pub fn cluster_role(groups: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": SERVICE_ACCOUNT},
        "rules": [{
            "apiGroups": groups.iter().collect::<Vec<_>>(),
            "resources": ["*"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "escalate", "bind"],
        }],
    })
}

fn api(what: &str) -> impl FnOnce(kube::Error) -> ClusterError + '_ {
    move |e| ClusterError::Api {
        what: what.to_string(),
        source: Box::new(e),
    }
}

/// With `admin` (a kubeconfig of the cluster's admin), writes the ServiceAccount, the
/// ClusterRole and its binding, requests a token and returns the kubeconfig text and what to
/// record.
pub async fn issue(
    admin: &Path,
    groups: &BTreeSet<String>,
    now_unix: i64,
) -> Result<(String, Issued), ClusterError> {
    let what = format!("kubeconfig {}", admin.display());
    let kc = kube::config::Kubeconfig::read_from(admin).map_err(|e| ClusterError::Api {
        what: what.clone(),
        source: Box::new(e),
    })?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| ClusterError::Api {
            what: what.clone(),
            source: "no cluster in it".into(),
        })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| ClusterError::Api {
            what: what.clone(),
            source: Box::new(e),
        })?;
    let client = kube::Client::try_from(config).map_err(api(&what))?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}});
    sas.patch(SERVICE_ACCOUNT, &pp, &Patch::Apply(&sa))
        .await
        .map_err(api("ServiceAccount kube-system/kubedna-catalogue"))?;
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    roles
        .patch(SERVICE_ACCOUNT, &pp, &Patch::Apply(&cluster_role(groups)))
        .await
        .map_err(api("ClusterRole kubedna-catalogue"))?;
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": SERVICE_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SERVICE_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
    });
    bindings
        .patch(SERVICE_ACCOUNT, &pp, &Patch::Apply(&binding))
        .await
        .map_err(api("ClusterRoleBinding kubedna-catalogue"))?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let body = serde_json::to_vec(&request).map_err(|e| ClusterError::Api {
        what: "TokenRequest".into(),
        source: Box::new(e),
    })?;
    let token: TokenRequest = sas
        .create_subresource("token", SERVICE_ACCOUNT, &PostParams::default(), body)
        .await
        .map_err(api("TokenRequest for kube-system/kubedna-catalogue"))?;
    let bearer = token.status.map(|s| s.token).unwrap_or_default();
    let text = render(
        cluster.server.as_deref().unwrap_or_default(),
        cluster
            .certificate_authority_data
            .as_deref()
            .unwrap_or_default(),
        &bearer,
    );
    Ok((
        text,
        Issued {
            expires_unix: now_unix + TOKEN_SECONDS,
            groups: groups.clone(),
        },
    ))
}

/// The kubeconfig for the catalogue's ServiceAccount.
pub fn render(server: &str, ca_data: &str, token: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "catalogue", "context": {"cluster": "cluster", "user": SERVICE_ACCOUNT}}],
        "current-context": "catalogue",
    });
    // JSON is YAML; kubeconfig readers take it.
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_by_table() {
        let g: BTreeSet<String> = ["", "apps"].iter().map(|s| s.to_string()).collect();
        let issued = Issued {
            expires_unix: 1000 + TOKEN_SECONDS,
            groups: g.clone(),
        };
        let mut other = g.clone();
        other.insert("demo.kubedna.io".into());
        for (issued, groups, now, want) in [
            (None, &g, 1000, true),
            (Some(&issued), &g, 1000, false),
            (Some(&issued), &g, 1000 + TOKEN_SECONDS * 2 / 3 - 1, false),
            (Some(&issued), &g, 1000 + TOKEN_SECONDS * 2 / 3, true),
            (Some(&issued), &other, 1000, true),
        ] {
            assert_eq!(due(issued, groups, now), want, "{now} {groups:?}");
        }
    }

    #[test]
    fn the_role_names_only_the_groups_given() {
        let g: BTreeSet<String> = ["", "demo.kubedna.io"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = cluster_role(&g);
        assert_eq!(r["rules"][0]["apiGroups"], json!(["", "demo.kubedna.io"]));
        let kc = render("https://api:6443", "Q0E=", "t0k");
        let v: Value = serde_yaml_ng::from_str(&kc).expect("yaml");
        assert_eq!(v["users"][0]["user"]["token"], "t0k");
    }
}
