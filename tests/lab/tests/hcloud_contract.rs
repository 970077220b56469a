//! The lab's Hetzner Cloud API subset and the hcloud TEST DOUBLE (`tests/fixtures/hcloud-double`)
//! answer the same sequence the same way, driven by the agents' own Hetzner client
//! (`kubedna_doctor::provider::hetzner`) plus raw requests for what the client never sends.
//! So the two cannot drift: a change to either must keep this sequence passing on both. The lab's
//! server runs here over an in-memory backend (no root needed); in the lab it is backed by nodes.

#[path = "../../fixtures/hcloud-double/hcloud_double.rs"]
mod hcloud_double;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kubedna_doctor::provider::hetzner::{Hetzner, HetznerConfig};
use kubedna_doctor::provider::{NewVm, Provider};
use kubedna_lab::hcloud::{HcloudApi, MemoryBackend, Server};

const TOKEN: &str = "contract-token-31c9";

/// id, name, labels.
type Fleet = Vec<(u64, String, Vec<(String, String)>)>;

fn prod(i: u64) -> (u64, String, Vec<(String, String)>) {
    (
        100 + i,
        format!("prod-{i}"),
        vec![("kubedna.io/cluster".into(), "prod".into())],
    )
}

fn fleet() -> Fleet {
    let mut v: Vec<_> = (0..60).map(prod).collect();
    v.push((
        9,
        "staging-1".into(),
        vec![("kubedna.io/cluster".into(), "staging".into())],
    ));
    v
}

async fn double() -> String {
    let servers = fleet()
        .into_iter()
        .map(|(id, name, labels)| hcloud_double::DoubleServer {
            id,
            name,
            labels,
            public_ipv4: None,
            private_ip: None,
        })
        .collect();
    hcloud_double::HcloudDouble::start(servers, TOKEN)
        .await
        .base_url
}

fn lab() -> (HcloudApi, Arc<MemoryBackend>) {
    let servers = fleet()
        .into_iter()
        .map(|(id, name, labels)| Server {
            id,
            name,
            status: "running".into(),
            labels: labels.into_iter().collect(),
            ipv4: None,
        })
        .collect();
    let backend = Arc::new(MemoryBackend::with(servers));
    let api = HcloudApi::serve("127.0.0.1:0", TOKEN, backend.clone()).expect("serve");
    (api, backend)
}

fn client(base_url: &str, dir: &std::path::Path, token: &str) -> Hetzner {
    let token_file = dir.join(format!("token-{token}"));
    std::fs::write(&token_file, token).expect("token");
    let mut c = HetznerConfig::new(base_url, token_file, "kubedna.io/cluster=prod");
    c.poll_every = Duration::from_millis(20);
    c.action_timeout = Duration::from_secs(5);
    Hetzner::new(c)
}

async fn raw(
    base_url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    json: bool,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut req = http
        .request(method.parse().expect("method"), format!("{base_url}{path}"))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        if json {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("send");
    for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(
            resp.headers().contains_key(h),
            "{method} {path}: no {h} header"
        );
    }
    let status = resp.status().as_u16();
    let v = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON body");
    (status, v)
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The contract. Returns a transcript of what was observed, which must be the same for both.
async fn contract(base_url: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tmp");
    let c = client(base_url, dir.path(), TOKEN);
    let mut t = Vec::new();
    let vms = c.list().await.expect("list");
    t.push(format!("listed {} prod servers", vms.len()));
    assert_eq!(vms.len(), 60);

    let mut labels = BTreeMap::new();
    labels.insert("kubedna.io/cluster".to_string(), "prod".to_string());
    labels.insert("kubedna.io/role".to_string(), "worker".to_string());
    let new = NewVm {
        name: "prod-new".into(),
        labels,
        user_data: "#cloud-config\n{}\n".into(),
    };
    let vm = c.create(&new).await.expect("create");
    t.push(format!("created {} ({:?})", vm.name, vm.status));
    let listed = c.list().await.expect("list");
    let found = listed
        .iter()
        .find(|v| v.name == "prod-new")
        .expect("listed");
    t.push(format!("new server listed as {:?}", found.status));
    let again = c.create(&new).await.expect_err("duplicate name");
    t.push(format!(
        "second create: name taken = {}",
        again.is_name_taken()
    ));

    c.power_off(100).await.expect("power off");
    let off = c.list().await.expect("list");
    t.push(format!(
        "prod-0 after power off: {:?}",
        off.iter().find(|v| v.id == 100).map(|v| v.status)
    ));
    c.delete(100).await.expect("delete");
    let gone = c.list().await.expect("list");
    t.push(format!(
        "prod-0 after delete: listed = {}",
        gone.iter().any(|v| v.id == 100)
    ));
    c.delete(100)
        .await
        .expect("a deleted server deletes again without error");

    let wrong = client(base_url, dir.path(), "wrong-token");
    let e = wrong.list().await.expect_err("401");
    let text = e.to_string();
    assert!(!text.contains("wrong-token"), "{text}");
    t.push(format!(
        "wrong token: {}",
        text.contains("401") && text.contains("unauthorized")
    ));

    let big = format!(
        r#"{{"name":"prod-big","server_type":"cx22","image":"ubuntu-24.04","user_data":"{}"}}"#,
        "x".repeat(33 * 1024)
    );
    for (what, method, path, body, json) in [
        (
            "unknown field",
            "POST",
            "/servers",
            Some(r#"{"name":"a","server_type":"cx22","image":"i","colour":"red"}"#),
            true,
        ),
        (
            "no content type",
            "POST",
            "/servers",
            Some(r#"{"name":"a","server_type":"cx22","image":"i"}"#),
            false,
        ),
        (
            "missing image",
            "POST",
            "/servers",
            Some(r#"{"name":"a","server_type":"cx22"}"#),
            true,
        ),
        (
            "bad name",
            "POST",
            "/servers",
            Some(r#"{"name":"Not_A_Host","server_type":"cx22","image":"i"}"#),
            true,
        ),
        (
            "reserved label",
            "POST",
            "/servers",
            Some(
                r#"{"name":"a","server_type":"cx22","image":"i","labels":{"hetzner.cloud/x":"y"}}"#,
            ),
            true,
        ),
        (
            "big user data",
            "POST",
            "/servers",
            Some(big.as_str()),
            true,
        ),
        ("per_page 51", "GET", "/servers?per_page=51", None, true),
        (
            "unknown server",
            "POST",
            "/servers/999999/actions/poweroff",
            None,
            true,
        ),
        ("unknown action", "GET", "/actions/999999", None, true),
        ("unknown route", "GET", "/volumes", None, true),
    ] {
        let (status, v) = raw(base_url, method, path, body, json).await;
        t.push(format!("{what}: {status} {}", code(&v)));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_api_and_the_double_answer_the_contract_alike() {
    let on_double = contract(&double().await).await;
    let (api, backend) = lab();
    assert!(api.addr.ip().is_loopback());
    let on_lab = contract(&api.base_url).await;
    assert_eq!(
        on_lab, on_double,
        "the lab's API drifted from the double's contract"
    );
    // The transcript is what the real API does (REFERENCES-wave2.md 4.4), not just agreement.
    let expected = [
        "listed 60 prod servers",
        "created prod-new (Initializing)",
        "new server listed as Running",
        "second create: name taken = true",
        "prod-0 after power off: Some(Off)",
        "prod-0 after delete: listed = false",
        "wrong token: true",
        "unknown field: 400 invalid_input",
        "no content type: 400 json_error",
        "missing image: 400 invalid_input",
        "bad name: 400 invalid_input",
        "reserved label: 400 invalid_input",
        "big user data: 400 invalid_input",
        "per_page 51: 400 invalid_input",
        "unknown server: 404 not_found",
        "unknown action: 404 not_found",
        "unknown route: 404 not_found",
    ];
    assert_eq!(on_double, expected);
    assert_eq!(
        backend
            .servers
            .lock()
            .expect("servers")
            .iter()
            .filter(|s| s.name == "prod-new")
            .count(),
        1
    );
}
