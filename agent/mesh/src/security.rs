//! The packet security layer: sealing and opening every mesh packet.
//!
//! Owns the wire envelope, the key ring (keys derived from cluster secrets by HKDF-SHA256 bound to
//! the cluster name), replay protection and the drop counters. A packet is parsed further only after
//! it passed, in this order: length and magic, cluster tag, key id, AEAD tag (XChaCha20-Poly1305 over
//! the header as associated data), age and replay window. It must never log, print or return a
//! secret or key, and never hand unauthenticated bytes to the protocol.
//!
//! Envelope (all integers big-endian), 49 bytes of header then ciphertext and a 16-byte tag:
//!
//! ```text
//! 0..4   magic "KDNA"        4      version (1)
//! 5..13  cluster tag          13..17 key id
//! 17..33 sender boot id       33..41 counter      41..49 sent at (wall clock, ms)
//! ```
//!
//! The 24-byte nonce is `boot id || counter`: unique per sender boot and packet, with no per-packet
//! randomness needed.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use kubedna_proto::ClusterSecret;

const MAGIC: &[u8; 4] = b"KDNA";
const VERSION: u8 = 1;
/// Bytes of envelope header (authenticated, not encrypted).
pub const HEADER_LEN: usize = 49;
const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// How many keys a ring holds at most (one primary and the ones still accepted).
pub const MAX_KEYS: usize = 4;
/// Width of the per-sender replay window, in packets.
const WINDOW: u64 = 64;

/// Identifies one key of the ring on the wire; derived from the secret, reveals nothing of it.
/// Public: it is in every packet header, and nodes gossip the ids they accept (key rotation).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyId({:02x}{:02x}{:02x}{:02x})",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Why a packet was dropped. Every variant is counted in [`SecurityCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Shorter than an envelope, or a different magic or version: not a mesh packet.
    #[error("not a mesh packet (truncated or bad magic)")]
    Malformed,
    /// A mesh packet of another cluster.
    #[error("packet from another cluster")]
    ForeignCluster,
    /// Sealed with a key this ring does not hold.
    #[error("packet sealed with an unknown key")]
    UnknownKey,
    /// The AEAD tag did not verify: forged, corrupted or truncated.
    #[error("packet failed authentication")]
    BadTag,
    /// Seen before, or older than the replay window.
    #[error("replayed packet")]
    Replayed,
    /// Sent too long ago (or in the future) by the sender's clock.
    #[error("packet too old or from the future")]
    Stale,
}

/// Why the key ring refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    /// The ring already holds [`MAX_KEYS`] keys.
    #[error("the key ring is full ({MAX_KEYS} keys): remove a retired key first")]
    Full,
    /// The key is not in the ring.
    #[error("key {0} is not in the ring: install it first")]
    NotInstalled(KeyId),
    /// The primary key cannot be removed.
    #[error("key {0} is the primary key: make another key primary before removing it")]
    RemovingPrimary(KeyId),
}

/// Drop and accept counters, for metrics. Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityCounters {
    /// Packets that passed every check.
    pub accepted: u64,
    /// See [`Reject::Malformed`].
    pub malformed: u64,
    /// See [`Reject::ForeignCluster`].
    pub foreign_cluster: u64,
    /// See [`Reject::UnknownKey`].
    pub unknown_key: u64,
    /// See [`Reject::BadTag`].
    pub bad_tag: u64,
    /// See [`Reject::Replayed`].
    pub replayed: u64,
    /// See [`Reject::Stale`].
    pub stale: u64,
}

impl SecurityCounters {
    fn count(&mut self, reject: Reject) {
        let slot = match reject {
            Reject::Malformed => &mut self.malformed,
            Reject::ForeignCluster => &mut self.foreign_cluster,
            Reject::UnknownKey => &mut self.unknown_key,
            Reject::BadTag => &mut self.bad_tag,
            Reject::Replayed => &mut self.replayed,
            Reject::Stale => &mut self.stale,
        };
        *slot += 1;
    }

    /// All dropped packets.
    pub fn dropped(&self) -> u64 {
        self.malformed
            + self.foreign_cluster
            + self.unknown_key
            + self.bad_tag
            + self.replayed
            + self.stale
    }
}

#[derive(Clone)]
struct RingKey {
    id: KeyId,
    cipher: XChaCha20Poly1305,
}

/// Keys derived from one or more cluster secrets: one primary for sending, all accepted on receive.
///
/// Rotation without false deaths: install the new secret on every node, then make it primary on
/// every node, then remove the old one. Between steps every node accepts both. [`crate::Mesh`]
/// automates these steps ([`crate::Mesh::rotate_secret`]). A clone holds the same keys (the
/// multicast beacons follow the mesh's ring this way).
#[derive(Clone)]
pub struct KeyRing {
    cluster_tag: [u8; 8],
    cluster_name: String,
    keys: Vec<RingKey>,
    primary: usize,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("cluster", &self.cluster_name)
            .field("keys", &self.key_ids())
            .field("primary", &self.primary_id())
            .finish()
    }
}

/// The tag that marks packets of one cluster: public, derived from the cluster name only.
pub fn cluster_tag(cluster_name: &str) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(b"kubedna-mesh/v1 cluster tag\0")
        .chain_update(cluster_name.as_bytes())
        .finalize();
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&digest[..8]);
    tag
}

fn derive(cluster_name: &str, secret: &ClusterSecret) -> RingKey {
    let hk = Hkdf::<Sha256>::new(Some(b"kubedna-mesh/v1 salt"), secret.expose());
    let mut key = Zeroizing::new([0u8; 32]);
    let mut id = [0u8; 4];
    let key_info = format!("kubedna-mesh/v1 packet key cluster={cluster_name}");
    let id_info = format!("kubedna-mesh/v1 key id cluster={cluster_name}");
    // Both lengths are far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    hk.expand(key_info.as_bytes(), key.as_mut_slice())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    hk.expand(id_info.as_bytes(), &mut id)
        .unwrap_or_else(|_| unreachable!("4 bytes is a valid HKDF-SHA256 length"));
    let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key.as_slice()));
    RingKey {
        id: KeyId(id),
        cipher,
    }
}

/// The key id `secret` has in cluster `cluster_name` (public: it is in every packet header).
pub fn key_id(cluster_name: &str, secret: &ClusterSecret) -> KeyId {
    derive(cluster_name, secret).id
}

impl KeyRing {
    /// A ring holding one key, derived from `secret` and bound to `cluster_name`, as primary.
    pub fn new(cluster_name: &str, secret: &ClusterSecret) -> Self {
        Self {
            cluster_tag: cluster_tag(cluster_name),
            cluster_name: cluster_name.to_owned(),
            keys: vec![derive(cluster_name, secret)],
            primary: 0,
        }
    }

    /// Accepts packets sealed with the key of `secret` from now on. Idempotent.
    pub fn install(&mut self, secret: &ClusterSecret) -> Result<KeyId, KeyRingError> {
        let key = derive(&self.cluster_name, secret);
        let id = key.id;
        if self.keys.iter().any(|k| k.id == id) {
            return Ok(id);
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(KeyRingError::Full);
        }
        self.keys.push(key);
        Ok(id)
    }

    /// Seals every packet from now on with key `id`, which must be installed.
    pub fn set_primary(&mut self, id: KeyId) -> Result<(), KeyRingError> {
        let index = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or(KeyRingError::NotInstalled(id))?;
        self.primary = index;
        Ok(())
    }

    /// Stops accepting key `id`. The primary key cannot be removed.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyRingError> {
        let index = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or(KeyRingError::NotInstalled(id))?;
        if index == self.primary {
            return Err(KeyRingError::RemovingPrimary(id));
        }
        self.keys.remove(index);
        if index < self.primary {
            self.primary -= 1;
        }
        Ok(())
    }

    /// The ids of every key accepted, in install order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The id of the key packets are sealed with.
    pub fn primary_id(&self) -> KeyId {
        self.keys[self.primary].id
    }

    /// The key id `secret` would have in this cluster.
    pub fn id_of(&self, secret: &ClusterSecret) -> KeyId {
        derive(&self.cluster_name, secret).id
    }
}

#[derive(Debug)]
struct PeerWindow {
    boot: [u8; 16],
    highest: u64,
    seen: u64,
    last_sent_ms: u64,
}

/// Seals and opens packets for one node: key ring, own sending counter, replay windows, counters.
pub struct PacketSecurity {
    ring: KeyRing,
    boot: [u8; 16],
    counter: u64,
    max_skew_ms: u64,
    peers: HashMap<SocketAddr, PeerWindow>,
    counters: SecurityCounters,
}

impl fmt::Debug for PacketSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketSecurity")
            .field("ring", &self.ring)
            .field("counter", &self.counter)
            .field("peers", &self.peers.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// Parsed envelope header fields.
struct Envelope {
    key_id: KeyId,
    boot: [u8; 16],
    counter: u64,
    sent_ms: u64,
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

impl PacketSecurity {
    /// `boot` must be unique per process start (random): it is half of every nonce.
    /// `max_skew_ms` bounds how old (by the sender's clock) an accepted packet may be.
    pub fn new(ring: KeyRing, boot: [u8; 16], max_skew_ms: u64) -> Self {
        Self {
            ring,
            boot,
            counter: 0,
            max_skew_ms,
            peers: HashMap::new(),
            counters: SecurityCounters::default(),
        }
    }

    /// The key ring, to rotate keys at runtime.
    pub fn ring_mut(&mut self) -> &mut KeyRing {
        &mut self.ring
    }

    /// The key ring.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Replaces the key ring (same cluster), keeping the sending counter and replay windows.
    pub fn set_ring(&mut self, ring: KeyRing) {
        self.ring = ring;
    }

    /// Accept and drop counts so far.
    pub fn counters(&self) -> SecurityCounters {
        self.counters
    }

    /// Seals `plaintext` with the primary key. `now_ms` is this node's wall clock.
    pub fn seal(&mut self, plaintext: &[u8], now_ms: u64) -> Vec<u8> {
        self.counter += 1;
        let key = &self.ring.keys[self.ring.primary];
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.ring.cluster_tag);
        out.extend_from_slice(&key.id.0);
        out.extend_from_slice(&self.boot);
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(plaintext);
        let nonce = nonce(&self.boot, self.counter);
        let (aad, body) = out.split_at_mut(HEADER_LEN);
        // Encryption fails only for plaintexts beyond ChaCha20's 256 GiB limit.
        let tag = key
            .cipher
            .encrypt_in_place_detached(&nonce, aad, body)
            .unwrap_or_else(|_| unreachable!("mesh packets are far below the AEAD size limit"));
        out.extend_from_slice(&tag);
        out
    }

    /// Checks and decrypts a packet received from `from`; the error says why it was dropped, and
    /// it has been counted. `now_ms` is this node's wall clock.
    pub fn open(
        &mut self,
        from: SocketAddr,
        packet: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, Reject> {
        let result = self.open_inner(from, packet, now_ms);
        match result {
            Ok(_) => self.counters.accepted += 1,
            Err(reject) => self.counters.count(reject),
        }
        result
    }

    fn open_inner(
        &mut self,
        from: SocketAddr,
        packet: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, Reject> {
        if packet.len() < OVERHEAD || &packet[..4] != MAGIC || packet[4] != VERSION {
            return Err(Reject::Malformed);
        }
        if packet[5..13] != self.ring.cluster_tag {
            return Err(Reject::ForeignCluster);
        }
        let envelope = Envelope {
            key_id: KeyId([packet[13], packet[14], packet[15], packet[16]]),
            boot: {
                let mut boot = [0u8; 16];
                boot.copy_from_slice(&packet[17..33]);
                boot
            },
            counter: be_u64(&packet[33..41]),
            sent_ms: be_u64(&packet[41..49]),
        };
        let key = self
            .ring
            .keys
            .iter()
            .find(|k| k.id == envelope.key_id)
            .ok_or(Reject::UnknownKey)?;
        let (aad, rest) = packet.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut body = ciphertext.to_vec();
        key.cipher
            .decrypt_in_place_detached(
                &nonce(&envelope.boot, envelope.counter),
                aad,
                &mut body,
                Tag::from_slice(tag),
            )
            .map_err(|_| Reject::BadTag)?;
        self.check_fresh(from, &envelope, now_ms)?;
        Ok(body)
    }

    /// Replay and age check, run only on authenticated packets so forged ones cannot move windows.
    fn check_fresh(&mut self, from: SocketAddr, env: &Envelope, now_ms: u64) -> Result<(), Reject> {
        if env.sent_ms.saturating_add(self.max_skew_ms) < now_ms
            || env.sent_ms > now_ms.saturating_add(self.max_skew_ms)
        {
            return Err(Reject::Stale);
        }
        let window = self.peers.entry(from).or_insert(PeerWindow {
            boot: env.boot,
            highest: 0,
            seen: 0,
            last_sent_ms: 0,
        });
        if window.boot != env.boot {
            // A sender that restarted has a new boot id; only a later start replaces the window,
            // so replaying the previous boot's packets does not reset it.
            if env.sent_ms <= window.last_sent_ms {
                return Err(Reject::Replayed);
            }
            *window = PeerWindow {
                boot: env.boot,
                highest: 0,
                seen: 0,
                last_sent_ms: 0,
            };
        }
        if env.counter > window.highest {
            let shift = env.counter - window.highest;
            window.seen = if shift >= WINDOW {
                0
            } else {
                window.seen << shift
            };
            window.seen |= 1;
            window.highest = env.counter;
        } else {
            let age = window.highest - env.counter;
            if age >= WINDOW || window.seen & (1 << age) != 0 {
                return Err(Reject::Replayed);
            }
            window.seen |= 1 << age;
        }
        window.last_sent_ms = window.last_sent_ms.max(env.sent_ms);
        Ok(())
    }
}

fn nonce(boot: &[u8; 16], counter: u64) -> XNonce {
    let mut nonce = [0u8; 24];
    nonce[..16].copy_from_slice(boot);
    nonce[16..].copy_from_slice(&counter.to_be_bytes());
    XNonce::from(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distinct secret per name, padded to the minimum length.
    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(format!("{s}-padded-for-the-tests-to-32-bytes")).expect("long enough")
    }

    fn node(cluster: &str, s: &str, boot: u8) -> PacketSecurity {
        PacketSecurity::new(KeyRing::new(cluster, &secret(s)), [boot; 16], 60_000)
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, i], 7946))
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn round_trip() {
        let mut a = node("prod", "a-very-secret-secret", 1);
        let mut b = node("prod", "a-very-secret-secret", 2);
        let sealed = a.seal(b"hello", NOW);
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(b.open(addr(1), &sealed, NOW).expect("opens"), b"hello");
        assert_eq!(b.counters().accepted, 1);
    }

    #[test]
    fn forged_packets_are_rejected_and_counted() {
        let mut a = node("prod", "a-very-secret-secret", 1);
        let mut b = node("prod", "a-very-secret-secret", 2);
        let sealed = a.seal(b"hello world", NOW);
        // A flipped bit anywhere after the cluster tag and key id fails the tag.
        for i in 17..sealed.len() {
            let mut forged = sealed.clone();
            forged[i] ^= 0x40;
            assert_eq!(
                b.open(addr(1), &forged, NOW),
                Err(Reject::BadTag),
                "byte {i}"
            );
        }
        // An attacker without the secret, with the right cluster name and a guessed key id.
        let mut mallory = node("prod", "not-the-cluster-secret", 9);
        let mut forged = mallory.seal(b"hello world", NOW);
        forged[13..17].copy_from_slice(&sealed[13..17]);
        assert_eq!(b.open(addr(1), &forged, NOW), Err(Reject::BadTag));
        assert_eq!(b.counters().bad_tag, (sealed.len() - 17) as u64 + 1);
        assert_eq!(b.counters().accepted, 0);
    }

    #[test]
    fn wrong_key_is_unknown_key() {
        let mut mallory = node("prod", "not-the-cluster-secret", 9);
        let mut b = node("prod", "a-very-secret-secret", 2);
        let forged = mallory.seal(b"x", NOW);
        assert_eq!(b.open(addr(9), &forged, NOW), Err(Reject::UnknownKey));
        assert_eq!(b.counters().unknown_key, 1);
    }

    #[test]
    fn foreign_cluster_is_rejected_even_with_the_same_secret() {
        let mut other = node("staging", "a-very-secret-secret", 1);
        let mut b = node("prod", "a-very-secret-secret", 2);
        let sealed = other.seal(b"x", NOW);
        assert_eq!(b.open(addr(1), &sealed, NOW), Err(Reject::ForeignCluster));
        // Even with our tag pasted in, the key (bound to the cluster name) differs.
        let mut pasted = sealed.clone();
        pasted[5..13].copy_from_slice(&cluster_tag("prod"));
        assert_eq!(b.open(addr(1), &pasted, NOW), Err(Reject::UnknownKey));
        assert_eq!(b.counters().foreign_cluster, 1);
    }

    #[test]
    fn truncated_packets_are_rejected() {
        let mut a = node("prod", "a-very-secret-secret", 1);
        let mut b = node("prod", "a-very-secret-secret", 2);
        let sealed = a.seal(b"hello world", NOW);
        for len in 0..sealed.len() {
            let got = b.open(addr(1), &sealed[..len], NOW);
            let want = if len < OVERHEAD {
                Reject::Malformed
            } else {
                Reject::BadTag
            };
            assert_eq!(got, Err(want), "len {len}");
        }
        assert_eq!(b.counters().accepted, 0);
    }

    #[test]
    fn replays_are_rejected() {
        let mut a = node("prod", "a-very-secret-secret", 1);
        let mut b = node("prod", "a-very-secret-secret", 2);
        let packets: Vec<_> = (0..100).map(|i| a.seal(&[i], NOW)).collect();
        b.open(addr(1), &packets[50], NOW).expect("fresh");
        assert_eq!(b.open(addr(1), &packets[50], NOW), Err(Reject::Replayed));
        // Out of order within the window is fine, once.
        b.open(addr(1), &packets[40], NOW).expect("in window");
        assert_eq!(b.open(addr(1), &packets[40], NOW), Err(Reject::Replayed));
        b.open(addr(1), &packets[99], NOW).expect("fresh");
        // Now older than the window.
        assert_eq!(b.open(addr(1), &packets[10], NOW), Err(Reject::Replayed));
        assert_eq!(b.counters().replayed, 3);
    }

    #[test]
    fn replay_of_a_previous_boot_does_not_reset_the_window() {
        let mut old = node("prod", "a-very-secret-secret", 1);
        let old_packet = old.seal(b"old", NOW);
        let mut new = node("prod", "a-very-secret-secret", 3);
        let mut b = node("prod", "a-very-secret-secret", 2);
        b.open(addr(1), &old_packet, NOW).expect("fresh");
        b.open(addr(1), &new.seal(b"new", NOW + 5_000), NOW + 5_000)
            .expect("restart");
        assert_eq!(
            b.open(addr(1), &old_packet, NOW + 5_000),
            Err(Reject::Replayed)
        );
    }

    #[test]
    fn old_packets_are_stale() {
        let mut a = node("prod", "a-very-secret-secret", 1);
        let mut b = node("prod", "a-very-secret-secret", 2);
        let sealed = a.seal(b"x", NOW);
        assert_eq!(b.open(addr(1), &sealed, NOW + 61_000), Err(Reject::Stale));
        assert_eq!(b.open(addr(1), &sealed, NOW - 61_000), Err(Reject::Stale));
        assert_eq!(b.counters().stale, 2);
    }

    #[test]
    fn rotation_accepts_both_keys_until_the_old_is_removed() {
        let old = secret("the-old-cluster-secret");
        let new = secret("the-new-cluster-secret");
        let mut a = PacketSecurity::new(KeyRing::new("prod", &old), [1; 16], 60_000);
        let mut b = PacketSecurity::new(KeyRing::new("prod", &old), [2; 16], 60_000);
        let new_id = b.ring_mut().install(&new).expect("room");
        a.ring_mut().install(&new).expect("room");
        a.ring_mut().set_primary(new_id).expect("installed");
        assert_eq!(a.seal(b"x", NOW)[13..17], new_id.0);
        b.open(addr(1), &a.seal(b"x", NOW), NOW)
            .expect("new key accepted");
        let old_id = b.ring().id_of(&old);
        assert_eq!(
            b.ring_mut().remove(old_id),
            Err(KeyRingError::RemovingPrimary(old_id))
        );
        b.ring_mut().set_primary(new_id).expect("installed");
        b.ring_mut().remove(old_id).expect("not primary");
        let mut stale_sender = PacketSecurity::new(KeyRing::new("prod", &old), [4; 16], 60_000);
        assert_eq!(
            b.open(addr(4), &stale_sender.seal(b"x", NOW), NOW),
            Err(Reject::UnknownKey)
        );
    }

    #[test]
    fn debug_output_holds_no_key_material() {
        let s = "a-very-secret-secret";
        let sec = node("prod", s, 1);
        let shown = format!("{sec:?}");
        assert!(!shown.contains(s));
        assert!(shown.contains("KeyId("));
    }
}
