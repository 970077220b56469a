//! The schema of `agent.yaml` (field names are camelCase, as in Kubernetes component configs),
//! each default documented beside its field, and [`validate`], which turns a parsed document
//! into a [`Config`] or the first error with its field path.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kubedna_proto::NodeRole;
use serde::Deserialize;

use crate::rbac::{RbacMap, RoleSubjects};
use crate::{Config, ConfigError, Secret, API_VERSION, KIND};

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
}

impl Default for StateSpec {
    fn default() -> Self {
        StateSpec {
            dir: default_state_dir(),
        }
    }
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

/// Checks every value of `spec`, reads the secret and resolves names.
pub(crate) fn validate(file: &Path, mut spec: AgentConfig) -> Result<Config, ConfigError> {
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        file: file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let base = file.parent().unwrap_or(Path::new("/"));
    let absolute = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    if spec.api_version != API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!(
                "{:?} is not supported: use {API_VERSION:?}",
                spec.api_version
            ),
        ));
    }
    if spec.kind != KIND {
        return Err(invalid(
            "kind",
            format!("{:?} is not supported: use {KIND:?}", spec.kind),
        ));
    }
    if let Some(addr) = spec.metrics.listen {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{addr} is not a listen address for metrics: give one of this node's own \
                     addresses and a port (such as 198.18.0.2:{DEFAULT_METRICS_PORT}), or leave \
                     it out to use the node's mesh address"
                ),
            ));
        }
    }
    if let Some(c) = &spec.catalogue {
        if let Some(bad) = c.optional.iter().find(|n| !is_dns_label(n)) {
            return Err(invalid(
                "catalogue.optional",
                format!("{bad:?} is not a component name (a DNS label: a-z, 0-9, -)"),
            ));
        }
        if c.interval_seconds == 0 || c.health_timeout_seconds == 0 {
            return Err(invalid(
                "catalogue",
                "intervalSeconds and healthTimeoutSeconds must be at least 1".into(),
            ));
        }
    }
    if !is_dns_label(&spec.cluster.name) {
        return Err(invalid(
            "cluster.name",
            format!(
                "{:?} is not a DNS label: use 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
                spec.cluster.name
            ),
        ));
    }

    if !(1..=604_800).contains(&spec.cluster.secret_grace_seconds) {
        return Err(invalid(
            "cluster.secretGraceSeconds",
            format!(
                "{} is out of range: use 1 to 604800 seconds (default {DEFAULT_SECRET_GRACE_SECONDS})",
                spec.cluster.secret_grace_seconds
            ),
        ));
    }

    if let Some(cp) = &spec.cluster.control_planes {
        if ![1, 3, 5, 7].contains(&cp.expected) {
            return Err(invalid(
                "cluster.controlPlanes.expected",
                format!("{} is not a supported control-plane count: use 1, 3, 5 or 7 (an odd number keeps a majority after one loss)", cp.expected),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in cp.members.iter().enumerate() {
            if !is_node_name(m) {
                return Err(invalid(
                    &format!("cluster.controlPlanes.members[{i}]"),
                    format!("{m:?} is not a valid node name"),
                ));
            }
            if !seen.insert(m) {
                return Err(invalid(
                    &format!("cluster.controlPlanes.members[{i}]"),
                    format!("{m:?} is listed twice"),
                ));
            }
        }
        if !cp.members.is_empty() && cp.members.len() != cp.expected as usize {
            return Err(invalid(
                "cluster.controlPlanes.members",
                format!(
                    "{} names listed but expected is {}: list every control plane, or none",
                    cp.members.len(),
                    cp.expected
                ),
            ));
        }
    }

    let cluster_secret = match (&spec.cluster.secret_file, &spec.cluster.secret) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "cluster",
                "both `secretFile` and `secret` are set: keep exactly one (prefer secretFile)"
                    .into(),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "cluster",
                "the cluster secret is missing: set `secretFile` (a mode 0600 file) or `secret`"
                    .into(),
            ))
        }
        (Some(path), None) => {
            let path = absolute(path);
            spec.cluster.secret_file = Some(path.clone());
            let bytes = read_private_file(&path).map_err(|m| invalid("cluster.secretFile", m))?;
            check_secret_len(&bytes).map_err(|m| invalid("cluster.secretFile", m))?;
            Secret::new(bytes)
        }
        (None, Some(inline)) => {
            check_secret_len(inline.expose()).map_err(|m| invalid("cluster.secret", m))?;
            inline.clone()
        }
    };

    let node_name = match &spec.node.name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
    };
    if !is_node_name(&node_name) {
        return Err(invalid(
            "node.name",
            format!(
                "{node_name:?} is not a valid node name: use 1-253 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit{}",
                if spec.node.name.is_none() { " (it came from the host name; set node.name)" } else { "" }
            ),
        ));
    }

    if spec.discovery.port == 0 {
        return Err(invalid(
            "discovery.port",
            "0 is not a port: use 1-65535".into(),
        ));
    }
    for (i, seed) in spec.discovery.seeds.iter().enumerate() {
        check_seed(seed).map_err(|m| invalid(&format!("discovery.seeds[{i}]"), m))?;
    }
    if !spec.discovery.multicast.group.is_multicast() {
        return Err(invalid(
            "discovery.multicast.group",
            format!(
                "{} is not an IPv4 multicast address: use one in 224.0.0.0/4, e.g. 239.255.77.46",
                spec.discovery.multicast.group
            ),
        ));
    }
    if spec.discovery.multicast.port == 0 {
        return Err(invalid(
            "discovery.multicast.port",
            "0 is not a port: use 1-65535".into(),
        ));
    }

    if !(1..=60).contains(&spec.mesh.pause_tolerance_seconds) {
        return Err(invalid(
            "mesh.pauseToleranceSeconds",
            format!(
                "{} is out of range: use 1 to 60 seconds (default {DEFAULT_PAUSE_TOLERANCE_SECONDS}; a crash is seen down only after it)",
                spec.mesh.pause_tolerance_seconds
            ),
        ));
    }

    match spec.provider.kind {
        ProviderKind::None | ProviderKind::Lab => {
            if spec.provider.hetzner.is_some() {
                return Err(invalid(
                    "provider.hetzner",
                    "set only when provider.kind is hetzner".into(),
                ));
            }
        }
        ProviderKind::Hetzner => {
            let Some(h) = spec.provider.hetzner.as_mut() else {
                return Err(invalid(
                    "provider.hetzner",
                    "required when provider.kind is hetzner (at least tokenFile)".into(),
                ));
            };
            h.token_file = absolute(&h.token_file);
            read_private_file(&h.token_file)
                .map_err(|m| invalid("provider.hetzner.tokenFile", m))?;
        }
    }
    if let Some(lab) = spec.provider.lab.as_mut() {
        match (&lab.hcloud_api, &lab.token_file) {
            (None, None) => {}
            (Some(url), Some(token)) => {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || !url.trim_end_matches('/').ends_with("/v1")
                {
                    return Err(invalid(
                        "provider.lab.hcloudApi",
                        format!("{url:?} is not an API base URL: use http://<lab gateway>:<port>/v1 as `kubedna-lab hcloud-api` prints it"),
                    ));
                }
                let token = absolute(token);
                read_private_file(&token).map_err(|m| invalid("provider.lab.tokenFile", m))?;
                lab.token_file = Some(token);
            }
            _ => {
                return Err(invalid(
                    "provider.lab",
                    "hcloudApi and tokenFile go together: set both or neither".into(),
                ))
            }
        }
    }
    if spec.provider.kind != ProviderKind::Lab && spec.provider.lab.is_some() {
        return Err(invalid(
            "provider.lab",
            "set only when provider.kind is lab".into(),
        ));
    }
    if spec.discovery.provider && spec.provider.kind == ProviderKind::None {
        return Err(invalid(
            "discovery.provider",
            "needs a provider: set provider.kind to hetzner or lab, or set this to false".into(),
        ));
    }

    crate::doctor::check(&spec).map_err(|(f, m)| invalid(f, m))?;

    let rbac = RbacMap {
        admin: resolve_subjects(&spec.rbac.admins, "rbac.admins")
            .map_err(|(f, m)| invalid(&f, m))?,
        operator: resolve_subjects(&spec.rbac.operators, "rbac.operators")
            .map_err(|(f, m)| invalid(&f, m))?,
        viewer: resolve_subjects(&spec.rbac.viewers, "rbac.viewers")
            .map_err(|(f, m)| invalid(&f, m))?,
    };

    spec.admin.socket = absolute(&spec.admin.socket);
    let socket_mode = u32::from_str_radix(spec.admin.socket_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            invalid(
                "admin.socketMode",
                format!(
                    "{:?} is not an octal file mode: use e.g. \"0660\" (owner and group) or \"0666\"",
                    spec.admin.socket_mode
                ),
            )
        })?;
    if socket_mode & 0o600 != 0o600 {
        return Err(invalid(
            "admin.socketMode",
            format!(
                "{:?} locks the agent's own user out: keep the owner's rw bits (0600)",
                spec.admin.socket_mode
            ),
        ));
    }
    let socket_gid = match &spec.admin.socket_group {
        None => None,
        Some(g) => Some(resolve_group(g).map_err(|m| invalid("admin.socketGroup", m))?),
    };
    if spec.admin.drain_timeout_seconds == 0 || spec.admin.drain_timeout_seconds > 300 {
        return Err(invalid(
            "admin.drainTimeoutSeconds",
            format!(
                "{} is out of range: use 1 to 300",
                spec.admin.drain_timeout_seconds
            ),
        ));
    }

    spec.state.dir = absolute(&spec.state.dir);
    if let Some(d) = &spec.audit.dir {
        spec.audit.dir = Some(absolute(d));
    }
    if !(1..=3650).contains(&spec.audit.retention_days) {
        return Err(invalid(
            "audit.retentionDays",
            format!(
                "{} is out of range: use 1 to 3650 (default 365)",
                spec.audit.retention_days
            ),
        ));
    }
    if !is_log_filter(&spec.log.level) {
        return Err(invalid(
            "log.level",
            format!(
                "{:?} is not a log filter: use error, warn, info, debug or trace, optionally with target=level directives separated by commas",
                spec.log.level
            ),
        ));
    }

    Ok(Config {
        file: file.to_path_buf(),
        spec,
        node_name,
        cluster_secret,
        rbac,
        socket_gid,
        socket_mode,
    })
}

fn check_secret_len(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 32 {
        Err(format!(
            "the cluster secret has {} bytes: use at least 32 (e.g. `openssl rand -hex 32`)",
            bytes.len()
        ))
    } else {
        Ok(())
    }
}

/// Reads a file that must not be readable by group or others; trims one trailing newline.
fn read_private_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: it holds a secret and must be mode 0600 (run `chmod 600 {}`)",
            path.display(),
            path.display()
        ));
    }
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

fn resolve_subjects(s: &SubjectsSpec, at: &str) -> Result<RoleSubjects, (String, String)> {
    let mut out = RoleSubjects {
        uids: s.uids.iter().copied().collect(),
        gids: s.gids.iter().copied().collect(),
    };
    for (i, name) in s.users.iter().enumerate() {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| {
                (
                    format!("{at}.users[{i}]"),
                    format!("user {name:?} does not exist on this host: create it, or list its uid under uids"),
                )
            })?;
        out.uids.insert(user.uid.as_raw());
    }
    for (i, name) in s.groups.iter().enumerate() {
        let gid = resolve_group(name).map_err(|m| (format!("{at}.groups[{i}]"), m))?;
        out.gids.insert(gid);
    }
    Ok(out)
}

fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| {
            format!("group {name:?} does not exist on this host: create it (groupadd {name}) or give a numeric gid")
        })
}

fn check_seed(seed: &str) -> Result<(), String> {
    let bad = || {
        format!("{seed:?} is not a seed: use host or host:port, e.g. 198.18.0.11:7946 or cp-1.example.net")
    };
    let (host, port) = match seed.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (seed, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            return Err(bad());
        }
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    if host.parse::<std::net::IpAddr>().is_ok() || host.split('.').all(is_dns_label_ci) {
        Ok(())
    } else {
        Err(bad())
    }
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_label_ci(s: &str) -> bool {
    is_dns_label(&s.to_ascii_lowercase())
}

fn is_node_name(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.split('.').all(is_dns_label)
}

fn is_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    !s.is_empty()
        && s.split(',').all(|d| {
            let level = d.rsplit_once('=').map_or(
                d,
                |(target, level)| {
                    if target.is_empty() {
                        ""
                    } else {
                        level
                    }
                },
            );
            LEVELS.contains(&level.trim())
        })
}
