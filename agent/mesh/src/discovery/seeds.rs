//! Static seeds: `host` or `host:port` from the agent config, resolved by the system resolver and
//! re-resolved periodically, so a seed's DNS name may point elsewhere after a replacement. Owns
//! resolution and the "log once per change" bookkeeping; it must never make an unresolvable
//! seed fatal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::{pause, split_host_port, DiscoveryError};
use crate::runtime::MeshHandle;

/// How often seeds are re-resolved while the node has peers.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// ... and while it has none, or a seed does not resolve.
pub const RESOLVE_EVERY_ALONE: Duration = Duration::from_secs(5);

/// What became of each seed in the last round, to log only changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedLog {
    last: BTreeMap<String, Result<Vec<SocketAddr>, String>>,
}

impl SeedLog {
    /// Records `seed`'s outcome; returns true when it differs from the previous round's.
    pub fn changed(&mut self, seed: &str, outcome: Result<Vec<SocketAddr>, String>) -> bool {
        self.last.insert(seed.to_string(), outcome.clone()) != Some(outcome)
    }
}

/// Resolves one seed (a literal address resolves without DNS).
pub async fn resolve(seed: &str, default_port: u16) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let (host, port) = split_host_port(seed, default_port);
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|source| DiscoveryError::Resolve {
            seed: seed.to_string(),
            source,
        })?
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Resolves every seed each round and hands the list to the mesh when it changes.
pub async fn run(seeds: Vec<String>, port: u16, mesh: MeshHandle, mut stop: watch::Receiver<bool>) {
    let own = mesh.local_addr();
    let mut log = SeedLog::default();
    let mut current: Vec<SocketAddr> = Vec::new();
    loop {
        let mut all = Vec::new();
        let mut unresolved = false;
        for seed in &seeds {
            let outcome = resolve(seed, port).await;
            let key = outcome
                .as_ref()
                .map(Clone::clone)
                .map_err(|e| e.to_string());
            if log.changed(seed, key) {
                match &outcome {
                    Ok(addrs) => tracing::info!(seed = %seed, addresses = ?addrs, "seed resolved"),
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(e), "seed not resolved; retrying")
                    }
                }
            }
            match outcome {
                Ok(addrs) => all.extend(
                    addrs
                        .into_iter()
                        .filter(|a| a.is_ipv4() == own.is_ipv4() && *a != own),
                ),
                Err(_) => unresolved = true,
            }
        }
        all.sort();
        all.dedup();
        if all != current {
            current = all.clone();
            if mesh.set_seeds(all).await.is_err() {
                return;
            }
        }
        let alone = *mesh.active_members().borrow() == 0;
        let delay = if alone || unresolved {
            RESOLVE_EVERY_ALONE
        } else {
            RESOLVE_EVERY
        };
        if pause(delay, &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_seeds_resolve_without_dns_and_bad_names_are_errors() {
        assert_eq!(
            resolve("198.18.10.2", 7946).await.expect("literal"),
            vec![SocketAddr::from(([198, 18, 10, 2], 7946))]
        );
        assert_eq!(
            resolve("127.0.0.1:8000", 7946).await.expect("literal"),
            vec![SocketAddr::from(([127, 0, 0, 1], 8000))]
        );
        let err = resolve("no-such-seed.invalid", 7946)
            .await
            .expect_err("the .invalid TLD never resolves");
        assert!(err.to_string().contains("no-such-seed.invalid"), "{err}");
    }

    #[test]
    fn an_unresolved_seed_is_logged_once_per_change() {
        let mut log = SeedLog::default();
        let down: Result<Vec<SocketAddr>, String> = Err("no such host".into());
        let up: Result<Vec<SocketAddr>, String> =
            Ok(vec![SocketAddr::from(([198, 18, 10, 2], 7946))]);
        assert!(log.changed("cp-1", down.clone()));
        assert!(!log.changed("cp-1", down.clone()));
        assert!(log.changed("cp-1", up.clone()));
        assert!(!log.changed("cp-1", up));
        assert!(log.changed("cp-1", down));
    }
}
