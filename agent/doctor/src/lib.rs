//! The doctor: the leader's duty of replacing dead nodes through a VM provider, never making
//! things worse (docs/doctor.md is the argument this crate implements).
//!
//! The crate owns the decisions and the provider boundary, and does no etcd or Kubernetes I/O
//! itself: [`verdict`] turns each node's signals over time into healthy, suspect or dead;
//! [`guard`] decides whether a replacement may start (enabled, not paused, `maxUnhealthy`, one
//! in flight, back-off per node, never the leader's own node) and holds the etcd quorum rule;
//! [`steps`] is the replacement's step machine, `next_step(progress, observation) -> Step`, whose
//! progress the caller records in etcd under the leader term so the next leader resumes it;
//! [`pass`] runs one leader pass over all of them behind narrow traits (the etcd store is
//! implemented in `kubedna-controlplane`, [`kubectl`] reads the Node objects, [`seeds`] renders
//! a replacement's cloud-init);
//! [`provider`] is the one trait behind which VMs are created, fenced and deleted (Hetzner Cloud,
//! and the lab serving the same API); [`events`] is how every decision and step reaches the
//! audit log. It must never decide from one signal that a partitioned or slow node is dead, never
//! let a step run that the recorded progress does not justify, and never log the provider token.

pub mod events;
pub mod guard;
pub mod kubectl;
pub mod pass;
pub mod provider;
pub mod seeds;
pub mod steps;
pub mod verdict;

pub use events::{DoctorEvent, DoctorEvents};
pub use guard::{decide, Decision, WaitReason};
pub use steps::{next_step, Observation, Progress, Step, StepName};
pub use verdict::{judge, Thresholds, Tracker, Verdict};

/// Seconds since the Unix epoch: every time in the doctor's records, so a new leader reads the
/// same clock its predecessor wrote.
pub type Unix = u64;

/// A node's role, as the replacement must recreate it (one type for every crate).
pub use kubedna_proto::NodeRole;

#[cfg(test)]
mod scenarios;

#[cfg(test)]
mod model;
