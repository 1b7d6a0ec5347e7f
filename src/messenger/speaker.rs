//! colony as a messenger Speaker: calls to Node listeners, in turn.
//!
//! Each listener has one connection, redialled a second after it closes (as the
//! Node Speaker does). A call goes to the next connected listener; with none
//! connected it fails at once with `NodeDown`, and it never waits past its
//! timeout. A connection that closes fails the calls waiting on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout_at;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::codec::NulCodec;
use super::wire::{self, Answer};
use crate::error::ServiceError;

/// Frames waiting to be written to one listener, at most.
const QUEUE: usize = 4096;
/// Bytes waiting to be written to one listener, at most.
const QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Calls waiting for one listener's replies, at most.
const MAX_PENDING: usize = 65_536;
/// How long a listener is redialled after, as the Node Speaker does.
const REDIAL: Duration = Duration::from_secs(1);
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What waits for a reply.
type Waiter = oneshot::Sender<Result<Box<RawValue>, ServiceError>>;

/// Node listeners spoken to as one: a colony service backed by them, or the
/// listeners a `shout_to` entry shouts to.
pub(crate) struct Speaker {
    /// What the listeners are, for errors: `service legacy`, `shout_to[0]`.
    what: String,
    lines: Vec<Arc<Line>>,
    next: AtomicUsize,
    next_id: AtomicU64,
    max_message: usize,
    stop: CancellationToken,
}

/// One listener's connection.
struct Line {
    address: String,
    /// Where frames for it go while it is connected.
    out: Mutex<Option<mpsc::Sender<Bytes>>>,
    queued: Arc<AtomicUsize>,
    pending: Mutex<HashMap<String, Waiter>>,
}

impl Speaker {
    /// Speaks to `addresses` (each `host:port`), dialling them now and again
    /// whenever a connection closes, until the speaker drops.
    pub(crate) fn start(what: String, addresses: &[String], max_message: usize) -> Arc<Speaker> {
        let speaker = Arc::new(Speaker {
            what,
            lines: addresses
                .iter()
                .map(|address| {
                    Arc::new(Line {
                        address: address.clone(),
                        out: Mutex::new(None),
                        queued: Arc::default(),
                        pending: Mutex::default(),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_message,
            stop: CancellationToken::new(),
        });
        for line in &speaker.lines {
            let line = line.clone();
            let stop = speaker.stop.clone();
            actix_rt::spawn(async move {
                stop.run_until_cancelled(line.keep_connected(max_message))
                    .await;
            });
        }
        speaker
    }

    /// Asks the next connected listener `subject` with `data` (JSON text, empty
    /// for none); its reply's data, or an error, within `timeout`.
    pub(crate) async fn request(
        &self,
        subject: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Box<RawValue>, ServiceError> {
        let deadline = crate::deadline::tokio_after(timeout);
        let data = json_of(data)?;
        let (line, out) = self.pick()?;
        let id = format!("id-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let frame = wire::request(Some(&id), subject, &data);
        self.check_size(&frame)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = line.pending.lock();
            if pending.len() >= MAX_PENDING {
                return Err(ServiceError::overloaded(format!(
                    "{} calls wait for messenger listener {} of {}",
                    MAX_PENDING, line.address, self.what
                )));
            }
            pending.insert(id.clone(), tx);
        }
        // Whatever ends the call (an answer, its timeout, its caller giving
        // up), its entry leaves the table.
        let _waiting = Waiting {
            line: &line,
            id: &id,
        };
        line.queue(&out, frame, &self.what)?;
        match timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(line.down("closed the connection", &self.what)),
            Err(_) => Err(ServiceError::timeout(format!(
                "messenger listener {} of {} did not answer `{}` within {}",
                line.address,
                self.what,
                crate::logging::untrusted(subject),
                humantime::format_duration(timeout)
            ))),
        }
    }

    /// Sends `subject` with `data` to the next connected listener, no reply.
    pub(crate) fn send(&self, subject: &str, data: &[u8]) -> Result<(), ServiceError> {
        let data = json_of(data)?;
        let (line, out) = self.pick()?;
        let frame = wire::request(None, subject, &data);
        self.check_size(&frame)?;
        line.queue(&out, frame, &self.what)
    }

    /// Shouts `subject` with `data` to every connected listener; how many.
    pub(crate) fn shout(&self, subject: &str, data: &RawValue) -> Result<usize, ServiceError> {
        let frame = wire::request(None, subject, data);
        self.check_size(&frame)?;
        let mut reached = 0;
        for line in &self.lines {
            let out = line.out.lock().clone();
            if let Some(out) = out {
                match line.queue(&out, frame.clone(), &self.what) {
                    Ok(()) => reached += 1,
                    Err(e) => log::warn!(
                        "messenger: shout `{}` lost: {e}",
                        crate::logging::untrusted(subject)
                    ),
                }
            }
        }
        Ok(reached)
    }

    /// The next connected listener, in turn.
    fn pick(&self) -> Result<(Arc<Line>, mpsc::Sender<Bytes>), ServiceError> {
        let count = self.lines.len();
        for _ in 0..count {
            let line = &self.lines[self.next.fetch_add(1, Ordering::Relaxed) % count];
            if let Some(out) = line.out.lock().clone() {
                return Ok((line.clone(), out));
            }
        }
        let addresses: Vec<&str> = self.lines.iter().map(|l| l.address.as_str()).collect();
        Err(ServiceError::new(
            crate::error::ErrorKind::NodeDown,
            format!(
                "no messenger listener of {} is connected (tried {})",
                self.what,
                addresses.join(", ")
            ),
        ))
    }

    fn check_size(&self, frame: &[u8]) -> Result<(), ServiceError> {
        if frame.len() > self.max_message.saturating_add(1) {
            return Err(ServiceError::bad_request(format!(
                "a message to {} would be {} bytes; messenger.max_message is {}",
                self.what,
                frame.len() - 1,
                self.max_message
            )));
        }
        Ok(())
    }
}

impl Speaker {
    /// Stops dialling and closes the connections; calls waiting fail.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        for line in &self.lines {
            line.out.lock().take();
            let waiting: Vec<_> = line.pending.lock().drain().collect();
            for (_, waiter) in waiting {
                let _ = waiter.send(Err(
                    line.down("is no longer called: this node stops", &self.what)
                ));
            }
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A call's entry in its line's table, removed when the call ends.
struct Waiting<'a> {
    line: &'a Line,
    id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.line.pending.lock().remove(self.id);
    }
}

/// `data` as JSON text: `null` when empty, refused when not JSON.
fn json_of(data: &[u8]) -> Result<Box<RawValue>, ServiceError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(wire::null());
    }
    serde_json::from_slice::<Box<RawValue>>(data)
        .map_err(|e| ServiceError::bad_request(format!("data is not JSON: {e}")))
}

impl Line {
    fn down(&self, why: &str, what: &str) -> ServiceError {
        ServiceError::new(
            crate::error::ErrorKind::NodeDown,
            format!("messenger listener {} of {what} {why}", self.address),
        )
    }

    /// Queues `frame` for the connection `out`, within its bounds.
    fn queue(
        &self,
        out: &mpsc::Sender<Bytes>,
        frame: Bytes,
        what: &str,
    ) -> Result<(), ServiceError> {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(ServiceError::overloaded(format!(
                "{QUEUE_BYTES} bytes wait to be written to messenger listener {} of {what}",
                self.address
            )));
        }
        out.try_send(frame).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => ServiceError::overloaded(format!(
                    "{QUEUE} messages wait to be written to messenger listener {} of {what}",
                    self.address
                )),
                mpsc::error::TrySendError::Closed(_) => self.down("closed the connection", what),
            }
        })
    }

    /// Dials the listener, serves the connection until it closes, and again a
    /// second later, for ever (the caller cancels).
    async fn keep_connected(self: Arc<Self>, max_message: usize) {
        loop {
            let dialled =
                tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&self.address)).await;
            match dialled {
                Ok(Ok(stream)) => {
                    let why = self.serve(stream, max_message).await;
                    log::warn!("messenger: listener {} {why}; redialling", self.address);
                }
                Ok(Err(e)) => log::debug!("messenger: cannot reach listener {}: {e}", self.address),
                Err(_) => log::debug!(
                    "messenger: listener {} did not answer the dial",
                    self.address
                ),
            }
            tokio::time::sleep(REDIAL).await;
        }
    }

    /// Runs one connection: a writer of queued frames and a reader of replies.
    async fn serve(&self, stream: TcpStream, max_message: usize) -> String {
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let queued = self.queued.clone();
        queued.store(0, Ordering::Release);
        let writer = actix_rt::spawn(async move {
            // Each frame whole in one write; frames queued together share it.
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
                queued.fetch_sub(batch.len(), Ordering::AcqRel);
                batch.clear();
            }
        });
        // However this ends (the connection closes, the speaker stops), the
        // writer goes with it, even one stuck on a listener that reads nothing.
        let _writer = AbortOnDrop(writer);
        *self.out.lock() = Some(tx);
        let mut reader = FramedRead::new(read, NulCodec::new(max_message));
        let why = loop {
            match reader.next().await {
                Some(Ok(message)) => {
                    let Ok(answer) = serde_json::from_slice::<Answer>(&message) else {
                        break "sent a message that is not JSON".to_string();
                    };
                    // A reply's id is the string this speaker sent.
                    let id = answer
                        .id
                        .as_deref()
                        .and_then(|id| serde_json::from_str::<String>(id.get()).ok());
                    let waiter = id.and_then(|id| self.pending.lock().remove(&id));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(Ok(answer.data.unwrap_or_else(wire::null)));
                    }
                }
                Some(Err(e)) => break e.to_string(),
                None => break "closed the connection".to_string(),
            }
        };
        *self.out.lock() = None;
        let waiting: Vec<_> = self.pending.lock().drain().collect();
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(ServiceError::new(
                crate::error::ErrorKind::NodeDown,
                format!("messenger listener {} {why}", self.address),
            )));
        }
        why
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(actix_rt::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
