//! The tasks of one authenticated connection: a writer that batches queued
//! frames into few writes, and a reader that serves the peer's requests and
//! completes ours, with the heartbeat that declares the peer down after three
//! silent intervals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedRead};

use super::conn::{Conn, SharedWrite};
use super::frame::FrameCodec;
use super::peer::Peer;
use super::state::Bridge;
use super::wire::{self, Message, ONE_WAY, TO_WORKER};
use crate::error::ServiceError;
use crate::transport::Incoming;

/// Writes are gathered up to this many bytes before the socket is written.
const BATCH: usize = 64 * 1024;
/// The peer's requests served at once; past it the reader reads no more until
/// one is answered, and TCP holds the peer back.
const MAX_SERVING: usize = 8192;

/// A request of the peer being served.
type Served = futures::future::BoxFuture<'static, ()>;

/// Runs an authenticated connection to `name` until it ends; returns why it ended.
pub(crate) async fn run(
    bridge: Arc<Bridge>,
    framed: Framed<Conn, FrameCodec>,
    name: String,
) -> String {
    let config = bridge.config();
    let (tx, rx) = mpsc::channel(config.queue);
    let parts = framed.into_parts();
    let codec = parts.codec.clone();
    let (stop_writer, writer_stop) = oneshot::channel();
    let (read, peer): (Box<dyn AsyncRead + Unpin + Send>, _) = match parts.io {
        // Plain TCP: a caller alone on the link writes its request itself.
        Conn::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            let write = Arc::new(write);
            let direct = Some((write.clone(), bridge.counters.clone()));
            let peer = Arc::new(Peer::new(name.clone(), tx, config, direct));
            let unsent = peer.unsent();
            let writer = write_frames(SharedWrite(write), rx, writer_stop, bridge.clone(), unsent);
            actix_rt::spawn(writer);
            (Box::new(read), peer)
        }
        Conn::Boxed(io) => {
            let (read, write) = tokio::io::split(io);
            let peer = Arc::new(Peer::new(name.clone(), tx, config, None));
            let unsent = peer.unsent();
            actix_rt::spawn(write_frames(write, rx, writer_stop, bridge.clone(), unsent));
            (Box::new(read), peer)
        }
    };
    let mut reader = FramedRead::new(read, codec);
    *reader.read_buffer_mut() = parts.read_buf;
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
    // The peer's requests being served, polled in this task: no task each.
    let mut serving = futures::stream::FuturesUnordered::new();
    let why = loop {
        tokio::select! {
            frame = reader.next(), if serving.len() < MAX_SERVING => match frame {
                Some(Ok(frame)) => {
                    last_heard = Instant::now();
                    bridge.counters.received(frame.kind, frame.body.len());
                    match Message::decode(frame) {
                        Ok(message) => {
                            if let Some(served) = handle(&bridge, &peer, message) {
                                serving.push(served);
                            }
                        }
                        Err(e) => break format!("{e}"),
                    }
                }
                Some(Err(e)) => break format!("{e}"),
                None => break "connection closed by the peer".to_string(),
            },
            _ = ticks.tick() => {
                // While reading is paused for the requests being served, the
                // peer's beats wait unread: that is not silence.
                if serving.len() >= MAX_SERVING {
                    last_heard = Instant::now();
                }
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
            Some(()) = serving.next(), if !serving.is_empty() => {}
            _ = peer.close.notified() => break "closed by this node".to_string(),
        }
    };
    // What is still being served is answered (or fails) on its own.
    if !serving.is_empty() {
        actix_rt::spawn(async move { while serving.next().await.is_some() {} });
    }
    peer.closed.store(true, Ordering::Release);
    peer.stop_direct();
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

/// Dispatches one frame from the peer: data frames here, control messages to
/// [`Bridge::control`]; a request comes back as the future that serves it.
fn handle(bridge: &Arc<Bridge>, peer: &Arc<Peer>, message: Message) -> Option<Served> {
    match message {
        Message::Heartbeat => None,
        Message::Publish(publish) => {
            bridge.deliver(publish);
            None
        }
        Message::Reply(reply) => {
            peer.complete(reply);
            None
        }
        Message::Request(request) => {
            let one_way = request.flags & ONE_WAY != 0;
            let id = request.id;
            let incoming = Incoming {
                worker: (request.flags & TO_WORKER != 0).then_some(request.worker),
                service: request.service,
                subject: request.subject,
                payload: request.payload,
                timeout_ms: request.timeout_ms,
            };
            let bridge = bridge.clone();
            let peer = peer.clone();
            // Counted until the reply is queued, so that a stopping node can wait
            // for its last replies to go out.
            let counted = bridge.serving();
            Some(Box::pin(async move {
                let _counted = counted;
                let answer = bridge.inbound.serve(incoming, &peer.name).await;
                reply(&peer, id, one_way, answer);
            }))
        }
        Message::Cluster(cluster) => {
            let serving = bridge.inbound.local.cluster(cluster.op, peer.name.clone());
            let peer = peer.clone();
            let counted = bridge.serving();
            actix_rt::spawn(async move {
                let _counted = counted;
                reply(&peer, cluster.id, cluster.one_way, serving.await);
            });
            None
        }
        Message::Control(control) => {
            bridge.control(peer, control);
            None
        }
    }
}

/// Queues the answer to the peer's call `id` (none for a one-way call).
fn reply(peer: &Peer, id: u64, one_way: bool, answer: Result<Vec<u8>, ServiceError>) {
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
    let max = peer.max_frame();
    let mut frame = BytesMut::with_capacity(16 + payload.len());
    let encoded = wire::encode_reply(&mut frame, max, id, ok, &payload).or_else(|e| {
        let error = ServiceError::bad_request(format!("reply too large: {e}"));
        let payload = serde_json::to_vec(&error).unwrap_or_default();
        wire::encode_reply(&mut frame, max, id, false, &payload)
    });
    if encoded.is_ok() {
        if let Err(e) = peer.send(frame.freeze()) {
            log::warn!("reply to node {} lost: {e}", peer.name);
        }
    }
}
