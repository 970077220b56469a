//! The takeover rule: when a control-plane follower may empty the leader's seat before the
//! leader's lease runs out, from what its mesh shows of the leader's node. Pure logic, no I/O;
//! the engine feeds it what it observes at each pass (`engine/leader.rs`).
//!
//! The rule waits for the mesh's verdict, `Down`, and never acts on `Suspect`: a suspect is a
//! node that went silent but has not yet been silent longer than the mesh's pause tolerance
//! (`mesh.pauseToleranceSeconds`), which is exactly a frozen VM or a stopped process. Emptying
//! the seat then would change leaders for a pause the rest of the cluster rides out. Safety does
//! not depend on this rule (every leader write is fenced by term); it decides only how soon a
//! dead leader is replaced and whether a paused one is replaced needlessly. The argument is in
//! docs/control-plane.md, section 3. This module must never read a clock, the mesh or etcd.

/// How this follower's mesh shows the leader's node right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderLiveness {
    /// Alive: it answered lately.
    Alive,
    /// Suspected: silent, but not yet past the mesh's pause tolerance. A paused node is here
    /// until it speaks again.
    Suspect,
    /// Declared down by the mesh (failed or left), or no longer listed at all.
    Down,
}

/// What the follower has seen of the leader's node during the leader's current term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sightings {
    pub node: String,
    pub term: i64,
    /// Whether this follower saw the leader's node alive during this term.
    pub seen_alive: bool,
}

impl Sightings {
    /// Records one observation of the leader's node `node`, seat held under `term`. A new
    /// leader or a new term starts a new record: sightings of an earlier term do not count.
    pub fn observe(slot: &mut Option<Sightings>, node: &str, term: i64, now: LeaderLiveness) {
        let s = match slot {
            Some(s) if s.node == node && s.term == term => s,
            _ => slot.insert(Sightings {
                node: node.to_string(),
                term,
                seen_alive: false,
            }),
        };
        s.seen_alive |= now == LeaderLiveness::Alive;
    }
}

/// The facts of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The seat is held by this node itself (its own agent restarted, say).
    pub own_seat: bool,
    /// This follower saw the leader's node alive during the current term.
    pub seen_alive_this_term: bool,
    /// How the mesh shows the leader's node now.
    pub leader: LeaderLiveness,
    /// Control planes of the expected set this follower sees alive, itself included.
    pub control_planes_alive: usize,
    /// A majority of the expected control-plane set.
    pub quorum: usize,
}

/// Whether the follower empties the seat (a delete guarded by the exact term it judged):
/// - never its own seat;
/// - only once it saw the leader's node alive in this term (a follower whose mesh has not
///   converged yet, just started, does not act on not seeing it);
/// - only when the mesh has declared that node down: `Suspect` is not enough, since the mesh
///   keeps a paused node suspect up to its pause tolerance and it comes back from that;
/// - only while it sees a majority of the control-plane set alive, itself included (a node cut
///   off from the mesh sees every peer down, and must not empty seats).
pub fn empty_the_seat(f: &Facts) -> bool {
    !f.own_seat
        && f.seen_alive_this_term
        && f.leader == LeaderLiveness::Down
        && f.control_planes_alive >= f.quorum
}

#[cfg(test)]
mod tests {
    use super::LeaderLiveness::{Alive, Down, Suspect};
    use super::*;

    fn facts(own: bool, seen: bool, leader: LeaderLiveness, alive: usize) -> Facts {
        Facts {
            own_seat: own,
            seen_alive_this_term: seen,
            leader,
            control_planes_alive: alive,
            quorum: 2,
        }
    }

    /// Every combination, 3 control planes (quorum 2).
    #[test]
    fn the_seat_is_emptied_only_for_a_leader_the_mesh_declared_down() {
        // (own seat, seen alive this term, leader now, control planes seen alive, empty?)
        let table = [
            // The normal case: a dead leader, seen before, a majority left.
            (false, true, Down, 2, true),
            (false, true, Down, 3, true),
            // A frozen leader (a VM paused 4 s): suspect, never enough, whatever else holds.
            (false, true, Suspect, 2, false),
            (false, true, Suspect, 3, false),
            (false, false, Suspect, 2, false),
            // Alive.
            (false, true, Alive, 2, false),
            (false, false, Alive, 3, false),
            // Never seen alive in this term: a follower that just started.
            (false, false, Down, 2, false),
            (false, false, Down, 3, false),
            // No majority: this follower is the one cut off.
            (false, true, Down, 1, false),
            (false, true, Down, 0, false),
            // Its own seat: never.
            (true, true, Down, 3, false),
            (true, false, Down, 3, false),
            (true, true, Suspect, 3, false),
        ];
        for (own, seen, leader, alive, want) in table {
            let f = facts(own, seen, leader, alive);
            assert_eq!(empty_the_seat(&f), want, "{f:?}");
        }
    }

    /// The sequences a follower lives through, pass by pass (one observation per engine pass).
    #[test]
    fn a_pause_under_the_tolerance_never_empties_the_seat_and_a_crash_does() {
        let run = |passes: &[LeaderLiveness]| -> Vec<bool> {
            let mut slot = None;
            passes
                .iter()
                .map(|now| {
                    Sightings::observe(&mut slot, "cp-1", 7, *now);
                    let seen = slot.as_ref().is_some_and(|s| s.seen_alive);
                    empty_the_seat(&facts(false, seen, *now, 3))
                })
                .collect()
        };
        // Frozen 4.5 s: suspect at five passes, alive again once it resumed and refuted.
        let frozen = [Alive, Suspect, Suspect, Suspect, Suspect, Suspect, Alive];
        assert!(run(&frozen).iter().all(|e| !e));
        // Crashed: suspect up to the tolerance, then down: emptied at the first down pass.
        let crashed = [Alive, Suspect, Suspect, Suspect, Suspect, Suspect, Down];
        assert_eq!(run(&crashed).iter().position(|e| *e), Some(6));
        // A follower that starts while the leader is already down never saw it alive.
        assert!(run(&[Down, Down, Down]).iter().all(|e| !e));
    }

    #[test]
    fn sightings_of_an_earlier_term_or_leader_do_not_count() {
        let mut slot = None;
        Sightings::observe(&mut slot, "cp-1", 7, Alive);
        assert!(slot.as_ref().is_some_and(|s| s.seen_alive));
        // cp-1 leads again under a new term: not seen alive in that term yet.
        Sightings::observe(&mut slot, "cp-1", 9, Down);
        assert!(slot.as_ref().is_some_and(|s| !s.seen_alive));
        Sightings::observe(&mut slot, "cp-1", 9, Suspect);
        assert!(slot.as_ref().is_some_and(|s| !s.seen_alive));
        // Another leader.
        Sightings::observe(&mut slot, "cp-1", 9, Alive);
        Sightings::observe(&mut slot, "cp-2", 9, Suspect);
        assert!(slot
            .as_ref()
            .is_some_and(|s| !s.seen_alive && s.node == "cp-2"));
    }
}
