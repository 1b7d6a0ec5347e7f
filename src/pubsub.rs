//! Publish/subscribe, as ZeroMQ's PUB/SUB: any actor or task publishes a message
//! under a topic; subscribers name a topic prefix and receive every message whose
//! topic starts with it (the empty prefix receives everything).
//!
//! Filtering happens at the publishing node. When a link opens, each node sends
//! the other the prefixes its subscribers hold, as one table; after that only the
//! changes travel (a subscription added, one removed), in the order they were
//! made, so a change costs the size of its prefix, not of the whole table. A
//! publisher sends a message over a link only when the node at the other end has
//! a matching subscriber. A node with none receives nothing, not even to drop it.
//! A node holds at most [`MAX_PREFIXES`] distinct prefixes: a subscription to a
//! new prefix past it gets `Overloaded`, and a peer's table is kept only up to it.
//!
//! In-process delivery never serializes: subscribers on the publisher's node get
//! the value itself and [`Published::decode`] clones it out; the JSON is made
//! once, and only when the message leaves the node.
//!
//! Every subscriber is bounded in messages and in bytes: an actor may hold
//! [`HIGH_WATER`] messages or [`HIGH_WATER_BYTES`] bytes (measured as JSON)
//! delivered but not yet handled, a `GET /v1/subscribe` stream `api.subscribe_buffer`
//! bytes, and all such streams of a node together [`STREAM_BUDGET_BUFFERS`] times
//! that. Past any bound new messages to that subscriber are dropped and counted
//! (`colony_publish_dropped_total`), as ZeroMQ's PUB socket does, so that a slow
//! subscriber cannot grow a queue without bound or slow the publisher down.
//!
//! # Channels
//!
//! clustr-node's channels are topics with reserved names, built by [`channel`]:
//! `public` reaches every worker and master that joined it, `group` every worker
//! of one service, `private` one worker by id.

mod delivery;
mod lines;
mod meta;
mod peers;
mod prefixes;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use actix::prelude::*;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;

use crate::error::ServiceError;
use crate::status::PubSubCounters;
pub(crate) use delivery::Delivery;
use delivery::Payload;
use lines::Budget;
pub(crate) use lines::{line_queue, LineReceiver, LineSender};
pub use meta::PublishMeta;
pub(crate) use peers::PeerSubscriptions;
pub(crate) use prefixes::matching;
pub use prefixes::{MAX_PREFIXES, MAX_TOPIC};

/// Messages a subscriber may hold delivered but not yet handled; past this,
/// further messages to it are dropped and counted.
pub const HIGH_WATER: usize = 10_000;

/// Bytes (of the messages as JSON) an actor subscriber may hold delivered but not
/// yet handled; past this, further messages to it are dropped and counted. A
/// message always reaches a subscriber that holds none, whatever its size.
pub const HIGH_WATER_BYTES: usize = 8 * 1024 * 1024;

/// How many `api.subscribe_buffer`s all the `GET /v1/subscribe` streams of a node
/// may hold together (64 MiB with the default buffer of 8 MiB): past it a message
/// to any stream is dropped and counted, as one past the stream's own buffer is,
/// so that many stalled streams cost no more than this.
pub const STREAM_BUDGET_BUFFERS: usize = 8;

/// A message an actor receives for its subscription: implement
/// `Handler<Published>` and subscribe with [`Node::subscribe`](crate::Node::subscribe).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Published {
    delivery: Arc<Delivery>,
    _ticket: Ticket,
}

impl Published {
    /// The topic it was published under.
    pub fn topic(&self) -> &str {
        &self.delivery.topic
    }

    /// Who published it.
    pub fn meta(&self) -> &PublishMeta {
        &self.delivery.meta
    }

    /// The trace it was published in, on whichever node: a handler that logs
    /// about it names the trace with
    /// [`trace::scope_sync`](crate::trace::scope_sync)`(msg.trace(), || …)`.
    pub fn trace(&self) -> Option<crate::trace::TraceContext> {
        self.delivery.trace
    }

    /// The message as `T`: a clone of the published value on the publisher's node,
    /// decoded from JSON elsewhere. `BadRequest` when it is not a `T`.
    pub fn decode<T: DeserializeOwned + Clone + 'static>(&self) -> Result<T, ServiceError> {
        if let Payload::Local(value, _) = &self.delivery.payload {
            if let Some(value) = value.downcast_ref::<T>() {
                return Ok(value.clone());
            }
        }
        serde_json::from_slice(self.delivery.json_bytes()).map_err(|e| {
            ServiceError::bad_request(format!(
                "message on topic {} is not a {}: {e}",
                self.delivery.topic,
                std::any::type_name::<T>()
            ))
        })
    }

    /// The message as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.delivery.json_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("topic", &self.delivery.topic)
            .field("meta", &self.delivery.meta)
            .finish()
    }
}

/// What an actor subscriber holds delivered but not yet handled.
#[derive(Default)]
struct Pending {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl Pending {
    /// Counts a message of `size` bytes, unless it would pass a high-water mark.
    fn admit(&self, size: usize) -> bool {
        if self.messages.fetch_add(1, Ordering::AcqRel) >= HIGH_WATER {
            self.messages.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before.saturating_add(size) > HIGH_WATER_BYTES {
            self.release(size);
            return false;
        }
        true
    }

    fn release(&self, size: usize) {
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        self.messages.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a message against its subscriber's high-water marks until it is handled.
struct Ticket {
    pending: Arc<Pending>,
    size: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.release(self.size);
    }
}

/// Where a subscription's messages go.
pub(crate) enum Sink {
    /// An actor.
    Actor(Recipient<Published>),
    /// A stream of JSON lines bounded in lines and bytes (`GET /v1/subscribe`).
    Lines(LineSender),
}

struct Entry {
    id: u64,
    prefix: String,
    sink: Sink,
    pending: Arc<Pending>,
}

/// A change to this node's subscriptions, as the peers are told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A subscription to this prefix was added.
    Added(String),
    /// A subscription to this prefix ended.
    Removed(String),
}

/// Called with every change to the subscriptions (the bridge tells peers).
pub(crate) type Announce = dyn Fn(Change) + Send + Sync;

/// The subscriptions, and how many hold each prefix.
#[derive(Default)]
struct Table {
    entries: Vec<Entry>,
    prefixes: BTreeMap<String, u32>,
}

/// This node's subscriptions, and the hook that tells peers when they change.
pub(crate) struct PubSub {
    table: RwLock<Table>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    /// Messages published from this node, and handed to its subscribers.
    published: AtomicU64,
    delivered: AtomicU64,
    announce: OnceLock<Weak<Announce>>,
    /// Held from changing the table until the change is queued to the peers, and
    /// from taking the table until it is queued to a new peer: each peer gets one
    /// table and then every later change, in order.
    announcing: Mutex<()>,
    /// Bytes a stream of JSON lines may hold (`api.subscribe_buffer`).
    stream_bytes: usize,
    /// Bytes all the streams of JSON lines may hold together.
    stream_budget: Arc<Budget>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub")
            .field("subscriptions", &self.table.read().entries.len())
            .finish()
    }
}

impl PubSub {
    /// No subscriptions yet; each stream of JSON lines holds at most
    /// `stream_bytes` bytes, and all of them together [`STREAM_BUDGET_BUFFERS`]
    /// times as many.
    pub(crate) fn new(stream_bytes: usize) -> PubSub {
        PubSub {
            table: RwLock::default(),
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            announce: OnceLock::new(),
            announcing: Mutex::new(()),
            stream_bytes,
            stream_budget: Arc::new(Budget::new(
                stream_bytes.saturating_mul(STREAM_BUDGET_BUFFERS),
            )),
        }
    }

    /// Calls `announce` with every change to the subscriptions.
    pub(crate) fn on_change(&self, announce: Weak<Announce>) {
        let _ = self.announce.set(announce);
    }

    /// Adds a subscription; it lasts until the returned handle drops.
    /// `Overloaded` when `prefix` is new and [`MAX_PREFIXES`] are held already.
    pub(crate) fn add(
        self: &Arc<Self>,
        prefix: &str,
        sink: Sink,
    ) -> Result<Subscription, ServiceError> {
        let _in_turn = self.announcing.lock();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut table = self.table.write();
            if !table.prefixes.contains_key(prefix) && table.prefixes.len() >= MAX_PREFIXES {
                return Err(ServiceError::overloaded(format!(
                    "this node's subscribers hold {MAX_PREFIXES} distinct prefixes, the most it keeps; \
                     subscribe to one of them or end a subscription first"
                )));
            }
            let count = table.prefixes.entry(prefix.to_string()).or_insert(0);
            *count = count.saturating_add(1);
            table.entries.push(Entry {
                id,
                prefix: prefix.to_string(),
                sink,
                pending: Arc::default(),
            });
        }
        self.announce(Change::Added(prefix.to_string()));
        Ok(Subscription {
            pubsub: Arc::downgrade(self),
            id,
            prefix: prefix.to_string(),
        })
    }

    /// A queue of JSON lines for a stream subscriber, holding at most `lines`
    /// lines and `api.subscribe_buffer` bytes, within the budget all streams share.
    pub(crate) fn line_queue(&self, lines: usize) -> (LineSender, LineReceiver) {
        line_queue(lines, self.stream_bytes, self.stream_budget.clone())
    }

    fn remove(&self, id: u64) {
        let _in_turn = self.announcing.lock();
        let removed = {
            let mut table = self.table.write();
            let Some(at) = table.entries.iter().position(|e| e.id == id) else {
                return;
            };
            let entry = table.entries.remove(at);
            if let Some(count) = table.prefixes.get_mut(&entry.prefix) {
                *count -= 1;
                if *count == 0 {
                    table.prefixes.remove(&entry.prefix);
                }
            }
            entry
        };
        self.announce(Change::Removed(removed.prefix.clone()));
    }

    fn announce(&self, change: Change) {
        if let Some(announce) = self.announce.get().and_then(Weak::upgrade) {
            announce(change);
        }
    }

    /// Ends every subscription (at shutdown): streams of JSON lines finish.
    pub(crate) fn close(&self) {
        let mut table = self.table.write();
        table.entries.clear();
        table.prefixes.clear();
    }

    /// Every prefix subscribed here, with how many subscriptions hold it.
    pub(crate) fn prefixes(&self) -> BTreeMap<String, u32> {
        self.table.read().prefixes.clone()
    }

    /// How many subscriptions here want `topic`.
    pub(crate) fn matching(&self, topic: &str) -> u32 {
        matching(&self.table.read().prefixes, topic)
    }

    /// Calls `send` with the prefix table, in turn with every change: changes made
    /// before are in the table, changes made after are announced after `send`
    /// returns. A new link queues the table in `send`, so that it gets every change
    /// exactly once.
    pub(crate) fn with_prefixes<R>(&self, send: impl FnOnce(BTreeMap<String, u32>) -> R) -> R {
        let _in_turn = self.announcing.lock();
        send(self.prefixes())
    }

    /// Hands `delivery` to every local subscriber whose prefix matches; returns how
    /// many took it. Subscribers found gone are removed.
    pub(crate) fn deliver(&self, delivery: &Arc<Delivery>) -> usize {
        let mut delivered = 0;
        let mut gone = Vec::new();
        for entry in self.table.read().entries.iter() {
            if !delivery.topic.starts_with(entry.prefix.as_str()) {
                continue;
            }
            match self.offer(entry, delivery) {
                Offered::Taken => delivered += 1,
                Offered::Full => self.count_dropped(1, &delivery.topic, || {
                    format!(
                        "a subscriber of `{}` is past its bounds ({HIGH_WATER} messages or its bytes)",
                        crate::logging::untrusted(&entry.prefix)
                    )
                }),
                Offered::Gone => gone.push(entry.id),
            }
        }
        for id in gone {
            self.remove(id);
        }
        self.delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Counts a message published from this node.
    pub(crate) fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages published from this node, messages handed to its subscribers, and
    /// messages dropped, so far.
    pub(crate) fn counters(&self) -> PubSubCounters {
        PubSubCounters {
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped(),
        }
    }

    /// Counts `n` subscribers that missed a message on `topic` because a bound was
    /// reached (theirs, or a link's), for the reason `why` says.
    pub(crate) fn count_dropped(&self, n: u64, topic: &str, why: impl FnOnce() -> String) {
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        let after = before.saturating_add(n);
        // The first, then one line per thousand drops, not a flood.
        if before == 0 || before / 1000 != after / 1000 {
            log::warn!(
                "pubsub: {}; message on {} dropped ({after} dropped so far)",
                why(),
                crate::logging::untrusted(topic),
            );
        }
    }

    fn offer(&self, entry: &Entry, delivery: &Arc<Delivery>) -> Offered {
        match &entry.sink {
            Sink::Actor(recipient) => {
                let size = delivery.size();
                if !entry.pending.admit(size) {
                    return Offered::Full;
                }
                if !recipient.connected() {
                    entry.pending.release(size);
                    return Offered::Gone;
                }
                // The high-water marks above bound what waits in the actor's
                // mailbox, whatever the mailbox's own capacity (actix's default
                // of 16 would drop bursts).
                recipient.do_send(Published {
                    delivery: delivery.clone(),
                    _ticket: Ticket {
                        pending: entry.pending.clone(),
                        size,
                    },
                });
                Offered::Taken
            }
            Sink::Lines(lines) => match lines
                .drop_if_full(delivery.size())
                .unwrap_or_else(|| lines.push(delivery.json_line()))
            {
                lines::Pushed::Taken => Offered::Taken,
                lines::Pushed::Full => Offered::Full,
                lines::Pushed::Gone => Offered::Gone,
            },
        }
    }

    /// Messages dropped because a subscriber was past a bound: one per subscriber
    /// that missed one.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Offered {
    Taken,
    Full,
    Gone,
}

/// A live subscription; dropping it unsubscribes. Keep it in the subscribing
/// actor's state, so that it ends with the actor (a worker that panics or is
/// killed unsubscribes, and its restarted incarnation subscribes again).
#[must_use = "the subscription ends when this handle is dropped"]
pub struct Subscription {
    pubsub: Weak<PubSub>,
    id: u64,
    prefix: String,
}

impl Subscription {
    /// The prefix subscribed to.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(pubsub) = self.pubsub.upgrade() {
            pubsub.remove(self.id);
        }
    }
}

/// Checks a topic or prefix given from outside.
pub(crate) fn check_topic(topic: &str, what: &str) -> Result<(), ServiceError> {
    if topic.len() > MAX_TOPIC {
        return Err(ServiceError::bad_request(format!(
            "{what} is {} bytes long; at most {MAX_TOPIC}",
            topic.len()
        )));
    }
    if topic.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(format!(
            "{what} `{}` contains control characters",
            crate::logging::untrusted(topic)
        )));
    }
    Ok(())
}

/// clustr-node's channels as topics. Each ends with `/`, so that no channel's
/// topic is a prefix of another's (`@group/math/` does not match `@group/maths/`).
///
/// ```
/// use colony::channel;
/// assert_eq!(channel::public(), "@public/");
/// assert_eq!(channel::group("math"), "@group/math/");
/// let id: colony::WorkerId = "master/math/0".parse().unwrap();
/// assert_eq!(channel::private(&id), "@private/master/math/0/");
/// ```
pub mod channel {
    use crate::message::WorkerId;

    /// Every worker and master that joined it.
    pub fn public() -> String {
        "@public/".to_string()
    }

    /// Every worker of `service` that joined it.
    pub fn group(service: &str) -> String {
        format!("@group/{service}/")
    }

    /// The one worker `worker`.
    pub fn private(worker: &WorkerId) -> String {
        format!("@private/{worker}/")
    }

    /// The three channels a worker joins: public, its service's group, its own.
    pub fn of_worker(worker: &WorkerId) -> [String; 3] {
        [public(), group(&worker.service), private(worker)]
    }
}
