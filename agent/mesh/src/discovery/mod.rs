//! Discovery: how a node finds its first peers before gossip takes over.
//!
//! Owns the sources the agent config names — static seeds ([`seeds`]: addresses or DNS names,
//! re-resolved), same-L2 multicast beacons ([`multicast`]: sealed like mesh packets) and the
//! provider's node list ([`provider`]: the lab's peers file, Hetzner Cloud's label query) — each a
//! task that hands addresses to the running mesh through [`MeshHandle`]. Membership itself stays
//! the mesh's business: a source only announces. Sources must never fail the agent (an
//! unresolvable seed or an unreachable API is logged once per change and retried), and must
//! never log a secret (the cluster secret, the API token).

pub mod multicast;
pub mod provider;
pub mod seeds;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::runtime::MeshHandle;

/// Which sources run, from the agent config's `discovery` and `provider` sections.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Cluster name (beacons are bound to it).
    pub cluster_name: String,
    /// The mesh port, for seeds and provider addresses given without one.
    pub port: u16,
    /// `host` or `host:port` entries (`discovery.seeds`).
    pub seeds: Vec<String>,
    /// Same-L2 beacons (`discovery.multicast`), if enabled.
    pub multicast: Option<multicast::MulticastConfig>,
    /// The provider's node list, when `discovery.provider` is true.
    pub provider: Option<ProviderSource>,
}

/// Where the provider's node list comes from.
#[derive(Debug, Clone)]
pub enum ProviderSource {
    /// The lab writes every node's address into this file in each node
    /// ([`provider::LAB_PEERS_FILE`]).
    Lab {
        /// The peers file.
        path: PathBuf,
    },
    /// Hetzner Cloud: servers carrying the label selector.
    Hetzner(provider::HetznerConfig),
}

/// Why a discovery source could not run a round (logged, then retried; never fatal).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A seed name did not resolve.
    #[error("seed {seed:?} does not resolve; check its DNS name (discovery.seeds)")]
    Resolve {
        /// The seed as configured.
        seed: String,
        /// Resolver error.
        #[source]
        source: std::io::Error,
    },
    /// The multicast socket could not be set up.
    #[error("cannot listen for beacons on {group}:{port} via {interface}; check discovery.multicast (group, port, interface)")]
    Multicast {
        /// Group address.
        group: std::net::Ipv4Addr,
        /// Port.
        port: u16,
        /// Interface address used.
        interface: std::net::Ipv4Addr,
        /// Socket error.
        #[source]
        source: std::io::Error,
    },
    /// The lab's peers file could not be read.
    #[error("cannot read the lab's peers file {path}; the lab writes it into every node")]
    LabFile {
        /// The file.
        path: PathBuf,
        /// Read error.
        #[source]
        source: std::io::Error,
    },
    /// The Hetzner token file could not be read.
    #[error("cannot read the Hetzner API token file {path} (provider.hetzner.tokenFile)")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Read error.
        #[source]
        source: std::io::Error,
    },
    /// The Hetzner API call failed.
    #[error("Hetzner API {what}: {message}")]
    Hetzner {
        /// Which call (method and path, no token).
        what: String,
        /// What went wrong and what to check.
        message: String,
    },
}

/// Starts every configured source; each ends when `stop` turns true or the mesh stops.
/// Beacons are sealed with the mesh's key ring and follow its rotations.
pub fn spawn(
    cfg: DiscoveryConfig,
    mesh: MeshHandle,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if !cfg.seeds.is_empty() {
        tasks.push(tokio::spawn(seeds::run(
            cfg.seeds.clone(),
            cfg.port,
            mesh.clone(),
            stop.clone(),
        )));
    }
    if let Some(m) = cfg.multicast.clone() {
        let codec = multicast::BeaconCodec::with_ring(mesh.key_ring().borrow().clone());
        tasks.push(tokio::spawn(multicast::run(
            m,
            codec,
            mesh.clone(),
            stop.clone(),
        )));
    }
    if let Some(p) = cfg.provider.clone() {
        tasks.push(tokio::spawn(provider::run(p, cfg.port, mesh, stop)));
    }
    tasks
}

/// `host:port` with the port defaulted; IPv6 literals in brackets.
pub(crate) fn split_host_port(entry: &str, default_port: u16) -> (String, u16) {
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
        return (ip.to_string(), default_port);
    }
    let trimmed = entry.trim_start_matches('[');
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
            let host = h.trim_start_matches('[').trim_end_matches(']').to_string();
            (host, p.parse().unwrap_or(default_port))
        }
        _ => (trimmed.trim_end_matches(']').to_string(), default_port),
    }
}

/// Waits `delay` or until `stop` turns true; returns true when stopping.
pub(crate) async fn pause(delay: std::time::Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_split_into_host_and_port() {
        assert_eq!(
            split_host_port("198.18.10.2", 7946),
            ("198.18.10.2".into(), 7946)
        );
        assert_eq!(
            split_host_port("198.18.10.2:8000", 7946),
            ("198.18.10.2".into(), 8000)
        );
        assert_eq!(
            split_host_port("cp-1.example.net", 7946),
            ("cp-1.example.net".into(), 7946)
        );
        assert_eq!(
            split_host_port("cp-1.example.net:7000", 7946),
            ("cp-1.example.net".into(), 7000)
        );
        assert_eq!(
            split_host_port("[fd00::1]:7000", 7946),
            ("fd00::1".into(), 7000)
        );
        assert_eq!(split_host_port("fd00::1", 7946), ("fd00::1".into(), 7946));
    }
}
