//! The schema of `agent.yaml` (field names are camelCase, as in Kubernetes component configs),
//! each default documented beside its field. `validate.rs` turns a parsed document into a
//! [`crate::Config`] or the first error with its field path.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use kubedna_proto::NodeRole;
use serde::Deserialize;

use crate::Secret;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// Must be `kubedna.io/v1alpha1`.
    pub api_version: String,
    /// Must be `AgentConfig`.
    pub kind: String,
    pub cluster: ClusterSpec,
    pub node: NodeSpec,
    #[serde(default)]
    pub discovery: DiscoverySpec,
    #[serde(default)]
    pub mesh: MeshSpec,
    /// The Kubernetes cluster kubeadm makes: its networks, API port and version. Default: the
    /// values documented on each field.
    #[serde(default)]
    pub kubernetes: crate::kubernetes::KubernetesSpec,
    #[serde(default)]
    pub provider: ProviderSpec,
    /// The leader's doctor (docs/doctor.md). Default: disabled.
    #[serde(default)]
    pub doctor: crate::doctor::DoctorSpec,
    #[serde(default)]
    pub rbac: RbacSpec,
    #[serde(default)]
    pub admin: AdminSpec,
    #[serde(default)]
    pub state: StateSpec,
    #[serde(default)]
    pub audit: AuditSpec,
    #[serde(default)]
    pub log: LogSpec,
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// The component catalogue the elected leader applies (docs/catalogue.md). Absent: the
    /// leader applies no catalogue.
    #[serde(default)]
    pub catalogue: Option<CatalogueSpec>,
}

/// Prometheus metrics over HTTP (`GET /metrics`, OpenMetrics text).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Off: no TCP listener (`kubedna metrics` still reads them over the admin socket).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `IP:PORT` to listen on. Default: this node's own mesh address, port 9464, so the metrics
    /// are reachable on the node's network only, never on every interface by accident.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec {
            enabled: true,
            listen: None,
        }
    }
}

/// The metrics port when `metrics.listen` is not set.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CatalogueSpec {
    /// The bundle directory holding `catalogue.yaml` and its manifests. Default
    /// `/usr/share/kubedna/catalogue`.
    #[serde(default = "default_catalogue_bundle")]
    pub bundle: PathBuf,
    /// The agent's own kubeconfig for the API server (never `admin.conf`). Default
    /// `/etc/kubedna/catalogue.kubeconfig`.
    #[serde(default = "default_catalogue_kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Optional components to install besides the default ones, by name.
    #[serde(default)]
    pub optional: Vec<String>,
    /// Re-apply this often to correct drift (when the bundle did not change). Default 60.
    #[serde(default = "default_catalogue_interval")]
    pub interval_seconds: u64,
    /// How long one health check may take before the rollout stops. Default 300.
    #[serde(default = "default_catalogue_health_timeout")]
    pub health_timeout_seconds: u64,
}

fn default_catalogue_bundle() -> PathBuf {
    PathBuf::from("/usr/share/kubedna/catalogue")
}

fn default_catalogue_kubeconfig() -> PathBuf {
    PathBuf::from("/etc/kubedna/catalogue.kubeconfig")
}

fn default_catalogue_interval() -> u64 {
    60
}

fn default_catalogue_health_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// DNS label: 1-63 of `a-z0-9-`, starting and ending alphanumeric.
    pub name: String,
    /// Path of a file (mode 0600) holding the cluster secret. Exactly one of `secretFile` and
    /// `secret` is required; prefer the file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The cluster secret inline (at least 32 bytes).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// After a config reload changes the secret, how long the mesh keeps accepting packets
    /// sealed with the previous one (1 to 604800 seconds; default 600). See docs/mesh.md
    /// "Rotating the cluster secret".
    #[serde(default = "default_secret_grace")]
    pub secret_grace_seconds: u64,
    /// The expected control-plane set. Control planes bootstrap etcd only from this list (see
    /// docs/control-plane.md); `kubedna-image seed` writes it from the cluster description.
    #[serde(default)]
    pub control_planes: Option<ControlPlanesSpec>,
}

/// Default of `cluster.secretGraceSeconds`: ten minutes, as long as a staggered reload of every
/// node may reasonably take.
pub const DEFAULT_SECRET_GRACE_SECONDS: u64 = 600;

fn default_secret_grace() -> u64 {
    DEFAULT_SECRET_GRACE_SECONDS
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlPlanesSpec {
    /// How many control planes the cluster has: 1, 3, 5 or 7.
    pub expected: u32,
    /// Their node names; when given, exactly `expected` distinct names.
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// Defaults to the host name. Kubernetes node-name rules: lowercase `a-z0-9-.`, ≤ 253.
    #[serde(default)]
    pub name: Option<String>,
    /// `control-plane` or `worker`.
    pub role: NodeRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// UDP port the mesh listens on. Default 7946.
    #[serde(default = "default_gossip_port")]
    pub port: u16,
    /// Peers to contact first: `host` or `host:port` (port defaults to `port`).
    #[serde(default)]
    pub seeds: Vec<String>,
    #[serde(default)]
    pub multicast: MulticastSpec,
    /// Also ask the provider (see `provider`) for the cluster's nodes. Default false.
    #[serde(default)]
    pub provider: bool,
}

impl Default for DiscoverySpec {
    fn default() -> Self {
        DiscoverySpec {
            port: default_gossip_port(),
            seeds: Vec::new(),
            multicast: MulticastSpec::default(),
            provider: false,
        }
    }
}

fn default_gossip_port() -> u16 {
    7946
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MulticastSpec {
    /// Send and listen for same-L2 beacons. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// IPv4 multicast group. Default 239.255.77.46 (organization-local scope).
    #[serde(default = "default_multicast_group")]
    pub group: Ipv4Addr,
    /// Default 7947.
    #[serde(default = "default_multicast_port")]
    pub port: u16,
    /// Interface to send beacons on; default: every interface with an IPv4 address.
    #[serde(default)]
    pub interface: Option<String>,
}

impl Default for MulticastSpec {
    fn default() -> Self {
        MulticastSpec {
            enabled: false,
            group: default_multicast_group(),
            port: default_multicast_port(),
            interface: None,
        }
    }
}

fn default_multicast_group() -> Ipv4Addr {
    Ipv4Addr::new(239, 255, 77, 46)
}

fn default_multicast_port() -> u16 {
    7947
}

/// Failure detection of the mesh (docs/mesh.md, "Pauses and crashes").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    /// The longest freeze of a live node (VM live migration, snapshot, host memory pressure,
    /// SIGSTOP) that must not get it declared down: 1 to 60 seconds; default 5. A crashed
    /// node is seen down about this long plus one second after it died, so raise it only for
    /// hosts known to freeze longer (for example Azure's memory-preserving maintenance, up to
    /// about 30 s). Every node of a cluster should use the same value. Needs a restart.
    #[serde(default = "default_pause_tolerance")]
    pub pause_tolerance_seconds: u32,
}

/// Default of `mesh.pauseToleranceSeconds` (why 5: docs/mesh.md, "Pauses and crashes").
pub const DEFAULT_PAUSE_TOLERANCE_SECONDS: u32 = 5;

fn default_pause_tolerance() -> u32 {
    DEFAULT_PAUSE_TOLERANCE_SECONDS
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            pause_tolerance_seconds: DEFAULT_PAUSE_TOLERANCE_SECONDS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// No provider: nodes are not created or listed by the agent (default).
    #[default]
    None,
    /// Hetzner Cloud.
    Hetzner,
    /// The local lab (`kubedna-lab`).
    Lab,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderSpec {
    #[serde(default)]
    pub kind: ProviderKind,
    /// Required when `kind` is `hetzner`.
    #[serde(default)]
    pub hetzner: Option<HetznerSpec>,
    /// Optional when `kind` is `lab`.
    #[serde(default)]
    pub lab: Option<LabSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HetznerSpec {
    /// File (mode 0600) holding the API token.
    pub token_file: PathBuf,
    /// Default `kubedna.io/cluster=<cluster.name>`.
    #[serde(default)]
    pub label_selector: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub server_type: Option<String>,
    /// Image name or id for replacement nodes.
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabSpec {
    /// Name of the lab this node belongs to.
    pub name: String,
    /// The lab's Hetzner Cloud API subset (`kubedna-lab hcloud-api`), e.g.
    /// `http://198.18.80.1:8089/v1`; the doctor uses it with the Hetzner client. Needs `tokenFile`.
    #[serde(default)]
    pub hcloud_api: Option<String>,
    /// File (mode 0600) holding the token of `hcloudApi`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Who holds which admin role. Root is always admin.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RbacSpec {
    #[serde(default)]
    pub admins: SubjectsSpec,
    #[serde(default)]
    pub operators: SubjectsSpec,
    #[serde(default)]
    pub viewers: SubjectsSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubjectsSpec {
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub gids: Vec<u32>,
    /// User names, resolved to uids when the config is loaded (they must exist).
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names, resolved to gids when the config is loaded (they must exist).
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminSpec {
    /// Default `/run/kubedna/agent.sock`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group that owns the socket (name or numeric gid); default: the agent's group.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Octal mode of the socket. Default `"0660"`.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// How long in-flight calls may run after SIGTERM. Default 10.
    #[serde(default = "default_drain")]
    pub drain_timeout_seconds: u32,
}

impl Default for AdminSpec {
    fn default() -> Self {
        AdminSpec {
            socket: default_socket(),
            socket_group: None,
            socket_mode: default_socket_mode(),
            drain_timeout_seconds: default_drain(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(kubedna_proto::DEFAULT_SOCKET)
}

fn default_socket_mode() -> String {
    "0660".to_string()
}

fn default_drain() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateSpec {
    /// Default `/var/lib/kubedna`.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Where the units the agent starts (kubeadm, the pod network) write their output for it to
    /// read: volatile, root-only. Default `/run/kubedna`, the agent unit's RuntimeDirectory.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
}

impl Default for StateSpec {
    fn default() -> Self {
        StateSpec {
            dir: default_state_dir(),
            runtime_dir: default_runtime_dir(),
        }
    }
}

fn default_runtime_dir() -> PathBuf {
    PathBuf::from("/run/kubedna")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/kubedna")
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditSpec {
    /// Default `<state.dir>/audit`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Days a daily audit file is kept. Default 365; 1 to 3650.
    #[serde(default = "default_retention")]
    pub retention_days: u32,
}

impl Default for AuditSpec {
    fn default() -> Self {
        AuditSpec {
            dir: None,
            retention_days: default_retention(),
        }
    }
}

fn default_retention() -> u32 {
    365
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogSpec {
    /// A tracing filter: `error`, `warn`, `info` (default), `debug`, `trace`, or directives such
    /// as `info,kubedna_agent=debug`.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".to_string()
}
