//! What we piggyback on foca's gossip and how we watch it: the custom broadcast items (metadata
//! records and Lifeguard suspicion claims) with their merge rules, the state foca's broadcast
//! handler shares with the core, the codec that notices suspicions of ourselves, and the filter
//! that drops membership updates already handed to foca. It never sends anything itself.

use super::*;

/// What travels in foca custom broadcasts.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Item {
    Meta(MetaRecord),
    Suspect {
        target: NodeId,
        incarnation: Incarnation,
        from: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ItemKey {
    Meta { addr: SocketAddr, rank: (u16, u64) },
    Suspect(NodeId, Incarnation, NodeId),
}

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (ItemKey::Meta { addr, rank }, ItemKey::Meta { addr: a, rank: r }) => {
                addr == a && rank >= r
            }
            (a @ ItemKey::Suspect(..), b @ ItemKey::Suspect(..)) => a == b,
            _ => false,
        }
    }
}

/// Suspicion claims kept per member and incarnation: Lifeguard's K (3) others plus our own.
pub(super) const MAX_CLAIMERS: usize = 5;

/// State shared between the mesh and foca's broadcast handler (which foca owns).
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) metas: HashMap<SocketAddr, MetaRecord>,
    pub(super) new_metas: Vec<MetaRecord>,
    /// Who claimed to suspect a member at an incarnation (a handful at most: see `MAX_CLAIMERS`).
    pub(super) claims: HashMap<(NodeId, Incarnation), Vec<SocketAddr>>,
    pub(super) new_claims: Vec<(NodeId, Incarnation)>,
}

impl Shared {
    pub(super) fn merge_meta(&mut self, record: MetaRecord) -> bool {
        let newer = match self.metas.get(&record.id.addr) {
            Some(known) => record.newer_than(known),
            None => true,
        };
        if newer {
            self.new_metas.push(record.clone());
            self.metas.insert(record.id.addr, record);
        }
        newer
    }
}

#[derive(Debug)]
pub(super) struct Handler(pub(super) Arc<Mutex<Shared>>);

#[derive(Debug, thiserror::Error)]
#[error("undecodable broadcast item")]
pub(super) struct BadItem(#[source] postcard::Error);

pub(super) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Nothing panics while holding the lock; a poisoned lock still holds consistent data.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BroadcastHandler<NodeId> for Handler {
    type Key = ItemKey;
    type Error = BadItem;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<ItemKey>, BadItem> {
        let item: Item = postcard::from_bytes(data).map_err(BadItem)?;
        let mut shared = lock(&self.0);
        Ok(match item {
            Item::Meta(record) => {
                let key = ItemKey::Meta {
                    addr: record.id.addr,
                    rank: (record.id.generation, record.version),
                };
                shared.merge_meta(record).then_some(key)
            }
            Item::Suspect {
                target,
                incarnation,
                from,
            } => {
                let claimers = shared.claims.entry((target, incarnation)).or_default();
                // Past K+1 claimers every suspicion is at its minimum: more claims change nothing,
                // so they are neither kept nor passed on.
                let fresh = claimers.len() < MAX_CLAIMERS && !claimers.contains(&from.addr);
                if fresh {
                    claimers.push(from.addr);
                    shared.new_claims.push((target, incarnation));
                }
                fresh.then_some(ItemKey::Suspect(target, incarnation, from))
            }
        })
    }
}

/// foca's postcard codec, noticing when a peer gossips that we are suspect (we then refute it,
/// which Lifeguard counts against our own health).
#[derive(Debug)]
pub(super) struct ObservingCodec {
    pub(super) me: SocketAddr,
    /// One more than the highest incarnation of ours seen claimed suspect.
    pub(super) suspected_upto: Arc<AtomicU32>,
}

impl Codec<NodeId> for ObservingCodec {
    type Error = postcard::Error;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_header(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeId>, Self::Error> {
        PostcardCodec.decode_header(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_member(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeId>, Self::Error> {
        let member: Member<NodeId> = PostcardCodec.decode_member(buf)?;
        if member.id().addr == self.me && member.state() == State::Suspect {
            self.suspected_upto
                .fetch_max(u32::from(member.incarnation()) + 1, Ordering::Relaxed);
        }
        Ok(member)
    }
}

impl Mesh {
    /// Removes from a foca packet the membership updates already handed to foca once.
    ///
    /// SWIM's merge is idempotent, so a repeat changes nothing; but foca finds a member by a
    /// linear scan, and while 1,000 nodes join each update arrives a dozen times at every node.
    /// Returns `None` when nothing was removed (or the packet is foca's to reject).
    pub(super) fn drop_known_updates(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let mut rest = payload;
        let header: Header<NodeId> = PostcardCodec.decode_header(&mut rest).ok()?;
        if header.message == Message::Broadcast || rest.len() < 2 {
            return None;
        }
        let header_len = payload.len() - rest.len();
        let count = rest.get_u16();
        if count < 4 {
            // Steady state: a few updates cost less to apply than to filter.
            return None;
        }
        // foca ignores the updates of a packet not addressed to our current identity or sent by
        // a member it holds down: those must not be remembered as handed over.
        if header.dst != self.id() || !self.foca.iter_members().any(|m| m.id() == &header.src) {
            return None;
        }
        let mut kept: Vec<&[u8]> = Vec::with_capacity(usize::from(count));
        let mut dropped = false;
        for _ in 0..count {
            let before = rest;
            let member: Member<NodeId> = PostcardCodec.decode_member(&mut rest).ok()?;
            let raw = &before[..before.len() - rest.len()];
            let key = (*member.id(), member.incarnation(), member.state() as u8);
            if self.seen_updates.insert(key) {
                kept.push(raw);
            } else {
                dropped = true;
            }
        }
        if !dropped {
            return None;
        }
        if self.seen_updates.len() > 8 * (self.cluster_size() + 64) {
            // Forgetting costs only the scans this cache saves.
            self.seen_updates.clear();
        }
        let mut out = Vec::with_capacity(payload.len());
        out.extend_from_slice(&payload[..header_len]);
        out.put_u16(kept.len() as u16);
        for raw in kept {
            out.extend_from_slice(raw);
        }
        out.extend_from_slice(rest);
        Some(out)
    }
}
