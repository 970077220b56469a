//! A lab: its state directory (`ROOT/NAME`, the only place lab state lives), its network, its
//! nodes, and the operations on them (up, start, stop, kill, partition, netem, add/remove node,
//! down). State is a JSON file replaced atomically under an exclusive lock, so two commands on one
//! lab never interleave. `down` works from the lab name alone: it finds processes, mounts, links
//! and tables from the kernel, so it cleans up after a crash too.

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

    fn cluster_desc(&self) -> seed::ClusterDesc {
        seed::ClusterDesc {
            name: self.state.name.clone(),
            prefix: self.state.subnet.prefix(),
            gateway: self.gateway(),
            nodes: self
                .state
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.role, n.address))
                .collect(),
            discovery: self.state.discovery,
            doctor: self
                .state
                .doctor
                .as_ref()
                .map(|d| (d.hcloud_api.clone(), d.settings.clone())),
        }
    }

    /// A VM node: disk overlay, seed ISO, tap on the bridge, then qemu.
    fn provision_vm(&mut self, name: &str, user_data: Option<&str>) -> Result<(), LabError> {
        let record = self.node(name)?.clone();
        let vp = self.vm_paths(name);
        let base = self
            .state
            .image_disk
            .clone()
            .ok_or_else(|| QemuError::NoDisk {
                dir: self.state.image_rootfs.clone(),
            })?;
        qemu::prepare_disk(&vp, &base)?;
        let key = qemu::ensure_ssh_key(&self.dir)?;
        let builder = image::builder().ok_or(QemuError::NoBuilder)?;
        let nic = qemu::Nic {
            mac: qemu::mac(&self.state.name, name),
            address: record.address,
            prefix: self.state.subnet.prefix(),
            gateway: self.gateway(),
        };
        qemu::render_seed_iso(
            &vp,
            &qemu::VmSeed {
                builder: &builder,
                work: &self.dir.join("seed"),
                desc: &self.cluster_desc(),
                secret: &self.state.cluster_secret.0,
                ssh_key: &key,
                user_data,
                nic: &nic,
            },
        )?;
        let source = if user_data.is_some() {
            SeedSource::Caller
        } else {
            SeedSource::KubednaImage
        };
        if let Some(r) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            r.seed = source;
        }
        let tap = self.veth(&record);
        qemu::create_tap(&tap, &self.state.bridge)?;
        self.save()?;
        qemu::spawn(
            &vp,
            &self.machine(name),
            &tap,
            &qemu::mac(&self.state.name, name),
        )?;
        Ok(())
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

    fn plan_node(
        &mut self,
        role: Role,
        labels: BTreeMap<String, String>,
    ) -> Result<NodeRecord, LabError> {
        self.plan_named_node(None, role, labels)
    }

    /// [`Lab::plan_node`] under a given name (the doctor recreates a node under its old name).
    fn plan_named_node(
        &mut self,
        wanted: Option<&str>,
        role: Role,
        labels: BTreeMap<String, String>,
    ) -> Result<NodeRecord, LabError> {
        let index = self.state.next_index;
        let address = self
            .state
            .subnet
            .host(index + 1)
            .filter(|_| index <= names::MAX_NODE_INDEX)
            .ok_or(LabError::SubnetFull {
                subnet: self.state.subnet,
                index,
                max: self
                    .state
                    .subnet
                    .host_count()
                    .saturating_sub(1)
                    .min(names::MAX_NODE_INDEX),
            })?;
        let n = self.state.nodes.iter().filter(|n| n.role == role).count();
        let mut k = n + 1;
        let name = if let Some(w) = wanted {
            w.to_string()
        } else {
            loop {
                let candidate = format!("{}-{k}", role.prefix());
                if self.state.nodes.iter().all(|n| n.name != candidate) {
                    break candidate;
                }
                k += 1;
            }
        };
        let mut labels = labels;
        labels.insert("kubedna.io/cluster".into(), self.state.name.clone());
        labels.insert("kubedna.io/role".into(), role.as_str().into());
        let record = NodeRecord {
            name,
            role,
            index,
            address,
            labels,
            netem: Netem::default(),
            seed: SeedSource::LabFallback,
        };
        self.state.next_index += 1;
        self.state.nodes.push(record.clone());
        Ok(record)
    }

    /// Overlay, identity, seed, namespace, link, then boot.
    fn provision(&mut self, name: &str, user_data: Option<&str>) -> Result<(), LabError> {
        if self.is_vm() {
            return self.provision_vm(name, user_data);
        }
        let record = self.node(name)?.clone();
        let p = self.paths(name);
        node::mount_overlay(&self.state.image_rootfs, &p)?;
        node::write_identity(&p, name)?;
        let cps: Vec<Ipv4Addr> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .map(|n| n.address)
            .collect();
        let instance_id = format!("{}-{}-{}", self.state.name, name, record.index);
        let input = SeedInput {
            cluster: &self.state.name,
            node: name,
            role: record.role,
            instance_id: &instance_id,
            address: record.address,
            control_planes: &cps,
            cluster_secret: &self.state.cluster_secret.0,
        };
        let (rendered, source) = match user_data {
            Some(ud) => (
                seed::Seed {
                    meta_data: seed::meta_data(&input),
                    user_data: ud.to_string(),
                    network_config: seed::NETWORK_CONFIG.to_string(),
                },
                SeedSource::Caller,
            ),
            None => match image::builder().filter(|_| image::has_agent(&self.state.image_rootfs)) {
                Some(builder) => {
                    let desc = self.cluster_desc();
                    let rendered = seed::render_with_kubedna_image(
                        &builder,
                        &self.dir.join("seed"),
                        &desc,
                        (
                            &self.state.cluster_secret.0,
                            self.state.doctor.as_ref().map(LabDoctor::token),
                        ),
                        name,
                    )?;
                    (rendered, SeedSource::KubednaImage)
                }
                // FALLBACK until the image has the agent / kubedna-image is installed.
                None => (seed::render_fallback(&input), SeedSource::LabFallback),
            },
        };
        seed::write(&p.root, &rendered)?;
        self.write_peers_files()?;
        if let Some(r) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            r.seed = source;
        }
        node::create_netns(&p)?;
        let veth = self.veth(&record);
        if !net::link_exists(&veth) {
            net::create_node_link(
                &self.state.bridge,
                &veth,
                &p.netns,
                record.address,
                self.state.subnet.prefix(),
                self.gateway(),
            )?;
        }
        self.save()?;
        node::spawn(&p, &self.state.name, &self.machine(name), name)?;
        Ok(())
    }

    /// Waits (in parallel) until the nodes' systemd finished booting and, where the image has the
    /// agent, until `kubedna status` answers. Returns each node's system state.
    pub fn wait_ready(
        &self,
        nodes: &[String],
        deadline: Instant,
    ) -> Result<Vec<(String, String)>, LabError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        if self.is_vm() {
            let key = self.ssh_key();
            let vms: Vec<(VmPaths, Ipv4Addr)> = nodes
                .iter()
                .map(|n| Ok((self.vm_paths(n), self.node(n)?.address)))
                .collect::<Result<_, LabError>>()?;
            return std::thread::scope(|s| {
                let handles: Vec<_> = vms
                    .iter()
                    .map(|(vp, addr)| {
                        let key = &key;
                        s.spawn(move || -> Result<(String, String), LabError> {
                            let state = qemu::wait_ready(vp, key, *addr, deadline, timeout)?;
                            Ok((vp.name.clone(), state))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(Err(LabError::Panicked)))
                    .collect()
            });
        }
        let paths: Vec<NodePaths> = nodes.iter().map(|n| self.paths(n)).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = paths
                .iter()
                .map(|p| {
                    s.spawn(move || -> Result<(String, String), LabError> {
                        let state = node::wait_booted(p, deadline, timeout)?;
                        wait_agent(p, deadline, timeout)?;
                        Ok((p.name.clone(), state))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(LabError::Panicked)))
                .collect()
        })
    }

    /// Status of every node.
    pub fn status(&self) -> Vec<NodeStatus> {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .state
                .nodes
                .iter()
                .map(|n| {
                    let p = self.paths(&n.name);
                    let vm = self
                        .is_vm()
                        .then(|| (self.vm_paths(&n.name), self.ssh_key()));
                    s.spawn(move || {
                        let (state, agent) = match &vm {
                            Some((vp, key)) => qemu::node_state(vp, key, n.address),
                            None => {
                                let state = node::system_state(&p);
                                let agent = if matches!(state.as_str(), "stopped" | "starting") {
                                    "-".to_string()
                                } else {
                                    agent_state(&p)
                                };
                                (state, agent)
                            }
                        };
                        NodeStatus {
                            name: n.name.clone(),
                            role: n.role,
                            address: n.address,
                            state,
                            agent,
                            seed: n.seed,
                            netem: n.netem,
                            labels: n.labels.clone(),
                        }
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
    }

    /// Runs a command in a node and captures its output.
    pub fn exec(
        &self,
        node: &str,
        argv: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Output, LabError> {
        let record = self.node(node)?;
        if self.is_vm() {
            self.require_running_vm(node)?;
            return Ok(qemu::ssh(&self.ssh_key(), record.address, argv, timeout)?);
        }
        Ok(node::exec(&self.paths(node), argv, timeout)?)
    }

    /// Sends `count` pings from node `from`'s network namespace to `to` (an address), `interval`
    /// seconds apart, each answered within 1 s or lost; returns how many were answered. Uses the
    /// host's `ping` inside the namespace, so it needs nothing in the image and measures exactly
    /// the node's link.
    pub fn ping(
        &self,
        from: &str,
        to: Ipv4Addr,
        count: u32,
        interval: f64,
    ) -> Result<u32, LabError> {
        self.node(from)?;
        if self.is_vm() {
            return Err(LabError::NotForVm {
                node: from.to_string(),
                what: "ping from a node",
                instead: "the image has no ping; ping the node's address from the host, which sits on the lab bridge",
            });
        }
        let ns = format!("--net={}", self.paths(from).netns.display());
        let (c, i, addr) = (count.to_string(), format!("{interval}"), to.to_string());
        let args = [
            ns.as_str(),
            "--",
            "ping",
            "-n",
            "-q",
            "-c",
            &c,
            "-i",
            &i,
            "-W",
            "1",
            &addr,
        ];
        let budget = Duration::from_secs_f64(count as f64 * interval + 10.0);
        let out = cmd::output("nsenter", &args, Some(budget))?;
        // "N packets transmitted, M received, ..." (exit 1 when none came back).
        let received = out
            .stdout
            .split(',')
            .find(|p| p.contains("received"))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        match received {
            Some(r) => Ok(r),
            None => Err(out
                .check()
                .err()
                .map(LabError::Cmd)
                .unwrap_or(LabError::Panicked)),
        }
    }

    /// Runs a command in a node with the caller's terminal.
    pub fn exec_interactive(
        &self,
        node: &str,
        argv: &[&str],
    ) -> Result<std::process::ExitStatus, LabError> {
        let record = self.node(node)?;
        if self.is_vm() {
            self.require_running_vm(node)?;
            return Ok(qemu::ssh_interactive(
                &self.ssh_key(),
                record.address,
                argv,
            )?);
        }
        Ok(node::exec_interactive(&self.paths(node), argv)?)
    }

    /// Writes [`LAB_PEERS_FILE`] (every node's address, one per line) into each node whose root
    /// is mounted, so the lab provider's list is current after `add-node`.
    fn write_peers_files(&self) -> Result<(), LabError> {
        let mut text =
            String::from("# Written by kubedna-lab: the lab's nodes (provider kind lab).\n");
        for n in &self.state.nodes {
            text.push_str(&format!("{}  # {}\n", n.address, n.name));
        }
        for n in &self.state.nodes {
            let root = self.paths(&n.name).root;
            if !root.join("etc").is_dir() {
                continue;
            }
            let path = root.join(LAB_PEERS_FILE);
            let err = |source| LabError::State {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &text).map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
        }
        Ok(())
    }

    /// Boots stopped nodes (all when `nodes` is empty) and waits until they are ready.
    pub fn start(&mut self, nodes: &[String], timeout: Duration) -> Result<(), LabError> {
        let names = self.select(nodes)?;
        for n in &names {
            if self.is_vm() {
                let vp = self.vm_paths(n);
                if qemu::running(&vp) {
                    continue;
                }
                let record = self.node(n)?.clone();
                let tap = self.veth(&record);
                qemu::create_tap(&tap, &self.state.bridge)?;
                qemu::spawn(&vp, &self.machine(n), &tap, &qemu::mac(&self.state.name, n))?;
                continue;
            }
            let p = self.paths(n);
            if !node::node_pids(&p).is_empty() {
                continue;
            }
            node::mount_overlay(&self.state.image_rootfs, &p)?;
            net::set_link(&self.veth(self.node(n)?), true)?;
            node::spawn(&p, &self.state.name, &self.machine(n), n)?;
        }
        self.wait_ready(&names, Instant::now() + timeout)?;
        Ok(())
    }

    /// Shuts nodes down cleanly (all when `nodes` is empty); killed after `grace`.
    pub fn stop(&self, nodes: &[String], grace: Duration) -> Result<(), LabError> {
        let names = self.select(nodes)?;
        std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|n| {
                    let p = self.paths(n);
                    let vp = self.is_vm().then(|| self.vm_paths(n));
                    s.spawn(move || -> Result<(), LabError> {
                        match vp {
                            Some(vp) => Ok(qemu::powerdown(&vp, grace)?),
                            None => Ok(node::stop_node(&p, grace)?),
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap_or(Ok(()))?;
            }
            Ok::<(), LabError>(())
        })?;
        // The namespace outlives the node: without carrier its kernel no longer answers either.
        for n in &names {
            net::set_link(&self.veth(self.node(n)?), false)?;
        }
        Ok(())
    }

    /// Power cut: SIGKILL the node's PID 1 and nspawn.
    /// The link goes down first: a node without power answers nothing, not even from the kernel
    /// of its (surviving) network namespace.
    pub fn kill(&self, node: &str) -> Result<(), LabError> {
        let record = self.node(node)?;
        net::set_link(&self.veth(record), false)?;
        if self.is_vm() {
            return Ok(qemu::kill_vm(&self.vm_paths(node))?);
        }
        Ok(node::kill_node(&self.paths(node))?)
    }

    /// Reinstall with a wiped disk: power cut, the node's overlay upper layer (its whole disk)
    /// deleted, then a first boot from the image again under the same name, address and link,
    /// with a freshly rendered seed (cloud-init runs as on a new machine; new machine-id).
    /// Waits until the node is ready.
    pub fn reinstall(&mut self, node: &str, timeout: Duration) -> Result<(), LabError> {
        let record = self.node(node)?.clone();
        self.kill(node)?;
        if self.is_vm() {
            // A wiped disk: the overlay and firmware variables go; the seed is rendered anew.
            qemu::wipe_disk(&self.vm_paths(node))?;
            self.provision(node, None)?;
            self.wait_ready(&[node.to_string()], Instant::now() + timeout)?;
            return Ok(());
        }
        let p = self.paths(node);
        for m in node::mounts_under(&p.dir) {
            umount(&m)?;
        }
        for d in [&p.upper, &p.work, &p.containerd] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(|source| LabError::State {
                    path: d.to_path_buf(),
                    source,
                })?;
            }
        }
        net::set_link(&self.veth(&record), true)?;
        self.provision(node, None)?;
        self.wait_ready(&[node.to_string()], Instant::now() + timeout)?;
        Ok(())
    }

    fn require_running_vm(&self, node: &str) -> Result<(), LabError> {
        if qemu::running(&self.vm_paths(node)) {
            Ok(())
        } else {
            Err(NodeError::NotRunning {
                node: node.to_string(),
            }
            .into())
        }
    }

    fn select(&self, nodes: &[String]) -> Result<Vec<String>, LabError> {
        if nodes.is_empty() {
            return Ok(self.state.nodes.iter().map(|n| n.name.clone()).collect());
        }
        for n in nodes {
            self.node(n)?;
        }
        Ok(nodes.to_vec())
    }

    /// Drops all traffic between nodes of different groups (nodes in no group are unaffected).
    /// Replaces any current partition.
    pub fn partition(&mut self, groups: Vec<Vec<String>>) -> Result<(), LabError> {
        if groups.len() < 2 || groups.iter().any(Vec::is_empty) {
            return Err(LabError::BadPartition(
                "need at least two non-empty groups".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in groups.iter().flatten() {
            self.node(n)?;
            if !seen.insert(n.clone()) {
                return Err(LabError::BadPartition(format!("{n} is in two groups")));
            }
        }
        self.apply_partitions(&groups)?;
        self.state.partitions = groups;
        self.save()
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> Result<(), LabError> {
        self.apply_partitions(&[])?;
        self.state.partitions.clear();
        self.save()
    }

    fn apply_partitions(&self, groups: &[Vec<String>]) -> Result<(), LabError> {
        let mut ports = Vec::new();
        for g in groups {
            let mut v = Vec::new();
            for n in g {
                v.push(self.veth(self.node(n)?));
            }
            ports.push(v);
        }
        net::set_partitions(&names::nft_table(&self.state.name), &ports)?;
        Ok(())
    }

    /// Sets packet loss (percent, each direction) on a node's link; 0 clears it.
    pub fn set_loss(&mut self, node: &str, pct: f32) -> Result<(), LabError> {
        if !(0.0..=100.0).contains(&pct) {
            return Err(LabError::BadValue {
                what: "loss",
                value: pct.to_string(),
                allowed: "a percentage from 0 to 100",
            });
        }
        self.update_netem(node, |n| n.loss_pct = pct)
    }

    /// Sets delay (ms, each direction) on a node's link; 0 clears it.
    pub fn set_delay(&mut self, node: &str, ms: u32) -> Result<(), LabError> {
        if ms > crate::delay::MAX_MS {
            return Err(LabError::BadValue {
                what: "delay",
                value: ms.to_string(),
                allowed: "milliseconds from 0 to 10000",
            });
        }
        self.update_netem(node, |n| n.delay_ms = ms)
    }

    fn update_netem(&mut self, node: &str, f: impl FnOnce(&mut Netem)) -> Result<(), LabError> {
        let record = self.node(node)?.clone();
        let mut netem = record.netem;
        f(&mut netem);
        if netem.delay_ms != record.netem.delay_ms {
            if self.is_vm() {
                return Err(LabError::NotForVm {
                    node: node.to_string(),
                    what: "delay",
                    instead: "use an nspawn lab (delay works inside a node's network namespace)",
                });
            }
            let p = self.paths(node);
            net::set_delay(
                &self.veth(&record),
                &p.netns,
                netem.delay_ms,
                &p.dir.join("delay.log"),
            )?;
        }
        if let Some(r) = self.state.nodes.iter_mut().find(|n| n.name == node) {
            r.netem = netem;
        }
        if netem.loss_pct != record.netem.loss_pct {
            let ports: Vec<(String, f32)> = self
                .state
                .nodes
                .iter()
                .map(|n| (self.veth(n), n.netem.loss_pct))
                .collect();
            net::set_loss(&names::nft_table(&self.state.name), &ports)?;
        }
        self.save()
    }

    /// Adds a node and boots it, without waiting (see [`Lab::wait_ready`]). `user_data` replaces
    /// the rendered user-data (the node provider passes the production user-data this way).
    pub fn add_node(
        &mut self,
        role: Role,
        labels: BTreeMap<String, String>,
        user_data: Option<&str>,
    ) -> Result<NodeRecord, LabError> {
        let record = self.plan_node(role, labels)?;
        self.save()?;
        if let Err(e) = self.provision(&record.name, user_data) {
            let _ = self.remove_node(&record.name);
            return Err(e);
        }
        Ok(self.node(&record.name)?.clone())
    }

    /// [`Lab::add_node`] under `name` (refused if a node of that name exists).
    pub fn add_named_node(
        &mut self,
        name: &str,
        role: Role,
        labels: BTreeMap<String, String>,
        user_data: Option<&str>,
    ) -> Result<NodeRecord, LabError> {
        if self.state.nodes.iter().any(|n| n.name == name) {
            return Err(LabError::BadValue {
                what: "node name",
                value: name.to_string(),
                allowed: "a name no node of the lab has (remove the old node first)",
            });
        }
        let record = self.plan_named_node(Some(name), role, labels)?;
        self.save()?;
        if let Err(e) = self.provision(&record.name, user_data) {
            let _ = self.remove_node(&record.name);
            return Err(e);
        }
        Ok(self.node(&record.name)?.clone())
    }

    /// Kills a node and removes everything of it (processes, overlay, namespace, link, files).
    pub fn remove_node(&mut self, name: &str) -> Result<(), LabError> {
        self.node(name)?;
        let p = self.paths(name);
        qemu::kill_vm(&self.vm_paths(name))?;
        node::kill_node(&p)?;
        // A delay helper holds a socket in the node's namespace (which would keep it alive).
        crate::delay::kill_helpers(&p.netns).map_err(NetError::from)?;
        for m in node::mounts_under(&p.dir)
            .into_iter()
            .chain(node::mounts_under(&p.netns))
        {
            umount(&m)?;
        }
        let _ = std::fs::remove_file(&p.netns);
        for cg in node::lab_cgroups(&self.state.name) {
            let node_cg = cg.join(name);
            node::kill_cgroup_tree(&node_cg, Instant::now() + Duration::from_secs(10))?;
            node::remove_cgroup_tree(&node_cg)?;
        }
        if p.dir.exists() {
            std::fs::remove_dir_all(&p.dir).map_err(|source| LabError::State {
                path: p.dir.clone(),
                source,
            })?;
        }
        if let Some(record) = self.state.nodes.iter().find(|n| n.name == name) {
            net::delete_link(&self.veth(record))?;
        }
        let had_loss = self.node(name)?.netem.loss_pct > 0.0;
        self.state.nodes.retain(|n| n.name != name);
        for g in &mut self.state.partitions {
            g.retain(|n| n != name);
        }
        self.state.partitions.retain(|g| !g.is_empty());
        if self.state.partitions.len() < 2 {
            self.state.partitions.clear();
        }
        self.apply_partitions(&self.state.partitions)?;
        if had_loss {
            let ports: Vec<(String, f32)> = self
                .state
                .nodes
                .iter()
                .map(|n| (self.veth(n), n.netem.loss_pct))
                .collect();
            net::set_loss(&names::nft_table(&self.state.name), &ports)?;
        }
        self.save()
    }

    /// Checks that the lab cannot reach beyond its bridge: bridge ports are only lab veths, node
    /// routes stay on the lab subnet (default only via the bridge address), the forward-drop rules
    /// are in place, and no NAT rule mentions the lab. Returns the problems found.
    pub fn check_isolation(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let bridge = &self.state.bridge;
        let prefix = names::veth_prefix(&self.state.name);
        match cmd::run("ip", &["-o", "link", "show", "master", bridge]) {
            Ok(out) => {
                for line in out.lines() {
                    let port = line
                        .split(':')
                        .nth(1)
                        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
                        .unwrap_or_default();
                    if !port.starts_with(&prefix) {
                        problems.push(format!("bridge {bridge} has a foreign port {port}"));
                    }
                }
            }
            Err(e) => problems.push(format!("cannot list bridge ports: {e}")),
        }
        let gw = self.gateway().to_string();
        for n in &self.state.nodes {
            let p = self.paths(&n.name);
            let argv = ["ip", "-4", "-o", "route", "show", "table", "all"];
            // A VM's NIC is named by udev (e.g. enp0s2), a nspawn node's is eth0.
            let dev = if self.is_vm() { "dev " } else { "dev eth0" };
            let routes = if self.is_vm() {
                self.exec(&n.name, &argv, Some(Duration::from_secs(30)))
                    .map_err(|e| e.to_string())
                    .and_then(|o| o.check().map(|o| o.stdout).map_err(|e| e.to_string()))
            } else {
                net::in_netns(&p.netns, &argv).map_err(|e| e.to_string())
            };
            match routes {
                Ok(out) => {
                    for line in out.lines() {
                        let mut words = line.split_whitespace();
                        let first = words.next().unwrap_or("");
                        let ok = if first == "default" {
                            line.contains(&format!("via {gw} ")) && line.contains(dev)
                        } else if matches!(first, "local" | "broadcast") {
                            true
                        } else {
                            let dst = first.split('/').next().unwrap_or("");
                            dst.parse::<Ipv4Addr>()
                                .map(|a| self.state.subnet.contains(a))
                                .unwrap_or(false)
                        };
                        if !ok {
                            problems.push(format!("node {} has route {line:?}", n.name));
                        }
                    }
                }
                Err(e) => problems.push(format!("cannot read routes of {}: {e}", n.name)),
            }
        }
        let table = names::nft_table(&self.state.name);
        match cmd::run("nft", &["list", "table", "inet", &table]) {
            Ok(t) => {
                let want_in = format!("iifname \"{bridge}\" oifname != \"{bridge}\" drop");
                let want_out = format!("oifname \"{bridge}\" iifname != \"{bridge}\" drop");
                if !t.contains(&want_in) || !t.contains(&want_out) {
                    problems.push(format!("forward-drop rules missing from inet {table}"));
                }
            }
            Err(e) => problems.push(format!("lab firewall missing: {e}")),
        }
        match cmd::run("nft", &["list", "ruleset"]) {
            Ok(rules) => {
                let subnet = self.state.subnet.to_string();
                for line in rules.lines() {
                    let nat = line.contains("masquerade") || line.contains("snat");
                    if nat && (line.contains(bridge.as_str()) || line.contains(&subnet)) {
                        problems.push(format!("NAT rule mentions the lab: {}", line.trim()));
                    }
                }
            }
            Err(e) => problems.push(format!("cannot list nftables ruleset: {e}")),
        }
        problems
    }
}

fn agent_state(p: &NodePaths) -> String {
    let t = Some(Duration::from_secs(5));
    let present = node::exec(p, &["systemctl", "cat", "kubedna-agent.service"], t)
        .map(|o| o.success())
        .unwrap_or(false);
    if !present {
        return "absent".into();
    }
    let active = node::exec(p, &["systemctl", "is-active", "kubedna-agent.service"], t)
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    if active != "active" {
        return active;
    }
    match node::exec(p, &["kubedna", "status"], t) {
        Ok(o) if o.success() => "ready".into(),
        _ => "active".into(),
    }
}

/// Where the node's seed enabled the agent, waits until it is active and `kubedna status`
/// answers. Called once boot finished, so cloud-init's runcmd (which enables it) has run.
fn wait_agent(p: &NodePaths, deadline: Instant, timeout: Duration) -> Result<(), LabError> {
    let mut last = agent_state(p);
    if last == "absent" {
        return Ok(());
    }
    let enabled = node::exec(
        p,
        &["systemctl", "is-enabled", "kubedna-agent.service"],
        Some(Duration::from_secs(5)),
    )
    .map(|o| o.stdout.trim() == "enabled")
    .unwrap_or(false);
    if !enabled && last != "active" {
        return Ok(());
    }
    while last != "ready" {
        if Instant::now() >= deadline {
            return Err(NodeError::Timeout {
                node: p.name.clone(),
                what: "kubedna-agent ready (`kubedna status` answering)",
                timeout,
                last,
                console: p.console.clone(),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
        last = agent_state(p);
    }
    Ok(())
}

fn umount(path: &Path) -> Result<(), LabError> {
    let p = path.to_string_lossy();
    let out = cmd::output("umount", &[&p], None)?;
    if !out.success() {
        // Busy (a straggler holds it): detach now, the kernel frees it when released.
        cmd::run("umount", &["--lazy", &p])?;
    }
    Ok(())
}

/// Measures of a `down`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub processes_killed: usize,
    pub mounts_removed: usize,
    pub links_removed: usize,
    pub duration_ms: u128,
}

/// Removes everything lab `name` made: processes, mounts, links, bridge, network namespaces,
/// nftables tables and its state directory. Needs no state file; safe to repeat.
pub fn down(root: &Path, name: &str) -> Result<DownReport, LabError> {
    require_root()?;
    names::validate_lab_name(name)?;
    let started = Instant::now();
    let mut report = DownReport::default();
    let dir = root.join(name);
    let _lock = if dir.is_dir() {
        Some(lock(&dir)?)
    } else {
        None
    };
    let phase = |what: &str| {
        if std::env::var_os("KUBEDNA_LAB_TRACE").is_some() {
            eprintln!("down: {what} done at {:?}", started.elapsed());
        }
    };

    // 1. Processes: every node's nspawn and PID namespace, then anything else naming the lab dir.
    let node_dirs: Vec<String> = std::fs::read_dir(dir.join("nodes"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let all: Vec<NodePaths> = node_dirs.iter().map(|n| NodePaths::new(&dir, n)).collect();
    for p in &all {
        report.processes_killed += node::node_pids(p).len();
        node::send_kill(p);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in &all {
        node::wait_killed(p, deadline)?;
    }
    // Whatever else runs in the lab's cgroups (e.g. a node whose namespace file is gone).
    for cg in node::lab_cgroups(name) {
        report.processes_killed += node::cgroup_pids(&cg).len();
        node::kill_cgroup_tree(&cg, deadline)?;
    }
    // qemu of VM nodes (its command line names the node's disk under the lab directory).
    report.processes_killed += qemu::kill_all_under(&dir, deadline).len();
    let dir_arg = format!("{}/", dir.display());
    for pid in node::pids_with_arg_prefix(&dir_arg) {
        if pid != std::process::id() as i32 {
            report.processes_killed += 1;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    phase("processes");
    // 2. Mounts (overlays, namespace files, the private netns dir), deepest first.
    for m in node::mounts_under(&dir) {
        umount(&m)?;
        report.mounts_removed += 1;
    }

    phase("mounts");
    // 3. Links: veths die with their namespaces; delete any left, then the bridge.
    let mut links = net::links_with_prefix(&names::veth_prefix(name));
    links.push(names::bridge(name));
    for l in links {
        if net::link_exists(&l) {
            net::delete_link(&l)?;
            report.links_removed += 1;
        }
    }

    phase("links");
    // 4. nftables tables.
    net::remove_firewall(&names::nft_table(name))?;

    phase("nftables");
    // 5. nspawn's per-machine directories, left behind when nspawn was killed.
    let machine_prefix = format!("kdl-{}-", names::lab_id(name));
    if let Ok(entries) = std::fs::read_dir(NSPAWN_PROPAGATE) {
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            let is_ours = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&machine_prefix));
            if is_ours && node::mounts_under(&path).is_empty() {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }

    phase("nspawn dirs");
    // 6. The lab's cgroups (empty now: every process is gone).
    for cg in node::lab_cgroups(name) {
        node::remove_cgroup_tree(&cg)?;
    }
    for cg in node::lab_cgroups(name) {
        // The shared parent goes when the last lab does; another lab's presence keeps it.
        if let Some(parent) = cg.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    phase("cgroups");

    // 7. The state directory, only once nothing is mounted below it.
    if dir.exists() {
        let still = node::mounts_under(&dir);
        if !still.is_empty() {
            return Err(LabError::Leftovers(
                still
                    .iter()
                    .map(|m| format!("mount {}", m.display()))
                    .collect(),
            ));
        }
        // Node trees in parallel: removal is bound by per-unlink latency, not CPU.
        std::thread::scope(|s| {
            for p in &all {
                s.spawn(move || std::fs::remove_dir_all(&p.dir));
            }
        });
        std::fs::remove_dir_all(&dir).map_err(|source| LabError::State {
            path: dir.clone(),
            source,
        })?;
    }
    phase("state dir");
    let left = leftovers(root, name);
    if !left.is_empty() {
        return Err(LabError::Leftovers(left));
    }
    phase("leftover check");
    report.duration_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Anything of lab `name` still on the host: processes, mounts, links, nftables tables, nspawn
/// directories, the state directory. Empty after a successful `down`.
pub fn leftovers(root: &Path, name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let dir = root.join(name);
    let dir_arg = format!("{}/", dir.display());
    for pid in node::pids_with_arg_prefix(&dir_arg) {
        if pid != std::process::id() as i32 {
            left.push(format!("process {pid}"));
        }
    }
    for m in node::mounts_under(&dir) {
        left.push(format!("mount {}", m.display()));
    }
    let mut links = net::links_with_prefix(&names::veth_prefix(name));
    if net::link_exists(&names::bridge(name)) {
        links.push(names::bridge(name));
    }
    left.extend(links.into_iter().map(|l| format!("link {l}")));
    if net::firewall_exists(&names::nft_table(name)) {
        left.push(format!("nftables table {}", names::nft_table(name)));
    }
    let machine_prefix = format!("kdl-{}-", names::lab_id(name));
    if let Ok(entries) = std::fs::read_dir(NSPAWN_PROPAGATE) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&machine_prefix))
            {
                left.push(format!("directory {}", e.path().display()));
            }
        }
    }
    for cg in node::lab_cgroups(name) {
        for pid in node::cgroup_pids(&cg) {
            left.push(format!("process {pid} in {}", cg.display()));
        }
        if cg.exists() {
            left.push(format!("cgroup {}", cg.display()));
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}
