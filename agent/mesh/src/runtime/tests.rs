//! Tests of [`super`] (runtime.rs).

use std::time::Duration;

use super::*;
use crate::sim::sim_meta;

const SECRET: &[u8] = b"loopback-test-cluster-secret-0123456789";

async fn node(
    i: usize,
    seeds: Vec<SocketAddr>,
    cluster: &str,
) -> (MeshHandle, JoinHandle<io::Result<Mesh>>) {
    node_syncing_every(i, seeds, cluster, None).await
}

async fn node_syncing_every(
    i: usize,
    seeds: Vec<SocketAddr>,
    cluster: &str,
    push_pull: Option<Duration>,
) -> (MeshHandle, JoinHandle<io::Result<Mesh>>) {
    let secret = ClusterSecret::new(SECRET.to_vec()).expect("long");
    // The stream listener needs the same port on TCP. A port from `bind(0)` lies in the
    // ephemeral range, where another test's outgoing connection may already hold it on TCP:
    // take one that is free on both (production uses 7946, below that range).
    let sock = loop {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        if std::net::TcpListener::bind(addr).is_ok() {
            break sock;
        }
    };
    let unset: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut cfg = MeshConfig::lan(cluster, unset, sim_meta(i));
    cfg.seeds = seeds;
    if let Some(every) = push_pull {
        cfg.push_pull_interval = every;
    }
    let mesh = new_mesh(cfg, &sock, &secret, i as u64 + 1).expect("valid");
    spawn(mesh, sock)
}

async fn until_active(h: &MeshHandle, n: usize) {
    let mut active = h.active_members();
    tokio::time::timeout(Duration::from_secs(30), active.wait_for(|a| *a >= n))
        .await
        .expect("joined in time")
        .expect("running");
}

#[tokio::test]
async fn syncs_too_large_for_a_datagram_go_over_the_stream_and_metadata_converges() {
    // Seventy nodes syncing often: a sync carries the whole member list, about 22 bytes a
    // member, so past about 60 members every sync is beyond one unfragmented datagram.
    const N: usize = 70;
    let every = Some(Duration::from_secs(1));
    let (seed, _seed_task) = node_syncing_every(0, vec![], "stream", every).await;
    let mut nodes = vec![];
    for i in 1..N {
        nodes.push(node_syncing_every(i, vec![seed.local_addr()], "stream", every).await);
    }
    let handles: Vec<&MeshHandle> = std::iter::once(&seed)
        .chain(nodes.iter().map(|(h, _)| h))
        .collect();
    for h in &handles {
        until_active(h, N - 1).await;
    }
    let converged = async {
        loop {
            let mut all = true;
            for h in &handles {
                let members = h.members().await.expect("running");
                // A node falsely failed under load rejoins under a new generation; its
                // old entry stays down, so count the live ones.
                let live = members
                    .iter()
                    .filter(|m| m.liveness == crate::mesh::Liveness::Alive);
                all &= live.filter(|m| m.meta.is_some()).count() >= N - 1;
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), converged)
        .await
        .expect("every node holds every other node's metadata");
    let total = || {
        handles.iter().fold(StreamCounters::default(), |mut t, h| {
            let c = h.stream_counters();
            t.frames_sent += c.frames_sent;
            t.frames_received += c.frames_received;
            t.fallbacks += c.fallbacks;
            t.refused += c.refused;
            t
        })
    };
    // Each node syncs every few seconds (the interval stretches above 32 members).
    let streamed = async {
        while total().frames_received < N as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let in_time = tokio::time::timeout(Duration::from_secs(30), streamed).await;
    let total = total();
    assert!(
        in_time.is_ok(),
        "syncs did not go over the stream: {total:?}"
    );
    assert_eq!((total.fallbacks, total.refused), (0, 0), "{total:?}");
    for h in &handles {
        assert_eq!(h.counters().await.expect("running").dropped(), 0);
    }
}

#[tokio::test]
async fn two_nodes_on_loopback_find_each_other_and_leave() {
    let (b, b_task) = node(1, vec![], "loop").await;
    let (a, a_task) = node(0, vec![b.local_addr()], "loop").await;
    let mut b_events = b.subscribe();
    until_active(&a, 1).await;
    let members = a.members().await.expect("running");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].id.addr, b.local_addr());
    a.leave().await.expect("running");
    let a_mesh = tokio::time::timeout(Duration::from_secs(10), a_task)
        .await
        .expect("leaves in time")
        .expect("no panic")
        .expect("no io error");
    assert_eq!(a_mesh.security_counters().dropped(), 0);
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::MemberDown(_, reason)) = b_events.recv().await {
                return reason;
            }
        }
    })
    .await;
    assert_eq!(left, Ok(crate::mesh::DownReason::Left));
    drop(b);
    let _ = b_task.await;
}

#[tokio::test]
async fn requests_are_answered_by_the_peers_handler_and_refused_without_one() {
    let (b, _b_task) = node(1, vec![], "req").await;
    let (a, _a_task) = node(0, vec![b.local_addr()], "req").await;
    until_active(&a, 1).await;
    let mut served = b.serve(7, 4).expect("first handler");
    assert_eq!(
        b.serve(7, 4).err(),
        Some(RequestError::AlreadyServed { kind: 7 })
    );
    let a_addr = a.local_addr();
    tokio::spawn(async move {
        while let Some(req) = served.recv().await {
            assert_eq!(req.from, a_addr);
            let mut answer = b"echo:".to_vec();
            answer.extend_from_slice(&req.payload);
            req.respond(Ok(answer));
        }
    });
    let answer = a
        .request(
            b.local_addr(),
            7,
            b"join material please".to_vec(),
            Duration::from_secs(5),
        )
        .await
        .expect("answered");
    assert_eq!(answer, b"echo:join material please");
    let refused = a
        .request(b.local_addr(), 9, vec![], Duration::from_secs(5))
        .await
        .expect_err("nobody serves kind 9");
    assert!(
        matches!(&refused, RequestError::Refused { kind: 9, message, .. } if message.contains("no handler")),
        "{refused}"
    );
    let too_big = a
        .request(
            b.local_addr(),
            7,
            vec![0; MAX_APP_PAYLOAD + 1],
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(
        too_big,
        Err(RequestError::TooLarge {
            len: MAX_APP_PAYLOAD + 1
        })
    );
}

#[tokio::test]
async fn a_restarted_requester_at_the_same_address_is_answered_afresh() {
    let (b, _b_task) = node(1, vec![], "restart").await;
    let mut served = b.serve(7, 4).expect("handler");
    tokio::spawn(async move {
        let mut calls = 0u32;
        while let Some(req) = served.recv().await {
            calls += 1;
            req.respond(Ok(calls.to_le_bytes().to_vec()));
        }
    });
    let secret = ClusterSecret::new(SECRET.to_vec()).expect("long");
    let mut addr: Option<SocketAddr> = None;
    let mut answers = Vec::new();
    for life in 0..2u64 {
        let sock = UdpSocket::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .expect("bind (same port in the second life)");
        addr = sock.local_addr().ok();
        let unset: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut cfg = MeshConfig::lan("restart", unset, sim_meta(0));
        cfg.seeds = vec![b.local_addr()];
        let mesh = new_mesh(cfg, &sock, &secret, 10 + life).expect("valid");
        let (a, a_task) = spawn(mesh, sock);
        until_active(&a, 1).await;
        let answer = a
            .request(
                b.local_addr(),
                7,
                b"started?".to_vec(),
                Duration::from_secs(5),
            )
            .await
            .expect("answered");
        answers.push(answer);
        a.leave().await.expect("running");
        let _ = tokio::time::timeout(Duration::from_secs(10), a_task).await;
    }
    assert_eq!(
        answers,
        vec![1u32.to_le_bytes().to_vec(), 2u32.to_le_bytes().to_vec()],
        "the second life must reach the handler, not the first life's cached answer"
    );
}

#[tokio::test]
async fn a_request_to_another_cluster_times_out_and_its_packets_are_dropped() {
    let (other, _o_task) = node(1, vec![], "other-cluster").await;
    let mut served = other.serve(7, 4).expect("handler");
    let (a, _a_task) = node(0, vec![], "req2").await;
    let err = a
        .request(
            other.local_addr(),
            7,
            b"x".to_vec(),
            Duration::from_millis(600),
        )
        .await
        .expect_err("no answer across clusters");
    assert!(
        matches!(err, RequestError::Timeout { kind: 7, .. }),
        "{err}"
    );
    assert!(
        served.try_recv().is_err(),
        "the foreign request never reached the handler"
    );
    let counters = other.counters().await.expect("running");
    assert!(counters.foreign_cluster >= 1, "{counters:?}");
}
