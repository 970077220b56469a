//! Hetzner Cloud provider discovery against the API double in `tests/fixtures/hcloud-double`
//! (the real API is not reachable from our test machines; production code always calls
//! `HETZNER_API`).

#[path = "../../../tests/fixtures/hcloud-double/hcloud_double.rs"]
mod hcloud_double;

use std::net::SocketAddr;

use hcloud_double::{DoubleServer, HcloudDouble};
use kubedna_mesh::discovery::provider::{hetzner_servers, HetznerConfig, HETZNER_API};

const TOKEN: &str = "hcloud-test-token-7f3a9c";

fn servers() -> Vec<DoubleServer> {
    let mut out = Vec::new();
    for i in 0..60u64 {
        out.push(DoubleServer {
            id: 1000 + i,
            name: format!("prod-{i}"),
            labels: vec![("kubedna.io/cluster".into(), "prod".into())],
            public_ipv4: Some(format!("203.0.113.{}", i + 1)),
            // Half of them are on a private network, which is preferred.
            private_ip: (i % 2 == 0).then(|| format!("10.0.0.{}", i + 1)),
        });
    }
    out.push(DoubleServer {
        id: 9,
        name: "staging-1".into(),
        labels: vec![("kubedna.io/cluster".into(), "staging".into())],
        public_ipv4: Some("198.51.100.9".into()),
        private_ip: None,
    });
    out
}

fn config(base_url: &str, dir: &std::path::Path, token: &str) -> HetznerConfig {
    let token_file = dir.join("hcloud-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");
    HetznerConfig {
        base_url: base_url.to_string(),
        token_file,
        label_selector: "kubedna.io/cluster=prod".into(),
    }
}

#[tokio::test]
async fn lists_every_labelled_server_across_pages_preferring_private_addresses() {
    let double = HcloudDouble::start(servers(), TOKEN).await;
    assert_ne!(double.base_url, HETZNER_API);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(&double.base_url, dir.path(), TOKEN);
    let addrs = hetzner_servers(&reqwest::Client::new(), &cfg, 7946)
        .await
        .expect("listed");
    assert_eq!(
        addrs.len(),
        60,
        "every prod server, none of staging: {addrs:?}"
    );
    assert!(
        addrs.contains(&SocketAddr::from(([10, 0, 0, 1], 7946))),
        "private preferred"
    );
    assert!(
        addrs.contains(&SocketAddr::from(([203, 0, 113, 2], 7946))),
        "public when no private"
    );
    assert!(
        !addrs.contains(&SocketAddr::from(([203, 0, 113, 1], 7946))),
        "not both"
    );
    assert!(
        !addrs.contains(&SocketAddr::from(([198, 51, 100, 9], 7946))),
        "other cluster left out"
    );
    let requests = double.requests.lock().expect("log").clone();
    assert_eq!(requests.len(), 2, "two pages of 50: {requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.contains("label_selector=kubedna.io%2Fcluster%3Dprod")
                && r.ends_with("auth=true")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_rejected_token_is_a_clear_error_that_never_shows_the_token() {
    let double = HcloudDouble::start(servers(), TOKEN).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(&double.base_url, dir.path(), "wrong-token-secret-value");
    let err = hetzner_servers(&reqwest::Client::new(), &cfg, 7946)
        .await
        .expect_err("401");
    let text = format!("{err} {err:?}");
    assert!(text.contains("401") && text.contains("tokenFile"), "{text}");
    assert!(
        !text.contains("wrong-token-secret-value") && !text.contains(TOKEN),
        "{text}"
    );
}
