//! Push/pull anti-entropy: the periodic full-state exchange (members and a metadata digest)
//! with one random member, its interval scaled with the cluster as memberlist does, and the
//! three-message exchange that gives each side the metadata it lacks.

use super::*;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SyncState {
    pub(super) members: Vec<Member<NodeId>>,
    pub(super) meta_versions: Vec<(NodeId, u64)>,
    pub(super) metas: Vec<MetaRecord>,
}

impl Mesh {
    pub(super) fn push_pull_interval(&self) -> Duration {
        // memberlist's pushPullScale: one more interval per doubling above 32 members.
        let n = self.cluster_size() as f64;
        let mult = if n <= 32.0 {
            1.0
        } else {
            (n.log2() - 32f64.log2()).ceil() + 1.0
        };
        self.cfg.push_pull_interval.mul_f64(mult)
    }

    pub(super) fn snapshot(
        &self,
        metas_for: Option<&HashMap<SocketAddr, (u16, u64)>>,
    ) -> SyncState {
        let shared = lock(&self.shared);
        let members: Vec<Member<NodeId>> = self
            .foca
            .iter_membership_state()
            .cloned()
            .chain(std::iter::once(Member::new(self.id(), 0, State::Alive)))
            .collect();
        // Sorted so a simulated run does not depend on hash order.
        let mut meta_versions: Vec<(NodeId, u64)> =
            shared.metas.values().map(|r| (r.id, r.version)).collect();
        meta_versions.sort_unstable_by_key(|(id, _)| id.addr);
        let metas = match metas_for {
            None => Vec::new(),
            Some(theirs) => shared
                .metas
                .values()
                .filter(|r| {
                    theirs
                        .get(&r.id.addr)
                        .is_none_or(|rank| (r.id.generation, r.version) > *rank)
                })
                .cloned()
                .collect(),
        };
        let mut metas = metas;
        metas.sort_unstable_by_key(|r| r.id.addr);
        SyncState {
            members,
            meta_versions,
            metas,
        }
    }

    pub(super) fn start_sync(&mut self, now: Instant) {
        let candidates: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        if candidates.is_empty() {
            return;
        }
        let to = candidates[self.rng.random_range(0..candidates.len())];
        let state = self.snapshot(None);
        if let Ok(bytes) = postcard::to_allocvec(&state) {
            self.send_body(to, KIND_SYNC_REQ, &bytes, true, now);
        }
    }

    pub(super) fn handle_sync(
        &mut self,
        kind: u8,
        from: SocketAddr,
        state: SyncState,
        now: Instant,
    ) {
        let SyncState {
            members,
            meta_versions,
            metas,
        } = state;
        if !members.is_empty() {
            let mut rt = Collector::default();
            let me = self.id();
            let known: HashMap<NodeId, (Incarnation, State)> = self
                .foca
                .iter_membership_state()
                .map(|m| (*m.id(), (m.incarnation(), m.state())))
                .collect();
            let mine: Vec<Member<NodeId>> = members
                .into_iter()
                .filter(|m| known.get(m.id()) != Some(&(m.incarnation(), m.state())))
                .filter(|m| {
                    if m.id().addr == me.addr && m.state() == State::Suspect {
                        self.suspected_upto
                            .fetch_max(u32::from(m.incarnation()) + 1, Ordering::Relaxed);
                    }
                    // Our own entry (incarnation 0) in a peer's list is no news.
                    !(m.id() == &me && m.state() == State::Alive)
                })
                .collect();
            let _ = self.foca.apply_many(mine.into_iter(), true, &mut rt);
            self.drain(rt, now);
        }
        {
            let mut shared = lock(&self.shared);
            for record in metas {
                shared.merge_meta(record);
            }
        }
        let theirs: HashMap<SocketAddr, (u16, u64)> = meta_versions
            .into_iter()
            .map(|(id, v)| (id.addr, (id.generation, v)))
            .collect();
        match kind {
            KIND_SYNC_REQ => {
                let reply = self.snapshot(Some(&theirs));
                if let Ok(bytes) = postcard::to_allocvec(&reply) {
                    self.send_body(from, KIND_SYNC_RESP, &bytes, true, now);
                }
            }
            KIND_SYNC_RESP => {
                let missing = self.snapshot(Some(&theirs)).metas;
                if !missing.is_empty() {
                    let state = SyncState {
                        members: Vec::new(),
                        meta_versions: Vec::new(),
                        metas: missing,
                    };
                    if let Ok(bytes) = postcard::to_allocvec(&state) {
                        self.send_body(from, KIND_SYNC_METAS, &bytes, true, now);
                    }
                }
            }
            _ => {}
        }
        self.drain(Collector::default(), now);
    }
}
