//! The tasks of one authenticated connection: a writer for what senders leave
//! to it (see `outbox`), and a reader that dispatches the peer's requests (see
//! `serve`) and completes ours, with the heartbeat that declares the peer down
//! after three silent intervals.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncRead;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Framed, FramedRead};

use super::conn::{Conn, SharedWrite};
use super::frame::FrameCodec;
use super::outbox::{Flush, Outbox};
use super::peer::Peer;
use super::serve::{reply, Batch, Load};
use super::state::Bridge;
use super::wire::{self, Message, ONE_WAY, TO_WORKER};
use crate::transport::Incoming;

/// Runs an authenticated connection to `name` until it ends; returns why it ended.
pub(crate) async fn run(
    bridge: Arc<Bridge>,
    framed: Framed<Conn, FrameCodec>,
    name: String,
) -> String {
    let config = bridge.config();
    let parts = framed.into_parts();
    let codec = parts.codec.clone();
    let (stop_writer, writer_stop) = oneshot::channel();
    let counters = bridge.counters.clone();
    let (read, peer): (Box<dyn AsyncRead + Unpin + Send>, _) = match parts.io {
        // Plain TCP: the write half is shared, and senders may write to it on
        // their own threads (see `outbox`).
        Conn::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            let write = Arc::new(write);
            let outbox = Outbox::new(
                Some(write.clone()),
                config.queue,
                config.queue_bytes,
                counters,
            );
            let outbox = Arc::new(outbox);
            let peer = Arc::new(Peer::new(name.clone(), outbox.clone(), config));
            actix_rt::spawn(outbox.run_writer(SharedWrite(write), writer_stop));
            (Box::new(read), peer)
        }
        Conn::Boxed(io) => {
            let (read, write) = tokio::io::split(io);
            let outbox = Arc::new(Outbox::new(
                None,
                config.queue,
                config.queue_bytes,
                counters,
            ));
            let peer = Arc::new(Peer::new(name.clone(), outbox.clone(), config));
            actix_rt::spawn(outbox.run_writer(write, writer_stop));
            (Box::new(read), peer)
        }
    };
    let mut splitter = codec.clone();
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
    // The peer's requests served on this thread, polled in this task: no task
    // each. The others are served on their workers' threads (see `serve`).
    let mut serving = FuturesUnordered::new();
    let load = Arc::new(Load::default());
    let mut batch = Batch::default();
    let why = loop {
        tokio::select! {
            frame = reader.next(), if !load.full() => match frame {
                Some(Ok(frame)) => {
                    last_heard = Instant::now();
                    // Every whole frame already read is dispatched before any is
                    // served: the requests of one read reach the workers together,
                    // and their replies go out together.
                    let mut next = Some(frame);
                    let mut failed = None;
                    while let Some(frame) = next.take() {
                        bridge.counters.received(frame.kind, frame.body.len());
                        match Message::decode(frame) {
                            Ok(message) => {
                                handle(&bridge, &peer, &load, &mut batch, message);
                            }
                            Err(e) => {
                                failed = Some(format!("{e}"));
                                break;
                            }
                        }
                        if load.full() {
                            break;
                        }
                        match splitter.decode(reader.read_buffer_mut()) {
                            Ok(frame) => next = frame,
                            Err(e) => failed = Some(format!("{e}")),
                        }
                    }
                    batch.dispatch(&bridge, &mut serving);
                    if let Some(why) = failed {
                        break why;
                    }
                }
                Some(Err(e)) => break format!("{e}"),
                None => break "connection closed by the peer".to_string(),
            },
            _ = ticks.tick() => {
                // While reading is paused for the requests being served, the
                // peer's beats wait unread: that is not silence.
                if load.full() {
                    last_heard = Instant::now();
                }
                if last_heard.elapsed() > silence {
                    break format!("silent for {} heartbeats", 3);
                }
                let mut beat = BytesMut::with_capacity(5);
                wire::encode_heartbeat(&mut beat);
                // A full queue carries traffic the peer hears instead of a beat.
                // Written by this task's writer: never behind a sender's thread.
                let _ = peer.send_with(&beat, Flush::Writer);
                // Only once the queue has drained to half: a table encoded for a
                // queue that is still full would be thrown away each tick.
                if peer.resync.load(Ordering::Acquire) && peer.half_empty() {
                    bridge.resync(&peer);
                }
            },
            Some(()) = serving.next(), if !serving.is_empty() => {}
            () = load.below(), if load.full() => {}
            _ = peer.close.notified() => break "closed by this node".to_string(),
        }
    };
    // What is still being served is answered (or fails) on its own.
    if !serving.is_empty() {
        actix_rt::spawn(async move { while serving.next().await.is_some() {} });
    }
    peer.closed.store(true, Ordering::Release);
    peer.fail_pending(&why);
    // The writer sends what it holds, closes the stream politely (TLS close_notify)
    // and ends; it may already have ended on a write error.
    let _ = stop_writer.send(());
    bridge.peer_down(&peer, &why);
    why
}

/// Dispatches one frame from the peer: data frames here, control messages to
/// [`Bridge::control`]; a request joins `batch`, to be served once the frames
/// already read are all dispatched.
fn handle(
    bridge: &Arc<Bridge>,
    peer: &Arc<Peer>,
    load: &Arc<Load>,
    batch: &mut Batch,
    message: Message,
) {
    match message {
        Message::Heartbeat => {}
        Message::Publish(publish) => bridge.deliver(publish),
        Message::Reply(reply) => peer.complete(reply),
        Message::Request(request) => {
            let one_way = request.flags & ONE_WAY != 0;
            let incoming = Incoming {
                worker: (request.flags & TO_WORKER != 0).then_some(request.worker),
                service: request.service,
                subject: request.subject,
                payload: request.payload,
                timeout_ms: request.timeout_ms,
            };
            let trace = request.trace;
            batch.add(bridge, peer, load, incoming, request.id, one_way, trace);
        }
        Message::Cluster(cluster) => {
            let serving = bridge.inbound.local.cluster(cluster.op, peer.name.clone());
            let peer = peer.clone();
            let counted = bridge.serving();
            actix_rt::spawn(async move {
                let _counted = counted;
                reply(&peer, cluster.id, cluster.one_way, serving.await);
            });
        }
        Message::Control(control) => bridge.control(peer, control),
    }
}
