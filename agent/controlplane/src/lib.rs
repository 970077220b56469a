//! Control-plane formation, as argued in `docs/control-plane.md`:
//!
//! - [`bootstrap`]: the fixed member set and the amnesia check that decides whether this node may
//!   start etcd as a new cluster, must join an existing one, or must wait. Pure logic, no I/O.
//! - [`coord`]: what must happen once, decided in etcd: the single `kubeadm init` by
//!   transaction, and leader election by lease whose term fences every leader write.
//!
//! - [`engine`]: the node engine the daemon runs: it sequences the above with etcd and kubelet as
//!   systemd services ([`etcd_unit`], [`kubelet`]) and kubeadm ([`kubeadm_run`]), from host
//!   preparation to `member`, deciding its kubeadm steps with [`progress`] and running the
//!   leader's [`duties`] under its term (a follower empties a dead leader's seat by the
//!   [`takeover`] rule), and reporting every change it makes on its own through
//!   [`actions`] for the audit log.

pub mod actions;
pub mod bootstrap;
pub mod coord;
pub mod doctor_duty;
pub mod duties;
pub mod engine;
pub mod etcd_unit;
pub mod joinmat;
pub mod kubeadm;
pub mod kubeadm_run;
pub mod kubelet;
pub mod maintenance;
pub mod membership;
pub mod pki;
pub mod progress;
pub mod takeover;
