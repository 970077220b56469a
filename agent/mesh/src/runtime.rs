//! A thin tokio driver for one [`Mesh`]: a UDP socket, the clock, and a command channel.
//!
//! Owns the I/O loop only: datagrams in, timeouts, datagrams out, events and member snapshots to
//! the daemon. All protocol decisions stay in [`Mesh`]. It must not grow protocol logic, and must
//! never log packet contents or keys. Discovery beyond static seeds (multicast beacons, provider
//! queries) is still to come; such a source calls [`Command::Announce`].

use std::io;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::mesh::{Event, MemberInfo, Mesh, MeshConfig, MeshError};
use crate::meta::NodeState;
use crate::secret::ClusterSecret;

/// What the daemon can ask of a running mesh.
#[derive(Debug)]
pub enum Command {
    /// Reply with every member we know.
    Members(oneshot::Sender<Vec<MemberInfo>>),
    /// Gossip a new lifecycle state.
    SetState(NodeState),
    /// Announce to a peer found by discovery.
    Announce(SocketAddr),
    /// Leave gracefully; the driver returns after [`Event::Left`].
    Leave,
}

/// Wall clock in ms since the epoch (dates packets against replays).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds a mesh for `socket`'s address, seeded from the OS clock and the address.
pub fn new_mesh(
    mut cfg: MeshConfig,
    socket: &UdpSocket,
    secret: &ClusterSecret,
    seed: u64,
) -> Result<Mesh, MeshError> {
    if let Ok(addr) = socket.local_addr() {
        cfg.addr = addr;
    }
    Mesh::new(cfg, secret, seed, Instant::now().into_std(), wall_ms())
}

/// Runs `mesh` on `socket` until a graceful leave completes or the command channel closes.
/// Events go to `events` (dropped if the daemon stops listening).
pub async fn drive(
    mut mesh: Mesh,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> io::Result<Mesh> {
    let mut buf = vec![0u8; 65_536];
    mesh.join(Instant::now().into_std());
    loop {
        flush(&mut mesh, &socket).await;
        let mut left = false;
        while let Some(event) = mesh.poll_event() {
            left |= event == Event::Left;
            // A daemon that stopped listening must not stall the mesh.
            let _ = events.try_send(event);
        }
        if left {
            return Ok(mesh);
        }
        let deadline = mesh.poll_timeout().map(Instant::from_std);
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, from) = received?;
                // Rejected packets are counted by the mesh; nothing else to do with them.
                let _ = mesh.handle_packet(from, &buf[..len], Instant::now().into_std());
            }
            () = sleep_until(deadline) => {
                mesh.handle_timeout(Instant::now().into_std());
            }
            command = commands.recv() => {
                let now = Instant::now().into_std();
                match command {
                    Some(Command::Members(reply)) => {
                        let _ = reply.send(mesh.members());
                    }
                    Some(Command::SetState(state)) => mesh.set_state(state, now),
                    Some(Command::Announce(addr)) => mesh.announce(addr, now),
                    Some(Command::Leave) => mesh.leave(now),
                    None => return Ok(mesh),
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn flush(mesh: &mut Mesh, socket: &UdpSocket) {
    while let Some(t) = mesh.poll_transmit() {
        // Reliable (anti-entropy) messages go as one datagram until the TCP path exists; a
        // send error (unreachable peer, oversized datagram) is what failure detection is for.
        let _ = socket.send_to(&t.bytes, t.to).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::sim_meta;

    #[tokio::test]
    async fn two_nodes_on_loopback_find_each_other_and_leave() {
        let secret = ClusterSecret::new(b"loopback-test-cluster-secret".to_vec()).expect("long");
        let a_sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let b_sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let b_addr = b_sock.local_addr().expect("addr");
        let unset: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut a_cfg = MeshConfig::lan("loop", unset, sim_meta(0));
        a_cfg.seeds = vec![b_addr];
        let b_cfg = MeshConfig::lan("loop", unset, sim_meta(1));
        let a = new_mesh(a_cfg, &a_sock, &secret, 1).expect("valid");
        let b = new_mesh(b_cfg, &b_sock, &secret, 2).expect("valid");
        let (a_cmd, a_rx) = mpsc::channel(8);
        let (b_cmd, b_rx) = mpsc::channel(8);
        let (a_ev_tx, mut a_ev) = mpsc::channel(64);
        let (b_ev_tx, mut b_ev) = mpsc::channel(64);
        let a_task = tokio::spawn(drive(a, a_sock, a_rx, a_ev_tx));
        let b_task = tokio::spawn(drive(b, b_sock, b_rx, b_ev_tx));
        let up = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = a_ev.recv().await {
                if matches!(e, Event::MemberUp(id) if id.addr == b_addr) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(up, Ok(true), "a saw b");
        let (tx, rx) = oneshot::channel();
        a_cmd.send(Command::Members(tx)).await.expect("running");
        let members = rx.await.expect("reply");
        assert_eq!(members.len(), 1);
        a_cmd.send(Command::Leave).await.expect("running");
        let a_mesh = tokio::time::timeout(Duration::from_secs(10), a_task)
            .await
            .expect("leaves in time")
            .expect("no panic")
            .expect("no io error");
        assert_eq!(a_mesh.security_counters().dropped(), 0);
        let left = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = b_ev.recv().await {
                if let Event::MemberDown(_, reason) = e {
                    return Some(reason);
                }
            }
            None
        })
        .await;
        assert_eq!(left, Ok(Some(crate::mesh::DownReason::Left)));
        drop(b_cmd);
        let _ = b_task.await;
    }
}
