//! The request/reply API of [`Mesh`]: a caller's request to one peer (resent with the same id
//! until answered or timed out), the requests peers send us for a handler (each once, however
//! often resent), and our answers. The bookkeeping (ids, resends, the duplicate cache) is
//! [`crate::requests`]; this module only seals its frames into mesh datagrams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

impl Mesh {
    /// Sends `payload` to the peer at `to` (its mesh address) as a request of `kind` and
    /// returns its id; the outcome comes from [`Mesh::poll_reply`] with that id: the answer,
    /// the peer's refusal, or a timeout after `timeout`. Until answered the request is resent
    /// (same id) every `timeout / 4` (at least 50 ms); the peer answers a resend from its
    /// cache, so its handler runs once.
    pub fn request(
        &mut self,
        to: SocketAddr,
        kind: u8,
        payload: Vec<u8>,
        timeout: Duration,
        now: Instant,
    ) -> Result<u64, RequestError> {
        if self.left {
            return Err(RequestError::Stopped);
        }
        let (id, frame) = self.requests.start(to, kind, payload, timeout, now)?;
        self.send_app(to, &frame, now);
        Ok(id)
    }

    /// Stops resending request `id` (its caller gave up); no reply will come for it.
    pub fn cancel_request(&mut self, id: u64) {
        self.requests.cancel(id);
    }

    /// The next outcome of one of our requests.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.requests.poll_reply()
    }

    /// The next request from a peer for a handler (each request once, however often resent).
    /// Answer it with [`Mesh::respond`]; until then resends are ignored.
    pub fn poll_request(&mut self) -> Option<Incoming> {
        self.requests.poll_incoming()
    }

    /// Answers request `id` of `to`: `Ok(payload)` (at most [`MAX_APP_PAYLOAD`] bytes, else an
    /// error is sent) or `Err(message)` for the requester's error (never a secret). The answer
    /// is kept for resends of the request.
    pub fn respond(
        &mut self,
        to: SocketAddr,
        id: u64,
        kind: u8,
        result: Result<Vec<u8>, String>,
        now: Instant,
    ) {
        let frame = self.requests.respond(to, id, kind, result);
        self.send_app(to, &frame, now);
    }

    /// Seals `frame` for `to` and queues it as one datagram (not after we left).
    pub(super) fn send_app(&mut self, to: SocketAddr, frame: &AppFrame, now: Instant) {
        if frame.body.len() > MAX_APP_PAYLOAD || self.left {
            return;
        }
        if let Ok(bytes) = postcard::to_allocvec(frame) {
            self.send_body(to, KIND_APP, &bytes, false, now);
        }
    }
}
