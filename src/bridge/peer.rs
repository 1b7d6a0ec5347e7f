//! One authenticated connection to another node: a bounded queue of encoded frames
//! drained by a writer that batches them into few writes, a reader that serves the
//! peer's requests and completes ours, and the heartbeat that declares the peer
//! down after three silent intervals.
//!
//! When the link ends, for whatever reason, every request waiting on it fails at
//! once with `NodeDown`: callers never wait for their own timeout on a dead node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::{Framed, FramedRead};

use super::frame::FrameCodec;
use super::pubsub::PeerSubscriptions;
use super::wire::{self, Control, Message, Offer, RequestHead, ONE_WAY, TO_WORKER};
use super::Bridge;
use crate::error::{ErrorKind, ServiceError};
use crate::holder::HOLDER_SERVICE;
use crate::status::NodeStatus;

/// Ends the message of a request refused before it was sent because its node is
/// leaving: safe to send to another node.
const NOT_SENT: &str = "the request was not sent";

/// Whether `error` is a request refused before it was sent, because the node
/// chosen for it is leaving: the caller may route it again.
pub(crate) fn not_sent(error: &ServiceError) -> bool {
    error.kind == ErrorKind::NodeDown && error.message.ends_with(NOT_SENT)
}

/// Writes are gathered up to this many bytes before the socket is written.
const BATCH: usize = 64 * 1024;

/// A live link to node `name`.
pub(crate) struct Peer {
    pub(crate) name: String,
    out: mpsc::Sender<Bytes>,
    max_frame: usize,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, ServiceError>>>>,
    statuses: Mutex<HashMap<u64, oneshot::Sender<NodeStatus>>>,
    kills: Mutex<HashMap<u64, oneshot::Sender<Result<(), ServiceError>>>>,
    leaves: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// The peer is draining: no new requests go to it.
    pub(crate) leaving: AtomicBool,
    /// Bytes queued for the peer and not yet written: counted when a frame is
    /// queued, released when the writer has written it.
    unsent: Arc<AtomicU64>,
    /// At most this many bytes wait to be written (`bridge.queue_bytes`).
    queue_bytes: u64,
    /// Orders routed requests against [`Control::LeavingAck`]: none is queued
    /// after the answer that says none will come.
    order: parking_lot::RwLock<()>,
    closed: AtomicBool,
    close: Notify,
    /// What the peer runs, and how many of our requests each service holds now.
    pub(crate) offers: Mutex<Vec<(Offer, Arc<AtomicU64>)>>,
    /// The topic prefixes the peer's subscribers hold, with their counts.
    pub(crate) subscriptions: PeerSubscriptions,
    /// A change to this node's subscriptions could not be queued to the peer: it
    /// gets the whole table again (see [`Bridge::resync`]), and no change until then.
    pub(crate) resync: AtomicBool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("name", &self.name).finish()
    }
}

impl Peer {
    /// Whether everything queued for the peer has been written.
    pub(crate) fn flushed(&self) -> bool {
        self.unsent.load(Ordering::Acquire) == 0
    }

    /// Whether at most half of `bridge.queue_bytes` waits to be written.
    pub(crate) fn half_empty(&self) -> bool {
        self.unsent.load(Ordering::Acquire) <= self.queue_bytes / 2
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
        ServiceError::new(
            ErrorKind::NodeDown,
            format!("node {} is down: {why}", self.name),
        )
    }

    /// Queues an encoded frame; `Overloaded` when the send queue holds
    /// `bridge.queue` frames or this frame would take it past `bridge.queue_bytes`
    /// bytes. A frame always fits a queue with nothing unwritten, whatever its size.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), ServiceError> {
        if !self.is_up() {
            return Err(self.down_error("its link is closed"));
        }
        let len = frame.len() as u64;
        let before = self.unsent.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before.saturating_add(len) > self.queue_bytes {
            self.unsent.fetch_sub(len, Ordering::AcqRel);
            return Err(ServiceError::overloaded(format!(
                "the send queue to node {} is full: {before} bytes wait to be written, \
                 at most {} (bridge.queue_bytes)",
                self.name, self.queue_bytes
            )));
        }
        self.out.try_send(frame).map_err(|e| {
            self.unsent.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => ServiceError::overloaded(format!(
                    "the send queue to node {} is full (bridge.queue frames)",
                    self.name
                )),
                mpsc::error::TrySendError::Closed(_) => self.down_error("its link is closed"),
            }
        })
    }

    /// Sends a one-way request (no reply comes) at once, without waiting.
    pub(crate) fn tell(&self, head: RequestHead<'_>, payload: &[u8]) -> Result<(), ServiceError> {
        let mut frame = BytesMut::with_capacity(64 + payload.len());
        let head = RequestHead {
            id: 0,
            flags: head.flags | ONE_WAY,
            ..head
        };
        wire::encode_request(&mut frame, self.max_frame, head, payload).map_err(|e| {
            ServiceError::bad_request(format!("cannot send to node {}: {e}", self.name))
        })?;
        self.send(frame.freeze())
    }

    /// Sends a request and waits for its reply's JSON until `deadline`.
    pub(crate) async fn request(
        &self,
        head: RequestHead<'_>,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<Bytes, ServiceError> {
        let one_way = head.flags & ONE_WAY != 0;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::with_capacity(64 + payload.len());
        wire::encode_request(
            &mut frame,
            self.max_frame,
            RequestHead { id, ..head },
            payload,
        )
        .map_err(|e| {
            ServiceError::bad_request(format!("cannot send to node {}: {e}", self.name))
        })?;
        // A request any worker of the service may take is not sent to a node that
        // is leaving; the caller picks another (see `not_sent`).
        let routed = head.flags & TO_WORKER == 0 && head.service != HOLDER_SERVICE;
        let send = |frame: Bytes| {
            let _order = self.order.read();
            if routed && self.leaving.load(Ordering::Acquire) {
                return Err(ServiceError::new(
                    ErrorKind::NodeDown,
                    format!("node {} is leaving; {NOT_SENT}", self.name),
                ));
            }
            self.send(frame)
        };
        if one_way {
            send(frame.freeze())?;
            return Ok(Bytes::new());
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        if let Err(e) = send(frame.freeze()) {
            self.pending.lock().remove(&id);
            return Err(e);
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.down_error("its link closed")),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(ServiceError::timeout(format!(
                    "no reply from node {} for {}/{} in time",
                    self.name, head.service, head.subject
                )))
            }
        }
    }

    /// Asks the peer for its status, waiting until `deadline`.
    pub(crate) async fn status(&self, deadline: Instant) -> Option<NodeStatus> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.statuses.lock().insert(id, tx);
        let mut frame = BytesMut::new();
        Control::StatusRequest { id }
            .encode(&mut frame, self.max_frame)
            .ok()?;
        if self.send(frame.freeze()).is_err() {
            self.statuses.lock().remove(&id);
            return None;
        }
        let status = timeout_at(deadline, rx).await.ok()?.ok();
        self.statuses.lock().remove(&id);
        status
    }

    /// Asks the peer to kill one of its workers, waiting until `deadline`.
    pub(crate) async fn kill(&self, worker: &str, deadline: Instant) -> Result<(), ServiceError> {
        let worker = worker.to_string();
        self.kill_with(move |id| Control::Kill { id, worker }, deadline)
            .await
    }

    /// Asks the peer's process to exit with `code`, waiting until `deadline` for it
    /// to say it will.
    pub(crate) async fn kill_node(&self, code: i32, deadline: Instant) -> Result<(), ServiceError> {
        self.kill_with(move |id| Control::KillNode { id, code }, deadline)
            .await
    }

    /// Tells the peer that this node is leaving, and waits until `deadline` for its
    /// answer: after it, no new request from the peer comes.
    pub(crate) async fn leave(&self, deadline: Instant) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.leaves.lock().insert(id, tx);
        let mut frame = BytesMut::new();
        let sent = Control::Leaving { id }
            .encode(&mut frame, self.max_frame)
            .is_ok()
            && self.send(frame.freeze()).is_ok();
        if sent && timeout_at(deadline, rx).await.is_err() {
            log::warn!(
                "node {} did not answer that this node is leaving",
                self.name
            );
        }
        self.leaves.lock().remove(&id);
    }

    async fn kill_with(
        &self,
        control: impl FnOnce(u64) -> Control,
        deadline: Instant,
    ) -> Result<(), ServiceError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.kills.lock().insert(id, tx);
        let mut frame = BytesMut::new();
        let kill = control(id);
        let sent = kill
            .encode(&mut frame, self.max_frame)
            .map_err(|e| ServiceError::bad_request(e.to_string()))
            .and_then(|()| self.send(frame.freeze()));
        if let Err(e) = sent {
            self.kills.lock().remove(&id);
            return Err(e);
        }
        let answer = timeout_at(deadline, rx).await;
        self.kills.lock().remove(&id);
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.down_error("its link closed")),
            Err(_) => Err(ServiceError::timeout(format!(
                "node {} did not answer the kill",
                self.name
            ))),
        }
    }

    fn complete(&self, reply: wire::ReplyFrame) {
        if let Some(waiter) = self.pending.lock().remove(&reply.id) {
            // The caller may have timed out meanwhile: its answer is dropped.
            let _ = waiter.send(reply.into_result());
        }
    }

    fn fail_pending(&self, why: &str) {
        let waiting: Vec<_> = self.pending.lock().drain().collect();
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(self.down_error(why)));
        }
        self.statuses.lock().clear();
        self.leaves.lock().clear();
        let kills: Vec<_> = self.kills.lock().drain().collect();
        for (_, waiter) in kills {
            let _ = waiter.send(Err(self.down_error(why)));
        }
    }
}

/// Runs an authenticated connection to `name` until it ends; returns why it ended.
pub(crate) async fn run<S>(
    bridge: Arc<Bridge>,
    framed: Framed<S, FrameCodec>,
    name: String,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = bridge.config();
    let (tx, rx) = mpsc::channel(config.queue);
    let peer = Arc::new(Peer {
        name: name.clone(),
        out: tx,
        max_frame: config.max_frame,
        next_id: AtomicU64::new(1),
        pending: Mutex::default(),
        statuses: Mutex::default(),
        kills: Mutex::default(),
        leaves: Mutex::default(),
        leaving: AtomicBool::new(false),
        unsent: Arc::new(AtomicU64::new(0)),
        queue_bytes: config.queue_bytes as u64,
        order: parking_lot::RwLock::new(()),
        closed: AtomicBool::new(false),
        close: Notify::new(),
        offers: Mutex::default(),
        subscriptions: PeerSubscriptions::default(),
        resync: AtomicBool::new(false),
    });
    let parts = framed.into_parts();
    let codec = parts.codec.clone();
    let (read, write) = tokio::io::split(parts.io);
    let mut reader = FramedRead::new(read, codec);
    *reader.read_buffer_mut() = parts.read_buf;

    let (stop_writer, writer_stop) = oneshot::channel();
    actix_rt::spawn(write_frames(
        write,
        rx,
        writer_stop,
        bridge.clone(),
        peer.unsent.clone(),
    ));
    if let Err(why) = bridge.peer_up(peer.clone()) {
        // Refused: the writer sends the refusal and closes; nothing of the peer's
        // is read.
        let _ = stop_writer.send(());
        return why;
    }

    let heartbeat = config.heartbeat;
    let silence = heartbeat * 3;
    let mut ticks = tokio::time::interval(heartbeat);
    let mut last_heard = Instant::now();
    let why = loop {
        tokio::select! {
            frame = reader.next() => match frame {
                Some(Ok(frame)) => {
                    last_heard = Instant::now();
                    bridge.counters.received(frame.kind, frame.body.len());
                    match Message::decode(frame) {
                        Ok(message) => handle(&bridge, &peer, message),
                        Err(e) => break format!("{e}"),
                    }
                }
                Some(Err(e)) => break format!("{e}"),
                None => break "connection closed by the peer".to_string(),
            },
            _ = ticks.tick() => {
                if last_heard.elapsed() > silence {
                    break format!("silent for {} heartbeats", 3);
                }
                let mut beat = BytesMut::with_capacity(5);
                wire::encode_heartbeat(&mut beat);
                // A full queue carries traffic the peer hears instead of a beat.
                let _ = peer.send(beat.freeze());
                // Only once the queue has drained to half: a table encoded for a
                // queue that is still full would be thrown away each tick.
                if peer.resync.load(Ordering::Acquire) && peer.half_empty() {
                    bridge.resync(&peer);
                }
            },
            _ = peer.close.notified() => break "closed by this node".to_string(),
        }
    };
    peer.closed.store(true, Ordering::Release);
    peer.fail_pending(&why);
    // The writer sends what it holds, closes the stream politely (TLS close_notify)
    // and ends; it may already have ended on a write error.
    let _ = stop_writer.send(());
    bridge.peer_down(&peer, &why);
    why
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::Receiver<Bytes>,
    mut stop: oneshot::Receiver<()>,
    bridge: Arc<Bridge>,
    unsent: Arc<AtomicU64>,
) {
    let mut batch = BytesMut::with_capacity(BATCH);
    let mut stopping = false;
    loop {
        let frame = if stopping {
            // What was queued before the stop still goes out.
            rx.try_recv().ok()
        } else {
            tokio::select! {
                biased;
                frame = rx.recv() => frame,
                _ = &mut stop => {
                    stopping = true;
                    rx.try_recv().ok()
                }
            }
        };
        let Some(frame) = frame else { break };
        batch.extend_from_slice(&frame);
        drop(frame);
        // Let the tasks that are ready add their frames too, so that one write
        // carries many replies instead of one each.
        tokio::task::yield_now().await;
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        // TLS may hold bytes back after write_all: flush, or they wait for the
        // next frame.
        let written = async {
            write.write_all(&batch).await?;
            write.flush().await
        };
        if written.await.is_err() {
            return;
        }
        bridge
            .counters
            .bytes_out
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        unsent.fetch_sub(batch.len() as u64, Ordering::AcqRel);
        batch.clear();
        // A large frame grew the batch: give that memory back.
        if batch.capacity() > 4 * BATCH {
            batch = BytesMut::with_capacity(BATCH);
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, write.shutdown()).await;
}

/// How long a closing link may take to say goodbye.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn handle(bridge: &Arc<Bridge>, peer: &Arc<Peer>, message: Message) {
    match message {
        Message::Heartbeat => {}
        Message::Publish(publish) => bridge.deliver(publish),
        Message::Reply(reply) => peer.complete(reply),
        Message::Request(request) => {
            let bridge = bridge.clone();
            let peer = peer.clone();
            let serving = bridge.serving();
            actix_rt::spawn(async move {
                // Counted until the reply is queued, so that a stopping node can
                // wait for its last replies to go out.
                let _serving = serving;
                let one_way = request.flags & ONE_WAY != 0;
                let id = request.id;
                let answer = bridge.serve(request, &peer.name).await;
                if one_way {
                    if let Err(e) = answer {
                        log::warn!(
                            "one-way request from {} failed: {}",
                            peer.name,
                            crate::logging::untrusted(&e.to_string())
                        );
                    }
                    return;
                }
                let (ok, payload) = match answer {
                    Ok(json) => (true, json),
                    Err(e) => (false, serde_json::to_vec(&e).unwrap_or_default()),
                };
                let mut frame = BytesMut::with_capacity(16 + payload.len());
                let encoded = wire::encode_reply(&mut frame, peer.max_frame, id, ok, &payload)
                    .or_else(|e| {
                        let error = ServiceError::bad_request(format!("reply too large: {e}"));
                        let payload = serde_json::to_vec(&error).unwrap_or_default();
                        wire::encode_reply(&mut frame, peer.max_frame, id, false, &payload)
                    });
                if encoded.is_ok() {
                    if let Err(e) = peer.send(frame.freeze()) {
                        log::warn!("reply to node {} lost: {e}", peer.name);
                    }
                }
            });
        }
        Message::Control(Control::StatusRequest { id }) => {
            let status = Box::new(bridge.local_status());
            let mut frame = BytesMut::new();
            let reply = Control::StatusReply { id, status };
            if reply.encode(&mut frame, peer.max_frame).is_ok() {
                let _ = peer.send(frame.freeze());
            }
        }
        Message::Control(Control::StatusReply { id, status }) => {
            if let Some(waiter) = peer.statuses.lock().remove(&id) {
                let _ = waiter.send(*status);
            }
        }
        Message::Control(Control::Kill { id, worker }) => {
            let peer = peer.clone();
            let killing = worker.parse().map(|worker| bridge.local_kill(worker));
            actix_rt::spawn(async move {
                let error = match killing {
                    Ok(kill) => kill.await.err(),
                    Err(e) => Some(e),
                };
                let mut frame = BytesMut::new();
                let reply = Control::KillReply { id, error };
                if reply.encode(&mut frame, peer.max_frame).is_ok() {
                    let _ = peer.send(frame.freeze());
                }
            });
        }
        Message::Control(Control::KillNode { id, code }) => {
            let answer = bridge.local_exit(code);
            let mut frame = BytesMut::new();
            let reply = Control::KillReply {
                id,
                error: answer.err(),
            };
            if reply.encode(&mut frame, peer.max_frame).is_ok() {
                let _ = peer.send(frame.freeze());
            }
        }
        Message::Control(Control::Leaving { id }) => {
            log::info!(
                "bridge: node {} is leaving; no new requests go to it",
                peer.name
            );
            bridge.peer_leaving(peer);
            let mut frame = BytesMut::new();
            let _order = peer.order.write();
            peer.leaving.store(true, Ordering::Release);
            if (Control::LeavingAck { id })
                .encode(&mut frame, peer.max_frame)
                .is_ok()
            {
                let _ = peer.send(frame.freeze());
            }
        }
        Message::Control(Control::LeavingAck { id }) => {
            if let Some(waiter) = peer.leaves.lock().remove(&id) {
                let _ = waiter.send(());
            }
        }
        Message::Control(Control::KillReply { id, error }) => {
            if let Some(waiter) = peer.kills.lock().remove(&id) {
                let _ = waiter.send(error.map_or(Ok(()), Err));
            }
        }
        Message::Control(control) => bridge.control(peer, control),
    }
}
