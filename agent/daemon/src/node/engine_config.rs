//! The one conversion from the agent's config to the control-plane engine's: [`engine_config`]
//! maps agent.yaml's `cluster`, `node` and `kubernetes` sections, with the two things only the
//! running agent knows (this node's mesh address and its audit log), into an [`EngineConfig`].
//! It does no I/O, so a test pins what the engine receives; the production choices it adds (etcd
//! addressed by name, `/usr/bin/etcd`, the host root `/`, the API name) are made here and
//! nowhere else. It must never read a file, ask the mesh or keep a default of its own: every
//! Kubernetes value comes validated from [`kubedna_config::KubernetesSpec`].

use std::net::IpAddr;

use kubedna_config::Config;
use kubedna_controlplane::actions::ActionLog;
use kubedna_controlplane::engine::{EngineConfig, EtcdNetwork, Host, Timings};
use kubedna_proto::Endpoint;

/// `api.<cluster>.kubedna`: the name of every control plane's `controlPlaneEndpoint`, kept in
/// `/etc/hosts` by the daemon.
pub fn api_name(cluster: &str) -> String {
    format!("api.{cluster}.kubedna")
}

/// `api.<cluster>.kubedna:<kubernetes.apiPort>`.
pub fn api_endpoint(config: &Config) -> Endpoint {
    let host: Host = api_name(&config.spec.cluster.name)
        .parse()
        .expect("a validated cluster name makes a DNS name");
    Endpoint::new(host, config.spec.kubernetes.api_port).expect("a validated port is not 0")
}

/// What the engine is told, from the validated `config`, this node's mesh address (where its
/// API server advertises itself) and where the engine reports what it changes.
pub fn engine_config(
    config: &Config,
    advertise_address: IpAddr,
    actions: ActionLog,
) -> EngineConfig {
    let k = &config.spec.kubernetes;
    EngineConfig {
        cluster: config.spec.cluster.name.clone(),
        secret: config.cluster_secret.clone(),
        node: config.node_name.clone(),
        role: config.spec.node.role,
        control_planes: config
            .spec
            .cluster
            .control_planes
            .as_ref()
            .map(|c| c.members.clone())
            .unwrap_or_default(),
        advertise_address,
        control_plane_endpoint: api_endpoint(config),
        kubernetes_version: k.version,
        pod_subnet: k.pod_subnet,
        service_subnet: k.service_subnet,
        etcd: EtcdNetwork::Named,
        etcd_binary: "/usr/bin/etcd".into(),
        root: "/".into(),
        timings: Timings::default(),
        actions,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kubedna_proto::NodeRole;

    use super::*;

    const BASE: &str = "apiVersion: kubedna.io/v1alpha1\nkind: AgentConfig\ncluster:\n  name: demo\n  secret: 0123456789abcdef0123456789abcdef\n  controlPlanes:\n    expected: 3\n    members: [cp-1, cp-2, cp-3]\nnode:\n  name: cp-1\n  role: control-plane\n";

    fn config(extra: &str) -> Config {
        kubedna_config::parse(
            Path::new("/etc/kubedna/agent.yaml"),
            &format!("{BASE}{extra}"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn engine(extra: &str, advertise: &str) -> EngineConfig {
        let (actions, _rx) = ActionLog::channel();
        engine_config(
            &config(extra),
            advertise.parse().expect("an address"),
            actions,
        )
    }

    /// Without a `kubernetes:` section the engine gets exactly what the daemon's constants
    /// gave it before the section existed.
    #[test]
    fn the_default_config_gives_the_engine_the_values_it_always_had() {
        let e = engine("", "198.18.0.11");
        assert_eq!(e.pod_subnet.to_string(), "10.244.0.0/16");
        assert_eq!(e.service_subnet.to_string(), "10.96.0.0/12");
        assert_eq!(e.api_port(), 6443);
        assert_eq!(e.kubernetes_version.to_string(), "v1.30.3");
        assert_eq!(
            e.control_plane_endpoint.to_string(),
            "api.demo.kubedna:6443"
        );
        assert_eq!(
            e.control_plane_endpoint.host().to_string(),
            "api.demo.kubedna"
        );
        assert_eq!(e.advertise_address.to_string(), "198.18.0.11");
        assert_eq!((e.cluster.as_str(), e.node.as_str()), ("demo", "cp-1"));
        assert_eq!(e.role, NodeRole::ControlPlane);
        assert_eq!(e.control_planes, ["cp-1", "cp-2", "cp-3"]);
        assert!(matches!(e.etcd, EtcdNetwork::Named));
        assert_eq!(e.etcd_binary, Path::new("/usr/bin/etcd"));
        assert_eq!(e.root, Path::new("/"));
    }

    /// (the section, the mesh address, pod subnet, service subnet, endpoint, version)
    #[test]
    fn the_kubernetes_section_reaches_the_engine_by_table() {
        for (extra, advertise, want) in [
            (
                "kubernetes:\n  apiPort: 8443\n",
                "198.18.0.11",
                ("10.244.0.0/16", "10.96.0.0/12", "api.demo.kubedna:8443", "v1.30.3"),
            ),
            (
                "kubernetes:\n  podSubnet: 10.32.0.0/12\n  serviceSubnet: 10.16.0.0/16\n  version: v1.30.10\n",
                "198.18.0.11",
                ("10.32.0.0/12", "10.16.0.0/16", "api.demo.kubedna:6443", "v1.30.10"),
            ),
            (
                "kubernetes:\n  podSubnet: fd00:10:244::/56\n  serviceSubnet: fd00:10:96::/112\n",
                "fd00::11",
                ("fd00:10:244::/56", "fd00:10:96::/112", "api.demo.kubedna:6443", "v1.30.3"),
            ),
        ] {
            let e = engine(extra, advertise);
            let got = (
                e.pod_subnet.to_string(),
                e.service_subnet.to_string(),
                e.control_plane_endpoint.to_string(),
                e.kubernetes_version.to_string(),
            );
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), got.2.as_str(), got.3.as_str()),
                want,
                "{extra}"
            );
            assert_eq!(e.api_port(), e.control_plane_endpoint.port(), "{extra}");
            assert_eq!(e.advertise_address.to_string(), advertise, "{extra}");
        }
    }
}
