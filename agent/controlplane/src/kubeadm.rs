//! kubeadm's configuration, rendered from typed structs: `kubeadm.k8s.io/v1beta3`
//! InitConfiguration, ClusterConfiguration (with external etcd, which the agent runs),
//! JoinConfiguration, and `kubelet.config.k8s.io/v1beta1` KubeletConfiguration with the systemd
//! cgroup driver. Field names follow kubeadm's `types.go` for v1beta3; nothing here runs kubeadm.
//! Every value about the cluster (release, networks, endpoint, port) comes from the inputs,
//! [`ClusterParams`] and [`JoinParams`]; this module holds no default for any of them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kubedna_proto::{Cidr, Endpoint, KubernetesVersion};
use serde::Serialize;

pub const KUBEADM_API: &str = "kubeadm.k8s.io/v1beta3";
pub const KUBELET_API: &str = "kubelet.config.k8s.io/v1beta1";
pub const CRI_SOCKET: &str = "unix:///var/run/containerd/containerd.sock";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub bootstrap_tokens: Vec<BootstrapToken>,
    pub node_registration: NodeRegistration,
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint,
    pub certificate_key: String,
    /// kubeadm's CoreDNS and kube-proxy addons are left to the component catalogue: their
    /// images are not baked into the node image (see docs/kubernetes.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skip_phases: Vec<String>,
}

/// Init phases kubeadm skips: the addons the catalogue owns.
pub const SKIP_INIT_PHASES: [&str; 2] = ["addon/coredns", "addon/kube-proxy"];

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapToken {
    pub token: String,
    pub ttl: String,
    pub usages: Vec<String>,
    pub groups: Vec<String>,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("token", &"[redacted]")
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRegistration {
    pub name: String,
    pub cri_socket: String,
    /// `Never`: nodes never pull; the images kubeadm needs are baked into the node image and
    /// imported into containerd before kubeadm runs (air gap).
    pub image_pull_policy: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kubelet_extra_args: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_preflight_errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiEndpoint {
    pub advertise_address: String,
    pub bind_port: u16,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub cluster_name: String,
    pub kubernetes_version: KubernetesVersion,
    pub control_plane_endpoint: Endpoint,
    pub networking: Networking,
    pub etcd: Etcd,
    pub api_server: ApiServer,
    pub certificates_dir: String,
    pub image_repository: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    pub service_subnet: Cidr,
    pub pod_subnet: Cidr,
    pub dns_domain: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Etcd {
    pub external: ExternalEtcd,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEtcd {
    pub endpoints: Vec<String>,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServer {
    #[serde(rename = "certSANs")]
    pub cert_sans: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub cgroup_driver: &'static str,
    pub rotate_certificates: bool,
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: bool,
    pub fail_swap_on: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub node_registration: NodeRegistration,
    pub ca_cert_path: String,
    pub discovery: Discovery,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<JoinControlPlane>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    pub bootstrap_token: BootstrapTokenDiscovery,
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapTokenDiscovery {
    pub token: String,
    pub api_server_endpoint: Endpoint,
    pub ca_cert_hashes: Vec<String>,
}

impl std::fmt::Debug for BootstrapTokenDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapTokenDiscovery")
            .field("token", &"[redacted]")
            .field("api_server_endpoint", &self.api_server_endpoint)
            .field("ca_cert_hashes", &self.ca_cert_hashes)
            .finish()
    }
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinControlPlane {
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint,
    pub certificate_key: String,
}

impl std::fmt::Debug for JoinControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinControlPlane")
            .field("local_api_endpoint", &self.local_api_endpoint)
            .field("certificate_key", &"[redacted]")
            .finish()
    }
}

/// What the agent knows when the init winner prepares `kubeadm init`.
#[derive(Debug, Clone)]
pub struct ClusterParams {
    pub cluster_name: String,
    pub node_name: String,
    /// The release kubeadm installs (`kubernetesVersion`).
    pub kubernetes_version: KubernetesVersion,
    pub advertise_address: IpAddr,
    /// The port this node's API server binds (`localAPIEndpoint.bindPort`).
    pub api_bind_port: u16,
    /// Shared by all control planes (`controlPlaneEndpoint`).
    pub control_plane_endpoint: Endpoint,
    pub etcd_endpoints: Vec<String>,
    pub etcd_ca: String,
    pub etcd_cert: String,
    pub etcd_key: String,
    pub pod_subnet: Cidr,
    pub service_subnet: Cidr,
    pub cert_sans: Vec<String>,
}

fn kubelet() -> KubeletConfiguration {
    KubeletConfiguration {
        api_version: KUBELET_API,
        kind: "KubeletConfiguration",
        cgroup_driver: "systemd",
        rotate_certificates: true,
        server_tls_bootstrap: false,
        fail_swap_on: true,
    }
}

fn registration(name: &str) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        cri_socket: CRI_SOCKET.into(),
        image_pull_policy: "Never",
        kubelet_extra_args: BTreeMap::new(),
        ignore_preflight_errors: Vec::new(),
    }
}

fn docs<T: Serialize>(items: &[&T]) -> String {
    items
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).expect("kubeadm config serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The config file for `kubeadm init --config FILE --upload-certs`.
pub fn render_init(p: &ClusterParams, token: &str, certificate_key: &str) -> String {
    let init = InitConfiguration {
        api_version: KUBEADM_API,
        kind: "InitConfiguration",
        bootstrap_tokens: vec![BootstrapToken {
            token: token.into(),
            ttl: "24h0m0s".into(),
            usages: vec!["signing".into(), "authentication".into()],
            groups: vec!["system:bootstrappers:kubeadm:default-node-token".into()],
        }],
        node_registration: registration(&p.node_name),
        local_api_endpoint: ApiEndpoint {
            advertise_address: p.advertise_address.to_string(),
            bind_port: p.api_bind_port,
        },
        certificate_key: certificate_key.into(),
        skip_phases: SKIP_INIT_PHASES.map(String::from).to_vec(),
    };
    let cluster = ClusterConfiguration {
        api_version: KUBEADM_API,
        kind: "ClusterConfiguration",
        cluster_name: p.cluster_name.clone(),
        kubernetes_version: p.kubernetes_version,
        control_plane_endpoint: p.control_plane_endpoint.clone(),
        networking: Networking {
            service_subnet: p.service_subnet,
            pod_subnet: p.pod_subnet,
            dns_domain: "cluster.local".into(),
        },
        etcd: Etcd {
            external: ExternalEtcd {
                endpoints: p.etcd_endpoints.clone(),
                ca_file: p.etcd_ca.clone(),
                cert_file: p.etcd_cert.clone(),
                key_file: p.etcd_key.clone(),
            },
        },
        api_server: ApiServer {
            cert_sans: p.cert_sans.clone(),
            extra_args: BTreeMap::new(),
        },
        certificates_dir: "/etc/kubernetes/pki".into(),
        image_repository: "registry.k8s.io".into(),
    };
    let k = kubelet();
    format!(
        "{}---\n{}---\n{}",
        docs(&[&init]),
        docs(&[&cluster]),
        docs(&[&k])
    )
}

/// What a joining node needs to render its JoinConfiguration.
#[derive(Clone)]
pub struct JoinParams {
    pub node_name: String,
    pub api_server_endpoint: Endpoint,
    pub token: String,
    pub ca_cert_hash: String,
    /// Set for control planes.
    pub control_plane: Option<ControlPlaneJoin>,
}

impl std::fmt::Debug for JoinParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinParams")
            .field("node_name", &self.node_name)
            .field("api_server_endpoint", &self.api_server_endpoint)
            .field("token", &"[redacted]")
            .field("control_plane", &self.control_plane)
            .finish()
    }
}

/// What a joining control plane adds: where its own API server listens, and the key that
/// decrypts the uploaded certificates.
#[derive(Clone)]
pub struct ControlPlaneJoin {
    pub advertise_address: IpAddr,
    pub bind_port: u16,
    pub certificate_key: String,
}

impl std::fmt::Debug for ControlPlaneJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneJoin")
            .field("advertise_address", &self.advertise_address)
            .field("bind_port", &self.bind_port)
            .field("certificate_key", &"[redacted]")
            .finish()
    }
}

/// The config file for `kubeadm join --config FILE`.
pub fn render_join(p: &JoinParams) -> String {
    let join = JoinConfiguration {
        api_version: KUBEADM_API,
        kind: "JoinConfiguration",
        node_registration: registration(&p.node_name),
        ca_cert_path: "/etc/kubernetes/pki/ca.crt".into(),
        discovery: Discovery {
            bootstrap_token: BootstrapTokenDiscovery {
                token: p.token.clone(),
                api_server_endpoint: p.api_server_endpoint.clone(),
                ca_cert_hashes: vec![p.ca_cert_hash.clone()],
            },
        },
        control_plane: p.control_plane.as_ref().map(|c| JoinControlPlane {
            local_api_endpoint: ApiEndpoint {
                advertise_address: c.advertise_address.to_string(),
                bind_port: c.bind_port,
            },
            certificate_key: c.certificate_key.clone(),
        }),
    };
    docs(&[&join])
}

/// `kubeadm init` arguments: the certificate key is in the file, since kubeadm refuses to mix
/// `--config` with `--certificate-key`.
/// Without `--upload-certs`: the leader's join-material duty uploads the certificates right
/// after, with a config that leaves each control plane's etcd files on that node.
pub fn init_args(config_path: &str) -> Vec<String> {
    vec!["init".into(), "--config".into(), config_path.into()]
}

pub fn join_args(config_path: &str) -> Vec<String> {
    vec!["join".into(), "--config".into(), config_path.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ClusterParams {
        ClusterParams {
            cluster_name: "lab".into(),
            node_name: "cp-1".into(),
            kubernetes_version: KubernetesVersion::new(1, 30, 3),
            advertise_address: [198, 18, 0, 11].into(),
            api_bind_port: 6443,
            control_plane_endpoint: "198.18.0.11:6443".parse().expect("endpoint"),
            etcd_endpoints: vec!["https://cp-1.lab.kubedna:2379".into()],
            etcd_ca: "/etc/kubedna/pki/etcd/ca.crt".into(),
            etcd_cert: "/etc/kubedna/pki/etcd/client.crt".into(),
            etcd_key: "/etc/kubedna/pki/etcd/client.key".into(),
            pod_subnet: "10.244.0.0/16".parse().expect("cidr"),
            service_subnet: "10.96.0.0/12".parse().expect("cidr"),
            cert_sans: vec!["198.18.0.11".into()],
        }
    }

    fn yaml_docs(text: &str) -> Vec<serde_yaml_ng::Value> {
        serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect()
    }

    #[test]
    fn init_config_has_the_v1beta3_shape() {
        let text = render_init(&params(), "abcdef.0123456789abcdef", &"ab".repeat(32));
        let docs = yaml_docs(&text);
        let kinds: Vec<&str> = docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            kinds,
            [
                "InitConfiguration",
                "ClusterConfiguration",
                "KubeletConfiguration"
            ]
        );
        assert_eq!(docs[0]["apiVersion"], "kubeadm.k8s.io/v1beta3");
        assert_eq!(docs[0]["localAPIEndpoint"]["bindPort"], 6443);
        assert_eq!(docs[0]["nodeRegistration"]["criSocket"], CRI_SOCKET);
        assert_eq!(docs[1]["kubernetesVersion"], "v1.30.3");
        assert_eq!(docs[1]["controlPlaneEndpoint"], "198.18.0.11:6443");
        assert_eq!(docs[1]["networking"]["podSubnet"], "10.244.0.0/16");
        assert_eq!(docs[1]["networking"]["serviceSubnet"], "10.96.0.0/12");
        assert_eq!(
            docs[1]["etcd"]["external"]["endpoints"][0],
            "https://cp-1.lab.kubedna:2379"
        );
        assert_eq!(docs[1]["apiServer"]["certSANs"][0], "198.18.0.11");
        assert_eq!(docs[2]["cgroupDriver"], "systemd");
        assert!(
            docs[1]["etcd"]["local"].is_null(),
            "etcd must be external: the agent runs it"
        );
    }

    #[test]
    fn join_config_carries_control_plane_only_for_control_planes() {
        let mut p = JoinParams {
            node_name: "w-1".into(),
            api_server_endpoint: "198.18.0.11:6443".parse().expect("endpoint"),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hash: format!("sha256:{}", "cd".repeat(32)),
            control_plane: None,
        };
        assert!(!render_join(&p).contains("controlPlane"));
        p.control_plane = Some(ControlPlaneJoin {
            advertise_address: [198, 18, 0, 12].into(),
            bind_port: 6443,
            certificate_key: "ab".repeat(32),
        });
        let text = render_join(&p);
        assert!(text.contains("controlPlane:") && text.contains("certificateKey:"));
        assert!(text.contains("localAPIEndpoint:"));
        assert!(text.contains("caCertHashes:"));
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("0123456789abcdef") && !debug.contains(&"ab".repeat(32)),
            "{debug}"
        );
    }

    /// The port, the release, the networks and the endpoint come from the inputs, an IPv6
    /// endpoint bracketed and its advertise address bare.
    #[test]
    fn the_cluster_values_come_from_the_inputs() {
        let p = ClusterParams {
            kubernetes_version: KubernetesVersion::new(1, 30, 10),
            advertise_address: "fd00::11".parse().expect("ip"),
            api_bind_port: 8443,
            control_plane_endpoint: "[fd00::11]:8443".parse().expect("endpoint"),
            pod_subnet: "fd00:10:244::/56".parse().expect("cidr"),
            service_subnet: "fd00:10:96::/112".parse().expect("cidr"),
            ..params()
        };
        let docs = yaml_docs(&render_init(
            &p,
            "abcdef.0123456789abcdef",
            &"ab".repeat(32),
        ));
        assert_eq!(docs[0]["localAPIEndpoint"]["bindPort"], 8443);
        assert_eq!(docs[0]["localAPIEndpoint"]["advertiseAddress"], "fd00::11");
        assert_eq!(docs[1]["kubernetesVersion"], "v1.30.10");
        assert_eq!(docs[1]["controlPlaneEndpoint"], "[fd00::11]:8443");
        assert_eq!(docs[1]["networking"]["podSubnet"], "fd00:10:244::/56");
        assert_eq!(docs[1]["networking"]["serviceSubnet"], "fd00:10:96::/112");
        let join = JoinParams {
            node_name: "cp-2".into(),
            api_server_endpoint: "[fd00::11]:8443".parse().expect("endpoint"),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hash: format!("sha256:{}", "cd".repeat(32)),
            control_plane: Some(ControlPlaneJoin {
                advertise_address: "fd00::12".parse().expect("ip"),
                bind_port: 8443,
                certificate_key: "ab".repeat(32),
            }),
        };
        let doc = &yaml_docs(&render_join(&join))[0];
        let cp = &doc["controlPlane"]["localAPIEndpoint"];
        assert_eq!(cp["bindPort"], 8443);
        assert_eq!(cp["advertiseAddress"], "fd00::12");
        assert_eq!(
            doc["discovery"]["bootstrapToken"]["apiServerEndpoint"],
            "[fd00::11]:8443"
        );
    }
}
