//! A lab: its state directory (`ROOT/NAME`, the only place lab state lives), its network, its
//! nodes, and the operations on them (up, start, stop, kill, partition, netem, add/remove node,
//! down). State is a JSON file replaced atomically under an exclusive lock, so two commands on one
//! lab never interleave. `down` works from the lab name alone: it finds processes, mounts, links
//! and tables from the kernel, so it cleans up after a crash too.
//!
//! This file owns the lab's types, its state file and lock, and bringing it up; making nodes is
//! in `lab/provision.rs`, operating on them in `lab/ops.rs`, taking it down in
//! `lab/teardown.rs`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::cmd::{self, CmdError, Output};
use crate::image::{self, ImageError};
use crate::names::{self, InvalidName};
use crate::net::{self, NetError, Netem, Subnet};
use crate::node::{self, NodeError, NodePaths};
use crate::qemu::{self, QemuError, VmPaths};
use crate::seed::{self, SeedError, SeedInput, SeedSource};
use crate::{Provisioner, Role};

mod ops;
mod provision;
mod teardown;

pub use teardown::{down, leftovers, DownReport};

/// Where labs live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/kubedna-lab";
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
/// Where systemd-nspawn keeps per-machine propagation directories on the host.
const NSPAWN_PROPAGATE: &str = "/run/systemd/nspawn/propagate";

/// Errors of lab operations. [`LabError::is_usage`] tells a caller's mistake from a failure.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("kubedna-lab needs root: it creates bridges, network namespaces, mounts and containers; run it as root (e.g. with sudo)")]
    NotRoot,
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error("lab {name} already exists in {dir}; use it, or remove it with `kubedna-lab down --name {name}`")]
    Exists { name: String, dir: PathBuf },
    #[error("no lab named {name} (no {dir}); start one with `kubedna-lab up --name {name}`")]
    NoSuchLab { name: String, dir: PathBuf },
    #[error("lab {lab} has no node {node}; its nodes: {known}")]
    NoSuchNode {
        lab: String,
        node: String,
        known: String,
    },
    #[error("lab {lab}: no running control-plane node has /etc/kubernetes/admin.conf yet (kubeadm init has not finished); see `kubedna-lab --name {lab} kubedna cp-1 status`")]
    NoApi { lab: String },
    #[error("a lab needs at least one node")]
    NoNodes,
    #[error("subnet {subnet} has no room for node number {index} (at most {max} nodes)")]
    SubnetFull {
        subnet: Subnet,
        index: u32,
        max: u32,
    },
    #[error("invalid partition: {0}; write groups of node names like `cp-1,cp-2 / cp-3,worker-1`")]
    BadPartition(String),
    #[error("invalid {what} {value}: {allowed}")]
    BadValue {
        what: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("could not read or write {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab state {path} is unreadable; remove the lab with `kubedna-lab down --name NAME`")]
    StateParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("internal error: a worker thread panicked")]
    Panicked,
    #[error("`down` left these behind: {}", .0.join("; "))]
    Leftovers(Vec<String>),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("{what} is not available for VM node {node}: {instead}")]
    NotForVm {
        node: String,
        what: &'static str,
        instead: &'static str,
    },
}

impl LabError {
    /// Whether the caller asked for something impossible (exit code 2) rather than a failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LabError::NotRoot
                | LabError::Name(_)
                | LabError::Exists { .. }
                | LabError::NoSuchLab { .. }
                | LabError::NoSuchNode { .. }
                | LabError::NoNodes
                | LabError::SubnetFull { .. }
                | LabError::BadPartition(_)
                | LabError::BadValue { .. }
                | LabError::Net(NetError::BadSubnet { .. } | NetError::Overlap { .. })
                | LabError::Image(ImageError::Missing { .. })
                | LabError::Qemu(
                    QemuError::NoDisk { .. } | QemuError::Missing { .. } | QemuError::NoBuilder
                )
                | LabError::NotForVm { .. }
        )
    }
}

/// The cluster secret given to nodes; never printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A node as the lab remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    /// Never reused: gives the address (subnet host `index + 1`) and the veth name.
    pub index: u32,
    pub address: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub netem: Netem,
    pub seed: SeedSource,
}

/// Everything the lab needs to operate on (and show) itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabState {
    pub name: String,
    pub subnet: Subnet,
    pub image_rootfs: PathBuf,
    pub bridge: String,
    pub next_index: u32,
    pub nodes: Vec<NodeRecord>,
    /// Current partition, as groups of node names (empty: healed).
    pub partitions: Vec<Vec<String>>,
    pub cluster_secret: Secret,
    /// How the agents find each other.
    #[serde(default)]
    pub discovery: Discovery,
    /// How nodes boot: nspawn containers of `image_rootfs`, or qemu VMs of `image_disk`.
    #[serde(default)]
    pub provisioner: Provisioner,
    /// The image's disk every VM's overlay is backed by (qemu provisioner only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_disk: Option<PathBuf>,
    /// The doctor, when the control planes' seeds run it (`Lab::up_with_doctor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doctor: Option<LabDoctor>,
}

/// The doctor's part of the lab's cluster description (`doctor:` in the cluster.yaml given to
/// `kubedna-image seed`): the control planes replace dead nodes through `kubedna-lab
/// hcloud-api` at `hcloud_api`, with `token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabDoctor {
    /// `http://<gateway>:<port>/v1`.
    pub hcloud_api: String,
    pub token: Secret,
    /// agent.yaml `doctor:` values by name (`backoffSeconds`, ...).
    pub settings: BTreeMap<String, u64>,
}

impl LabDoctor {
    pub fn new(hcloud_api: String, token: String, settings: BTreeMap<String, u64>) -> Self {
        LabDoctor {
            hcloud_api,
            token: Secret(token),
            settings,
        }
    }

    /// The token, for the API server the caller runs.
    pub fn token(&self) -> &str {
        &self.token.0
    }
}

/// How a lab's agents find each other (docs/lab.md, "Discovery").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Every node gets the control planes' addresses as seeds (the cloud-init path).
    #[default]
    Seeds,
    /// No seeds; same-L2 multicast beacons on the lab bridge (the PXE path).
    Multicast,
}

/// Where the lab writes every node's mesh address in each node: the lab provider's node list
/// (`provider.kind: lab` with `discovery.provider: true`), read by the agent's discovery.
pub const LAB_PEERS_FILE: &str = "etc/kubedna/lab/peers";

/// How to bring a lab up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub root: PathBuf,
    pub name: String,
    pub control_planes: u32,
    pub workers: u32,
    pub image: PathBuf,
    pub image_cache: PathBuf,
    pub subnet: Subnet,
    /// How long nodes may take to boot (and agents to answer).
    pub timeout: Duration,
}

/// One node in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: Role,
    pub address: Ipv4Addr,
    /// `systemctl is-system-running` in the node, or "stopped"/"starting".
    pub state: String,
    /// "absent" (no unit in the image), "inactive", "failed", "active" or "ready" (`kubedna status` answers).
    pub agent: String,
    pub seed: SeedSource,
    pub netem: Netem,
    pub labels: BTreeMap<String, String>,
}

/// An open lab, locked for the lifetime of this value.
#[derive(Debug)]
pub struct Lab {
    pub root: PathBuf,
    pub dir: PathBuf,
    pub state: LabState,
    _lock: Flock<File>,
}

/// Fails plainly unless running as root.
pub fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

fn lock(dir: &Path) -> Result<Flock<File>, LabError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, source)| LabError::Lock { path, source })
}

fn random_hex(bytes: usize) -> Result<String, LabError> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(|source| LabError::State {
            path: "/dev/urandom".into(),
            source,
        })?;
    Ok(hex::encode(buf))
}

/// Names of the labs under `root`.
pub fn list(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut labs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| names::validate_lab_name(n).is_ok())
        .collect();
    labs.sort();
    labs
}

impl Lab {
    /// Creates the lab and boots its nodes, waiting until every node's systemd is up (and its agent
    /// answers, when the image has one). On failure everything made so far is removed again.
    pub fn up(opts: &UpOptions) -> Result<Lab, LabError> {
        Self::up_with(opts, Discovery::Seeds)
    }

    /// Like [`Lab::up`], with the agents finding each other by `discovery`.
    pub fn up_with(opts: &UpOptions, discovery: Discovery) -> Result<Lab, LabError> {
        Self::up_provisioned(opts, discovery, Provisioner::Nspawn)
    }

    /// Like [`Lab::up`], with the doctor on in the control planes' seeds (docs/doctor.md): the
    /// caller serves the lab's API subset at `doctor.hcloud_api` (`hcloud::HcloudApi`).
    pub fn up_with_doctor(opts: &UpOptions, doctor: LabDoctor) -> Result<Lab, LabError> {
        Self::up_full(opts, Discovery::Seeds, Provisioner::Nspawn, Some(doctor))
    }

    /// Like [`Lab::up_with`], booting the nodes with `provisioner`: for qemu, `opts.image` must
    /// hold the image's disk (`disk.qcow2` of `kubedna-image build --outputs tar,disk`).
    pub fn up_provisioned(
        opts: &UpOptions,
        discovery: Discovery,
        provisioner: Provisioner,
    ) -> Result<Lab, LabError> {
        Self::up_full(opts, discovery, provisioner, None)
    }

    fn up_full(
        opts: &UpOptions,
        discovery: Discovery,
        provisioner: Provisioner,
        doctor: Option<LabDoctor>,
    ) -> Result<Lab, LabError> {
        require_root()?;
        names::validate_lab_name(&opts.name)?;
        if opts.control_planes + opts.workers == 0 {
            return Err(LabError::NoNodes);
        }
        let dir = opts.root.join(&opts.name);
        if dir.exists() {
            return Err(LabError::Exists {
                name: opts.name.clone(),
                dir,
            });
        }
        net::check_no_overlap(&opts.subnet)?;
        let (rootfs, disk) = match provisioner {
            Provisioner::Nspawn => (image::resolve(&opts.image, &opts.image_cache)?, None),
            Provisioner::Qemu => {
                qemu::check_host()?;
                if image::builder().is_none() {
                    return Err(QemuError::NoBuilder.into());
                }
                (opts.image.clone(), Some(qemu::find_disk(&opts.image)?))
            }
        };
        std::fs::create_dir_all(&dir).map_err(|source| LabError::State {
            path: dir.clone(),
            source,
        })?;
        let result = Self::up_inner(opts, dir, rootfs, (discovery, provisioner, doctor), disk);
        if result.is_err() {
            let _ = down(&opts.root, &opts.name);
        }
        result
    }

    fn up_inner(
        opts: &UpOptions,
        dir: PathBuf,
        rootfs: PathBuf,
        (discovery, provisioner, doctor): (Discovery, Provisioner, Option<LabDoctor>),
        image_disk: Option<PathBuf>,
    ) -> Result<Lab, LabError> {
        let lock = lock(&dir)?;
        let mut lab = Lab {
            root: opts.root.clone(),
            dir,
            state: LabState {
                name: opts.name.clone(),
                subnet: opts.subnet,
                image_rootfs: rootfs,
                bridge: names::bridge(&opts.name),
                next_index: 1,
                nodes: Vec::new(),
                partitions: Vec::new(),
                cluster_secret: Secret(random_hex(32)?),
                discovery,
                provisioner,
                image_disk,
                doctor,
            },
            _lock: lock,
        };
        let roles = (0..opts.control_planes)
            .map(|_| Role::ControlPlane)
            .chain((0..opts.workers).map(|_| Role::Worker));
        for role in roles {
            lab.plan_node(role, BTreeMap::new())?;
        }
        lab.save()?;
        node::ensure_private_mount(&lab.dir.join("netns"))?;
        let table = names::nft_table(&lab.state.name);
        net::install_firewall(&table, &lab.state.bridge)?;
        net::create_bridge(&lab.state.bridge, lab.gateway(), lab.state.subnet.prefix())?;
        let nodes: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &nodes {
            lab.provision(n, None)?;
        }
        lab.wait_ready(&nodes, Instant::now() + opts.timeout)?;
        Ok(lab)
    }

    /// Opens an existing lab (and locks it).
    pub fn open(root: &Path, name: &str) -> Result<Lab, LabError> {
        require_root()?;
        names::validate_lab_name(name)?;
        let dir = root.join(name);
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Err(LabError::NoSuchLab {
                name: name.to_string(),
                dir,
            });
        }
        let lock = lock(&dir)?;
        let text = std::fs::read_to_string(&path).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        let state = serde_json::from_str(&text).map_err(|source| LabError::StateParse {
            path: path.clone(),
            source,
        })?;
        Ok(Lab {
            root: root.to_path_buf(),
            dir,
            state,
            _lock: lock,
        })
    }

    fn save(&self) -> Result<(), LabError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let text =
            serde_json::to_string_pretty(&self.state).map_err(|source| LabError::StateParse {
                path: path.clone(),
                source,
            })?;
        let io = |source| LabError::State {
            path: path.clone(),
            source,
        };
        // The state holds the cluster secret: owner-only, and replaced atomically.
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// The bridge's address: the subnet's first host, the nodes' only gateway (which forwards nowhere).
    pub fn gateway(&self) -> Ipv4Addr {
        self.state.subnet.host(1).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The cluster secret the lab's seeds carry: for a test that seeds a machine the lab did not
    /// make (a PXE-installed one) into the lab's cluster. Never print it.
    pub fn cluster_secret(&self) -> &str {
        &self.state.cluster_secret.0
    }

    /// Host-side files of a node.
    pub fn paths(&self, node: &str) -> NodePaths {
        NodePaths::new(&self.dir, node)
    }

    /// Whether the lab's nodes are qemu VMs.
    pub fn is_vm(&self) -> bool {
        self.state.provisioner == Provisioner::Qemu
    }

    /// Host-side files of a VM node.
    pub fn vm_paths(&self, node: &str) -> VmPaths {
        VmPaths::new(&self.dir, node)
    }

    /// The lab's ssh key, with which the host reaches into VM nodes.
    pub fn ssh_key(&self) -> PathBuf {
        self.dir.join("ssh").join("id_ed25519")
    }

    fn machine(&self, node: &str) -> String {
        format!("kdl-{}-{node}", names::lab_id(&self.state.name))
    }

    /// The record of a node, or an error listing the known ones.
    pub fn node(&self, name: &str) -> Result<&NodeRecord, LabError> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::NoSuchNode {
                lab: self.state.name.clone(),
                node: name.to_string(),
                known: self
                    .state
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn veth(&self, node: &NodeRecord) -> String {
        names::veth(&self.state.name, node.index)
    }
}
