//! One authenticated connection to another node, as this node's side of the
//! [`Link`] to it: a bounded queue of encoded frames, and one table of the calls
//! waiting for the peer's answer (see `session` for the connection's tasks).
//!
//! When the link ends, for whatever reason, every call waiting on it fails at
//! once with `NodeDown`: callers never wait for their own timeout on a dead node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::{timeout_at, Instant};

use super::outbox::{Flush, Outbox, Refused};
use super::wire::{self, Control, Offer, RequestHead, ONE_WAY, TO_WORKER};
use crate::error::ServiceError;
use crate::pubsub::PeerSubscriptions;
use crate::status::NodeStatus;
use crate::transport::{self, Answer, Call, Link, Pending};

/// A live link to node `name`.
pub(crate) struct Peer {
    pub(crate) name: String,
    /// What waits to be written to the peer (see [`Outbox`]).
    outbox: Arc<Outbox>,
    max_frame: usize,
    next_id: AtomicU64,
    /// The calls waiting for the peer's answer, by id.
    pending: Mutex<HashMap<u64, Waiter>>,
    /// The peer is draining: no new requests go to it.
    pub(crate) leaving: AtomicBool,
    /// At most this many bytes wait to be written (`bridge.queue_bytes`).
    queue_bytes: u64,
    /// Orders routed requests against [`Control::LeavingAck`]: none is queued
    /// after the answer that says none will come.
    order: parking_lot::RwLock<()>,
    pub(super) closed: AtomicBool,
    pub(super) close: Notify,
    /// What the peer runs, and how many of our requests each service holds now.
    pub(crate) offers: Mutex<Vec<(Offer, Arc<AtomicU64>)>>,
    /// The topic prefixes the peer's subscribers hold, with their counts.
    pub(crate) subscriptions: PeerSubscriptions,
    /// A change to this node's subscriptions could not be queued to the peer: it
    /// gets the whole table again (see [`super::state::Bridge::resync`]), and no change until then.
    pub(crate) resync: AtomicBool,
}

/// A call waiting for the peer's answer.
pub(super) enum Waiter {
    /// A request or a cluster operation: the answer's JSON.
    Reply(oneshot::Sender<Answer>),
    /// [`Control::StatusRequest`].
    Status(oneshot::Sender<NodeStatus>),
    /// [`Control::Kill`] or [`Control::KillNode`].
    Kill(oneshot::Sender<Result<(), ServiceError>>),
    /// [`Control::Leaving`].
    Leave(oneshot::Sender<()>),
    /// [`Control::Admin`].
    Admin(oneshot::Sender<Result<serde_json::Value, ServiceError>>),
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("name", &self.name).finish()
    }
}

impl Peer {
    /// A link to node `name` whose frames go to `outbox`.
    pub(super) fn new(
        name: String,
        outbox: Arc<Outbox>,
        config: &crate::config::BridgeSection,
    ) -> Peer {
        Peer {
            name,
            outbox,
            max_frame: config.max_frame,
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
            leaving: AtomicBool::new(false),
            queue_bytes: config.queue_bytes as u64,
            order: parking_lot::RwLock::new(()),
            closed: AtomicBool::new(false),
            close: Notify::new(),
            offers: Mutex::default(),
            subscriptions: PeerSubscriptions::default(),
            resync: AtomicBool::new(false),
        }
    }

    pub(super) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Whether everything queued for the peer has been written.
    pub(crate) fn flushed(&self) -> bool {
        self.outbox.unsent() == 0
    }

    /// Whether at most half of `bridge.queue_bytes` waits to be written.
    pub(crate) fn half_empty(&self) -> bool {
        self.outbox.unsent() <= self.queue_bytes / 2
    }

    pub(crate) fn is_up(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Ends the link; the session notices and fails what waits on it.
    pub(crate) fn shut(&self) {
        self.closed.store(true, Ordering::Release);
        // At once, not only in the link's task: when the bridge stops, its thread
        // may stop before that task runs again.
        self.fail_pending("closed by this node");
        self.close.notify_one();
    }

    pub(crate) fn set_offers(&self, offers: &[Offer]) {
        let mut current = self.offers.lock();
        let kept: Vec<_> = offers
            .iter()
            .map(|offer| {
                let load = current
                    .iter()
                    .find(|(o, _)| o.name == offer.name)
                    .map(|(_, load)| load.clone())
                    .unwrap_or_default();
                (offer.clone(), load)
            })
            .collect();
        *current = kept;
    }

    /// How many of the peer's subscribers want `topic`.
    pub(crate) fn subscribers(&self, topic: &str) -> u32 {
        self.subscriptions.matching(topic)
    }

    /// The peer's offer of `service` and our load on it.
    pub(crate) fn offer(&self, service: &str) -> Option<(Offer, Arc<AtomicU64>)> {
        self.offers
            .lock()
            .iter()
            .find(|(o, _)| o.name == service)
            .cloned()
    }

    fn down_error(&self, why: &str) -> ServiceError {
        transport::node_down(&self.name, why)
    }

    /// Queues an encoded frame, written once the sender's tick is done (see
    /// [`Outbox`]); `Overloaded` when the send queue holds `bridge.queue` frames
    /// or this frame would take it past `bridge.queue_bytes` bytes. A frame always
    /// fits a queue with nothing unwritten, whatever its size.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), ServiceError> {
        self.send_with(&frame, Flush::Soon)
    }

    /// Queues an encoded frame, to be written as `flush` says.
    pub(super) fn send_with(&self, frame: &[u8], flush: Flush) -> Result<(), ServiceError> {
        if !self.is_up() {
            return Err(self.down_error("its link is closed"));
        }
        self.outbox
            .push(frame, flush)
            .map_err(|refused| match refused {
                Refused::Closed => self.down_error("its link is closed"),
                Refused::Frames(frames) => ServiceError::overloaded(format!(
                    "the send queue to node {} is full: {frames} frames wait to be written \
                 (bridge.queue)",
                    self.name
                )),
                Refused::Bytes(bytes) => ServiceError::overloaded(format!(
                    "the send queue to node {} is full: {bytes} bytes wait to be written, \
                 at most {} (bridge.queue_bytes)",
                    self.name, self.queue_bytes
                )),
            })
    }

    /// Encodes and queues a control message.
    pub(super) fn send_control(&self, control: &Control) -> Result<(), ServiceError> {
        let mut frame = BytesMut::new();
        control
            .encode(&mut frame, self.max_frame)
            .map_err(|e| ServiceError::bad_request(e.to_string()))?;
        self.send(frame.freeze())
    }

    /// Numbers a new call and puts its waiter in the table.
    fn wait_for(&self, waiter: Waiter) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(id, waiter);
        id
    }

    /// Takes the waiter of call `id` out of the table, if it is of the kind
    /// `kind` picks; an answer of another kind leaves the call waiting.
    pub(super) fn answered<T>(
        &self,
        id: u64,
        kind: impl FnOnce(Waiter) -> Result<T, Waiter>,
    ) -> Option<T> {
        let mut pending = self.pending.lock();
        let waiter = pending.remove(&id)?;
        match kind(waiter) {
            Ok(found) => Some(found),
            Err(other) => {
                pending.insert(id, other);
                None
            }
        }
    }

    /// Queues a request frame, unless it is for any worker and the peer is
    /// leaving (see [`transport::not_sent`]).
    fn send_request(
        &self,
        call: Call<'_>,
        id: u64,
        flags: u8,
        payload: &[u8],
    ) -> Result<(), ServiceError> {
        let (flags, worker) = match call.worker {
            Some(worker) => (flags | TO_WORKER, worker),
            None => (flags, 0),
        };
        let head = RequestHead {
            id,
            timeout_ms: call.timeout_ms(),
            flags,
            worker,
            trace: call.trace,
            service: call.service,
            subject: call.subject,
        };
        let mut frame = BytesMut::with_capacity(64 + payload.len());
        wire::encode_request(&mut frame, self.max_frame, head, payload).map_err(|e| {
            ServiceError::bad_request(format!("cannot send to node {}: {e}", self.name))
        })?;
        let _order = self.order.read();
        if call.worker.is_none() && self.leaving.load(Ordering::Acquire) {
            return Err(transport::leaving(&self.name));
        }
        // A caller alone on the link (its call the only one waiting) has its
        // frame written at once; with company, frames of the same tick go out
        // together.
        let flush = if self.pending.lock().len() <= 1 {
            Flush::Now
        } else {
            Flush::Soon
        };
        self.send_with(&frame, flush)
    }

    /// Queues a cluster operation frame.
    fn send_cluster(&self, id: u64, one_way: bool, op: &[u8]) -> Result<(), ServiceError> {
        let mut frame = BytesMut::with_capacity(16 + op.len());
        wire::encode_cluster(&mut frame, self.max_frame, id, one_way, op).map_err(|e| {
            ServiceError::bad_request(format!("cannot send to node {}: {e}", self.name))
        })?;
        self.send(frame.freeze())
    }

    /// Sends a call numbered by [`wait_for`](Self::wait_for) with `send`; the
    /// waiter leaves the table if it could not be sent.
    fn call(
        &self,
        send: impl FnOnce(u64) -> Result<(), ServiceError>,
    ) -> Result<Pending, ServiceError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, pending) = Pending::new(id);
        self.pending.lock().insert(id, Waiter::Reply(tx));
        if let Err(e) = send(id) {
            self.pending.lock().remove(&id);
            return Err(e);
        }
        Ok(pending)
    }

    /// Asks the peer for its status, waiting until `deadline`.
    pub(crate) async fn status(&self, deadline: Instant) -> Option<NodeStatus> {
        let (tx, rx) = oneshot::channel();
        let id = self.wait_for(Waiter::Status(tx));
        if self.send_control(&Control::StatusRequest { id }).is_err() {
            self.pending.lock().remove(&id);
            return None;
        }
        let status = timeout_at(deadline, rx).await.ok()?.ok();
        self.pending.lock().remove(&id);
        status
    }

    /// Tells the peer that this node is leaving, and waits until `deadline` for its
    /// answer: after it, no new request from the peer comes.
    pub(crate) async fn leave(&self, deadline: Instant) {
        let (tx, rx) = oneshot::channel();
        let id = self.wait_for(Waiter::Leave(tx));
        let sent = self.send_control(&Control::Leaving { id }).is_ok();
        if sent && timeout_at(deadline, rx).await.is_err() {
            log::warn!(
                "node {} did not answer that this node is leaving",
                self.name
            );
        }
        self.pending.lock().remove(&id);
    }

    /// Sends the control message `control` numbers, which the peer answers with a
    /// [`Control::KillReply`], and waits until `deadline` for that answer.
    async fn kill_with(
        &self,
        control: impl FnOnce(u64) -> Control,
        deadline: Instant,
    ) -> Result<(), ServiceError> {
        self.ask(Waiter::Kill, control, "the kill", deadline).await
    }

    /// Sends an operator's command and waits until `deadline` for its answer.
    async fn admin(
        &self,
        op: serde_json::Value,
        deadline: Instant,
    ) -> Result<serde_json::Value, ServiceError> {
        let control = |id| Control::Admin { id, op };
        self.ask(Waiter::Admin, control, "its command", deadline)
            .await
    }

    /// Sends the control message `control` numbers, waiting as `waiter` for the
    /// answer (to `what`) until `deadline`.
    async fn ask<T>(
        &self,
        waiter: impl FnOnce(oneshot::Sender<Result<T, ServiceError>>) -> Waiter,
        control: impl FnOnce(u64) -> Control,
        what: &str,
        deadline: Instant,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        let id = self.wait_for(waiter(tx));
        if let Err(e) = self.send_control(&control(id)) {
            self.pending.lock().remove(&id);
            return Err(e);
        }
        let answer = timeout_at(deadline, rx).await;
        self.pending.lock().remove(&id);
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.down_error("its link closed")),
            Err(_) => Err(ServiceError::timeout(format!(
                "node {} did not answer {what} in time",
                self.name
            ))),
        }
    }

    /// Completes the call a reply answers.
    pub(super) fn complete(&self, reply: wire::ReplyFrame) {
        let id = reply.id;
        let waiter = self.answered(id, |w| match w {
            Waiter::Reply(tx) => Ok(tx),
            other => Err(other),
        });
        if let Some(waiter) = waiter {
            // The caller may have timed out meanwhile: its answer is dropped.
            let _ = waiter.send(reply.into_result());
        }
    }

    /// The peer is leaving: no new request for any worker goes to it once this
    /// returns. Answers it with `answer`, queued in turn with routed requests.
    pub(super) fn left(&self, answer: &Control) {
        log::info!(
            "bridge: node {} is leaving; no new requests go to it",
            self.name
        );
        let _order = self.order.write();
        self.leaving.store(true, Ordering::Release);
        let _ = self.send_control(answer);
    }

    pub(super) fn fail_pending(&self, why: &str) {
        let waiting: Vec<_> = self.pending.lock().drain().collect();
        for (_, waiter) in waiting {
            match waiter {
                Waiter::Reply(tx) => drop(tx.send(Err(self.down_error(why)))),
                Waiter::Kill(tx) => drop(tx.send(Err(self.down_error(why)))),
                Waiter::Admin(tx) => drop(tx.send(Err(self.down_error(why)))),
                Waiter::Status(_) | Waiter::Leave(_) => {}
            }
        }
    }
}

impl Link for Peer {
    fn node(&self) -> &str {
        &self.name
    }

    fn offer(&self, service: &str) -> Option<(Offer, Arc<AtomicU64>)> {
        Peer::offer(self, service)
    }

    fn request(&self, call: Call<'_>, payload: &[u8]) -> Result<Pending, ServiceError> {
        self.call(|id| self.send_request(call, id, 0, payload))
    }

    fn tell(&self, call: Call<'_>, payload: &[u8]) -> Result<(), ServiceError> {
        self.send_request(call, 0, ONE_WAY, payload)
    }

    fn forget(&self, id: u64) {
        self.pending.lock().remove(&id);
    }

    fn cluster(&self, op: &[u8]) -> Result<Pending, ServiceError> {
        self.call(|id| self.send_cluster(id, false, op))
    }

    fn status(&self, deadline: Instant) -> BoxFuture<'_, Option<NodeStatus>> {
        Box::pin(Peer::status(self, deadline))
    }

    fn kill(&self, worker: &str, deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>> {
        let worker = worker.to_string();
        Box::pin(self.kill_with(move |id| Control::Kill { id, worker }, deadline))
    }

    fn kill_node(&self, code: i32, deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>> {
        Box::pin(self.kill_with(move |id| Control::KillNode { id, code }, deadline))
    }

    fn admin(
        &self,
        op: serde_json::Value,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<serde_json::Value, ServiceError>> {
        Box::pin(Peer::admin(self, op, deadline))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;

    fn peer() -> Peer {
        let config: crate::config::BridgeSection = serde_json::from_value(serde_json::json!({
            "listen": "127.0.0.1:0",
            "secret_file": "unused",
        }))
        .expect("a bridge section");
        let outbox = Outbox::new(None, 16, 1 << 20, Arc::default());
        Peer::new("b".into(), Arc::new(outbox), &config)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[actix_rt::test]
    async fn one_table_answers_each_call_by_its_kind_and_fails_the_rest_when_the_link_ends() {
        let peer = peer();
        let call = Call {
            service: "calc",
            subject: "add",
            timeout: Duration::from_secs(1),
            worker: None,
            trace: None,
        };
        let pending = Link::request(&peer, call, b"{}").expect("queued");
        assert!(!peer.flushed(), "the request frame is queued");
        // An answer of another kind with the request's id leaves it waiting.
        let status = peer.answered(pending.id, |w| match w {
            Waiter::Status(tx) => Ok(tx),
            other => Err(other),
        });
        assert!(status.is_none());
        peer.complete(wire::ReplyFrame {
            id: pending.id,
            ok: true,
            payload: Bytes::from_static(b"3"),
        });
        let answer = pending
            .wait(&peer, soon(), || unreachable!("answered"))
            .await;
        assert_eq!(answer.expect("the reply"), Bytes::from_static(b"3"));
        assert!(peer.pending.lock().is_empty());

        // A kill and a cluster operation wait on the same table; both fail at
        // once when the link ends.
        let operation = Link::cluster(&peer, b"\"queues\"").expect("queued");
        let (killed, ()) = tokio::join!(Link::kill(&peer, "b/calc/0", soon()), async {
            tokio::task::yield_now().await;
            assert_eq!(peer.pending.lock().len(), 2);
            peer.fail_pending("gone");
        });
        assert_eq!(killed.map_err(|e| e.kind), Err(ErrorKind::NodeDown));
        let answer = operation
            .wait(&peer, soon(), || unreachable!("failed"))
            .await;
        assert_eq!(answer.map_err(|e| e.kind), Err(ErrorKind::NodeDown));
        assert!(peer.pending.lock().is_empty());
    }
}
