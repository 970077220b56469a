//! Same-L2 multicast beacons, for datacenter machines installed by PXE that have no seeds.
//!
//! Owns the beacon format, its socket and its pace. A beacon is one datagram to the group,
//! sealed exactly like a mesh packet (same envelope, cluster tag, HKDF-derived key, replay
//! window; see `security.rs`) and carrying the sender's mesh address. A beacon from another
//! cluster or with a bad tag is dropped and counted before anything in it is read. A node sends
//! one every 1-2 s (jittered) while it has no peers, then every 30 s; a valid beacon makes the
//! receiver announce to the sender's mesh address (at most once per 5 s per sender). Beacons use
//! the running mesh's key ring ([`MeshHandle::key_ring`]), so they follow a key rotation: the new
//! key is accepted as soon as the mesh installs it, and beacons are sealed with it once the mesh
//! makes it primary. It must never trust an unauthenticated beacon, and never log a key.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{pause, DiscoveryError};
use crate::runtime::MeshHandle;
use crate::security::{KeyRing, PacketSecurity, Reject, SecurityCounters};
use kubedna_proto::ClusterSecret;

/// Beacon interval while the node has no peers: uniformly 1 to 2 s.
pub const ALONE_INTERVAL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(2));
/// Beacon interval once the node has peers.
pub const CONNECTED_INTERVAL: Duration = Duration::from_secs(30);
/// A sender is announced to at most this often.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// First byte of a beacon body (mesh bodies use 0-4, so a beacon is never taken for one).
const BEACON_KIND: u8 = 0xB0;

/// `discovery.multicast`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastConfig {
    /// IPv4 group.
    pub group: Ipv4Addr,
    /// UDP port beacons are sent to and received on.
    pub port: u16,
    /// Address of the interface to send and join on (the mesh address's interface by default).
    pub interface: Ipv4Addr,
}

#[derive(Debug, Serialize, Deserialize)]
struct Beacon {
    mesh_addr: SocketAddr,
}

/// Seals and opens beacons with the cluster's packet key.
#[derive(Debug)]
pub struct BeaconCodec {
    security: PacketSecurity,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl BeaconCodec {
    /// A codec for `cluster_name`'s beacons, with a fresh random boot id.
    pub fn new(cluster_name: &str, secret: &ClusterSecret) -> Self {
        Self::with_ring(KeyRing::new(cluster_name, secret))
    }

    /// A codec sealing with `ring`'s primary key and accepting all of its keys.
    pub fn with_ring(ring: KeyRing) -> Self {
        let mut boot = [0u8; 16];
        // Without the kernel's randomness, a clock-derived boot id still differs per start.
        if getrandom::fill(&mut boot).is_err() {
            boot[..16].copy_from_slice(
                &(u128::from(wall_ms()) ^ u128::from(std::process::id()) << 64).to_le_bytes(),
            );
        }
        Self {
            security: PacketSecurity::new(ring, boot, 120_000),
        }
    }

    /// Follows a change of the mesh's key ring (rotation); replay windows are kept.
    pub fn set_ring(&mut self, ring: KeyRing) {
        self.security.set_ring(ring);
    }

    /// A beacon saying our mesh listens at `mesh_addr`.
    pub fn seal(&mut self, mesh_addr: SocketAddr, now_ms: u64) -> Vec<u8> {
        let mut body = vec![BEACON_KIND];
        // A SocketAddr always serializes.
        body.extend(postcard::to_allocvec(&Beacon { mesh_addr }).unwrap_or_default());
        self.security.seal(&body, now_ms)
    }

    /// The sender's mesh address, if `packet` is an authentic, fresh beacon of our cluster.
    pub fn open(
        &mut self,
        from: SocketAddr,
        packet: &[u8],
        now_ms: u64,
    ) -> Result<SocketAddr, Reject> {
        let body = self.security.open(from, packet, now_ms)?;
        match body.split_first() {
            Some((&BEACON_KIND, rest)) => postcard::from_bytes::<Beacon>(rest)
                .map(|b| b.mesh_addr)
                .map_err(|_| Reject::Malformed),
            _ => Err(Reject::Malformed),
        }
    }

    /// Accept and drop counts (foreign-cluster beacons under `foreign_cluster`).
    pub fn counters(&self) -> SecurityCounters {
        self.security.counters()
    }
}

/// The receiving socket: bound to the group's port, member of the group on `interface`,
/// sending there with TTL 1 (beacons never leave the L2 segment) and without loopback.
pub fn open_socket(cfg: &MulticastConfig) -> Result<UdpSocket, DiscoveryError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| DiscoveryError::Multicast {
        group: cfg.group,
        port: cfg.port,
        interface: cfg.interface,
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.port).into())
        .map_err(err)?;
    socket
        .join_multicast_v4(&cfg.group, &cfg.interface)
        .map_err(err)?;
    socket.set_multicast_if_v4(&cfg.interface).map_err(err)?;
    socket.set_multicast_ttl_v4(1).map_err(err)?;
    socket.set_multicast_loop_v4(false).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(socket.into()).map_err(err)
}

/// The delay before the next beacon.
pub fn next_interval(has_peers: bool) -> Duration {
    if has_peers {
        CONNECTED_INTERVAL
    } else {
        let (lo, hi) = ALONE_INTERVAL;
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo).mul_f64(unit)
    }
}

/// Sends beacons and announces to the senders of valid ones until `stop`.
pub async fn run(
    cfg: MulticastConfig,
    mut codec: BeaconCodec,
    mesh: MeshHandle,
    mut stop: watch::Receiver<bool>,
) {
    let socket = loop {
        match open_socket(&cfg) {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "multicast discovery not running; retrying in 10 s");
                if pause(Duration::from_secs(10), &mut stop).await {
                    return;
                }
            }
        }
    };
    tracing::info!(group = %cfg.group, port = cfg.port, interface = %cfg.interface, "multicast discovery running");
    let own = mesh.local_addr();
    let group = SocketAddr::from((cfg.group, cfg.port));
    let mut active = mesh.active_members();
    let mut ring = mesh.key_ring();
    codec.set_ring(ring.borrow_and_update().clone());
    let mut announced: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut next_beacon = Instant::now();
    let mut reported_drops = 0u64;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_beacon) => {
                let beacon = codec.seal(own, wall_ms());
                if let Err(e) = socket.send_to(&beacon, group).await {
                    tracing::debug!(error = %e, "beacon not sent");
                }
                next_beacon = Instant::now() + next_interval(*active.borrow() > 0);
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                match codec.open(from, &buf[..len], wall_ms()) {
                    Ok(addr) if addr != own => {
                        let now = Instant::now();
                        let due = announced.get(&addr).is_none_or(|t| now.duration_since(*t) >= ANNOUNCE_EVERY);
                        if due {
                            announced.insert(addr, now);
                            tracing::debug!(peer = %addr, "beacon: announcing");
                            if mesh.announce(addr).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let dropped = codec.counters().dropped();
                        // Log the first drop and then every hundredth, not every packet.
                        if dropped == 1 || dropped >= reported_drops + 100 {
                            reported_drops = dropped;
                            tracing::info!(from = %from, counters = ?codec.counters(), "beacon dropped (another cluster, bad tag or replay)");
                        }
                    }
                }
            }
            changed = ring.changed() => {
                if changed.is_err() { return; }
                codec.set_ring(ring.borrow_and_update().clone());
            }
            changed = active.changed() => {
                if changed.is_err() { return; }
                // Going back to alone: beacon again soon.
                if *active.borrow() == 0 {
                    next_beacon = next_beacon.min(Instant::now() + next_interval(false));
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() { return; }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::new(b"multicast-test-cluster-secret-0123".to_vec()).expect("long")
    }

    #[test]
    fn a_beacon_carries_the_mesh_address_and_opens_once() {
        let mut a = BeaconCodec::new("alpha", &secret());
        let mut b = BeaconCodec::new("alpha", &secret());
        let mesh: SocketAddr = ([198, 18, 10, 2], 7946).into();
        let from: SocketAddr = ([198, 18, 10, 2], 7947).into();
        let beacon = a.seal(mesh, wall_ms());
        assert_eq!(b.open(from, &beacon, wall_ms()), Ok(mesh));
        assert_eq!(b.open(from, &beacon, wall_ms()), Err(Reject::Replayed));
    }

    #[test]
    fn beacons_of_another_cluster_or_forged_are_dropped_and_counted() {
        let mut ours = BeaconCodec::new("alpha", &secret());
        let mut theirs = BeaconCodec::new("beta", &secret());
        let from: SocketAddr = ([198, 18, 10, 3], 7947).into();
        let foreign = theirs.seal(([198, 18, 10, 3], 7946).into(), wall_ms());
        assert_eq!(
            ours.open(from, &foreign, wall_ms()),
            Err(Reject::ForeignCluster)
        );
        let mut forged = ours.seal(([198, 18, 10, 9], 7946).into(), wall_ms());
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut receiver = BeaconCodec::new("alpha", &secret());
        assert_eq!(receiver.open(from, &forged, wall_ms()), Err(Reject::BadTag));
        assert_eq!(ours.counters().foreign_cluster, 1);
        assert_eq!(receiver.counters().bad_tag, 1);
    }

    #[test]
    fn beacons_follow_the_rings_rotation() {
        let next =
            ClusterSecret::new(b"multicast-next-cluster-secret-4567".to_vec()).expect("long");
        let mut ring = KeyRing::new("alpha", &secret());
        let mut rotated = BeaconCodec::with_ring(ring.clone());
        let mut old_only = BeaconCodec::new("alpha", &secret());
        let mut new_only = BeaconCodec::new("alpha", &next);
        let from: SocketAddr = ([198, 18, 10, 4], 7947).into();
        let mesh: SocketAddr = ([198, 18, 10, 4], 7946).into();
        // Installed: the rotated node accepts both, still seals with the old key.
        let id = ring.install(&next).expect("room");
        rotated.set_ring(ring.clone());
        assert_eq!(
            rotated.open(from, &new_only.seal(mesh, wall_ms()), wall_ms()),
            Ok(mesh)
        );
        assert_eq!(
            old_only.open(from, &rotated.seal(mesh, wall_ms()), wall_ms()),
            Ok(mesh)
        );
        // Promoted and the old key retired: only the new key remains.
        ring.set_primary(id).expect("installed");
        ring.remove(ring.id_of(&secret())).expect("not primary");
        rotated.set_ring(ring);
        let other: SocketAddr = ([198, 18, 10, 5], 7947).into();
        assert_eq!(
            new_only.open(other, &rotated.seal(mesh, wall_ms()), wall_ms()),
            Ok(mesh)
        );
        assert_eq!(
            rotated.open(other, &old_only.seal(mesh, wall_ms()), wall_ms()),
            Err(Reject::UnknownKey)
        );
    }

    #[test]
    fn beacons_are_fast_while_alone_and_slow_with_peers() {
        for _ in 0..100 {
            let d = next_interval(false);
            assert!(d >= ALONE_INTERVAL.0 && d <= ALONE_INTERVAL.1, "{d:?}");
        }
        assert_eq!(next_interval(true), CONNECTED_INTERVAL);
    }
}
