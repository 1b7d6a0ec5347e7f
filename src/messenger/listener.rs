//! colony as a messenger listener: Node Speakers connect to `messenger.listen`
//! and are served as if by a Node listener.
//!
//! A request (a message with an id) whose subject is in `messenger.routes` is a
//! request to that colony `service/subject`; its reply is the service's JSON, or
//! `{"error":{"kind","message"}}`. Every request gets a reply, an unrouted one
//! too: a Speaker has no timeout and would wait for ever. A message without an id
//! (`send`, `shout`) whose subject is in `messenger.shouts` is published on that
//! topic; one in `messenger.routes` goes to the service, its reply dropped.
//!
//! A connection that sends bad JSON or a message past `messenger.max_message`
//! is closed; nothing else is. Each connection holds at most [`MAX_SERVING`]
//! requests, and its share of [`BUDGET`] bytes of them, at once (past either, it
//! is not read until one is answered), and its replies wait in a queue bounded in
//! frames and bytes; a Speaker that does not read its replies past that bound is
//! disconnected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio_util::codec::FramedRead;

use super::codec::NulCodec;
use super::wire::{self, Incoming};
use crate::bridge::conn::SharedWrite;
use crate::bridge::outbox::{Flush, Outbox};
use crate::config::{split_target, MessengerSection};
use crate::error::ServiceError;

/// Requests of one connection served at once, at most.
const MAX_SERVING: usize = 4096;
/// Replies waiting to be written to one connection, at most.
const QUEUE: usize = 4096;
/// Bytes all connections together may hold in requests being served, and again
/// in replies waiting to be written: each connection gets its share of it, at
/// least [`MIN_SHARE`] (and always room for one message).
const BUDGET: usize = 64 * 1024 * 1024;
/// The least share of [`BUDGET`] a connection gets.
const MIN_SHARE: usize = 256 * 1024;

/// What the listener asks of its node.
pub(crate) trait Host: Send + Sync + 'static {
    /// A JSON request to `service`/`subject`, routed as any other.
    fn request(
        &self,
        service: &str,
        subject: &str,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Box<RawValue>, ServiceError>>;
    /// Publishes JSON `body` on `topic`; how many subscribers it reached.
    fn publish(&self, topic: &str, body: Bytes) -> Result<usize, ServiceError>;
    /// The thread of the worker of `service` a request would most likely go to
    /// now, if it runs on this node.
    fn thread_of(&self, service: &str) -> Option<actix_rt::ArbiterHandle>;
    /// The node's worker threads.
    fn threads(&self) -> Vec<actix_rt::ArbiterHandle>;
}

/// What the listener serves: routes and shouts, checked.
struct Table {
    routes: BTreeMap<String, (String, String)>,
    shouts: BTreeMap<String, String>,
    max_message: usize,
    /// Each connection's share of [`BUDGET`], in bytes.
    share: usize,
}

/// Serves Speakers on `listener` for `host` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, section: MessengerSection, host: Arc<dyn Host>) {
    let routes = section
        .routes
        .iter()
        .filter_map(|(subject, target)| {
            let (service, to) = split_target(target).ok()?;
            Some((subject.clone(), (service.to_string(), to.to_string())))
        })
        .collect();
    let table = Arc::new(Table {
        routes,
        shouts: section.shouts.clone(),
        max_message: section.max_message,
        share: (BUDGET / section.max_connections.max(1)).max(MIN_SHARE),
    });
    let connections = Arc::new(Semaphore::new(section.max_connections));
    let mut next = 0usize;
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("messenger: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            log::warn!(
                "messenger: {from} refused: {} connections are open (messenger.max_connections)",
                section.max_connections
            );
            drop(stream);
            continue;
        };
        // Moved to its thread as a plain socket, registered there.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let threads = host.threads();
        let table = table.clone();
        let host = host.clone();
        let served = async move {
            let _permit = permit;
            let Ok(stream) = TcpStream::from_std(stream) else {
                return;
            };
            if let Err(why) = connection(stream, &table, &host).await {
                log::warn!("messenger: connection from {from} closed: {why}");
            }
        };
        // Each connection is read on a worker thread in turn: a request for a
        // worker on the same thread is served without crossing threads, as a
        // Node listener serves on its one thread.
        match threads.get(next % threads.len().max(1)) {
            Some(thread) => {
                thread.spawn(served);
            }
            None => {
                actix_rt::spawn(served);
            }
        }
        next = next.wrapping_add(1);
    }
}

/// Serves one Speaker's connection until it closes or misbehaves.
async fn connection(stream: TcpStream, table: &Table, host: &Arc<dyn Host>) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let write = Arc::new(write);
    let outbox = Arc::new(Outbox::new(
        Some(write.clone()),
        QUEUE,
        table.share,
        Arc::default(),
    ));
    let (stop_writer, stop) = oneshot::channel();
    actix_rt::spawn(outbox.clone().run_writer(SharedWrite(write), stop));
    let replies = Replies {
        outbox: outbox.clone(),
        max_message: table.max_message,
        serving: Arc::default(),
        bytes: Arc::default(),
        share: table.share,
        below: Arc::default(),
    };
    let mut reader = FramedRead::new(read, NulCodec::new(table.max_message));
    let mut here = FuturesUnordered::new();
    let ended = loop {
        tokio::select! {
            message = reader.next(), if !replies.full() => match message {
                Some(Ok(message)) => {
                    let incoming: Incoming = match serde_json::from_slice(&message) {
                        Ok(incoming) => incoming,
                        Err(e) => break Err(format!("a message is not messenger JSON: {e}")),
                    };
                    if let Some(served) = dispatch(incoming, table, host, &replies) {
                        here.push(served);
                    }
                }
                Some(Err(e)) => break Err(e.to_string()),
                None => break Ok(()),
            },
            Some(()) = here.next(), if !here.is_empty() => {}
            () = replies.below.notified(), if replies.full() => {}
        }
        if replies.broken() {
            break Err("the Speaker does not read its replies".to_string());
        }
    };
    if ended.is_err() {
        outbox.close();
    }
    // The writer writes what is queued (nothing, if the connection misbehaved)
    // and closes.
    let _ = stop_writer.send(());
    ended
}

/// Where a connection's replies go, from whichever thread serves them.
#[derive(Clone)]
struct Replies {
    outbox: Arc<Outbox>,
    max_message: usize,
    /// Requests being served...
    serving: Arc<AtomicUsize>,
    /// ...and their bytes, at most `share` (past it, nothing more is read).
    bytes: Arc<AtomicUsize>,
    share: usize,
    /// Told when `serving` falls below [`MAX_SERVING`].
    below: Arc<Notify>,
}

impl Replies {
    fn full(&self) -> bool {
        self.serving.load(Ordering::Acquire) >= MAX_SERVING
            || self.bytes.load(Ordering::Acquire) >= self.share
    }

    /// Whether a reply could not be queued: the Speaker does not read.
    fn broken(&self) -> bool {
        self.outbox.is_closed()
    }

    /// Counts a request of `len` bytes being served until [`answer`](Self::answer).
    fn start(&self, len: usize) {
        self.serving.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(len, Ordering::AcqRel);
    }

    /// A request (or send) of `len` bytes is no longer being served.
    fn release(&self, len: usize) {
        let was_full = self.full();
        self.serving.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        if was_full && !self.full() {
            self.below.notify_one();
        }
    }

    /// Queues the reply to request `id` of `len` bytes.
    fn answer(&self, id: &RawValue, len: usize, answer: Result<Box<RawValue>, ServiceError>) {
        self.release(len);
        let frame = wire::reply(id, answer);
        let frame = if frame.len() > self.max_message.saturating_add(1) {
            let error = ServiceError::bad_request(format!(
                "the reply is {} bytes; messenger.max_message is {}",
                frame.len() - 1,
                self.max_message
            ));
            wire::reply(id, Err(error))
        } else {
            frame
        };
        if self.outbox.push(&frame, Flush::Soon).is_err() {
            // Past the bounds: the connection ends (the reader sees it closed).
            self.outbox.close();
            self.below.notify_one();
        }
    }
}

/// A request served in the connection's task.
type Served = BoxFuture<'static, ()>;

/// Routes one message. A request is served on the thread of the worker it will
/// most likely go to, its reply queued there; when that is not known, it comes
/// back as the future that serves it here.
fn dispatch(
    incoming: Incoming,
    table: &Table,
    host: &Arc<dyn Host>,
    replies: &Replies,
) -> Option<Served> {
    let subject = incoming.subject.as_str();
    let route = table.routes.get(subject);
    let id = incoming.id.clone().filter(|id| id.get() != "null");
    let Some(id) = id else {
        // A send or a shout: no reply.
        if let Some(topic) = table.shouts.get(subject) {
            if let Err(e) = host.publish(topic, incoming.body()) {
                log::warn!(
                    "messenger: shout `{}` not published: {e}",
                    crate::logging::untrusted(subject)
                );
            }
        } else if let Some((service, to)) = route {
            // Counted as a request being served until the service is done
            // with it: sends are bounded as requests are.
            let len = incoming.size();
            replies.start(len);
            let counted = Answering {
                replies: replies.clone(),
                id: None,
                len,
                settled: false,
            };
            let answer = host.request(service, to, incoming.body());
            let subject = subject.to_string();
            return Some(Box::pin(async move {
                let answer = answer.await;
                if let Err(e) = &answer {
                    log::warn!(
                        "messenger: send `{}` failed: {e}",
                        crate::logging::untrusted(&subject)
                    );
                }
                counted.answer(answer);
            }));
        } else {
            log::warn!(
                "messenger: a message on `{}` dropped: no messenger.shouts or messenger.routes entry",
                crate::logging::untrusted(subject)
            );
        }
        return None;
    };
    let len = incoming.size();
    replies.start(len);
    let Some((service, to)) = route else {
        let error = ServiceError::no_such_service(format!(
            "no messenger.routes entry for subject `{}`",
            crate::logging::untrusted(subject)
        ));
        replies.answer(&id, len, Err(error));
        return None;
    };
    let answer = host.request(service, to, incoming.body());
    let answering = Answering {
        replies: replies.clone(),
        id: Some(id),
        len,
        settled: false,
    };
    let served = async move { answering.answer(answer.await) };
    match host.thread_of(service) {
        Some(thread) => {
            thread.spawn(served);
            None
        }
        None => Some(Box::pin(served)),
    }
}

/// A request's reply owed, or a send's count: settled once, with an error
/// reply if the request is dropped unserved (its worker's thread stopped).
struct Answering {
    replies: Replies,
    /// `None` for a send, which gets no reply.
    id: Option<Box<RawValue>>,
    len: usize,
    settled: bool,
}

impl Answering {
    fn answer(mut self, answer: Result<Box<RawValue>, ServiceError>) {
        self.settle(answer);
    }

    fn settle(&mut self, answer: Result<Box<RawValue>, ServiceError>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        match self.id.take() {
            Some(id) => self.replies.answer(&id, self.len, answer),
            None => self.replies.release(self.len),
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let error = ServiceError::service_failed(
            "the request was dropped unserved: its worker's thread stopped",
        );
        self.settle(Err(error));
    }
}
