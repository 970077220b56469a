//! The mesh's parameters ([`MeshConfig`], with [`MeshConfig::lan`] as the defaults) and the
//! error a core refuses to start with. Only values and their documentation live here; checking
//! them is [`Mesh::new`]'s job.

use super::*;

/// Mesh parameters. [`MeshConfig::lan`] gives the defaults.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Cluster name: bound into the keys and the packet tag.
    pub cluster_name: String,
    /// This node's mesh address (its identity).
    pub addr: SocketAddr,
    /// Initial metadata.
    pub meta: NodeMeta,
    /// Where to announce when joining or when every peer is gone.
    pub seeds: Vec<SocketAddr>,
    /// How often one member is probed.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How often pending updates are gossiped, and to how many members.
    pub gossip_interval: Duration,
    /// See `gossip_interval`.
    pub gossip_fanout: usize,
    /// Suspicion timeout when Lifeguard is off (plain SWIM); never below `pause_tolerance`.
    pub suspect_timeout: Duration,
    /// The longest pause of a live node (a frozen process or VM: live migration, snapshot,
    /// memory pressure) that must not get it declared down: no suspicion ends sooner than this
    /// after it started, and after the suspect was last heard from, however many members confirm
    /// it. A crash is seen down this long plus about a second after it (see docs/mesh.md).
    /// Default [`DEFAULT_PAUSE_TOLERANCE`].
    pub pause_tolerance: Duration,
    /// Lifeguard; `None` runs plain SWIM (the baseline of our figures).
    pub lifeguard: Option<LifeguardConfig>,
    /// Base push/pull anti-entropy interval; stretched for clusters above 32 members.
    pub push_pull_interval: Duration,
    /// First and longest delay between re-announcements while no peer is known.
    pub reannounce_min: Duration,
    /// See `reannounce_min`.
    pub reannounce_max: Duration,
    /// How long the `Leaving` state is gossiped before the node leaves.
    pub leave_grace: Duration,
    /// Largest UDP datagram sent.
    pub max_packet_size: usize,
    /// Accepted clock difference between nodes (replay protection).
    pub max_clock_skew: Duration,
    /// Expected cluster size, for how many times an update is retransmitted.
    pub expected_size: u32,
    /// Generation of our identity (`addr#generation`): 0 on a first start; the daemon passes
    /// the persisted generation + 1 after a restart, so peers replace the previous life's entry
    /// at once (a higher generation wins the address) instead of first declaring it down.
    pub generation: u16,
    /// Members known before a restart (persisted by the daemon): announced to like seeds until
    /// we joined, so a node without seeds finds its cluster again.
    pub known: Vec<SocketAddr>,
}

impl MeshConfig {
    /// LAN defaults (memberlist's, with a faster gossip-driven suspicion; see docs/mesh.md).
    pub fn lan(cluster_name: &str, addr: SocketAddr, meta: NodeMeta) -> Self {
        Self {
            cluster_name: cluster_name.to_owned(),
            addr,
            meta,
            seeds: Vec::new(),
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            indirect_probes: 3,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            suspect_timeout: Duration::from_secs(2),
            pause_tolerance: DEFAULT_PAUSE_TOLERANCE,
            lifeguard: Some(LifeguardConfig::default()),
            push_pull_interval: Duration::from_secs(30),
            reannounce_min: Duration::from_secs(1),
            reannounce_max: Duration::from_secs(30),
            leave_grace: Duration::from_secs(1),
            max_packet_size: 1400,
            max_clock_skew: Duration::from_secs(120),
            expected_size: 100,
            generation: 0,
            known: Vec::new(),
        }
    }
}

/// Default of [`MeshConfig::pause_tolerance`]: 5 s covers the freezes cloud VMs are documented
/// to have (live migration "typically no more than 5 seconds" on Azure, sub-second to a few
/// seconds elsewhere) and what memberlist's defaults survive at small N. Why: docs/mesh.md.
pub const DEFAULT_PAUSE_TOLERANCE: Duration = Duration::from_secs(5);

/// Longest accepted [`MeshConfig::pause_tolerance`]: a crash is seen only after it.
pub const MAX_PAUSE_TOLERANCE: Duration = Duration::from_secs(60);

/// Why the mesh refused to start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A timing parameter is out of range.
    #[error("invalid mesh config: {0}")]
    Config(&'static str),
}
