//! Messages waiting to be handed to the NATS client, bounded in messages and in
//! bytes. A call is made without waiting (a request returns its pending answer
//! at once), so what it sends waits here for one writer task, which hands
//! everything waiting to the client in turn; past the bounds a send is refused
//! with `Overloaded`, and the caller knows at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::Client;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{ErrorKind, ServiceError};

/// Messages waiting at most.
pub(crate) const MAX_ITEMS: usize = 65_536;
/// Bytes waiting at most.
pub(crate) const MAX_BYTES: usize = 64 * 1024 * 1024;

/// One message to send.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) subject: async_nats::Subject,
    pub(crate) reply: Option<async_nats::Subject>,
    pub(crate) payload: Bytes,
    /// The pending call it belongs to, failed if the message cannot be sent.
    pub(crate) call: Option<u64>,
    /// NATS headers: a traced message's `traceparent` (see `wire`).
    pub(crate) headers: Option<async_nats::HeaderMap>,
}

/// The queue.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<(VecDeque<Out>, usize)>,
    ready: Notify,
    /// Messages refused for the bounds.
    pub(crate) refused: AtomicU64,
}

impl Outbox {
    /// Queues `out`; `Overloaded` past the bounds.
    pub(crate) fn push(&self, out: Out) -> Result<(), ServiceError> {
        let size = out.subject.len() + out.payload.len();
        let wake = {
            let mut queue = self.queue.lock();
            if queue.0.len() >= MAX_ITEMS || queue.1.saturating_add(size) > MAX_BYTES {
                drop(queue);
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(ServiceError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "the NATS send queue is full ({MAX_ITEMS} messages or {} MiB waiting)",
                        MAX_BYTES >> 20
                    ),
                ));
            }
            // The writer waits only once it has found the queue empty: it
            // needs waking only when the queue stops being empty.
            let wake = queue.0.is_empty();
            queue.0.push_back(out);
            queue.1 += size;
            wake
        };
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Hands what is queued to `client` until the outbox is dropped; `failed` is
    /// told of each call whose request could not be sent.
    pub(crate) async fn run(self: Arc<Self>, client: Client, failed: impl Fn(u64, String)) {
        let mut batch = VecDeque::new();
        loop {
            {
                let mut queue = self.queue.lock();
                std::mem::swap(&mut batch, &mut queue.0);
                queue.1 = 0;
            }
            if batch.is_empty() {
                self.ready.notified().await;
                continue;
            }
            for out in batch.drain(..) {
                let sent = match (out.reply, out.headers) {
                    (Some(reply), None) => {
                        client
                            .publish_with_reply(out.subject, reply, out.payload)
                            .await
                    }
                    (Some(reply), Some(headers)) => {
                        client
                            .publish_with_reply_and_headers(
                                out.subject,
                                reply,
                                headers,
                                out.payload,
                            )
                            .await
                    }
                    (None, None) => client.publish(out.subject, out.payload).await,
                    (None, Some(headers)) => {
                        client
                            .publish_with_headers(out.subject, headers, out.payload)
                            .await
                    }
                };
                if let (Err(e), Some(call)) = (sent, out.call) {
                    failed(call, e.to_string());
                }
            }
        }
    }
}
