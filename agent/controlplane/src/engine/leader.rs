//! Leadership once formed: the campaign, the leader's [`crate::duties`] run under its term and
//! dropped the moment the term is lost, and a follower's judgement that the leader's node is
//! gone from the mesh (emptying its seat by a term-guarded delete). Never acts for a term it
//! does not hold.

use super::*;

impl<P: Peers, S: Systemd + 'static, K: Kubeadm, C: Clock> Engine<P, S, K, C> {
    pub(super) async fn refresh_members(&self, coord: &Coordinator) {
        if let Ok(members) = coord.members().await {
            lock(&self.shared.status).etcd_members = members
                .iter()
                .map(|m| EtcdMemberStatus {
                    name: m.name.clone(),
                    id: format!("{:x}", m.id),
                    learner: m.learner,
                })
                .collect();
        }
    }

    fn lost_term(&self, term: i64, why: &str) {
        let args = serde_json::json!({ "term": term });
        self.actions().record("leader.lost", why, args, Ok(()));
    }

    pub(super) fn coordinator(&self) -> Option<Coordinator> {
        lock(&self.shared.coord).clone()
    }

    /// Campaigns; while leading, keeps the join material fresh; while not, follows the leader.
    pub(super) async fn lead_or_follow(&self) -> Result<(), EngineError> {
        let Some(coord) = self.coordinator() else {
            return Ok(());
        };
        let ttl = self.cfg().timings.lease_ttl;
        let campaign = coord.campaign(&self.cfg().node, ttl).await;
        if campaign.is_err() {
            // Unreachable etcd: who leads is unknown here; do not keep showing the old leader.
            lock(&self.shared.status).leader = None;
        }
        match campaign.map_err(self.coord_err("the leader campaign failed"))? {
            Some(mut leadership) => {
                let term = leadership.term;
                tracing::info!(node = %self.cfg().node, term, "leading");
                self.actions().record(
                    "leader.won",
                    "the leader seat was empty; this control plane's campaign took it",
                    serde_json::json!({ "term": term }),
                    Ok(()),
                );
                lock(&self.shared.status).leader = Some(LeaderStatus {
                    name: self.node(),
                    term,
                });
                loop {
                    // The seat may have been emptied under us (a follower that saw this node
                    // gone from the mesh): then this term is over, whatever the lease says.
                    if let Ok(seat) = coord.leader().await {
                        if seat.as_ref().map(|(_, t)| *t) != Some(term) {
                            tracing::warn!(node = %self.cfg().node, term, "leader seat lost");
                            self.lost_term(term, "the seat in etcd no longer holds this term");
                            lock(&self.shared.status).leader = None;
                            return Ok(());
                        }
                    }
                    // The duty ends the moment the seat is gone (lease expired, seat emptied or
                    // taken): dropping it stops its kubeadm call, so nothing of this term
                    // completes after a new term exists.
                    let duty = tokio::select! {
                        biased;
                        () = leadership.lost() => {
                            tracing::warn!(node = %self.cfg().node, term, "leadership lost during a duty; stopped it");
                            self.lost_term(term, "the lease ran out or the seat was taken during a duty; the duty was stopped");
                            lock(&self.shared.status).leader = None;
                            self.after_term().await;
                            return Ok(());
                        }
                        r = self.duties.run(Term { coord: &coord, term, actions: self.actions() }) => r,
                    };
                    match duty {
                        Ok(()) => lock(&self.shared.status).last_error = None,
                        Err(errors) => {
                            let stale = errors.iter().any(DutyError::is_stale);
                            let mut errors: Vec<EngineError> = errors
                                .into_iter()
                                .map(|source| EngineError::Duty {
                                    node: self.node(),
                                    source: Box::new(source),
                                })
                                .collect();
                            if stale {
                                // A newer term holds the seat: this term is over.
                                self.lost_term(term, "a duty's fenced write found a newer term");
                                lock(&self.shared.status).leader = None;
                                return Err(errors.remove(0));
                            }
                            let text: Vec<String> = errors
                                .iter()
                                .map(|e| kubedna_host::error_chain(e))
                                .collect();
                            lock(&self.shared.status).last_error = Some(text.join("; "));
                        }
                    }
                    self.refresh_members(&coord).await;
                    tokio::select! {
                        _ = leadership.lost() => {
                            tracing::warn!(node = %self.cfg().node, term, "leadership lost");
                            self.lost_term(term, "the lease ran out or the seat was taken");
                            lock(&self.shared.status).leader = None;
                            self.after_term().await;
                            return Ok(());
                        }
                        _ = self.clock.sleep(self.cfg().timings.poll * 2) => {}
                    }
                }
            }
            None => {
                let leader = coord
                    .leader()
                    .await
                    .map_err(self.coord_err("cannot read the leader"))?;
                if let Some((r, term)) = &leader {
                    if self.leader_gone(&r.node, *term)
                        && coord
                            .vacate(*term)
                            .await
                            .map_err(self.coord_err("cannot empty the leader seat"))?
                    {
                        tracing::warn!(node = %self.cfg().node, leader = %r.node, term,
                            "the leader's node is gone from the mesh: emptied its seat");
                        self.actions().record(
                            "leader.vacate",
                            "the leader's node is gone from the mesh",
                            serde_json::json!({ "leader": r.node, "term": term }),
                            Ok(()),
                        );
                        lock(&self.shared.status).leader = None;
                        return Ok(());
                    }
                }
                lock(&self.shared.status).leader =
                    leader.map(|(r, term)| LeaderStatus { name: r.node, term });
                self.refresh_members(&coord).await;
                tokio::select! {
                    r = coord.wait_vacant() => r.map_err(self.coord_err("cannot watch the leader"))?,
                    _ = self.clock.sleep(self.cfg().timings.poll * 2) => {}
                }
                Ok(())
            }
        }
    }

    /// A node whose term just ended (its seat emptied by followers that saw it gone from the
    /// mesh, typically) waits a pass before it campaigns again: the followers, woken by the
    /// delete, take the seat first, instead of the node that was judged gone taking it back
    /// at once.
    pub(super) async fn after_term(&self) {
        self.clock.sleep(self.cfg().timings.poll * 2).await;
    }

    /// Whether the leader's node (seat held under `term`) is gone as far as the mesh can tell,
    /// by the [`crate::takeover`] rule: seen alive during this term, declared down by the mesh
    /// now (a suspect is not enough: the mesh keeps a paused node suspect up to its pause
    /// tolerance), while this node sees a majority of the control-plane set alive (itself
    /// included). The majority rule keeps a node cut off from the mesh from emptying seats;
    /// having seen the leader alive keeps a node whose mesh has not converged yet (just started)
    /// from it.
    pub(super) fn leader_gone(&self, node: &str, term: i64) -> bool {
        use crate::takeover::{empty_the_seat, Facts, LeaderLiveness, Sightings};
        let alive = self.peers.alive();
        let now = if alive.iter().any(|p| p.name == node) {
            LeaderLiveness::Alive
        } else if self.peers.suspect().iter().any(|p| p == node) {
            LeaderLiveness::Suspect
        } else {
            LeaderLiveness::Down
        };
        let mut slot = lock(&self.sightings);
        Sightings::observe(&mut slot, node, term, now);
        let set = self.set();
        empty_the_seat(&Facts {
            own_seat: node == self.cfg().node,
            seen_alive_this_term: slot.as_ref().is_some_and(|s| s.seen_alive),
            leader: now,
            control_planes_alive: 1 + alive.iter().filter(|p| set.contains(&p.name)).count(),
            quorum: set.quorum(),
        })
    }
}
