//! Failure detection around foca: the timer wheel's firing (with stall awareness), Lifeguard's
//! suspicion timers (confirmations, the pause tolerance, silence counted from the failed ping),
//! the refutation of claims about ourselves, and what foca's notifications mean for our view.
//! It must never let a suspicion end before the pause tolerance.

use super::*;

impl Mesh {
    /// Runs every timer due at `now`.
    ///
    /// With Lifeguard, timers that run much later than due reveal that this node stalled (GC,
    /// stolen CPU, a frozen VM). Then it does not judge peers on them: it refutes the suspicion
    /// its silence has likely raised, and defers its probe and suspicion timers by one probe RTT
    /// so that what arrived during the stall is read first.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late = self
            .poll_timeout()
            .map_or(Duration::ZERO, |due| now.saturating_duration_since(due));
        let stalled = self.cfg.lifeguard.is_some() && late > self.cfg.probe_period / 2;
        if stalled {
            self.on_stall(late, now);
        }
        for (to, frame) in self.requests.on_timeout(now) {
            self.send_app(to, &frame, now);
        }
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(kind) = self.timer_kinds.remove(&seq) else {
                continue;
            };
            let judges_peers = matches!(
                kind,
                TimerKind::Suspicion(_)
                    | TimerKind::Foca(
                        Timer::ProbeRandomMember(_)
                            | Timer::SendIndirectProbe { .. }
                            | Timer::ChangeSuspectToDown { .. }
                    )
            );
            if stalled && judges_peers {
                self.schedule(now + self.cfg.probe_rtt, kind);
            } else {
                self.fire(kind, now);
            }
        }
    }

    /// We were frozen for at least `late`. Our own suspicions do not count that time: while
    /// frozen we could not spread them, so their suspects could not hear of them and refute,
    /// and a resumed node must not declare a live peer down on a stale timer.
    pub(super) fn on_stall(&mut self, late: Duration, now: Instant) {
        self.stalls += 1;
        self.count_refutation(u32::from(self.own_incarnation));
        self.judge_after = Some(now + self.cfg.probe_rtt);
        for s in self.suspicions.values_mut() {
            s.started += late;
        }
        if !self.connected || self.left {
            return;
        }
        // Applying a suspicion of ourselves at our own incarnation makes foca refute it: bump the
        // incarnation (every packet we send now refutes) and gossip.
        let me = Member::new(self.id(), self.own_incarnation, State::Suspect);
        let mut rt = Collector::default();
        let _ = self.foca.apply_many(std::iter::once(me), true, &mut rt);
        self.drain(rt, now);
    }

    /// Counts against our health that we had to refute a suspicion of our `incarnation` (Lifeguard,
    /// as memberlist's `refute`): once per incarnation. One freeze brings a claim from every
    /// member that probed us, and the refutation of our own stall before them; counting each
    /// would slow our probing for tens of seconds after a few pauses, and with it every
    /// confirmation we owe a real crash.
    pub(super) fn count_refutation(&mut self, incarnation: u32) {
        if self.cfg.lifeguard.is_some() && incarnation >= self.refuted_below {
            self.refuted_below = incarnation + 1;
            self.health.refuted();
        }
    }

    /// How many stalls of this node Lifeguard noticed.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    pub(super) fn foca_timer(&mut self, timer: Timer<NodeId>, now: Instant) {
        if let Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = &timer
        {
            // foca 2.0 sends TurnUndead to the member even when it refuted the suspicion in the
            // meantime (the incarnation check fails but the courtesy message still goes out),
            // which forces a live node to rejoin under a new identity. Only hand foca timers
            // for suspicions that still stand.
            let stands = self.foca.iter_membership_state().any(|m| {
                m.id() == member_id
                    && m.incarnation() == *incarnation
                    && m.state() == State::Suspect
            });
            if !stands {
                return;
            }
        }
        let mut rt = Collector::default();
        let _ = self.foca.handle_timer(timer, &mut rt);
        self.drain(rt, now);
    }

    /// Someone claims we are suspect. At our current incarnation: refute (foca bumps it and
    /// gossips). At an older one, the claimer missed our last refutation and the cluster will not
    /// relay its stale suspicion back to us. Either way the claimers also hear it directly: an
    /// announce carries our current incarnation in its header.
    pub(super) fn answer_claim(&mut self, incarnation: Incarnation, now: Instant) {
        if self.left || self.leaving {
            return;
        }
        self.count_refutation(u32::from(incarnation));
        let mut rt = Collector::default();
        if incarnation >= self.own_incarnation {
            let me = Member::new(self.id(), incarnation, State::Suspect);
            let _ = self.foca.apply_many(std::iter::once(me), true, &mut rt);
        }
        // Gossip may not bring the refutation back to the suspecters in time (or at all, for a
        // stale suspicion): tell them directly.
        let claimers = lock(&self.shared)
            .claims
            .get(&(self.id(), incarnation))
            .cloned()
            .unwrap_or_default();
        for addr in claimers.into_iter().filter(|a| *a != self.cfg.addr) {
            let _ = self.foca.announce(NodeId::new(addr), &mut rt);
        }
        self.drain(rt, now);
    }

    pub(super) fn on_foca_timer(&mut self, after: Duration, timer: Timer<NodeId>, now: Instant) {
        let lifeguard = self.cfg.lifeguard.is_some();
        match timer {
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } if lifeguard => {
                let at = now + self.health.scale(after);
                self.schedule(at, TimerKind::Foca(timer));
            }
            Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } if lifeguard => {
                let fresh = self
                    .suspicions
                    .get(&member_id)
                    .is_none_or(|s| s.incarnation != incarnation);
                if fresh {
                    let started = self.silent_since(member_id.addr, now);
                    self.suspicions.insert(
                        member_id,
                        Suspicion {
                            incarnation,
                            started,
                            foca_timer: timer,
                        },
                    );
                }
                self.check_suspicion(member_id, now);
            }
            _ => self.schedule(now + after, TimerKind::Foca(timer)),
        }
    }

    /// Since when `addr` is known to be silent. When our own direct probe of it just failed,
    /// that is one probe RTT after the ping left: a node that answers within the RTT was frozen
    /// (or gone) by then. foca notices only at the end of the probe period, which would add its
    /// wait for indirect acks to every crash's detection. Otherwise (a suspicion we heard of),
    /// `now`.
    pub(super) fn silent_since(&self, addr: SocketAddr, now: Instant) -> Instant {
        let window = self.health.scale(self.cfg.probe_period) + self.cfg.probe_rtt;
        self.pings
            .iter()
            .rev()
            .find(|(a, _, sent)| *a == addr && now.saturating_duration_since(*sent) <= window)
            .map_or(now, |(_, _, sent)| (*sent + self.cfg.probe_rtt).min(now))
    }

    /// Fires the suspicion if its confirmation-shrunk timeout has passed, else re-arms it.
    pub(super) fn check_suspicion(&mut self, id: NodeId, now: Instant) {
        let Some(lg) = self.cfg.lifeguard.clone() else {
            return;
        };
        let Some(s) = self.suspicions.get(&id) else {
            return;
        };
        let confirmations = lock(&self.shared)
            .claims
            .get(&(id, s.incarnation))
            .map_or(0, |from| {
                from.iter().filter(|a| **a != self.cfg.addr).count()
            });
        let timeout = lifeguard::suspicion_timeout(
            &lg,
            self.cluster_size(),
            self.cfg.probe_period,
            self.cfg.pause_tolerance,
            confirmations as u32,
        );
        // A packet from the suspect after our suspicion began shows it was not frozen yet: its
        // silence, which a pause must not outlast, started later.
        let heard = self.peers.get(&id.addr).and_then(|p| p.last_heard);
        let mut deadline = s.started.max(heard.unwrap_or(s.started)) + timeout;
        if let Some(after) = self.judge_after.filter(|after| *after > now) {
            deadline = deadline.max(after);
        }
        if now >= deadline {
            if let Some(s) = self.suspicions.remove(&id) {
                self.foca_timer(s.foca_timer, now);
            }
        } else {
            self.schedule(deadline, TimerKind::Suspicion(id));
        }
    }

    pub(super) fn on_notification(&mut self, note: foca::OwnedNotification<NodeId>, now: Instant) {
        use foca::OwnedNotification as N;
        match note {
            N::MemberUp(id) => {
                self.known_addrs.insert(id.addr);
                self.events.push_back(Event::MemberUp(id));
            }
            N::MemberDown(id) => {
                self.suspicions.remove(&id);
                let left = lock(&self.shared)
                    .metas
                    .get(&id.addr)
                    .is_some_and(|r| r.id == id && r.meta.state == NodeState::Leaving);
                let reason = if left {
                    DownReason::Left
                } else {
                    DownReason::Failed
                };
                self.events.push_back(Event::MemberDown(id, reason));
            }
            N::Rename(..) => {}
            N::Active => {
                self.connected = true;
                self.reannounce_delay = self.cfg.reannounce_min;
                self.events.push_back(Event::Joined);
                // Catch up on metadata gossiped before we joined.
                self.start_sync(now);
            }
            N::Idle => {
                self.connected = false;
                if !self.left && !self.leaving {
                    self.events.push_back(Event::Isolated);
                    self.arm_reannounce(now);
                }
            }
            N::Defunct => {
                self.connected = false;
            }
            N::Rejoin(id) => {
                self.events.push_back(Event::Rejoined(id));
                self.own_meta.version += 1;
                self.publish_meta(now);
            }
            N::DataSent(header) => {
                self.own_incarnation = header.src_incarnation;
                if let Message::Ping(n) = header.message {
                    self.pings.push_back((header.dst.addr, n, now));
                    if self.pings.len() > 16 {
                        self.pings.pop_front();
                    }
                }
            }
            N::DataReceived(header) => match header.message {
                Message::Ack(n) => {
                    let from = header.src.addr;
                    if let Some(pos) = self
                        .pings
                        .iter()
                        .position(|(a, p, _)| *a == from && *p == n)
                    {
                        let (_, _, sent) = self.pings.remove(pos).unwrap_or((from, n, now));
                        self.peers.entry(from).or_default().rtt = Some(now - sent);
                        self.health.probe_succeeded();
                    }
                }
                Message::ForwardedAck { .. } => self.health.probe_succeeded(),
                _ => {}
            },
            N::ProbeFailed(_, id) => {
                if self.cfg.lifeguard.is_some() {
                    self.health.probe_failed();
                    let incarnation = self
                        .foca
                        .iter_membership_state()
                        .find(|m| m.id() == &id)
                        .map(|m| m.incarnation());
                    let enough = incarnation.is_some_and(|inc| {
                        lock(&self.shared)
                            .claims
                            .get(&(id, inc))
                            .is_some_and(|c| c.len() >= MAX_CLAIMERS)
                    });
                    if let Some(incarnation) = incarnation.filter(|_| !enough) {
                        let item = Item::Suspect {
                            target: id,
                            incarnation,
                            from: self.id(),
                        };
                        if let Ok(bytes) = postcard::to_allocvec(&item) {
                            let _ = self.foca.add_broadcast(&bytes);
                        }
                    }
                }
            }
        }
    }

    /// Forgets suspicion claims that no longer match a suspect member.
    pub(super) fn housekeeping(&mut self) {
        let current: HashMap<NodeId, (Incarnation, State)> = self
            .foca
            .iter_membership_state()
            .map(|m| (*m.id(), (m.incarnation(), m.state())))
            .collect();
        lock(&self.shared).claims.retain(|(target, inc), _| {
            current
                .get(target)
                .is_some_and(|(i, s)| i == inc && *s == State::Suspect)
        });
    }
}
