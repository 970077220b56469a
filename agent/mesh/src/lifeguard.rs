//! Lifeguard (arXiv 1707.00788) on top of foca's SWIM: the arithmetic and bookkeeping.
//!
//! Owns the local health multiplier (LHM: a node that misses acks or has to refute suspicions of
//! itself slows its own probing instead of accusing others) and the confirmation-driven suspicion
//! timeout (a suspicion starts long and shrinks as other members independently confirm it). It is
//! pure: no clock, no I/O; [`crate::mesh`] feeds it events and applies the durations.

use std::time::Duration;

/// Lifeguard parameters. Defaults follow memberlist, with a shorter minimum so a crash in 100
/// nodes is seen within seconds (see docs/mesh.md).
#[derive(Debug, Clone, PartialEq)]
pub struct LifeguardConfig {
    /// Highest local health score; timeouts scale by `score + 1`.
    pub max_lhm: u32,
    /// Minimum suspicion = `suspicion_mult · max(1, log10 N) · probe period`.
    pub suspicion_mult: f64,
    /// Maximum suspicion = `suspicion_max_mult ·` minimum.
    pub suspicion_max_mult: f64,
    /// Independent confirmations after which the suspicion is at its minimum. memberlist's `K`
    /// (`SuspicionMult - 2` = 2 on a LAN): with 3, a 5-node cluster needs every other live
    /// member to confirm, and one slow observer (its probing stretched by its own health) keeps
    /// a crash undeclared for twice the minimum. The minimum never goes below the pause
    /// tolerance, so a lower `K` cannot declare a frozen node dead sooner.
    pub expected_confirmations: u32,
}

impl Default for LifeguardConfig {
    fn default() -> Self {
        Self {
            max_lhm: 8,
            suspicion_mult: 2.0,
            suspicion_max_mult: 6.0,
            expected_confirmations: 2,
        }
    }
}

/// The local health multiplier: 0 is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalHealth {
    score: u32,
    max: u32,
}

impl LocalHealth {
    /// Healthy, saturating at `max`.
    pub fn new(max: u32) -> Self {
        Self { score: 0, max }
    }

    /// The current score.
    pub fn score(&self) -> u32 {
        self.score
    }

    /// A probe of ours got no ack, directly or indirectly.
    pub fn probe_failed(&mut self) {
        self.score = (self.score + 1).min(self.max);
    }

    /// Someone suspected us and we had to refute it.
    pub fn refuted(&mut self) {
        self.score = (self.score + 1).min(self.max);
    }

    /// A probe of ours was acked.
    pub fn probe_succeeded(&mut self) {
        self.score = self.score.saturating_sub(1);
    }

    /// `base` stretched by how unhealthy we are.
    pub fn scale(&self, base: Duration) -> Duration {
        base * (self.score + 1)
    }
}

/// The minimum suspicion timeout for a cluster of `n` members: Lifeguard's
/// `suspicion_mult · max(1, log10 N) · probe period`, but never below `pause_tolerance`.
///
/// No number of confirmations may shorten a suspicion below the longest pause a live node is
/// allowed: while it is frozen, every member's probe of it fails, so confirmations are certain
/// and prove nothing about a crash; only the suspect's silence lasting longer than a pause can.
pub fn min_suspicion(
    cfg: &LifeguardConfig,
    n: usize,
    probe_period: Duration,
    pause_tolerance: Duration,
) -> Duration {
    let log_n = (n.max(1) as f64).log10().max(1.0);
    probe_period
        .mul_f64(cfg.suspicion_mult * log_n)
        .max(pause_tolerance)
}

/// The suspicion timeout after `confirmations` independent confirmations (memberlist's formula):
/// `max(min, max - (max - min) · log(C + 1) / log(K + 1))`, with `K` lowered for tiny clusters.
pub fn suspicion_timeout(
    cfg: &LifeguardConfig,
    n: usize,
    probe_period: Duration,
    pause_tolerance: Duration,
    confirmations: u32,
) -> Duration {
    let min = min_suspicion(cfg, n, probe_period, pause_tolerance);
    let max = min.mul_f64(cfg.suspicion_max_mult);
    // Fewer than K+2 members cannot produce K independent confirmations.
    let k = cfg.expected_confirmations.min(n.saturating_sub(2) as u32);
    if k == 0 {
        return min;
    }
    let frac = f64::from(confirmations + 1).ln() / f64::from(k + 1).ln();
    let timeout = max.as_secs_f64() - (max - min).as_secs_f64() * frac;
    Duration::from_secs_f64(timeout.max(min.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_saturates_and_recovers() {
        let mut h = LocalHealth::new(3);
        for _ in 0..10 {
            h.probe_failed();
        }
        assert_eq!(h.score(), 3);
        assert_eq!(h.scale(Duration::from_secs(1)), Duration::from_secs(4));
        h.probe_succeeded();
        h.probe_succeeded();
        h.probe_succeeded();
        h.probe_succeeded();
        assert_eq!(h.score(), 0);
        assert_eq!(
            h.scale(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }

    const NO_PAUSES: Duration = Duration::ZERO;

    #[test]
    fn suspicion_shrinks_with_confirmations() {
        let cfg = LifeguardConfig::default();
        let p = Duration::from_secs(1);
        let t: Vec<_> = (0..5)
            .map(|c| suspicion_timeout(&cfg, 100, p, NO_PAUSES, c))
            .collect();
        assert_eq!(t[0], Duration::from_secs(24));
        assert!(t[0] > t[1] && t[1] > t[2]);
        // K = 2 confirmations reach the minimum; more change nothing.
        assert_eq!(t[2], Duration::from_secs(4));
        assert_eq!(t[3], Duration::from_secs(4));
        assert_eq!(t[4], Duration::from_secs(4));
    }

    #[test]
    fn tiny_clusters_use_the_minimum() {
        let cfg = LifeguardConfig::default();
        let p = Duration::from_secs(1);
        assert_eq!(
            suspicion_timeout(&cfg, 2, p, NO_PAUSES, 0),
            Duration::from_secs(2)
        );
    }

    /// (members, confirmations, tolerance ms) -> timeout ms, probe period 500 ms.
    #[test]
    fn no_confirmation_shortens_a_suspicion_below_the_pause_tolerance() {
        let cfg = LifeguardConfig::default();
        let p = Duration::from_millis(500);
        let table: [(usize, u32, u64, u64); 11] = [
            // Lab size: Lifeguard's own minimum is 1 s, which a 2 s pause outlasted.
            (5, 3, 0, 1_000),
            (5, 0, 0, 6_000),
            (5, 3, 5_000, 5_000),
            // Two of the three other live members' confirmations are enough (memberlist's K).
            (5, 2, 5_000, 5_000),
            (5, 0, 5_000, 30_000),
            (5, 9, 5_000, 5_000),
            // 1,000 members: log10 N = 3, Lifeguard's minimum is 3 s.
            (1000, 3, 0, 3_000),
            (1000, 3, 5_000, 5_000),
            (1000, 3, 2_000, 3_000),
            // Two members expect no confirmation: the minimum at once.
            (2, 0, 5_000, 5_000),
            (2, 0, 1_000, 1_000),
        ];
        for (n, c, tolerance, want) in table {
            let got = suspicion_timeout(&cfg, n, p, Duration::from_millis(tolerance), c);
            assert_eq!(
                got,
                Duration::from_millis(want),
                "n={n} confirmations={c} tolerance={tolerance} ms"
            );
        }
    }
}
