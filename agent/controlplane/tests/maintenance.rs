//! The maintenance lease against a real etcd (Debian's etcd-server 3.4): taken only under the
//! leader term, busy for other work, gone within its TTL once its holder stops renewing, taken
//! over for the same work by the next leader while the deposed one still runs, whose release
//! is then refused.

mod common;

use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use kubedna_controlplane::coord::{CoordError, Coordinator};
use kubedna_controlplane::maintenance::Take;

const NOW: u64 = 1_700_000_000;

async fn connect(url: &str) -> Coordinator {
    Coordinator::connect(&[url.to_string()], "lab")
        .await
        .expect("connect")
}

/// Resolves when the maintenance key is deleted (by a delete or its lease's expiry).
async fn deleted(url: &str, from_revision: i64) {
    let mut client = etcd_client::Client::connect([url], None)
        .await
        .expect("connect");
    let mut stream = client
        .watch(
            "/kubedna/lab/maintenance",
            Some(WatchOptions::new().with_start_revision(from_revision)),
        )
        .await
        .expect("watch");
    while let Some(msg) = stream.message().await.expect("watch stream") {
        if msg
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return;
        }
    }
    panic!("the watch ended before the key was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_lease_is_fenced_ttld_and_resumable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = common::single(dir.path());
    let url = e.client_url.as_str();
    let ttl = Duration::from_secs(2);
    let a = connect(url).await;
    let b = connect(url).await;
    let lead_a = a
        .campaign("cp-a", ttl)
        .await
        .expect("campaign")
        .expect("a leads");
    let term_a = lead_a.term;

    // Not the leader: refused by term, nothing written.
    match b
        .take_maintenance(
            term_a + 1000,
            "cp-b",
            "w-1",
            "doctor: replace w-1",
            ttl,
            NOW,
        )
        .await
    {
        Err(CoordError::Stale { current, .. }) => assert_eq!(current, "cp-a"),
        other => panic!("a non-leader took the maintenance lease: {other:?}"),
    }
    assert!(a.maintenance().await.expect("read").is_none());

    // The leader takes it; other work finds it busy, the same work takes it over.
    let Take::Held(hold) = a
        .take_maintenance(term_a, "cp-a", "w-1", "doctor: replace w-1", ttl, NOW)
        .await
        .expect("take")
    else {
        panic!("free lease refused");
    };
    let seen = a.maintenance().await.expect("read").expect("held");
    assert_eq!(
        (
            seen.record.holder.as_str(),
            seen.record.node.as_str(),
            seen.record.term
        ),
        ("cp-a", "w-1", term_a)
    );
    match a
        .take_maintenance(term_a, "cp-a", "w-2", "patch: reboot", ttl, NOW)
        .await
        .expect("take")
    {
        Take::Busy(r) => assert_eq!(r.node, "w-1"),
        Take::Held(_) => panic!("two holders for different work"),
    }

    // Renewed while held: still there after twice the TTL (awaited on etcd's clock: a watch
    // that must see no delete within 2 TTL).
    let still = tokio::time::timeout(ttl * 2, deleted(url, seen.mod_revision + 1)).await;
    assert!(still.is_err(), "a renewed maintenance lease expired");
    assert!(!hold.is_lost());

    // The holder stops renewing (a crash): etcd deletes the key within the TTL (+ 1 s of
    // etcd's lease granularity).
    let stopped = Instant::now();
    drop(hold);
    tokio::time::timeout(
        ttl + Duration::from_secs(3),
        deleted(url, seen.mod_revision + 1),
    )
    .await
    .expect("a dead holder's maintenance lease must expire");
    let gone_after = stopped.elapsed();
    eprintln!("maintenance lease gone {gone_after:?} after its holder stopped (TTL {ttl:?})");
    assert!(a.maintenance().await.expect("read").is_none());

    // Taken again by a, whose term then ends while its process still runs (a deposed leader):
    // b leads and takes the same work over at once, without waiting for a's lease.
    let Take::Held(mut hold_a) = a
        .take_maintenance(term_a, "cp-a", "w-1", "doctor: replace w-1", ttl, NOW + 5)
        .await
        .expect("take")
    else {
        panic!("free lease refused");
    };
    lead_a.abandon();
    b.wait_vacant().await.expect("watch the seat");
    let lead_b = b
        .campaign("cp-b", ttl)
        .await
        .expect("campaign")
        .expect("b leads");
    let Take::Held(hold_b) = b
        .take_maintenance(
            lead_b.term,
            "cp-b",
            "w-1",
            "doctor: replace w-1",
            ttl,
            NOW + 9,
        )
        .await
        .expect("take over")
    else {
        panic!("the next leader could not take over the same work");
    };
    assert_eq!(hold_b.record.since, NOW + 5, "the work's start is kept");
    // The deposed leader's hold stops renewing on its own once it sees the term over.
    tokio::time::timeout(ttl * 2, hold_a.lost())
        .await
        .expect("a deposed leader's hold must stop renewing");
    assert_eq!(hold_b.record.term, lead_b.term);
    // The deposed leader's release is refused by term, and leaves the key alone.
    match a.release_maintenance(term_a, hold_a).await {
        Err(CoordError::Stale { current, .. }) => assert_eq!(current, "cp-b"),
        other => panic!("a deposed leader released the lease: {other:?}"),
    }
    let seen = b.maintenance().await.expect("read").expect("held by b");
    assert_eq!(seen.record.holder, "cp-b");
    // b's key survives a's lease being revoked (it moved to b's lease).
    assert_eq!(seen.lease, hold_b.lease);

    // The current leader releases it.
    assert!(b
        .release_maintenance(lead_b.term, hold_b)
        .await
        .expect("release"));
    assert!(b.maintenance().await.expect("read").is_none());
}
