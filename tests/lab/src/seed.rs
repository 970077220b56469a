//! The NoCloud seed each node boots with, written into the node's own overlay at
//! `/var/lib/cloud/seed/nocloud/` so cloud-init in the node configures it as it would a VM.
//!
//! The seed is rendered by `kubedna-image seed` from the production templates in `cloud-init/`
//! ([`render_with_kubedna_image`]), from a cluster description the lab writes; only the
//! network-config is the lab's own, because the lab (like a hypervisor) has already configured
//! the node's interface. When `kubedna-image` is not available or the image has no agent (a
//! development rootfs), [`render_fallback`] writes a minimal seed instead: FALLBACK, marked as
//! such in the files it writes and in `status`.
//! This module never logs or returns the cluster secret outside the seed files (mode 0600).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Role;

/// Where cloud-init's NoCloud datasource looks for a seed inside the node.
pub const SEED_DIR: &str = "var/lib/cloud/seed/nocloud";

/// A seed that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("could not write the NoCloud seed file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the seed `kubedna-image seed` wrote: {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`kubedna-image seed` failed for node {node}")]
    Render {
        node: String,
        #[source]
        source: crate::cmd::CmdError,
    },
}

/// The cluster as `kubedna-image seed` wants it described (`cloud-init/cluster.example.yaml`).
#[derive(Debug, Clone)]
pub struct ClusterDesc {
    pub name: String,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// (name, role, address) of every node.
    pub nodes: Vec<(String, Role, Ipv4Addr)>,
    /// How the nodes find each other (`Seeds` unless a test asks otherwise).
    pub discovery: crate::lab::Discovery,
    /// The doctor on the control planes: the lab API's URL and agent.yaml `doctor:` values.
    pub doctor: Option<(String, std::collections::BTreeMap<String, u64>)>,
}

impl ClusterDesc {
    /// The `ClusterSeed` YAML (all values are validated names and addresses).
    pub fn to_yaml(&self) -> String {
        let mut y = format!(
            "# Written by kubedna-lab for `kubedna-image seed`; regenerated when nodes change.\n\
             apiVersion: kubedna.io/v1alpha1\n\
             kind: ClusterSeed\n\
             name: {}\n\
             secretFile: cluster-secret\n\
             provider: lab\n\
             multicast: {}\n\
             network:\n\
             \x20 prefixLength: {}\n\
             \x20 gateway: {}\n\
             nodes:\n",
            self.name,
            self.discovery == crate::lab::Discovery::Multicast,
            self.prefix,
            self.gateway
        );
        for (name, role, addr) in &self.nodes {
            let _ = write!(y, "  - name: {name}\n    role: {}\n", role.as_str());
            // Multicast labs describe nodes as a PXE install does: without static addresses,
            // so `kubedna-image seed` renders no seeds (the lab configures eth0 itself anyway).
            if self.discovery == crate::lab::Discovery::Seeds {
                let _ = writeln!(y, "    address: {addr}");
            }
        }
        if let Some((api, settings)) = &self.doctor {
            let _ = write!(
                y,
                "doctor:\n  tokenFile: hcloud-token\n  hcloudApi: {api}\n  settings: {{}}\n"
            );
            if !settings.is_empty() {
                y = y.replace("  settings: {}\n", "  settings:\n");
                for (k, v) in settings {
                    let _ = writeln!(y, "    {k}: {v}");
                }
            }
        }
        y
    }
}

fn write_private(path: &Path, content: &str) -> Result<(), SeedError> {
    let err = |source| SeedError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Renders `node`'s seed with `builder seed --cluster WORK/cluster.yaml --node NODE --out
/// WORK/NODE`. `work` is a root-only directory of the lab. The network-config is replaced by
/// [`NETWORK_CONFIG`]. `secrets` are the cluster secret and the provider token (with a doctor).
pub fn render_with_kubedna_image(
    builder: &str,
    work: &Path,
    cluster: &ClusterDesc,
    (secret, token): (&str, Option<&str>),
    node: &str,
) -> Result<Seed, SeedError> {
    let werr = |source| SeedError::Write {
        path: work.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(work).map_err(werr)?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700)).map_err(werr)?;
    write_private(&work.join("cluster-secret"), secret)?;
    if let Some(t) = token {
        write_private(&work.join("hcloud-token"), t)?;
    }
    let cluster_yaml = work.join("cluster.yaml");
    write_private(&cluster_yaml, &cluster.to_yaml())?;
    let out = work.join(node);
    let (c, o) = (cluster_yaml.to_string_lossy(), out.to_string_lossy());
    crate::cmd::run(
        builder,
        &["seed", "--cluster", &c, "--node", node, "--out", &o],
    )
    .map_err(|source| SeedError::Render {
        node: node.to_string(),
        source,
    })?;
    let read = |name: &str| {
        let path = out.join(name);
        std::fs::read_to_string(&path).map_err(|source| SeedError::Read { path, source })
    };
    Ok(Seed {
        meta_data: read("meta-data")?,
        user_data: read("user-data")?,
        network_config: NETWORK_CONFIG.to_string(),
    })
}

/// Which renderer produced a node's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeedSource {
    /// `kubedna-image seed` (the production templates).
    KubednaImage,
    /// The lab's own stand-in: FALLBACK until `kubedna-image seed` exists.
    LabFallback,
    /// User-data given by the caller (node provider), with lab meta-data.
    Caller,
}

/// What a node's seed says about it.
#[derive(Debug, Clone)]
pub struct SeedInput<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    pub role: Role,
    pub instance_id: &'a str,
    pub address: Ipv4Addr,
    /// Control-plane addresses the agent uses as discovery seeds.
    pub control_planes: &'a [Ipv4Addr],
    pub cluster_secret: &'a str,
}

/// The three NoCloud files.
#[derive(Debug, Clone)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
}

/// meta-data: instance id and hostname.
pub fn meta_data(input: &SeedInput<'_>) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        input.instance_id, input.node
    )
}

/// network-config: the lab has already configured `eth0` in the node's namespace, so cloud-init
/// must leave the network alone (there is no DHCP server on the lab bridge).
pub const NETWORK_CONFIG: &str = "network:\n  config: disabled\n";

/// FALLBACK seed, used until `kubedna-image seed` exists: writes `/etc/kubedna/agent.yaml` in the
/// schema of `agent/config/examples/agent.yaml` and the cluster secret, then starts the agent if
/// the image has it.
pub fn render_fallback(input: &SeedInput<'_>) -> Seed {
    let role = match input.role {
        Role::ControlPlane => "control-plane",
        Role::Worker => "worker",
    };
    let mut seeds = String::new();
    for a in input.control_planes.iter().filter(|a| **a != input.address) {
        let _ = writeln!(seeds, "          - {a}:7946");
    }
    let seeds = if seeds.is_empty() {
        "        seeds: []\n".to_string()
    } else {
        format!("        seeds:\n{seeds}")
    };
    let user_data = format!(
        "#cloud-config\n\
         # FALLBACK seed written by kubedna-lab (tests/lab/src/seed.rs) until `kubedna-image seed`\n\
         # renders the production templates from cloud-init/. Do not copy into production.\n\
         hostname: {node}\n\
         write_files:\n\
         \x20 - path: /etc/kubedna/cluster.secret\n\
         \x20   permissions: '0600'\n\
         \x20   owner: root:root\n\
         \x20   content: {secret}\n\
         \x20 - path: /etc/kubedna/agent.yaml\n\
         \x20   permissions: '0644'\n\
         \x20   owner: root:root\n\
         \x20   content: |\n\
         \x20     apiVersion: kubedna.io/v1alpha1\n\
         \x20     kind: AgentConfig\n\
         \x20     cluster:\n\
         \x20       name: {cluster}\n\
         \x20       secretFile: /etc/kubedna/cluster.secret\n\
         \x20     node:\n\
         \x20       name: {node}\n\
         \x20       role: {role}\n\
         \x20     discovery:\n\
         \x20       port: 7946\n\
         {seeds}\
         \x20       multicast:\n\
         \x20         enabled: false\n\
         \x20 - path: /etc/kubedna/lab-seed\n\
         \x20   content: fallback\n\
         runcmd:\n\
         \x20 - [sh, -c, 'if systemctl cat kubedna-agent.service >/dev/null 2>&1; then systemctl enable --now kubedna-agent.service; fi']\n",
        node = input.node,
        cluster = input.cluster,
        secret = input.cluster_secret,
    );
    Seed {
        meta_data: meta_data(input),
        user_data,
        network_config: NETWORK_CONFIG.to_string(),
    }
}

/// Writes the seed into the node's root filesystem (its overlay), files mode 0600.
pub fn write(root: &Path, seed: &Seed) -> Result<(), SeedError> {
    let dir = root.join(SEED_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| SeedError::Write {
        path: dir.clone(),
        source,
    })?;
    for (name, content) in [
        ("meta-data", &seed.meta_data),
        ("user-data", &seed.user_data),
        ("network-config", &seed.network_config),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let res = std::fs::write(&tmp, content)
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
            .and_then(|()| std::fs::rename(&tmp, &path));
        res.map_err(|source| SeedError::Write { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_is_marked_and_lists_other_control_planes() {
        let cps = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
        let input = SeedInput {
            cluster: "lab",
            node: "cp-1",
            role: Role::ControlPlane,
            instance_id: "lab-cp-1",
            address: cps[0],
            control_planes: &cps,
            cluster_secret: "s3cret",
        };
        let seed = render_fallback(&input);
        assert!(seed.user_data.starts_with("#cloud-config\n# FALLBACK"));
        assert!(seed.user_data.contains("        - 198.18.0.3:7946\n"));
        assert!(!seed.user_data.contains("198.18.0.2:7946"));
        assert!(seed.meta_data.contains("local-hostname: cp-1"));
    }
}
