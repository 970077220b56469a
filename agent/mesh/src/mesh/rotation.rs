//! Key rotation without a restart and without false deaths: installing a new cluster key,
//! promoting it once every live member accepts it, and retiring the others after the grace
//! period (see [`Mesh::rotate_secret`]). It never exposes key material, only key ids.

use super::*;

/// The key ring as the admin sees it: key ids only, never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Every key accepted, in install order.
    pub keys: Vec<KeyId>,
    /// The key packets are sealed with.
    pub primary: KeyId,
    /// A rotation in progress, if any.
    pub rotation: Option<RotationStatus>,
}

/// A key rotation in progress (see [`Mesh::rotate_secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationStatus {
    /// The key being rotated to.
    pub target: KeyId,
    /// Time left until the other keys stop being accepted (and `target` becomes primary if it
    /// is not yet).
    pub retire_in: Duration,
    /// Live members that do not accept `target` yet: while any is left, we keep sending with
    /// the old primary so they can still read us.
    pub waiting_for: Vec<NodeId>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rotation {
    pub(super) target: KeyId,
    pub(super) retire_at: Instant,
}

impl Mesh {
    /// Key ring, to install, promote and remove keys by hand (tests, simulations). The daemon
    /// uses [`Mesh::rotate_secret`], which also tells peers which keys we accept.
    pub fn key_ring_mut(&mut self) -> &mut KeyRing {
        self.security.ring_mut()
    }

    /// The key ring (a clone holds the same keys: the multicast beacons follow it).
    pub fn key_ring(&self) -> &KeyRing {
        self.security.ring()
    }

    /// Rotates to the key of `secret` without a restart and without false deaths:
    ///
    /// 1. the new key is installed at once (we accept old and new) and gossiped in our metadata
    ///    as accepted;
    /// 2. we keep sealing with the old primary until every live member lists the new key as
    ///    accepted (so a peer not rotated yet can still read us), then seal with the new one;
    /// 3. after `grace`, every other key is removed (and the new key made primary if some
    ///    member never took it): a node that still has only an old key can no longer talk to us,
    ///    is failed by the detector, and its packets are dropped as `unknown_key`.
    ///
    /// Rotating again before the grace period ends starts over towards the newest key (the ring
    /// holds at most [`crate::security::MAX_KEYS`]; the oldest retiring key makes room).
    /// Rotating to the key already primary with nothing retiring changes nothing.
    pub fn rotate_secret(
        &mut self,
        secret: &ClusterSecret,
        grace: Duration,
        now: Instant,
    ) -> Result<KeyId, KeyRingError> {
        let ring = self.security.ring_mut();
        let target = ring.id_of(secret);
        let ids = ring.key_ids();
        if ids == [target] {
            return Ok(target);
        }
        if !ids.contains(&target) && ids.len() >= crate::security::MAX_KEYS {
            let primary = ring.primary_id();
            if let Some(oldest) = ids.iter().copied().find(|id| *id != primary) {
                ring.remove(oldest)?;
            }
        }
        ring.install(secret)?;
        let retire_at = now + grace;
        self.rotation = Some(Rotation { target, retire_at });
        self.schedule(retire_at, TimerKind::RetireKeys);
        self.publish_keys(now);
        self.check_rotation(now);
        Ok(target)
    }

    /// The key ring's ids, the primary and the rotation in progress.
    pub fn key_status(&self, now: Instant) -> KeyStatus {
        let ring = self.security.ring();
        KeyStatus {
            keys: ring.key_ids(),
            primary: ring.primary_id(),
            rotation: self.rotation.map(|r| RotationStatus {
                target: r.target,
                retire_in: r.retire_at.saturating_duration_since(now),
                waiting_for: self.lacking_key(r.target),
            }),
        }
    }

    /// Live members whose metadata does not list `key` as accepted (or has not arrived).
    pub(super) fn lacking_key(&self, key: KeyId) -> Vec<NodeId> {
        let shared = lock(&self.shared);
        let mut out: Vec<NodeId> = self
            .foca
            .iter_members()
            .map(|m| *m.id())
            .filter(|id| {
                shared
                    .metas
                    .get(&id.addr)
                    .is_none_or(|r| !r.keys.contains(&key))
            })
            .collect();
        out.sort();
        out
    }

    /// Promotes the rotation's key once every live member accepts it (or the grace period is
    /// over), and retires the other keys when the grace period is over.
    pub(super) fn check_rotation(&mut self, now: Instant) {
        let Some(rotation) = self.rotation else {
            return;
        };
        let expired = now >= rotation.retire_at;
        let mut changed = false;
        if self.security.ring().primary_id() != rotation.target
            && (expired || self.lacking_key(rotation.target).is_empty())
            && self
                .security
                .ring_mut()
                .set_primary(rotation.target)
                .is_ok()
        {
            self.events.push_back(Event::KeyPromoted(rotation.target));
            changed = true;
        }
        if expired {
            let ring = self.security.ring_mut();
            let retired: Vec<KeyId> = ring
                .key_ids()
                .into_iter()
                .filter(|id| *id != rotation.target)
                .collect();
            for id in &retired {
                // Only the primary cannot be removed, and the target is the primary by now.
                let _ = ring.remove(*id);
            }
            self.rotation = None;
            if !retired.is_empty() {
                self.events.push_back(Event::KeysRetired(retired));
                changed = true;
            }
        }
        if changed {
            self.publish_keys(now);
        }
    }

    pub(super) fn publish_keys(&mut self, now: Instant) {
        let keys = self.security.ring().key_ids();
        if self.own_meta.keys != keys {
            self.own_meta.keys = keys;
            self.own_meta.version += 1;
            self.publish_meta(now);
        }
    }
}
