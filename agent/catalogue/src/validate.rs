//! Validation of a loaded catalogue as a whole, before anything is applied: component names,
//! `dependsOn` (unknown names, cycles), the optional selection, duplicate objects, kinds the
//! API server does not serve (nor a CRD of the catalogue defines), and namespaces: a
//! namespaced object must name one that the catalogue creates or the cluster has, a
//! cluster-scoped object must not name one. Pure: the cluster's side comes in as
//! [`ClusterFacts`] (from discovery). Every problem is collected; any problem refuses all.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::bundle::{Catalogue, Component};
use crate::format::{is_dns_label, Selection};
use crate::object::ObjectKey;
use crate::{CatalogueError, Problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// What the API server serves and which namespaces exist, as discovery reported them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterFacts {
    /// (group, version, kind) → scope.
    pub kinds: BTreeMap<(String, String, String), Scope>,
    pub namespaces: BTreeSet<String>,
}

impl ClusterFacts {
    pub fn serve(&mut self, group: &str, version: &str, kind: &str, scope: Scope) {
        self.kinds
            .insert((group.into(), version.into(), kind.into()), scope);
    }
}

/// The components this cluster gets, in apply order (`dependsOn` first; otherwise catalogue
/// order). Built only by [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub version: String,
    pub digest: String,
    pub components: Vec<Component>,
}

impl Selected {
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

pub fn validate(
    cat: &Catalogue,
    selection: &Selection,
    facts: &ClusterFacts,
) -> Result<Selected, CatalogueError> {
    let mut problems = Vec::new();
    let names: BTreeSet<&str> = cat.components.iter().map(|c| c.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    for c in &cat.components {
        if !is_dns_label(&c.name) {
            problems.push(Problem::component(
                &c.name,
                "the name must be a DNS label (a-z, 0-9, -)",
            ));
        }
        if !seen.insert(c.name.as_str()) {
            problems.push(Problem::component(
                &c.name,
                "a second component of this name",
            ));
        }
        for d in &c.depends_on {
            if !names.contains(d.as_str()) {
                problems.push(Problem::component(
                    &c.name,
                    format!("dependsOn `{d}`, which the catalogue does not have"),
                ));
            }
        }
    }
    for s in &selection.optional {
        match cat.component(s) {
            None => problems.push(Problem::component(
                s,
                "selected in the agent config, but the catalogue has no such component",
            )),
            Some(c) if !c.optional => {}
            Some(_) => {}
        }
    }
    let order = match topo_order(cat) {
        Ok(o) => o,
        Err(cycle) => {
            problems.push(Problem::component(
                &cycle[0],
                format!("dependsOn cycle: {}", cycle.join(" → ")),
            ));
            Vec::new()
        }
    };
    let wanted = |c: &Component| !c.optional || selection.optional.contains(&c.name);
    for c in cat.components.iter().filter(|c| wanted(c)) {
        for d in &c.depends_on {
            if let Some(dc) = cat.component(d) {
                if !wanted(dc) {
                    problems.push(Problem::component(&c.name, format!("dependsOn `{d}`, an optional component the agent config does not select")));
                }
            }
        }
    }
    check_objects(cat, facts, &mut problems);
    if !problems.is_empty() {
        return Err(CatalogueError::Invalid { problems });
    }
    Ok(Selected {
        version: cat.version.clone(),
        digest: cat.digest.clone(),
        components: order
            .into_iter()
            .filter_map(|n| cat.component(&n))
            .filter(|c| wanted(c))
            .cloned()
            .collect(),
    })
}

fn check_objects(cat: &Catalogue, facts: &ClusterFacts, problems: &mut Vec<Problem>) {
    let mut kinds = facts.kinds.clone();
    let mut namespaces = facts.namespaces.clone();
    for o in cat.components.iter().flat_map(|c| &c.objects) {
        if o.is_namespace() {
            namespaces.insert(o.key.name.clone());
        }
        if o.is_crd() {
            for (gvk, scope) in crd_kinds(&o.body) {
                kinds.insert(gvk, scope);
            }
        }
    }
    let mut owner: BTreeMap<&ObjectKey, &str> = BTreeMap::new();
    for c in &cat.components {
        for o in &c.objects {
            let named = |what: String| Problem::object(&c.name, &o.file, &o.key, what);
            if let Some(first) = owner.insert(&o.key, &c.name) {
                problems.push(named(format!(
                    "also in component `{first}`: an object belongs to one component"
                )));
            }
            let gvk = (
                o.key.group.clone(),
                o.version().to_string(),
                o.key.kind.clone(),
            );
            match (kinds.get(&gvk), &o.key.namespace) {
                (None, _) => problems.push(named(format!(
                    "the API server does not serve {} (and no CRD of the catalogue defines it)",
                    o.api_version
                ))),
                (Some(Scope::Namespaced), None) => {
                    problems.push(named("namespaced, but has no metadata.namespace".into()))
                }
                (Some(Scope::Namespaced), Some(ns)) if !namespaces.contains(ns) => {
                    problems.push(named(format!(
                        "namespace `{ns}` neither exists nor is created by the catalogue"
                    )))
                }
                (Some(Scope::Cluster), Some(ns)) => {
                    problems.push(named(format!("cluster-scoped, but names namespace `{ns}`")))
                }
                _ => {}
            }
        }
    }
}

/// The kinds a CRD manifest defines: (group, served version, kind) → scope.
pub fn crd_kinds(body: &Value) -> Vec<((String, String, String), Scope)> {
    let spec = &body["spec"];
    let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str()) else {
        return Vec::new();
    };
    let scope = if spec["scope"].as_str() == Some("Cluster") {
        Scope::Cluster
    } else {
        Scope::Namespaced
    };
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool() != Some(false))
        .filter_map(|v| v["name"].as_str())
        .map(|v| ((group.to_string(), v.to_string(), kind.to_string()), scope))
        .collect()
}

/// Components in `dependsOn` order, ties kept in catalogue order; or one cycle, as the list of
/// names along it (first repeated at the end).
pub fn topo_order(cat: &Catalogue) -> Result<Vec<String>, Vec<String>> {
    let index: BTreeMap<&str, usize> = cat
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the path, 2 = done.
    let mut mark = vec![0u8; cat.components.len()];
    let mut out = Vec::new();
    fn visit(
        i: usize,
        cat: &Catalogue,
        index: &BTreeMap<&str, usize>,
        mark: &mut [u8],
        path: &mut Vec<usize>,
        out: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match mark[i] {
            2 => return Ok(()),
            1 => {
                let start = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..]
                    .iter()
                    .map(|&p| cat.components[p].name.clone())
                    .collect();
                cycle.push(cat.components[i].name.clone());
                return Err(cycle);
            }
            _ => {}
        }
        mark[i] = 1;
        path.push(i);
        for d in &cat.components[i].depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                visit(j, cat, index, mark, path, out)?;
            }
        }
        path.pop();
        mark[i] = 2;
        out.push(cat.components[i].name.clone());
        Ok(())
    }
    for i in 0..cat.components.len() {
        visit(i, cat, &index, &mut mark, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
