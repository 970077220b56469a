//! From signals to a verdict. Each node has three signals (the mesh, its Node object's `Ready`
//! condition, the provider's view of its VM); [`Tracker`] remembers since when each has been bad,
//! and [`judge`] turns that into [`Verdict`]. Rules (docs/doctor.md section 1): any positive sign
//! of life (mesh alive, Node Ready) vetoes death; a VM the provider reports running is dead only
//! after the long `hung` threshold, so a partition is never a death; a slow node keeps its
//! signals good and is never even suspect. Never decides from a single signal that the node is
//! unreachable, and never counts time the current leader did not observe.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Unix;

/// What the mesh says about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeshState {
    Alive,
    Suspect,
    Down,
    /// The mesh has never seen the node (or the signal is switched off).
    Unknown,
}

/// The Node object's `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyState {
    Ready,
    NotReady,
    /// `Ready=Unknown`: kubelet stopped posting status.
    Unknown,
    /// No Node object of that name.
    Missing,
    /// The API could not be asked (or the signal is switched off).
    Unobserved,
}

/// What the provider says about the node's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Running,
    /// Starting, stopping, migrating, rebuilding: neither alive nor dead.
    Transitional,
    Off,
    /// The provider lists no VM of that name.
    Missing,
    /// The provider reports the VM in an unknown or failed state.
    Failed,
    /// The provider could not be asked (or there is none).
    Unobserved,
}

/// One observation of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub mesh: MeshState,
    pub ready: ReadyState,
    /// When the API says the `Ready` condition last changed, if it says: it survives a change
    /// of leader, unlike the tracker's own first sighting.
    pub ready_since: Option<Unix>,
    pub vm: VmState,
}

/// One signal's value and since when it has been bad (None while good or unobserved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal<S> {
    pub state: S,
    pub bad_since: Option<Unix>,
}

/// A node's three signals, as the tracker holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    pub mesh: Signal<MeshState>,
    pub ready: Signal<ReadyState>,
    pub vm: Signal<VmState>,
}

impl MeshState {
    fn bad(self) -> bool {
        matches!(self, MeshState::Suspect | MeshState::Down)
    }
}

impl ReadyState {
    fn bad(self) -> bool {
        matches!(
            self,
            ReadyState::NotReady | ReadyState::Unknown | ReadyState::Missing
        )
    }
}

impl VmState {
    fn bad(self) -> bool {
        matches!(self, VmState::Off | VmState::Missing | VmState::Failed)
    }
}

/// The thresholds of `doctor:` in agent.yaml, in seconds; `None` switches a signal off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    pub mesh_down: Option<u64>,
    pub not_ready: Option<u64>,
    pub provider_off: Option<u64>,
    /// How long a VM the provider reports running must be silent on both the mesh and the Node
    /// before it counts as hung (dead). Longest of all: a partition looks the same.
    pub hung: Option<u64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            mesh_down: Some(300),
            not_ready: Some(300),
            provider_off: Some(30),
            hung: Some(900),
        }
    }
}

/// Remembers, per node, since when each signal has been bad. Lives in the leader's memory: a
/// new leader starts afresh, which can delay a replacement but never hasten one.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    nodes: BTreeMap<String, Signals>,
}

fn since<S: Copy>(prev: Option<&Signal<S>>, state: S, bad: bool, now: Unix) -> Signal<S> {
    let bad_since = bad.then(|| prev.and_then(|p| p.bad_since).unwrap_or(now));
    Signal { state, bad_since }
}

impl Tracker {
    /// Records one observation of `node` at `now` and returns its signals.
    pub fn observe(&mut self, node: &str, o: Observed, t: &Thresholds, now: Unix) -> &Signals {
        let prev = self.nodes.get(node);
        let mesh_on = t.mesh_down.is_some() || t.hung.is_some();
        let mesh = if mesh_on { o.mesh } else { MeshState::Unknown };
        let ready = if t.not_ready.is_some() || t.hung.is_some() {
            o.ready
        } else {
            ReadyState::Unobserved
        };
        let vm = if t.provider_off.is_some() || t.hung.is_some() {
            o.vm
        } else {
            VmState::Unobserved
        };
        let mut ready_signal = since(prev.map(|p| &p.ready), ready, ready.bad(), now);
        if let (Some(s), Some(from)) = (ready_signal.bad_since.as_mut(), o.ready_since) {
            *s = (*s).min(from);
        }
        let signals = Signals {
            mesh: since(prev.map(|p| &p.mesh), mesh, mesh.bad(), now),
            ready: ready_signal,
            vm: since(prev.map(|p| &p.vm), vm, vm.bad(), now),
        };
        self.nodes.insert(node.to_string(), signals);
        &self.nodes[node]
    }

    /// Forgets nodes no longer observed (replaced, removed).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|n, _| keep(n));
    }

    pub fn get(&self, node: &str) -> Option<&Signals> {
        self.nodes.get(node)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Signals)> {
        self.nodes.iter()
    }
}

/// Why a node was judged dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadBy {
    /// The provider says the VM is off, missing or failed.
    Provider,
    /// Mesh down and Node not Ready, the provider unable to say the VM runs.
    Unreachable,
    /// The VM runs but the mesh and the Node have been silent for the hung threshold.
    Hung,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Healthy,
    Suspect,
    Dead { by: DeadBy },
}

impl Verdict {
    pub fn unhealthy(self) -> bool {
        !matches!(self, Verdict::Healthy)
    }
}

fn held(bad_since: Option<Unix>, threshold: Option<u64>, now: Unix) -> bool {
    matches!((bad_since, threshold), (Some(s), Some(t)) if now.saturating_sub(s) >= t)
}

/// The verdict on one node's signals at `now`.
pub fn judge(s: &Signals, t: &Thresholds, now: Unix) -> Verdict {
    let any_bad =
        s.mesh.bad_since.is_some() || s.ready.bad_since.is_some() || s.vm.bad_since.is_some();
    if !any_bad {
        return Verdict::Healthy;
    }
    // A positive sign of life vetoes death, whatever else is bad.
    if s.mesh.state == MeshState::Alive || s.ready.state == ReadyState::Ready {
        return Verdict::Suspect;
    }
    if held(s.vm.bad_since, t.provider_off, now) {
        return Verdict::Dead {
            by: DeadBy::Provider,
        };
    }
    // Both silences are needed: a switched-off or unobserved Node signal never lets the mesh
    // alone declare a node unreachable.
    let mesh_and_node = |mesh_t: Option<u64>, ready_t: Option<u64>| {
        held(s.mesh.bad_since, mesh_t, now) && held(s.ready.bad_since, ready_t, now)
    };
    match s.vm.state {
        VmState::Running | VmState::Transitional => {
            if mesh_and_node(t.hung, t.hung) {
                return Verdict::Dead { by: DeadBy::Hung };
            }
        }
        _ => {
            if mesh_and_node(t.mesh_down, t.not_ready) {
                return Verdict::Dead {
                    by: DeadBy::Unreachable,
                };
            }
        }
    }
    Verdict::Suspect
}

/// The signals in words for status and audit: `mesh=down for 312s, node=not-ready for 300s,
/// vm=off for 40s`.
pub fn describe(s: &Signals, now: Unix) -> String {
    fn one<S: Serialize>(name: &str, sig: &Signal<S>, now: Unix) -> String {
        let state = serde_json::to_value(&sig.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match sig.bad_since {
            Some(from) => format!("{name}={state} for {}s", now.saturating_sub(from)),
            None => format!("{name}={state}"),
        }
    }
    format!(
        "{}, {}, {}",
        one("mesh", &s.mesh, now),
        one("node", &s.ready, now),
        one("vm", &s.vm, now)
    )
}

#[cfg(test)]
mod tests;
