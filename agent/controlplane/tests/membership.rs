//! etcd membership on a real three-member etcd: control planes join one at a time under the join
//! lock, as learners promoted once in sync; a removal that would drop quorum is refused.

mod common;

use std::time::{Duration, Instant};

use common::EtcdMember;
use kubedna_controlplane::coord::{CoordError, Coordinator};
use kubedna_controlplane::membership::RemoveRefused;

/// etcd offers no event for "the learner caught up", so promotion is retried until it is
/// accepted, with a deadline.
async fn promote_when_in_sync(c: &Coordinator, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.promote(id).await {
            Ok(()) => return,
            Err(CoordError::Etcd { source, .. }) if Instant::now() < deadline => {
                let msg = source.to_string();
                assert!(
                    msg.contains("in sync") || msg.contains("not ready"),
                    "unexpected promote error: {msg}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("promotion never accepted: {e}"),
        }
    }
}

/// etcd refuses a member add until every voting member has been connected for 5 s (its strict
/// reconfiguration check answers "unhealthy cluster"); the joiner retries with a deadline.
async fn add_learner_when_healthy(
    c: &Coordinator,
    peer_url: &str,
) -> (u64, Vec<kubedna_controlplane::membership::MemberInfo>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.add_learner(peer_url).await {
            Ok(r) => return r,
            Err(CoordError::Etcd { source, .. })
                if Instant::now() < deadline
                    && source.to_string().contains("unhealthy cluster") =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("cannot add the learner: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_planes_join_one_at_a_time_and_quorum_is_never_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m1 = EtcdMember::plan("cp-1", dir.path(), "http");
    let initial = m1.initial();
    m1.start(&initial, "new", &[]);
    let c = Coordinator::connect(std::slice::from_ref(&m1.client_url), "lab")
        .await
        .expect("connect");
    let ttl = Duration::from_secs(10);

    let mut others = Vec::new();
    let mut cluster = vec![m1.initial()];
    for name in ["cp-2", "cp-3"] {
        let mut m = EtcdMember::plan(name, dir.path(), "http");
        // The join lock: one joiner at a time.
        let lock = c
            .acquire("join", name, ttl)
            .await
            .expect("acquire")
            .expect("lock is free");
        assert!(
            c.acquire("join", "someone-else", ttl)
                .await
                .expect("acquire")
                .is_none(),
            "two joiners at once"
        );
        let (id, members) = add_learner_when_healthy(&c, &m.peer_url).await;
        assert!(members.iter().any(|x| x.id == id && x.learner));
        cluster.push(m.initial());
        m.start(&cluster.join(","), "existing", &[]);
        promote_when_in_sync(&c, id).await;
        c.resign(lock).await.expect("release the join lock");
        others.push(m);
    }
    let members = c.members().await.expect("members");
    assert_eq!(
        members.iter().filter(|m| !m.learner).count(),
        3,
        "{members:?}"
    );

    // cp-3 dies. Removing healthy cp-2 would leave one healthy voter of two: refused.
    others[1].kill();
    let healthy = c.probe_health(&members, Duration::from_secs(2)).await;
    let id = |name: &str| {
        members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.id)
            .expect("member")
    };
    assert_eq!(healthy.len(), 2, "{healthy:?}");
    match c.remove_member(id("cp-2"), &healthy).await.expect("call") {
        Err(RemoveRefused::WouldLoseQuorum {
            healthy_after: 1,
            needed: 2,
            ..
        }) => {}
        other => panic!("a quorum-dropping removal was not refused: {other:?}"),
    }
    assert_eq!(
        c.members().await.expect("members").len(),
        3,
        "nothing was removed"
    );
    // Removing the dead member keeps a healthy majority: allowed, and etcd still serves.
    c.remove_member_within(id("cp-3"), &healthy, Duration::from_secs(20))
        .await
        .expect("call")
        .expect("allowed");
    assert_eq!(c.members().await.expect("members").len(), 2);
    assert!(matches!(
        c.init_once("cp-1", "n1")
            .await
            .expect("etcd still has quorum"),
        kubedna_controlplane::coord::InitDecision::Won { .. }
    ));
}

/// A join lock held while every member of a three-member etcd crashed and restarted in turn is
/// kept (its keep-alive retries on a fresh stream) and given back at once by `resign`: the next
/// joiner takes it well within the TTL. Seen in the lab before the fix: the client's first call
/// to a restarted member fails, the revoke was given up on that error, and the next
/// control-plane join waited a whole TTL for a lock whose holder had finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_lock_survives_member_crashes_and_is_given_back_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut members: Vec<EtcdMember> = ["cp-1", "cp-2", "cp-3"]
        .iter()
        .map(|n| EtcdMember::plan(n, dir.path(), "http"))
        .collect();
    let initial = members
        .iter()
        .map(EtcdMember::initial)
        .collect::<Vec<_>>()
        .join(",");
    // Each start returns once its member serves, which takes a quorum: start them together.
    std::thread::scope(|s| {
        for m in members.iter_mut() {
            let initial = &initial;
            s.spawn(move || m.start(initial, "new", &[]));
        }
    });
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let holder = Coordinator::connect(&urls, "lab").await.expect("connect");
    let ttl = Duration::from_secs(10);
    let lock = holder
        .acquire("join", "cp-2", ttl)
        .await
        .expect("acquire")
        .expect("the lock is free");
    for m in members.iter_mut() {
        tokio::task::block_in_place(|| {
            m.kill();
            m.start(&initial, "new", &[]);
        });
    }
    assert!(
        !lock.is_lost(),
        "the lock was lost to member crashes, quorum kept"
    );
    let next = Coordinator::connect(&urls, "lab").await.expect("connect");
    assert!(
        next.acquire("join", "cp-3", ttl)
            .await
            .ok()
            .flatten()
            .is_none(),
        "the lock must still be held before it is given back"
    );
    let resigned = Instant::now();
    holder.resign(lock).await.expect("resign");
    loop {
        if let Ok(Some(_)) = next.acquire("join", "cp-3", ttl).await {
            break;
        }
        assert!(
            resigned.elapsed() < ttl / 2,
            "the next joiner waited {:?} for a lock given back",
            resigned.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
