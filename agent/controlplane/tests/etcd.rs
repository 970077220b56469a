//! The once-only decisions against a real etcd (Debian's etcd-server 3.4, started per test on
//! loopback ports): exactly one init winner among racers, leader failover within the lease TTL,
//! and a deposed leader's writes refused by term.

mod common;

use std::time::{Duration, Instant};

use kubedna_controlplane::coord::{CoordError, Coordinator, InitDecision};

fn etcd(dir: &std::path::Path) -> common::EtcdMember {
    common::single(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_many_racing_nodes_wins_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = etcd(dir.path());
    for round in 0..5 {
        let cluster = format!("race-{round}");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let url = e.client_url.clone();
            let cluster = cluster.clone();
            tasks.push(tokio::spawn(async move {
                let c = Coordinator::connect(&[url], &cluster)
                    .await
                    .expect("connect");
                (
                    format!("cp-{i}"),
                    c.init_once(&format!("cp-{i}"), &format!("nonce-{i}"))
                        .await
                        .expect("init_once"),
                )
            }));
        }
        let mut winners = Vec::new();
        let mut seen_by = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                (node, InitDecision::Won { .. }) => winners.push(node),
                (_, InitDecision::Taken { by }) => seen_by.push(by),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert!(
            seen_by.iter().all(|b| *b == winners[0]),
            "round {round}: losers disagree on the winner"
        );
        // Later callers, including the winner itself with a new claim, are told it is taken...
        let c = Coordinator::connect(std::slice::from_ref(&e.client_url), &cluster)
            .await
            .expect("connect");
        // ...unless it retries its own claim (same nonce): a reply lost after the transaction
        // committed is recognised, so the winner is not locked out of its own init.
        assert_eq!(
            c.init_once(&winners[0], "a-new-claim")
                .await
                .expect("again"),
            InitDecision::Taken {
                by: winners[0].clone()
            }
        );
        let own = format!("nonce-{}", winners[0].trim_start_matches("cp-"));
        assert!(matches!(
            c.init_once(&winners[0], &own).await.expect("retry"),
            InitDecision::Won { .. }
        ));
        assert_eq!(
            c.init_once("cp-other", &own).await.expect("another node"),
            InitDecision::Taken {
                by: winners[0].clone()
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_within_the_ttl_and_its_writes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = etcd(dir.path());
    let ttl = Duration::from_secs(2);
    let a = Coordinator::connect(std::slice::from_ref(&e.client_url), "lab")
        .await
        .expect("connect");
    let b = Coordinator::connect(std::slice::from_ref(&e.client_url), "lab")
        .await
        .expect("connect");
    let lead_a = a
        .campaign("cp-a", ttl)
        .await
        .expect("campaign")
        .expect("a leads");
    assert!(
        b.campaign("cp-b", ttl).await.expect("campaign").is_none(),
        "two leaders at once"
    );
    let term_a = lead_a.term;
    assert_eq!(
        a.leader().await.expect("leader").map(|(r, t)| (r.node, t)),
        Some(("cp-a".into(), term_a))
    );
    a.fenced_put(term_a, &a.key("catalogue"), b"v1".to_vec())
        .await
        .expect("leader write");

    // cp-a stops renewing, as a crash or a long pause would look to etcd.
    let died = Instant::now();
    lead_a.abandon();
    b.wait_vacant().await.expect("watch");
    let lead_b = b
        .campaign("cp-b", ttl)
        .await
        .expect("campaign")
        .expect("b leads after a died");
    let failover = died.elapsed();
    assert!(
        failover <= ttl + Duration::from_secs(2),
        "failover took {failover:?} with a {ttl:?} lease"
    );
    assert!(
        lead_b.term > term_a,
        "terms must rise: {} then {}",
        term_a,
        lead_b.term
    );
    eprintln!("failover after leader death: {failover:?} (lease TTL {ttl:?})");

    // The old leader comes back still believing it leads: refused, and nothing is written.
    match a
        .fenced_put(term_a, &a.key("catalogue"), b"stale".to_vec())
        .await
    {
        Err(CoordError::Stale { term, current }) => {
            assert_eq!((term, current.as_str()), (term_a, "cp-b"));
        }
        other => panic!("stale write was not refused: {other:?}"),
    }
    assert_eq!(
        b.get(&b.key("catalogue")).await.expect("get").as_deref(),
        Some(&b"v1"[..])
    );
    b.fenced_put(lead_b.term, &b.key("catalogue"), b"v2".to_vec())
        .await
        .expect("new leader writes");

    // Resigning frees the seat at once.
    b.resign(lead_b).await.expect("resign");
    assert!(a.leader().await.expect("leader").is_none());
}
