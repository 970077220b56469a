//! Kubernetes in the lab: `kubedna-lab kubectl ARGS` runs the real kubectl of a control-plane
//! node against the cluster the agents formed, with that node's `admin.conf`, and the helpers
//! tests use to wait for nodes to be Ready. The lab never talks to the API from the host: every
//! call runs inside a node, on the lab's own network.

use std::time::Duration;

use crate::cmd::Output;
use crate::lab::{Lab, LabError};
use crate::node;
use crate::Role;

pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

impl Lab {
    /// The first running control-plane node that has an `admin.conf` (kubeadm init or a
    /// control-plane join wrote it), to run kubectl in.
    pub fn kubectl_node(&self) -> Result<String, LabError> {
        for n in &self.state.nodes {
            if n.role != Role::ControlPlane {
                continue;
            }
            let p = self.paths(&n.name);
            if p.root.join(ADMIN_CONF.trim_start_matches('/')).is_file()
                && node::leader(&p).is_some()
            {
                return Ok(n.name.clone());
            }
        }
        Err(LabError::NoApi {
            lab: self.state.name.clone(),
        })
    }

    /// Runs kubectl with `args` in a control-plane node (see [`Lab::kubectl_node`]) and captures
    /// its output.
    pub fn kubectl(&self, args: &[&str], timeout: Option<Duration>) -> Result<Output, LabError> {
        let node = self.kubectl_node()?;
        let mut argv = vec!["kubectl", "--kubeconfig", ADMIN_CONF];
        argv.extend_from_slice(args);
        self.exec(&node, &argv, timeout)
    }

    /// Runs kubectl interactively (the `kubectl` command); returns its exit status.
    pub fn kubectl_interactive(&self, args: &[&str]) -> Result<std::process::ExitStatus, LabError> {
        let node = self.kubectl_node()?;
        let mut argv = vec!["kubectl", "--kubeconfig", ADMIN_CONF];
        argv.extend_from_slice(args);
        self.exec_interactive(&node, &argv)
    }
}
