//! The planner: wanted state (a validated [`Selected`]), the live objects that carry our label
//! and the recorded [`Progress`] in; the ordered steps out. Pure, so the ordering and pruning
//! rules are tested by table here and the runner only carries steps out.
//!
//! Order: every component's namespaces and CRDs first (waiting for each written CRD to be
//! Established), then each component in `dependsOn` order, its objects by kind (Helm's install
//! order, shortened), then its health checks, then its record. Last, what left the catalogue is
//! pruned: components in reverse of their recorded apply order, objects in reverse kind order.
//! Only objects that carry our ApplySet label are candidates, and a namespace is never deleted
//! (its deletion would take objects that are not ours with it): it is released instead.

use std::collections::{BTreeMap, BTreeSet};

use crate::object::{kind_rank, LiveObject, Object, ObjectKey};
use crate::progress::{Change, Health, Progress};
use crate::validate::Selected;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub component: String,
    pub key: ObjectKey,
    pub change: Change,
    pub force: bool,
}

/// What the runner checks before deleting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Delete, with the uid as precondition (a look-alike created since is not ours).
    None,
    /// A CRD: delete only when no object of its kinds remains that is not ours (deleting a CRD
    /// deletes every object of its kinds); otherwise released, as a namespace is.
    NoForeignObjects,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Apply(Write),
    WaitEstablished {
        component: String,
        crd: String,
    },
    /// Wait for the component's health checks.
    Health {
        component: String,
    },
    /// Record the component as applied at its wanted version.
    Record {
        component: String,
    },
    Prune {
        component: String,
        key: ObjectKey,
        uid: String,
        guard: Guard,
    },
    /// An object that left the catalogue and is kept: our labels and annotation are taken off
    /// (every other field stays), so it is no longer ours. A namespace.
    Release {
        component: String,
        key: ObjectKey,
        why: &'static str,
    },
    /// A component that left the catalogue, all its objects pruned: drop its record.
    Forget {
        component: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn writes(&self) -> impl Iterator<Item = &Write> {
        self.steps.iter().filter_map(|s| match s {
            Step::Apply(w) => Some(w),
            _ => None,
        })
    }

    /// Whether the plan writes or deletes anything in the cluster.
    pub fn changes_cluster(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Apply(_) | Step::Prune { .. }))
    }
}

/// Why `o` (of component `component`) must be written, if it must.
pub fn change(component: &str, o: &Object, live: Option<&LiveObject>) -> Option<Change> {
    let Some(l) = live else {
        return Some(Change::Create);
    };
    if l.component() != Some(component) || l.digest.as_deref() != Some(o.digest().as_str()) {
        Some(Change::Upgrade)
    } else if !l.covers_intent {
        Some(Change::Drift)
    } else {
        None
    }
}

pub fn plan(
    selected: &Selected,
    live: &BTreeMap<ObjectKey, LiveObject>,
    progress: &Progress,
) -> Plan {
    let mut steps = Vec::new();
    let mut written: BTreeSet<&str> = BTreeSet::new();
    let write = |c: &crate::Component, o: &Object| {
        change(&c.name, o, live.get(&o.key)).map(|change| Write {
            component: c.name.clone(),
            key: o.key.clone(),
            change,
            force: c.force,
        })
    };
    // Namespaces, then CRDs, of every component, before anything else.
    let mut waits = Vec::new();
    for foundation in [0u8, 1] {
        for c in &selected.components {
            for o in &c.objects {
                let rank = kind_rank(&o.key.group, &o.key.kind);
                if rank != foundation {
                    continue;
                }
                if let Some(w) = write(c, o) {
                    written.insert(&c.name);
                    steps.push(Step::Apply(w));
                    if o.is_crd() {
                        waits.push(Step::WaitEstablished {
                            component: c.name.clone(),
                            crd: o.key.name.clone(),
                        });
                    }
                }
            }
        }
    }
    steps.append(&mut waits);
    for c in &selected.components {
        let mut rest: Vec<&Object> = c
            .objects
            .iter()
            .filter(|o| kind_rank(&o.key.group, &o.key.kind) > 1)
            .collect();
        rest.sort_by_key(|o| kind_rank(&o.key.group, &o.key.kind));
        for o in rest {
            if let Some(w) = write(c, o) {
                written.insert(&c.name);
                steps.push(Step::Apply(w));
            }
        }
        if !c.health.is_empty() {
            steps.push(Step::Health {
                component: c.name.clone(),
            });
        }
        let record = progress.components.get(&c.name);
        let current = record.is_some_and(|r| {
            r.applied_version.as_deref() == Some(c.version.as_str())
                && r.wanted_version == c.version
                && (c.health.is_empty() || r.health == Health::Healthy)
                && r.last_error.is_none()
        });
        if written.contains(c.name.as_str()) || !current || !c.health.is_empty() {
            steps.push(Step::Record {
                component: c.name.clone(),
            });
        }
    }
    steps.extend(prune_steps(selected, live, progress));
    Plan { steps }
}

fn prune_steps(
    selected: &Selected,
    live: &BTreeMap<ObjectKey, LiveObject>,
    progress: &Progress,
) -> Vec<Step> {
    let wanted: BTreeSet<&ObjectKey> = selected
        .components
        .iter()
        .flat_map(|c| c.objects.iter().map(|o| &o.key))
        .collect();
    let mut by_component: BTreeMap<String, Vec<(&ObjectKey, &LiveObject)>> = BTreeMap::new();
    for (k, l) in live {
        if l.ours() && !wanted.contains(k) {
            let c = l.component().unwrap_or_default().to_string();
            by_component.entry(c).or_default().push((k, l));
        }
    }
    for name in progress.components.keys() {
        if selected.component(name).is_none() {
            by_component.entry(name.clone()).or_default();
        }
    }
    // Reverse apply order: a component never recorded (a label we cannot place) goes first,
    // as if it depended on everything.
    let order = |c: &str| progress.components.get(c).map_or(usize::MAX, |r| r.order);
    let mut components: Vec<String> = by_component.keys().cloned().collect();
    components.sort_by_key(|c| std::cmp::Reverse(order(c)));
    let mut steps = Vec::new();
    for c in components {
        let mut objects = by_component.remove(&c).unwrap_or_default();
        objects.sort_by_key(|(k, _)| std::cmp::Reverse(kind_rank(&k.group, &k.kind)));
        for (k, l) in objects {
            let component = c.clone();
            steps.push(if k.group.is_empty() && k.kind == "Namespace" {
                Step::Release {
                    component,
                    key: k.clone(),
                    why: "a namespace is never pruned: deleting it would delete what else it holds",
                }
            } else {
                let crd = k.group == "apiextensions.k8s.io" && k.kind == "CustomResourceDefinition";
                Step::Prune {
                    component,
                    key: k.clone(),
                    uid: l.uid.clone(),
                    guard: if crd {
                        Guard::NoForeignObjects
                    } else {
                        Guard::None
                    },
                }
            });
        }
        if selected.component(&c).is_none() && !c.is_empty() {
            steps.push(Step::Forget { component: c });
        }
    }
    steps
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
