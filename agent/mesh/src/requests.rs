//! Application requests over the mesh, sans-IO: ids, resends, deadlines, and the duplicate
//! cache that makes a resent request run its handler once.
//!
//! Owns the bookkeeping only; [`crate::mesh::Mesh`] seals and sends the frames it asks for and
//! feeds it what arrives, so the simulator exercises the same path as the daemon. It must never
//! decide who may ask what (the handler checks `from` against the members) and never hold a
//! payload longer than a request lives.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Largest application payload carried by one [`AppFrame`]: the frame must fit one datagram.
pub const MAX_APP_PAYLOAD: usize = 1200;

/// Requests answered or in progress, kept so a resent request is not handled twice.
pub const SERVED_CACHE: usize = 256;

/// Shortest interval between resends of one request.
pub const MIN_RESEND: Duration = Duration::from_millis(50);

/// One application request or response carried over the mesh's authenticated, encrypted
/// transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppFrame {
    /// Chosen by the requester; a response carries the request's id.
    pub id: u64,
    /// What the request is about (the daemon's request kinds).
    pub kind: u8,
    /// Request, or response and its outcome.
    pub body: AppBody,
}

/// The payload of an [`AppFrame`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppBody {
    /// A request with its payload.
    Request(Vec<u8>),
    /// The handler's answer.
    Response(Vec<u8>),
    /// The handler refused or failed; a message for the requester's error (never a secret).
    Error(String),
}

impl AppBody {
    /// Bytes of payload or message.
    pub fn len(&self) -> usize {
        match self {
            AppBody::Request(p) | AppBody::Response(p) => p.len(),
            AppBody::Error(m) => m.len(),
        }
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an application request over the mesh failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// No answer in time: the peer is down, unreachable, or not in this cluster.
    #[error("no answer from {peer} to request kind {kind} within {timeout:?}: check that the peer is alive in `kubedna peers` and try again")]
    Timeout {
        /// The peer asked.
        peer: SocketAddr,
        /// Request kind.
        kind: u8,
        /// How long we waited.
        timeout: Duration,
    },
    /// The peer's handler answered with an error.
    #[error("{peer} refused request kind {kind}: {message}")]
    Refused {
        /// The peer asked.
        peer: SocketAddr,
        /// Request kind.
        kind: u8,
        /// The peer's reason.
        message: String,
    },
    /// The payload does not fit one datagram.
    #[error("request payload of {len} bytes exceeds the mesh limit of {MAX_APP_PAYLOAD} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
    },
    /// A handler for this kind is already registered on this node.
    #[error("request kind {kind} already has a handler on this node")]
    AlreadyServed {
        /// Request kind.
        kind: u8,
    },
    /// The mesh is not running (not started yet, stopped, or left).
    #[error("the mesh is not running on this node")]
    Stopped,
}

/// A request from a peer for this node's handler of `kind`; answer with
/// [`crate::mesh::Mesh::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The peer's mesh address (authenticated only as "holds the cluster key").
    pub from: SocketAddr,
    /// The requester's id.
    pub id: u64,
    /// Request kind.
    pub kind: u8,
    /// The request payload.
    pub payload: Vec<u8>,
}

/// The outcome of one of our requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The id [`crate::mesh::Mesh::request`] returned.
    pub id: u64,
    /// The answer, or why there is none.
    pub result: Result<Vec<u8>, RequestError>,
}

#[derive(Debug)]
struct Pending {
    to: SocketAddr,
    frame: AppFrame,
    resend_every: Duration,
    next_send: Instant,
    deadline: Instant,
    timeout: Duration,
}

/// What to do with a frame that arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Send this answer (from the cache) to the requester.
    Answer(AppFrame),
    /// Nothing to send (a reply matched or was ignored, a resend of a request in progress, or
    /// a new request queued for the handler).
    Nothing,
}

/// Both sides of the request protocol for one node.
#[derive(Debug)]
pub(crate) struct Requests {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// (requester, id) → the answer, or `None` while the handler works on it. Oldest first.
    served: VecDeque<((SocketAddr, u64), Option<AppBody>)>,
    incoming: VecDeque<Incoming>,
    replies: VecDeque<Reply>,
}

impl Requests {
    /// `first_id` must differ between lives of a node at one address (peers answer a repeated
    /// `(address, id)` from their cache): the mesh takes it from its random boot id.
    pub(crate) fn new(first_id: u64) -> Self {
        Self {
            next_id: first_id,
            pending: HashMap::new(),
            served: VecDeque::new(),
            incoming: VecDeque::new(),
            replies: VecDeque::new(),
        }
    }

    /// Registers a request; returns its id and the frame to send now.
    pub(crate) fn start(
        &mut self,
        to: SocketAddr,
        kind: u8,
        payload: Vec<u8>,
        timeout: Duration,
        now: Instant,
    ) -> Result<(u64, AppFrame), RequestError> {
        if payload.len() > MAX_APP_PAYLOAD {
            return Err(RequestError::TooLarge { len: payload.len() });
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let frame = AppFrame {
            id,
            kind,
            body: AppBody::Request(payload),
        };
        let resend_every = (timeout / 4).max(MIN_RESEND);
        self.pending.insert(
            id,
            Pending {
                to,
                frame: frame.clone(),
                resend_every,
                next_send: now + resend_every,
                deadline: now + timeout,
                timeout,
            },
        );
        Ok((id, frame))
    }

    /// Forgets a request whose caller stopped waiting.
    pub(crate) fn cancel(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// When [`Requests::on_timeout`] has something to do.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.next_send.min(p.deadline))
            .min()
    }

    /// Times out requests past their deadline and returns the resends due.
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Vec<(SocketAddr, AppFrame)> {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.replies.push_back(Reply {
                    id,
                    result: Err(RequestError::Timeout {
                        peer: p.to,
                        kind: p.frame.kind,
                        timeout: p.timeout,
                    }),
                });
            }
        }
        let mut resends: Vec<(u64, SocketAddr, AppFrame)> = Vec::new();
        for (id, p) in &mut self.pending {
            if p.next_send <= now {
                p.next_send = now + p.resend_every;
                resends.push((*id, p.to, p.frame.clone()));
            }
        }
        // Hash order must not leak into a simulated run.
        resends.sort_by_key(|(id, ..)| *id);
        resends.into_iter().map(|(_, to, f)| (to, f)).collect()
    }

    /// A frame from `from` arrived (authenticated).
    pub(crate) fn arrived(&mut self, from: SocketAddr, frame: AppFrame) -> Arrival {
        let AppFrame { id, kind, body } = frame;
        match body {
            AppBody::Request(payload) => {
                if let Some((_, cached)) = self.served.iter().find(|(k, _)| *k == (from, id)) {
                    // A resend: answer from the cache, or let the handler finish.
                    return match cached {
                        Some(body) => Arrival::Answer(AppFrame {
                            id,
                            kind,
                            body: body.clone(),
                        }),
                        None => Arrival::Nothing,
                    };
                }
                if self.served.len() >= SERVED_CACHE {
                    self.served.pop_front();
                }
                self.served.push_back(((from, id), None));
                self.incoming.push_back(Incoming {
                    from,
                    id,
                    kind,
                    payload,
                });
                Arrival::Nothing
            }
            AppBody::Response(payload) => {
                self.settle(from, id, Ok(payload));
                Arrival::Nothing
            }
            AppBody::Error(message) => {
                let result = Err(RequestError::Refused {
                    peer: from,
                    kind,
                    message,
                });
                self.settle(from, id, result);
                Arrival::Nothing
            }
        }
    }

    /// The handler's answer to `(to, id)`: cached for resends; returns the frame to send.
    pub(crate) fn respond(
        &mut self,
        to: SocketAddr,
        id: u64,
        kind: u8,
        result: Result<Vec<u8>, String>,
    ) -> AppFrame {
        let body = match result {
            Ok(p) if p.len() <= MAX_APP_PAYLOAD => AppBody::Response(p),
            Ok(p) => AppBody::Error(format!(
                "the answer of {} bytes exceeds the mesh limit of {MAX_APP_PAYLOAD}",
                p.len()
            )),
            Err(m) => AppBody::Error(m),
        };
        if let Some(entry) = self.served.iter_mut().find(|(k, _)| *k == (to, id)) {
            entry.1 = Some(body.clone());
        }
        AppFrame { id, kind, body }
    }

    fn settle(&mut self, from: SocketAddr, id: u64, result: Result<Vec<u8>, RequestError>) {
        // Only the peer we asked may answer.
        if self.pending.get(&id).is_some_and(|p| p.to == from) {
            self.pending.remove(&id);
            self.replies.push_back(Reply { id, result });
        }
    }

    /// The next request for a handler.
    pub(crate) fn poll_incoming(&mut self) -> Option<Incoming> {
        self.incoming.pop_front()
    }

    /// The next outcome of one of our requests.
    pub(crate) fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, i], 7946))
    }

    #[test]
    fn resends_until_answered_then_stops() {
        let t0 = Instant::now();
        let mut r = Requests::new(7);
        let (id, frame) = r
            .start(addr(2), 3, b"q".to_vec(), Duration::from_secs(4), t0)
            .expect("fits");
        assert_eq!((id, frame.id), (7, 7));
        assert_eq!(r.next_due(), Some(t0 + Duration::from_secs(1)));
        assert!(r.on_timeout(t0 + Duration::from_millis(999)).is_empty());
        let resent = r.on_timeout(t0 + Duration::from_secs(1));
        assert_eq!(resent, vec![(addr(2), frame.clone())]);
        // A response from someone else is not the answer.
        let answer = |body| AppFrame { id, kind: 3, body };
        r.arrived(addr(9), answer(AppBody::Response(b"x".to_vec())));
        assert_eq!(r.poll_reply(), None);
        r.arrived(addr(2), answer(AppBody::Response(b"a".to_vec())));
        assert_eq!(
            r.poll_reply(),
            Some(Reply {
                id,
                result: Ok(b"a".to_vec())
            })
        );
        assert_eq!(r.next_due(), None);
        assert!(r.on_timeout(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(r.poll_reply(), None);
    }

    #[test]
    fn a_request_without_answer_times_out_once() {
        let t0 = Instant::now();
        let mut r = Requests::new(1);
        let timeout = Duration::from_millis(100);
        let (id, _) = r.start(addr(2), 3, vec![], timeout, t0).expect("fits");
        // Resend floor: 50 ms even for a 100 ms timeout (not 25 ms).
        assert_eq!(r.on_timeout(t0 + Duration::from_millis(49)).len(), 0);
        assert_eq!(r.on_timeout(t0 + Duration::from_millis(50)).len(), 1);
        assert_eq!(r.on_timeout(t0 + timeout).len(), 0);
        assert_eq!(
            r.poll_reply().map(|x| (x.id, x.result)),
            Some((
                id,
                Err(RequestError::Timeout {
                    peer: addr(2),
                    kind: 3,
                    timeout
                })
            ))
        );
        assert_eq!(r.poll_reply(), None);
        assert_eq!(
            r.start(addr(2), 3, vec![0; MAX_APP_PAYLOAD + 1], timeout, t0),
            Err(RequestError::TooLarge {
                len: MAX_APP_PAYLOAD + 1
            })
        );
    }

    /// (arrivals of one request id from a requester) → what the responder does, by table.
    #[test]
    fn a_resent_request_reaches_the_handler_once_and_is_answered_from_the_cache() {
        let mut r = Requests::new(1);
        let req = |id| AppFrame {
            id,
            kind: 2,
            body: AppBody::Request(b"q".to_vec()),
        };
        assert_eq!(r.arrived(addr(1), req(40)), Arrival::Nothing);
        assert_eq!(r.poll_incoming().map(|i| i.id), Some(40));
        // Resent while the handler works: nothing, and no second delivery.
        assert_eq!(r.arrived(addr(1), req(40)), Arrival::Nothing);
        assert_eq!(r.poll_incoming(), None);
        let answer = r.respond(addr(1), 40, 2, Ok(b"a".to_vec()));
        assert_eq!(answer.body, AppBody::Response(b"a".to_vec()));
        // Resent after the answer (the answer was lost): the cached answer again.
        assert_eq!(r.arrived(addr(1), req(40)), Arrival::Answer(answer));
        assert_eq!(r.poll_incoming(), None);
        // The same id from another requester is another request.
        assert_eq!(r.arrived(addr(2), req(40)), Arrival::Nothing);
        assert_eq!(r.poll_incoming().map(|i| i.from), Some(addr(2)));
        // The cache is bounded: the oldest entries go first.
        for id in 0..SERVED_CACHE as u64 {
            r.arrived(addr(3), req(1000 + id));
        }
        while r.poll_incoming().is_some() {}
        assert_eq!(r.arrived(addr(1), req(40)), Arrival::Nothing);
        assert_eq!(
            r.poll_incoming().map(|i| i.id),
            Some(40),
            "forgotten, so new"
        );
    }

    #[test]
    fn oversized_answers_become_errors() {
        let mut r = Requests::new(1);
        let f = r.respond(addr(1), 5, 2, Ok(vec![0; MAX_APP_PAYLOAD + 1]));
        assert!(matches!(f.body, AppBody::Error(m) if m.contains("exceeds")));
    }
}
