//! The provider's node list as a discovery source.
//!
//! Owns two sources of peer addresses: the lab's peers file ([`LAB_PEERS_FILE`], written by
//! `kubedna-lab` into every node: one address per line, `#` comments) and Hetzner Cloud's
//! `GET /v1/servers?label_selector=...` (bearer token read from the token file at each call, so a
//! rotated token needs no restart; pages followed through `meta.pagination.next_page`; a server's
//! first private network address preferred over its public IPv4). Each round announces to the
//! addresses not seen in the previous round. It must never log or return the token, and the
//! base URL is the caller's: production passes [`HETZNER_API`], tests a double.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use super::{pause, split_host_port, DiscoveryError, ProviderSource};
use crate::runtime::MeshHandle;

/// Where `kubedna-lab` writes the lab's node addresses in each node.
pub const LAB_PEERS_FILE: &str = "/etc/kubedna/lab/peers";
/// The Hetzner Cloud API.
pub const HETZNER_API: &str = "https://api.hetzner.cloud/v1";
/// Servers per page asked of the Hetzner API (its maximum is 50).
const PER_PAGE: u32 = 50;

/// How often the provider is asked while the node has no peers.
pub const ASK_EVERY_ALONE: Duration = Duration::from_secs(10);
/// ... and once it has peers (new nodes also reach us by gossip).
pub const ASK_EVERY: Duration = Duration::from_secs(300);

/// `provider.hetzner`, as discovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HetznerConfig {
    /// API base URL, [`HETZNER_API`] in production.
    pub base_url: String,
    /// File holding the API token (mode 0600).
    pub token_file: PathBuf,
    /// E.g. `kubedna.io/cluster=prod`.
    pub label_selector: String,
}

/// Addresses in the lab's peers file; a line without a port gets `port`.
pub fn read_lab_peers(path: &Path, port: u16) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::LabFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out: Vec<SocketAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (host, port) = split_host_port(l, port);
            host.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port))
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct ServersPage {
    servers: Vec<Server>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    pagination: Pagination,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    next_page: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Server {
    #[serde(default)]
    public_net: Option<PublicNet>,
    #[serde(default)]
    private_net: Vec<PrivateNet>,
}

#[derive(Debug, Deserialize)]
struct PublicNet {
    ipv4: Option<Ipv4Entry>,
}

#[derive(Debug, Deserialize)]
struct Ipv4Entry {
    ip: IpAddr,
}

#[derive(Debug, Deserialize)]
struct PrivateNet {
    ip: IpAddr,
}

#[derive(Debug, Deserialize)]
struct HetznerError {
    error: HetznerErrorBody,
}

#[derive(Debug, Deserialize)]
struct HetznerErrorBody {
    code: String,
    message: String,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The addresses of every server carrying the label selector, all pages.
pub async fn hetzner_servers(
    client: &reqwest::Client,
    cfg: &HetznerConfig,
    port: u16,
) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let token =
        std::fs::read_to_string(&cfg.token_file).map_err(|source| DiscoveryError::TokenFile {
            path: cfg.token_file.clone(),
            source,
        })?;
    let token = token.trim();
    let mut out = BTreeSet::new();
    let mut page = 1u32;
    loop {
        let what = format!(
            "GET /servers?label_selector={}&page={page}",
            cfg.label_selector
        );
        let url = format!(
            "{}/servers?label_selector={}&page={page}&per_page={PER_PAGE}",
            cfg.base_url.trim_end_matches('/'),
            encode(&cfg.label_selector)
        );
        let fail = |message: String| DiscoveryError::Hetzner {
            what: what.clone(),
            message,
        };
        let resp = client
            .get(&url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map_err(|e| {
                fail(format!(
                    "request failed ({e}); check the node's route to the API"
                ))
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(format!("reading the answer failed: {e}")))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<HetznerError>(&body)
                .map(|e| format!("{} ({})", e.error.message, e.error.code))
                .unwrap_or_else(|_| "no error body".into());
            let hint = if status.as_u16() == 401 {
                "; the token in provider.hetzner.tokenFile is not valid: replace it"
            } else {
                ""
            };
            return Err(fail(format!("HTTP {status}: {detail}{hint}")));
        }
        let parsed: ServersPage =
            serde_json::from_slice(&body).map_err(|e| fail(format!("unexpected answer: {e}")))?;
        for s in parsed.servers {
            let ip = s
                .private_net
                .first()
                .map(|p| p.ip)
                .or_else(|| s.public_net.and_then(|p| p.ipv4).map(|v| v.ip));
            if let Some(ip) = ip {
                out.insert(SocketAddr::new(ip, port));
            }
        }
        match parsed.meta.and_then(|m| m.pagination.next_page) {
            Some(next) if next > page => page = next,
            _ => break,
        }
    }
    Ok(out.into_iter().collect())
}

/// Asks the provider each round and announces to addresses it did not list before.
pub async fn run(
    source: ProviderSource,
    port: u16,
    mesh: MeshHandle,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::new();
    let own = mesh.local_addr();
    let mut previous: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut last_error: Option<String> = None;
    loop {
        let listed = match &source {
            ProviderSource::Lab { path } => read_lab_peers(path, port),
            ProviderSource::Hetzner(cfg) => hetzner_servers(&client, cfg, port).await,
        };
        match listed {
            Ok(addrs) => {
                if last_error.take().is_some() || previous.is_empty() {
                    tracing::info!(count = addrs.len(), "provider listed the cluster's nodes");
                }
                let alone = *mesh.active_members().borrow() == 0;
                let now: BTreeSet<SocketAddr> = addrs.into_iter().filter(|a| *a != own).collect();
                for addr in &now {
                    if (alone || !previous.contains(addr)) && mesh.announce(*addr).await.is_err() {
                        return;
                    }
                }
                previous = now;
            }
            Err(e) => {
                let text = crate::error_chain(&e);
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "provider discovery failed; retrying");
                    last_error = Some(text);
                }
            }
        }
        let alone = *mesh.active_members().borrow() == 0;
        if pause(if alone { ASK_EVERY_ALONE } else { ASK_EVERY }, &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_peers_file_lists_addresses_with_comments_and_ports() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("peers");
        std::fs::write(&path, "# written by kubedna-lab\n198.18.10.2\n198.18.10.3:8000  # cp-2\n\nnot-an-address\n198.18.10.2\n").expect("write");
        assert_eq!(
            read_lab_peers(&path, 7946).expect("readable"),
            vec![
                SocketAddr::from(([198, 18, 10, 2], 7946)),
                SocketAddr::from(([198, 18, 10, 3], 8000)),
            ]
        );
        let err = read_lab_peers(&dir.path().join("missing"), 7946).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
