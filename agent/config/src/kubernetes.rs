//! `kubernetes:` in agent.yaml: the pod and Service networks, the API server's port and the
//! Kubernetes release, each a validated value from [`kubedna_proto`] ([`Cidr`],
//! [`KubernetesVersion`]) so the engine receives types, not strings. Defaults are documented
//! beside each field and are what the agent used before the section existed. [`check`] refuses
//! what kubeadm 1.30 would refuse only once the cluster is forming: a release other than v1.30.x,
//! networks too large or too small for it, and pod and Service networks that overlap or differ in
//! family.

use kubedna_proto::{Cidr, IpFamily, KubernetesVersion};
use serde::Deserialize;

/// `kubernetes:`: what `kubeadm init` is told about the cluster, and the port every control
/// plane's API server binds. Every node of a cluster must hold the same values, set before the
/// cluster forms: kubeadm reads them once, at `kubeadm init`, and changing them later changes
/// nothing in a formed cluster. Needs a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesSpec {
    /// The pods' addresses (kubeadm's `networking.podSubnet`), a CIDR such as `10.244.0.0/16`
    /// with no bits set after the prefix. Each node's pod CIDR is cut from it. Must not overlap
    /// `serviceSubnet` and must be of the same IP family. Default `10.244.0.0/16`.
    #[serde(default = "default_pod_subnet")]
    pub pod_subnet: Cidr,
    /// The Services' cluster IPs (kubeadm's `networking.serviceSubnet`). Default
    /// `10.96.0.0/12`, kubeadm's own.
    #[serde(default = "default_service_subnet")]
    pub service_subnet: Cidr,
    /// The port every control plane's API server binds and `api.<cluster>.kubedna:<port>`
    /// (kubeadm's `controlPlaneEndpoint`) names: 1 to 65535. Default 6443.
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// The Kubernetes release, `vMAJOR.MINOR.PATCH`. This agent speaks kubeadm 1.30's config
    /// (`v1beta3`), so only `v1.30.x` is accepted, and nodes never pull: the node image must
    /// carry that release's binaries and images (ours carries v1.30.3). Default `v1.30.3`.
    #[serde(default = "default_kubernetes_version")]
    pub version: KubernetesVersion,
}

/// Default of `kubernetes.podSubnet`: the pod range flannel and most CNIs default to.
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/16";
/// Default of `kubernetes.serviceSubnet`: kubeadm's Service range.
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";
/// Default of `kubernetes.apiPort`.
pub const DEFAULT_API_PORT: u16 = 6443;
/// Default of `kubernetes.version`: the release the node image carries.
pub const DEFAULT_KUBERNETES_VERSION: KubernetesVersion = KubernetesVersion::new(1, 30, 3);
/// The one minor release `kubernetes.version` may name (major, minor).
pub const SUPPORTED_KUBERNETES_MINOR: (u32, u32) = (1, 30);

fn default_pod_subnet() -> Cidr {
    DEFAULT_POD_SUBNET.parse().expect("the default is a CIDR")
}

fn default_service_subnet() -> Cidr {
    DEFAULT_SERVICE_SUBNET
        .parse()
        .expect("the default is a CIDR")
}

fn default_api_port() -> u16 {
    DEFAULT_API_PORT
}

fn default_kubernetes_version() -> KubernetesVersion {
    DEFAULT_KUBERNETES_VERSION
}

impl Default for KubernetesSpec {
    fn default() -> Self {
        KubernetesSpec {
            pod_subnet: default_pod_subnet(),
            service_subnet: default_service_subnet(),
            api_port: default_api_port(),
            version: default_kubernetes_version(),
        }
    }
}

/// The first problem with `kubernetes:`, as (field, message).
pub(crate) fn check(k: &KubernetesSpec) -> Result<(), (&'static str, String)> {
    if k.api_port == 0 {
        return Err((
            "kubernetes.apiPort",
            format!("0 is not a port: use 1 to 65535 (default {DEFAULT_API_PORT})"),
        ));
    }
    let v = k.version;
    if (v.major, v.minor) != SUPPORTED_KUBERNETES_MINOR {
        let (major, minor) = SUPPORTED_KUBERNETES_MINOR;
        return Err((
            "kubernetes.version",
            format!(
                "{v} is not supported: this agent runs Kubernetes v{major}.{minor}.x only (it \
                 writes kubeadm {major}.{minor}'s config, and nodes never pull: the node image \
                 carries the release's binaries and images); use \
                 {DEFAULT_KUBERNETES_VERSION}, or leave the field out"
            ),
        ));
    }
    // kubeadm 1.30's own limits (cmd/kubeadm/app/apis/kubeadm/validation): each node gets a
    // /24 (IPv4) or /64 (IPv6) of the pod network, at most 2^16 of them; a Service network
    // holds at most 2^20 addresses.
    let p = k.pod_subnet;
    let (node_mask, pod_range) = match p.family() {
        IpFamily::V4 => (24, 8..=24),
        IpFamily::V6 => (64, 48..=64),
    };
    if !pod_range.contains(&p.prefix()) {
        return Err((
            "kubernetes.podSubnet",
            format!(
                "{p} does not fit kubeadm: each node gets a /{node_mask} of it, at most 65536 \
                 nodes, so use a prefix of /{} to /{} (default {DEFAULT_POD_SUBNET})",
                pod_range.start(),
                pod_range.end()
            ),
        ));
    }
    let s = k.service_subnet;
    let shortest = s.family().bits() - 20;
    if s.prefix() < shortest {
        return Err((
            "kubernetes.serviceSubnet",
            format!(
                "{s} is too large: kubeadm takes at most 2^20 Service addresses, so use a \
                 prefix of /{shortest} or longer (default {DEFAULT_SERVICE_SUBNET})"
            ),
        ));
    }
    if p.family() != s.family() {
        return Err((
            "kubernetes",
            format!(
                "kubernetes.podSubnet {p} is {} but kubernetes.serviceSubnet {s} is {}: use one \
                 family for both (the agent makes single-stack clusters)",
                p.family(),
                s.family()
            ),
        ));
    }
    if p.overlaps(&s) {
        return Err((
            "kubernetes",
            format!(
                "kubernetes.podSubnet {p} and kubernetes.serviceSubnet {s} overlap: choose \
                 networks that share no address, such as the defaults {DEFAULT_POD_SUBNET} and \
                 {DEFAULT_SERVICE_SUBNET}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::parse;

    #[test]
    fn without_the_section_the_values_are_the_ones_before_it_existed() {
        let k = parse("").expect("no kubernetes section").spec.kubernetes;
        assert_eq!(k, KubernetesSpec::default());
        assert_eq!(k.pod_subnet.to_string(), "10.244.0.0/16");
        assert_eq!(k.service_subnet.to_string(), "10.96.0.0/12");
        assert_eq!(k.api_port, 6443);
        assert_eq!(k.version.to_string(), "v1.30.3");
        let empty = parse("kubernetes: {}\n").expect("an empty section");
        assert_eq!(empty.spec.kubernetes, k);
    }

    #[test]
    fn a_changed_section_is_reported_and_needs_a_restart() {
        let a = parse("").expect("a");
        let b = parse("kubernetes:\n  apiPort: 8443\n").expect("b");
        assert_eq!(a.changed_sections(&b), vec!["kubernetes"]);
        assert_eq!(a.restart_only_changes(&b), vec!["kubernetes"]);
        assert!(a.restart_only_changes(&a.clone()).is_empty());
    }

    /// (the section, pod subnet, service subnet, port, version) as they print.
    #[test]
    fn good_sections_by_table() {
        for (yaml, want) in [
            (
                "kubernetes:\n  podSubnet: 10.32.0.0/12\n  serviceSubnet: 10.16.0.0/16\n  apiPort: 443\n  version: v1.30.10\n",
                ("10.32.0.0/12", "10.16.0.0/16", 443, "v1.30.10"),
            ),
            (
                "kubernetes:\n  podSubnet: fd00:10:244::/56\n  serviceSubnet: \"fd00:10:96::/112\"\n",
                ("fd00:10:244::/56", "fd00:10:96::/112", 6443, "v1.30.3"),
            ),
            (
                "kubernetes:\n  podSubnet: 192.168.0.0/24\n  serviceSubnet: 10.0.0.0/12\n  apiPort: 65535\n  version: v1.30.0\n",
                ("192.168.0.0/24", "10.0.0.0/12", 65535, "v1.30.0"),
            ),
        ] {
            let k = parse(yaml)
                .unwrap_or_else(|e| panic!("{yaml}: {e}"))
                .spec
                .kubernetes;
            let got = (
                k.pod_subnet.to_string(),
                k.service_subnet.to_string(),
                k.api_port,
                k.version.to_string(),
            );
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), got.2, got.3.as_str()),
                want,
                "{yaml}"
            );
        }
    }

    /// (what is wrong, the section, the field the error names, words the message holds)
    #[test]
    fn bad_sections_name_their_field() {
        let k = |body: &str| format!("kubernetes:\n{body}");
        for (what, yaml, field, words) in [
            (
                "port 0",
                k("  apiPort: 0\n"),
                "kubernetes.apiPort",
                vec!["1 to 65535"],
            ),
            (
                "port too big",
                k("  apiPort: 70000\n"),
                "kubernetes.apiPort",
                vec!["u16"],
            ),
            (
                "port as text",
                k("  apiPort: https\n"),
                "kubernetes.apiPort",
                vec!["u16"],
            ),
            (
                "another minor",
                k("  version: v1.31.0\n"),
                "kubernetes.version",
                vec!["v1.31.0 is not supported", "v1.30.x", "v1.30.3"],
            ),
            (
                "another major",
                k("  version: v2.30.0\n"),
                "kubernetes.version",
                vec!["v1.30.x"],
            ),
            (
                "no v",
                k("  version: 1.30.3\n"),
                "kubernetes.version",
                vec!["vMAJOR.MINOR.PATCH"],
            ),
            (
                "no patch",
                k("  version: v1.30\n"),
                "kubernetes.version",
                vec!["vMAJOR.MINOR.PATCH"],
            ),
            (
                "a number",
                k("  version: 1.30\n"),
                "kubernetes.version",
                vec!["\"1.30\" is not a Kubernetes version"],
            ),
            (
                "pre-release",
                k("  version: v1.30.3-rc.1\n"),
                "kubernetes.version",
                vec!["vMAJOR.MINOR.PATCH"],
            ),
            (
                "not a CIDR",
                k("  podSubnet: pods\n"),
                "kubernetes.podSubnet",
                vec!["not a CIDR"],
            ),
            (
                "no prefix",
                k("  podSubnet: 10.244.0.0\n"),
                "kubernetes.podSubnet",
                vec!["ADDRESS/PREFIX"],
            ),
            (
                "host bits",
                k("  podSubnet: 10.244.1.0/16\n"),
                "kubernetes.podSubnet",
                vec!["10.244.0.0/16"],
            ),
            (
                "prefix past the family",
                k("  serviceSubnet: 10.96.0.0/40\n"),
                "kubernetes.serviceSubnet",
                vec!["0 to 32"],
            ),
            (
                "pod network too small for a node",
                k("  podSubnet: 10.244.0.0/25\n"),
                "kubernetes.podSubnet",
                vec!["/8 to /24"],
            ),
            (
                "pod network too large",
                k("  podSubnet: 10.0.0.0/7\n"),
                "kubernetes.podSubnet",
                vec!["/8 to /24"],
            ),
            (
                "IPv6 pod network too small",
                k("  podSubnet: fd00::/80\n  serviceSubnet: fd01::/112\n"),
                "kubernetes.podSubnet",
                vec!["/48 to /64"],
            ),
            (
                "service network too large",
                k("  serviceSubnet: 10.96.0.0/11\n"),
                "kubernetes.serviceSubnet",
                vec!["/12 or longer"],
            ),
            (
                "IPv6 service network too large",
                k("  podSubnet: fd00::/56\n  serviceSubnet: fd01::/64\n"),
                "kubernetes.serviceSubnet",
                vec!["/108 or longer"],
            ),
            (
                "families differ",
                k("  podSubnet: fd00::/56\n"),
                "kubernetes",
                vec![
                    "kubernetes.podSubnet fd00::/56 is IPv6",
                    "kubernetes.serviceSubnet 10.96.0.0/12 is IPv4",
                ],
            ),
            (
                "overlap",
                k("  podSubnet: 10.96.0.0/16\n"),
                "kubernetes",
                vec![
                    "kubernetes.podSubnet 10.96.0.0/16",
                    "kubernetes.serviceSubnet 10.96.0.0/12",
                    "overlap",
                ],
            ),
            (
                "overlap the other way",
                k("  podSubnet: 10.0.0.0/8\n"),
                "kubernetes",
                vec![
                    "kubernetes.podSubnet",
                    "kubernetes.serviceSubnet",
                    "overlap",
                ],
            ),
            (
                "unknown field",
                k("  clusterCIDR: 10.0.0.0/8\n"),
                "kubernetes.clusterCIDR",
                vec!["podSubnet"],
            ),
        ] {
            let e = parse(&yaml).expect_err(what);
            let msg = e.to_string();
            assert_eq!(e.field(), Some(field), "{what}: {msg}");
            assert!(msg.contains("agent.yaml"), "{what}: {msg}");
            assert!(
                !msg.contains("`: kubernetes: "),
                "{what}: the path twice: {msg}"
            );
            for w in words {
                assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
            }
        }
    }
}
