//! The engine's configuration and time: [`EngineConfig`] (the cluster, this node, the
//! expected control-plane set, addresses, the Kubernetes release and networks as typed values,
//! timings), how etcd members are addressed, the
//! production paths kubeadm is told about, and the [`Clock`] every wait of the engine goes
//! through. Holds the cluster secret only inside [`ClusterSecret`], which never prints it.

use std::net::IpAddr;

use super::*;

/// The typed values of the cluster's Kubernetes side (one vocabulary with the config).
pub use kubedna_proto::{Cidr, Endpoint, Host, KubernetesVersion};

/// Time for the engine: wall-clock time for join material expiry, and every wait the engine
/// makes (pauses between polls and retries, bounds on calls, deadlines), so a test clock can
/// run the engine's waiting in virtual time.
pub trait Clock: Send + Sync + 'static {
    fn now_unix(&self) -> u64;
    /// Monotonic now, for deadlines and "not seen for".
    fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// How etcd members are addressed.
#[derive(Debug, Clone)]
pub enum EtcdNetwork {
    /// Production: `https://<name>.<cluster>.kubedna:2380/2379` (names in `/etc/hosts`, kept by
    /// the daemon from mesh metadata), listening on all addresses.
    Named,
    /// Tests: explicit URLs per member name, listened on and advertised as given.
    Explicit(BTreeMap<String, MemberUrls>),
}

/// The cluster secret (one type for every crate: never shown, zeroed on drop).
pub use kubedna_proto::ClusterSecret;

#[derive(Debug, Clone)]
pub struct Timings {
    /// Leader and join-lock lease TTL (default 15 s).
    pub lease_ttl: Duration,
    /// How often a waiting step looks again (default 500 ms).
    pub poll: Duration,
    /// Pause after a failed step before it is retried (default 2 s).
    pub retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_ttl: Duration::from_secs(15),
            poll: Duration::from_millis(500),
            retry: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub cluster: String,
    pub secret: ClusterSecret,
    pub node: String,
    pub role: NodeRole,
    /// The expected control-plane set E (`cluster.controlPlanes.members`).
    pub control_planes: Vec<String>,
    /// This node's address for the API server.
    pub advertise_address: IpAddr,
    /// kubeadm's `controlPlaneEndpoint`, shared by all control planes: in production
    /// `api.<cluster>.kubedna:<kubernetes.apiPort>`. Its name resolves to a control plane's own
    /// address (no load balancer in between), so its port is also the one every control
    /// plane's API server binds ([`EngineConfig::api_port`]).
    pub control_plane_endpoint: Endpoint,
    /// The release `kubeadm init` installs.
    pub kubernetes_version: KubernetesVersion,
    pub pod_subnet: Cidr,
    pub service_subnet: Cidr,
    pub etcd: EtcdNetwork,
    pub etcd_binary: PathBuf,
    /// The host's file system root (`/` in production); unit files, PKI, etcd data and kubeadm
    /// configs are written under it.
    pub root: PathBuf,
    pub timings: Timings,
    /// Where the engine and its duties report what they change on their own (the audit log).
    pub actions: crate::actions::ActionLog,
}

impl EngineConfig {
    /// The port every control plane's API server binds: the endpoint's.
    pub fn api_port(&self) -> u16 {
        self.control_plane_endpoint.port()
    }

    pub(super) fn urls(&self, set: &MemberSet, name: &str) -> (MemberUrls, MemberUrls) {
        match &self.etcd {
            EtcdNetwork::Named => {
                let peer = set.peer_url(name);
                let client = format!("https://{name}.{}.kubedna:2379", self.cluster);
                (
                    MemberUrls {
                        peer: "https://0.0.0.0:2380".into(),
                        client: "https://0.0.0.0:2379".into(),
                    },
                    MemberUrls { peer, client },
                )
            }
            EtcdNetwork::Explicit(map) => {
                let u = map.get(name).cloned().unwrap_or(MemberUrls {
                    peer: set.peer_url(name),
                    client: format!("https://{name}.{}.kubedna:2379", self.cluster),
                });
                (u.clone(), u)
            }
        }
    }

    pub(super) fn initial_cluster(&self, set: &MemberSet) -> String {
        set.names()
            .map(|n| format!("{n}={}", self.urls(set, n).1.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URLs of the set's members (this node's own first), without `except`.
    pub(super) fn client_urls(&self, set: &MemberSet, except: Option<&str>) -> Vec<String> {
        let own = std::iter::once(self.node.as_str()).filter(|n| set.contains(n));
        own.chain(set.names().filter(|n| *n != self.node))
            .filter(|n| Some(*n) != except)
            .map(|n| self.urls(set, n).1.client)
            .collect()
    }
}

/// Paths kubeadm is told about (production paths; the host root prefixes them on disk).
pub(super) const PKI_DIR: &str = "/etc/kubedna/pki/etcd";
/// etcd's data. Never kubeadm's `/var/lib/etcd`: `kubeadm reset`, when it cannot read the
/// cluster's config, assumes a local etcd and deletes that directory.
pub(super) const ETCD_DATA_DIR: &str = "/var/lib/kubedna/etcd";
/// Where kubeadm finds the external etcd's CA and the API server's client certificate: a copy
/// of this node's own, written by the agent before `kubeadm init` or a control-plane join.
pub(super) const KUBEADM_ETCD_DIR: &str = "/etc/kubedna/pki/kubeadm-etcd";
/// The etcd paths in the leader's `upload-certs` config: absent on purpose, so kubeadm uploads
/// them empty and a joining control plane keeps the files its own agent wrote. Uploading them
/// would hand every control plane the init node's client certificate, and kubeadm 1.30's
/// `download-certs` cannot even write the etcd CA (an Ed25519 certificate: it takes RSA and
/// ECDSA only).
pub(super) const NOT_UPLOADED_ETCD_DIR: &str = "/run/kubedna/etcd-files-stay-on-each-node";
pub(super) const INIT_CONFIG: &str = "/etc/kubedna/kubeadm-init.yaml";
pub(super) const UPLOAD_CERTS_CONFIG: &str = "/etc/kubedna/kubeadm-upload-certs.yaml";
pub(super) const JOIN_CONFIG: &str = "/etc/kubedna/kubeadm-join.yaml";
pub(super) const STATE_FILE: &str = "controlplane.json";

pub(super) fn rooted(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// What `kubeadm init`, and the leader's `init phase upload-certs`, are told about the cluster.
pub(super) fn cluster_params(cfg: &EngineConfig, set: &MemberSet) -> ClusterParams {
    let mut sans = vec![
        cfg.advertise_address.to_string(),
        cfg.control_plane_endpoint.host().to_string(),
    ];
    sans.dedup();
    ClusterParams {
        cluster_name: cfg.cluster.clone(),
        node_name: cfg.node.clone(),
        kubernetes_version: cfg.kubernetes_version,
        advertise_address: cfg.advertise_address,
        api_bind_port: cfg.api_port(),
        control_plane_endpoint: cfg.control_plane_endpoint.clone(),
        etcd_endpoints: cfg.client_urls(set, None),
        etcd_ca: format!("{KUBEADM_ETCD_DIR}/ca.crt"),
        etcd_cert: format!("{KUBEADM_ETCD_DIR}/client.crt"),
        etcd_key: format!("{KUBEADM_ETCD_DIR}/client.key"),
        pod_subnet: cfg.pod_subnet,
        service_subnet: cfg.service_subnet,
        cert_sans: sans,
    }
}
