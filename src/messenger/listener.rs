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
//! requests at once (past it, it is not read until one is answered) and its
//! replies wait in a queue bounded in frames and bytes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;

use super::codec::NulCodec;
use super::wire::{self, Incoming};
use crate::config::{split_target, MessengerSection};
use crate::error::ServiceError;

/// Requests of one connection served at once, at most.
const MAX_SERVING: usize = 4096;
/// Replies waiting to be written to one connection, at most...
const QUEUE: usize = 4096;
/// ...and bytes.
const QUEUE_BYTES: usize = 16 * 1024 * 1024;

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
}

/// What the listener serves: routes and shouts, checked.
struct Table {
    routes: BTreeMap<String, (String, String)>,
    shouts: BTreeMap<String, String>,
    max_message: usize,
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
    });
    let connections = Arc::new(Semaphore::new(section.max_connections));
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
        let table = table.clone();
        let host = host.clone();
        actix_rt::spawn(async move {
            let _permit = permit;
            if let Err(why) = connection(stream, &table, &host).await {
                log::warn!("messenger: connection from {from} closed: {why}");
            }
        });
    }
}

/// Serves one Speaker's connection until it closes or misbehaves.
async fn connection(stream: TcpStream, table: &Table, host: &Arc<dyn Host>) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let written = queued.clone();
    let writer = actix_rt::spawn(async move {
        // Each frame whole in one write; replies ready together share it.
        let mut batch = Vec::new();
        while let Some(frame) = rx.recv().await {
            batch.extend_from_slice(&frame);
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(&more);
                if batch.len() >= 64 * 1024 {
                    break;
                }
            }
            if write.write_all(&batch).await.is_err() {
                return;
            }
            written.fetch_sub(batch.len(), Ordering::AcqRel);
            batch.clear();
        }
        let _ = write.shutdown().await;
    });
    let mut reader = FramedRead::new(read, NulCodec::new(table.max_message));
    let mut serving = FuturesUnordered::new();
    let ended = loop {
        tokio::select! {
            message = reader.next(), if serving.len() < MAX_SERVING => match message {
                Some(Ok(message)) => {
                    let incoming: Incoming = match serde_json::from_slice(&message) {
                        Ok(incoming) => incoming,
                        Err(e) => break Err(format!("a message is not messenger JSON: {e}")),
                    };
                    if let Some(served) = dispatch(incoming, table, host) {
                        serving.push(served);
                    }
                }
                Some(Err(e)) => break Err(e.to_string()),
                None => break Ok(()),
            },
            Some((id, answer)) = serving.next(), if !serving.is_empty() => {
                let id: Box<RawValue> = id;
                let frame = wire::reply(&id, answer);
                let frame = if frame.len() > table.max_message.saturating_add(1) {
                    let error = ServiceError::bad_request(format!(
                        "the reply is {} bytes; messenger.max_message is {}",
                        frame.len() - 1,
                        table.max_message
                    ));
                    wire::reply(&id, Err(error))
                } else {
                    frame
                };
                let len = frame.len();
                if queued.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES
                    || tx.try_send(frame).is_err()
                {
                    break Err("the Speaker does not read its replies".to_string());
                }
            }
        }
    };
    drop(tx);
    if ended.is_err() {
        writer.abort();
    }
    ended
}

/// A request being served: its id, and the answer.
type Served = BoxFuture<'static, (Box<RawValue>, Result<Box<RawValue>, ServiceError>)>;

/// Routes one message: a request comes back as the future that answers it.
fn dispatch(incoming: Incoming, table: &Table, host: &Arc<dyn Host>) -> Option<Served> {
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
            let answer = host.request(service, to, incoming.body());
            let subject = subject.to_string();
            actix_rt::spawn(async move {
                if let Err(e) = answer.await {
                    log::warn!(
                        "messenger: send `{}` failed: {e}",
                        crate::logging::untrusted(&subject)
                    );
                }
            });
        } else {
            log::warn!(
                "messenger: a message on `{}` dropped: no messenger.shouts or messenger.routes entry",
                crate::logging::untrusted(subject)
            );
        }
        return None;
    };
    let Some((service, to)) = route else {
        let error = ServiceError::no_such_service(format!(
            "no messenger.routes entry for subject `{}`",
            crate::logging::untrusted(subject)
        ));
        return Some(Box::pin(async move { (id, Err(error)) }));
    };
    let answer = host.request(service, to, incoming.body());
    Some(Box::pin(async move { (id, answer.await) }))
}
