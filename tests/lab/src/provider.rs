//! The node provider interface node replacement uses (create a node from an image and user-data,
//! delete a node, list nodes by label), and its lab implementation. The Hetzner Cloud provider
//! will implement the same trait.
//!
//! NOTE: this trait lives here for now; it will move to a shared crate (next to the agent's
//! provider config) once the doctor needs it. Keep it free of lab types.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError};
use crate::Role;

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateNode {
    /// The image the node boots (for the lab: an `--image` directory; for a cloud: an image name).
    pub image: String,
    pub role: Role,
    /// cloud-init user-data, as production renders it.
    pub user_data: String,
    pub labels: BTreeMap<String, String>,
}

/// A node as a provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderNode {
    pub id: String,
    pub name: String,
    pub address: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
}

/// A label query: every pair must match (`key=value,key2=value2`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub BTreeMap<String, String>);

impl LabelSelector {
    /// Parses `k=v,k2=v2` (empty selects everything).
    pub fn parse(s: &str) -> Option<Self> {
        let mut m = BTreeMap::new();
        for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=')?;
            m.insert(k.trim().to_string(), v.trim().to_string());
        }
        Some(LabelSelector(m))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Creates, deletes and lists the machines a cluster runs on.
pub trait NodeProvider {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates and boots a node; returns once the provider considers it created (not joined).
    fn create_node(&self, req: &CreateNode) -> Result<ProviderNode, Self::Error>;
    /// Deletes a node and everything it owns; deleting a missing node is an error.
    fn delete_node(&self, id: &str) -> Result<(), Self::Error>;
    /// Nodes whose labels match.
    fn list_nodes(&self, selector: &LabelSelector) -> Result<Vec<ProviderNode>, Self::Error>;
}

/// The lab as a node provider. Each call opens (and locks) the lab, so it is safe beside the CLI.
#[derive(Debug, Clone)]
pub struct LabProvider {
    pub root: PathBuf,
    pub lab: String,
    /// How long `create_node` waits for the node's systemd (and agent) to be ready.
    pub boot_timeout: Duration,
}

impl NodeProvider for LabProvider {
    type Error = LabError;

    fn create_node(&self, req: &CreateNode) -> Result<ProviderNode, LabError> {
        let mut lab = Lab::open(&self.root, &self.lab)?;
        // One lab has one image: its nodes are overlays over it. The request's image is recorded.
        let mut labels = req.labels.clone();
        labels.insert("kubedna.io/image".into(), sanitize_label(&req.image));
        let record = lab.add_node(req.role, labels, Some(&req.user_data))?;
        lab.wait_ready(
            std::slice::from_ref(&record.name),
            Instant::now() + self.boot_timeout,
        )?;
        Ok(to_provider(
            &lab,
            &record.name,
            &record.labels,
            record.address,
        ))
    }

    fn delete_node(&self, id: &str) -> Result<(), LabError> {
        let mut lab = Lab::open(&self.root, &self.lab)?;
        let name = id.rsplit('/').next().unwrap_or(id).to_string();
        lab.remove_node(&name)
    }

    fn list_nodes(&self, selector: &LabelSelector) -> Result<Vec<ProviderNode>, LabError> {
        let lab = Lab::open(&self.root, &self.lab)?;
        Ok(lab
            .state
            .nodes
            .iter()
            .filter(|n| selector.matches(&n.labels))
            .map(|n| to_provider(&lab, &n.name, &n.labels, n.address))
            .collect())
    }
}

fn to_provider(
    lab: &Lab,
    name: &str,
    labels: &BTreeMap<String, String>,
    address: Ipv4Addr,
) -> ProviderNode {
    ProviderNode {
        id: format!("{}/{name}", lab.state.name),
        name: name.to_string(),
        address,
        labels: labels.clone(),
    }
}

fn sanitize_label(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    v.chars()
        .rev()
        .take(63)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_parses_and_matches() {
        let sel = LabelSelector::parse("kubedna.io/cluster=a, kubedna.io/role=worker")
            .unwrap_or_default();
        let mut l = BTreeMap::new();
        l.insert("kubedna.io/cluster".to_string(), "a".to_string());
        assert!(!sel.matches(&l));
        l.insert("kubedna.io/role".to_string(), "worker".to_string());
        assert!(sel.matches(&l));
        assert!(LabelSelector::parse("novalue").is_none());
        assert!(LabelSelector::parse("").is_some_and(|s| s.matches(&BTreeMap::new())));
    }
}
