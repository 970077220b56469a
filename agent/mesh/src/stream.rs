//! The stream path for mesh packets too large for one datagram: anti-entropy syncs, which grow
//! with the member list (memberlist sends its push/pull over TCP for the same reason).
//!
//! Owns a TCP listener on the mesh's own address (same IP and port as the UDP socket) and the
//! sending of one frame per connection. A frame carries an already sealed packet, so the stream
//! adds no trust of its own: what arrives is handed to [`crate::Mesh::handle_packet`] exactly like
//! a datagram, where it is authenticated, checked for replay and counted. The frame header names
//! the sender's mesh port, because a connection's source port is ephemeral and the mesh knows
//! peers by their datagram address; a lie there gains nothing the sealed packet does not already
//! allow over UDP.
//!
//! Frame: `KDNS` (4 bytes), sender's mesh port (u16 BE), length (u32 BE), sealed packet.
//! Unauthenticated connections are bounded: at most [`MAX_CONNECTIONS`] at once, each read
//! within [`READ_TIMEOUT`] and no larger than [`MAX_FRAME`]. When a connection cannot be made
//! the packet goes as a datagram if it fits one, so a peer without the listener still syncs.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

const MAGIC: &[u8; 4] = b"KDNS";
/// Packets larger than this go over the stream: an IPv4 datagram this size plus headers fits a
/// 1500-byte MTU without fragmentation.
pub const DATAGRAM_LIMIT: usize = 1400;
/// Largest frame accepted (a sync of tens of thousands of members).
pub const MAX_FRAME: usize = 8 << 20;
/// Connections read at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// A frame must arrive whole within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting and writing one frame must finish within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest UDP payload, for the fallback.
const MAX_DATAGRAM: usize = 65_507;

/// Counters of the stream path, for tests and metrics. Monotonic.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Frames written whole.
    pub frames_sent: AtomicU64,
    /// Frames read whole and handed to the mesh.
    pub frames_received: AtomicU64,
    /// Large packets sent as a datagram because no connection could be made.
    pub fallbacks: AtomicU64,
    /// Connections closed for a bad header, an oversized frame or a timeout.
    pub refused: AtomicU64,
}

/// A snapshot of [`StreamStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounters {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub fallbacks: u64,
    pub refused: u64,
}

impl StreamStats {
    pub fn snapshot(&self) -> StreamCounters {
        StreamCounters {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// The listener's task; aborted when dropped, so it ends with the mesh driver.
#[derive(Debug)]
pub struct Listener {
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `addr` (the mesh's datagram address) and hands each frame, with the sender's mesh
/// address, to `frames`. Fails only when the port cannot be bound.
pub fn listen(
    addr: SocketAddr,
    frames: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    stats: Arc<StreamStats>,
) -> io::Result<Listener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((conn, peer)) = listener.accept().await else {
                continue;
            };
            let frames = frames.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(READ_TIMEOUT, read_frame(conn)).await {
                    Ok(Ok((port, bytes))) => {
                        stats.frames_received.fetch_add(1, Ordering::Relaxed);
                        // A full queue means the mesh is behind; dropping a sync is harmless.
                        let _ = frames.try_send((SocketAddr::new(peer.ip(), port), bytes));
                    }
                    _ => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    Ok(Listener { task })
}

async fn read_frame(mut conn: TcpStream) -> io::Result<(u16, Vec<u8>)> {
    let mut header = [0u8; 10];
    conn.read_exact(&mut header).await?;
    if &header[..4] != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad magic"));
    }
    let port = u16::from_be_bytes([header[4], header[5]]);
    let len = u32::from_be_bytes([header[6], header[7], header[8], header[9]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame size"));
    }
    let mut bytes = vec![0u8; len];
    conn.read_exact(&mut bytes).await?;
    Ok((port, bytes))
}

/// Encodes one frame.
pub fn frame(own_port: u16, packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packet.len() + 10);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&own_port.to_be_bytes());
    out.extend_from_slice(&(packet.len() as u32).to_be_bytes());
    out.extend_from_slice(packet);
    out
}

/// Sends `packet` to `to` over a new connection in the background; if that fails, as a datagram
/// on `fallback` when it fits one.
pub fn send(
    to: SocketAddr,
    own_port: u16,
    packet: Vec<u8>,
    fallback: Arc<UdpSocket>,
    stats: Arc<StreamStats>,
) {
    tokio::spawn(async move {
        let framed = frame(own_port, &packet);
        let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
            let mut conn = TcpStream::connect(to).await?;
            conn.write_all(&framed).await?;
            conn.shutdown().await
        })
        .await;
        if matches!(sent, Ok(Ok(()))) {
            stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        } else if packet.len() <= MAX_DATAGRAM {
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            // Unreachable peers are the failure detector's business.
            let _ = fallback.send_to(&packet, to).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener() -> (
        Listener,
        SocketAddr,
        mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        Arc<StreamStats>,
    ) {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel(8);
        let stats = Arc::new(StreamStats::default());
        let l = listen(addr, tx, stats.clone()).expect("listen");
        (l, addr, rx, stats)
    }

    #[tokio::test]
    async fn a_frame_too_big_for_a_datagram_arrives_whole_from_the_senders_mesh_port() {
        let (_l, addr, mut rx, stats) = listener().await;
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let packet: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = Arc::new(StreamStats::default());
        send(addr, 7946, packet.clone(), udp, sent.clone());
        let (from, bytes) = rx.recv().await.expect("frame");
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], 7946)));
        assert_eq!(bytes, packet);
        assert_eq!(stats.snapshot().frames_received, 1);
    }

    #[tokio::test]
    async fn bad_magic_oversize_and_truncated_frames_are_refused_not_delivered() {
        let (_l, addr, mut rx, stats) = listener().await;
        let mut bad_magic = frame(1, b"x");
        bad_magic[0] = b'X';
        let mut oversize = frame(1, b"x");
        oversize[6..10].copy_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        let truncated = frame(1, b"hello")[..12].to_vec();
        for bytes in [bad_magic, oversize, truncated] {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(&bytes).await.expect("write");
            c.shutdown().await.expect("shutdown");
        }
        // Then a good one: it is the only thing delivered.
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(&frame(9, b"good")).await.expect("write");
        c.shutdown().await.expect("shutdown");
        let (from, bytes) = rx.recv().await.expect("frame");
        assert_eq!((from.port(), bytes.as_slice()), (9, &b"good"[..]));
        assert!(rx.try_recv().is_err());
        // Each refusal is counted once its connection is done with.
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while stats.snapshot().refused < 3 && tokio::time::Instant::now() < until {
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.snapshot().refused, 3);
    }

    #[tokio::test]
    async fn with_no_listener_a_packet_that_fits_falls_back_to_a_datagram() {
        let udp_peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = udp_peer.local_addr().expect("addr");
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let stats = Arc::new(StreamStats::default());
        send(to, 1, vec![7u8; 3000], udp, stats.clone());
        let mut buf = vec![0u8; 65_536];
        let (len, _) = udp_peer.recv_from(&mut buf).await.expect("datagram");
        assert_eq!(&buf[..len], &[7u8; 3000][..]);
        assert_eq!(stats.snapshot().fallbacks, 1);
    }
}
