//! kubedna-lab: local KubeDNA clusters on one machine. Each node is a systemd-nspawn container
//! booting systemd as PID 1 from a copy-on-write overlay over the node image's rootfs, in its own
//! network namespace on a bridge the lab creates, configured by its NoCloud seed as a VM would be.
//! The lab injects faults (kill, partition, loss, delay) and removes everything it made on `down`.
//! It never routes or NATs lab traffic out of the machine. The CLI in `main.rs` is a thin layer
//! over [`lab::Lab`]; tests drive the library the same way.

pub mod cmd;
pub mod delay;
pub mod hcloud;
pub mod image;
pub mod kube;
pub mod lab;
pub mod names;
pub mod net;
pub mod node;
pub mod procfs;
pub mod provider;
pub mod pxe_http;
pub mod qemu;
pub mod seed;

use serde::{Deserialize, Serialize};

/// What a node is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl Role {
    /// Prefix of node names of this role: `cp-N`, `worker-N`.
    pub fn prefix(self) -> &'static str {
        match self {
            Role::ControlPlane => "cp",
            Role::Worker => "worker",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

/// How a lab boots its nodes (kept in the lab's state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provisioner {
    /// systemd-nspawn containers over an overlay of the image rootfs (seconds per node).
    #[default]
    Nspawn,
    /// The image's UEFI disk in qemu under software emulation: the full VM boot path (minutes).
    Qemu,
}
