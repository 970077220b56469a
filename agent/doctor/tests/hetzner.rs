//! The Hetzner Cloud client against the API double in `tests/fixtures/hcloud-double` (the real
//! API is not reachable from our test machines; production code always calls `HETZNER_API`):
//! list, create, power off and delete with their actions polled, rate limits waited out or
//! reported, errors named, and the token in no error.

#[path = "../../../tests/fixtures/hcloud-double/hcloud_double.rs"]
mod hcloud_double;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hcloud_double::{DoubleServer, Fault, HcloudDouble};
use kubedna_doctor::provider::hetzner::{Hetzner, HetznerConfig, HETZNER_API, USER_DATA_MAX};
use kubedna_doctor::provider::{NewVm, Provider, ProviderError, VmStatus};

const TOKEN: &str = "hcloud-doctor-token-5b1e77";
const SELECTOR: &str = "kubedna.io/cluster=prod";

fn servers(n: u64) -> Vec<DoubleServer> {
    let mut out: Vec<DoubleServer> = (0..n)
        .map(|i| DoubleServer {
            id: 100 + i,
            name: format!("prod-{i}"),
            labels: vec![("kubedna.io/cluster".into(), "prod".into())],
            public_ipv4: None,
            private_ip: Some(format!("10.0.0.{}", i + 1)),
        })
        .collect();
    out.push(DoubleServer {
        id: 9,
        name: "staging-1".into(),
        labels: vec![("kubedna.io/cluster".into(), "staging".into())],
        public_ipv4: None,
        private_ip: None,
    });
    out
}

struct Fixture {
    double: HcloudDouble,
    client: Hetzner,
    _dir: tempfile::TempDir,
}

async fn fixture(n: u64, token_in_file: &str) -> Fixture {
    let double = HcloudDouble::start(servers(n), TOKEN).await;
    assert_ne!(double.base_url, HETZNER_API);
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("hcloud-token");
    std::fs::write(&token_file, format!("{token_in_file}\n")).expect("token");
    let mut cfg = HetznerConfig::new(&double.base_url, token_file, SELECTOR);
    cfg.poll_every = Duration::from_millis(20);
    cfg.max_rate_wait = Duration::from_secs(3);
    cfg.action_timeout = Duration::from_secs(5);
    Fixture {
        double,
        client: Hetzner::new(cfg),
        _dir: dir,
    }
}

fn new_vm(name: &str) -> NewVm {
    let mut labels = BTreeMap::new();
    labels.insert("kubedna.io/cluster".to_string(), "prod".to_string());
    labels.insert("kubedna.io/role".to_string(), "worker".to_string());
    NewVm {
        name: name.into(),
        labels,
        user_data: "#cloud-config\n{}\n".into(),
    }
}

#[tokio::test]
async fn lists_the_clusters_servers_across_pages() {
    let f = fixture(60, TOKEN).await;
    let vms = f.client.list().await.expect("list");
    assert_eq!(vms.len(), 60, "every prod server, none of staging");
    assert!(vms.iter().all(|v| v.status == VmStatus::Running));
    let requests = f.double.requests.lock().expect("log").clone();
    assert_eq!(requests.len(), 2, "two pages of 50: {requests:?}");
    assert!(requests[0].contains("label_selector=kubedna.io%2Fcluster%3Dprod"));
    assert!(requests.iter().all(|r| r.ends_with("auth=true")));
}

#[tokio::test]
async fn create_power_off_and_delete_each_wait_for_their_action() {
    let f = fixture(2, TOKEN).await;
    let vm = f.client.create(&new_vm("prod-w-9")).await.expect("create");
    assert_eq!(vm.name, "prod-w-9");
    assert_eq!(
        f.double.status(vm.id).as_deref(),
        Some("running"),
        "create and start actions done"
    );
    let held = f.double.named("prod-w-9");
    assert_eq!(held[0].user_data.as_deref(), Some("#cloud-config\n{}\n"));
    assert!(held[0]
        .server
        .labels
        .contains(&("kubedna.io/role".into(), "worker".into())));
    assert!(f
        .client
        .list()
        .await
        .expect("list")
        .iter()
        .any(|v| v.id == vm.id));

    // The name is unique: a second create is refused, recognisably.
    let again = f
        .client
        .create(&new_vm("prod-w-9"))
        .await
        .expect_err("duplicate");
    assert!(again.is_name_taken(), "{again}");

    f.client.power_off(100).await.expect("power off");
    assert_eq!(f.double.status(100).as_deref(), Some("off"));
    f.client
        .power_off(100)
        .await
        .expect("powering off an off VM is fine");

    f.client.delete(100).await.expect("delete");
    assert_eq!(f.double.status(100), None);
    f.client
        .delete(100)
        .await
        .expect("deleting a deleted VM is fine");
    f.client.power_off(100).await.expect("a gone VM is off");
    let polls = f
        .double
        .requests
        .lock()
        .expect("log")
        .iter()
        .filter(|r| r.starts_with("GET /v1/actions/"))
        .count();
    assert!(polls >= 4, "actions were polled: {polls}");
}

#[tokio::test]
async fn a_429_is_waited_out_until_ratelimit_reset_or_reported_when_far() {
    let f = fixture(2, TOKEN).await;
    f.double.inject([Fault {
        status: 429,
        code: "rate_limit_exceeded".into(),
        reset_in: 1,
    }]);
    let started = Instant::now();
    let vms = f.client.list().await.expect("list after the reset");
    assert_eq!(vms.len(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for the reset"
    );

    f.double.inject([Fault {
        status: 429,
        code: "rate_limit_exceeded".into(),
        reset_in: 600,
    }]);
    match f.client.power_off(100).await {
        Err(e @ ProviderError::RateLimited { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("POST /servers/100/actions/poweroff"),
                "{text}"
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(
        f.double.status(100).as_deref(),
        Some("running"),
        "nothing changed"
    );
}

#[tokio::test]
async fn errors_name_the_request_and_code_and_never_the_token() {
    let f = fixture(2, "wrong-token-0000").await;
    let e = f.client.list().await.expect_err("unauthorized");
    let text = format!("{e:?} {e}");
    assert!(
        text.contains("401") && text.contains("unauthorized") && text.contains("tokenFile"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-token-0000") && !text.contains(TOKEN),
        "{text}"
    );

    let f = fixture(2, TOKEN).await;
    f.double.inject([Fault {
        status: 500,
        code: "server_error".into(),
        reset_in: 0,
    }]);
    let e = f.client.delete(101).await.expect_err("server error");
    assert!(
        e.to_string().contains("DELETE /servers/101") && e.to_string().contains("server_error"),
        "{e}"
    );
    assert_eq!(f.double.status(101).as_deref(), Some("running"));

    f.double
        .state
        .lock()
        .expect("state")
        .failing_commands
        .push("poweroff".into());
    match f.client.power_off(101).await {
        Err(ProviderError::ActionFailed { code, .. }) => assert_eq!(code, "action_failed"),
        other => panic!("expected ActionFailed, got {other:?}"),
    }
    assert_eq!(
        f.double.status(101).as_deref(),
        Some("running"),
        "a failed action changed nothing"
    );

    let missing = tempfile::tempdir().expect("tmp");
    let mut cfg = HetznerConfig::new(&f.double.base_url, missing.path().join("none"), SELECTOR);
    cfg.poll_every = Duration::from_millis(20);
    let e = Hetzner::new(cfg).list().await.expect_err("no token file");
    assert!(
        matches!(e, ProviderError::TokenFile { .. }) && e.to_string().contains("tokenFile"),
        "{e}"
    );
}

#[tokio::test]
async fn oversized_user_data_is_refused_before_anything_is_sent() {
    let f = fixture(1, TOKEN).await;
    let mut vm = new_vm("prod-big");
    vm.user_data = "x".repeat(USER_DATA_MAX + 1);
    let e = f.client.create(&vm).await.expect_err("too large");
    assert!(matches!(e, ProviderError::UserDataTooLarge { .. }), "{e}");
    assert!(f.double.requests.lock().expect("log").is_empty());
    assert!(
        !format!("{vm:?}").contains("xxxx"),
        "user data never in Debug output"
    );
}
