//! Publish/subscribe, as ZeroMQ's PUB/SUB: any actor or task publishes a message
//! under a topic; subscribers name a topic prefix and receive every message whose
//! topic starts with it (the empty prefix receives everything).
//!
//! Filtering happens at the publishing node. Each node tells its peers which
//! prefixes its subscribers hold (again after every reconnect), and a publisher
//! sends a message over a link only when the node at the other end has a matching
//! subscriber. A node with none receives nothing, not even to drop it.
//!
//! In-process delivery never serializes: subscribers on the publisher's node get
//! the value itself and [`Published::decode`] clones it out; the JSON is made
//! once, and only when the message leaves the node.
//!
//! Every subscriber has a high-water mark of messages delivered but not yet
//! handled ([`HIGH_WATER`]); past it, new messages to that subscriber are dropped
//! and counted, as ZeroMQ's PUB socket does, so that a slow subscriber cannot
//! grow a queue without bound or slow the publisher down.
//!
//! # Channels
//!
//! clustr-node's channels are topics with reserved names, built by [`channel`]:
//! `public` reaches every worker and master that joined it, `group` every worker
//! of one service, `private` one worker by id.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use actix::prelude::*;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::ServiceError;

/// Messages a subscriber may hold delivered but not yet handled; past this,
/// further messages to it are dropped and counted.
pub const HIGH_WATER: usize = 10_000;

/// Who published a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishMeta {
    /// The node it was published on.
    pub node: String,
    /// The worker that published it, if a worker did (`NODE/SERVICE/INDEX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The publishing worker's service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl PublishMeta {
    /// The meta of a message published on `node` by the code running now: a
    /// worker's handler, or any other task.
    pub(crate) fn here(node: &str) -> PublishMeta {
        let worker = crate::worker::current_worker();
        PublishMeta {
            node: node.to_string(),
            service: worker.as_ref().map(|w| w.service.clone()),
            worker: worker.map(|w| w.to_string()),
        }
    }
}

/// The message of a publication: the value itself while it stays on its node,
/// JSON once it has crossed a link.
pub(crate) enum Payload {
    Local(
        Arc<dyn Any + Send + Sync>,
        fn(&(dyn Any + Send + Sync)) -> Vec<u8>,
    ),
    Json,
}

/// One publication, shared by every subscriber it reaches.
pub(crate) struct Delivery {
    pub(crate) topic: String,
    pub(crate) meta: PublishMeta,
    payload: Payload,
    json: OnceLock<Bytes>,
}

impl Delivery {
    /// A publication of `msg` made on this node.
    pub(crate) fn local<T: Serialize + Send + Sync + 'static>(
        topic: &str,
        meta: PublishMeta,
        msg: T,
    ) -> Delivery {
        fn encode<T: Serialize + 'static>(value: &(dyn Any + Send + Sync)) -> Vec<u8> {
            value
                .downcast_ref::<T>()
                .and_then(|v| serde_json::to_vec(v).ok())
                .unwrap_or_else(|| b"null".to_vec())
        }
        Delivery {
            topic: topic.to_string(),
            meta,
            payload: Payload::Local(Arc::new(msg), encode::<T>),
            json: OnceLock::new(),
        }
    }

    /// A publication that arrived as JSON (from another node or the HTTP API).
    pub(crate) fn json(topic: String, meta: PublishMeta, json: Bytes) -> Delivery {
        Delivery {
            topic,
            meta,
            payload: Payload::Json,
            json: OnceLock::from(json),
        }
    }

    /// The message as JSON, encoded at most once.
    pub(crate) fn json_bytes(&self) -> &Bytes {
        self.json.get_or_init(|| match &self.payload {
            Payload::Local(value, encode) => Bytes::from(encode(value.as_ref())),
            Payload::Json => Bytes::from_static(b"null"),
        })
    }

    /// The line `GET /v1/subscribe` streams for this publication.
    pub(crate) fn json_line(&self) -> Bytes {
        let data: Box<serde_json::value::RawValue> =
            serde_json::from_slice(self.json_bytes()).unwrap_or_else(|_| null_raw());
        let mut line = serde_json::to_vec(&Line {
            topic: &self.topic,
            meta: &self.meta,
            data: &data,
        })
        .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn null_raw() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    meta: &'a PublishMeta,
    data: &'a serde_json::value::RawValue,
}

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

/// Counts a message against its subscriber's high-water mark until it is handled.
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Where a subscription's messages go.
pub(crate) enum Sink {
    /// An actor.
    Actor(Recipient<Published>),
    /// A bounded stream of JSON lines (`GET /v1/subscribe`).
    Lines(mpsc::Sender<Bytes>),
}

struct Entry {
    id: u64,
    prefix: String,
    sink: Sink,
    pending: Arc<AtomicUsize>,
}

/// Called with the prefix table whenever it changes (the bridge tells peers).
pub(crate) type Announce = dyn Fn(BTreeMap<String, u32>) + Send + Sync;

/// This node's subscriptions, and the hook that tells peers when their prefixes
/// change.
#[derive(Default)]
pub(crate) struct PubSub {
    entries: RwLock<Vec<Entry>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    announce: OnceLock<Weak<Announce>>,
    /// Held from computing a prefix table until it is queued to the peers, so
    /// that tables reach each peer in the order they were computed.
    announcing: Mutex<()>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub")
            .field("subscriptions", &self.entries.read().len())
            .finish()
    }
}

impl PubSub {
    /// Calls `announce` with the prefix table whenever it changes.
    pub(crate) fn on_change(&self, announce: Weak<Announce>) {
        let _ = self.announce.set(announce);
    }

    /// Adds a subscription; it lasts until the returned handle drops.
    pub(crate) fn add(self: &Arc<Self>, prefix: &str, sink: Sink) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.entries.write().push(Entry {
            id,
            prefix: prefix.to_string(),
            sink,
            pending: Arc::default(),
        });
        self.changed();
        Subscription {
            pubsub: Arc::downgrade(self),
            id,
            prefix: prefix.to_string(),
        }
    }

    fn remove(&self, id: u64) {
        let removed = {
            let mut entries = self.entries.write();
            let before = entries.len();
            entries.retain(|e| e.id != id);
            entries.len() != before
        };
        if removed {
            self.changed();
        }
    }

    /// Ends every subscription (at shutdown): streams of JSON lines finish.
    pub(crate) fn close(&self) {
        self.entries.write().clear();
    }

    /// Every prefix subscribed here, with how many subscriptions hold it.
    pub(crate) fn prefixes(&self) -> BTreeMap<String, u32> {
        let mut table = BTreeMap::new();
        for entry in self.entries.read().iter() {
            *table.entry(entry.prefix.clone()).or_insert(0) += 1;
        }
        table
    }

    /// Calls `send` with the prefix table, in turn with every other announcement
    /// of it: a table computed later is also queued later, so that no peer keeps
    /// an older table than the last one (a subscription added while another thread
    /// announces, or while a link opens, would otherwise be lost to that peer).
    pub(crate) fn with_prefixes<R>(&self, send: impl FnOnce(BTreeMap<String, u32>) -> R) -> R {
        let _in_turn = self.announcing.lock();
        send(self.prefixes())
    }

    fn changed(&self) {
        if let Some(announce) = self.announce.get().and_then(Weak::upgrade) {
            self.with_prefixes(|prefixes| announce(prefixes));
        }
    }

    /// Hands `delivery` to every local subscriber whose prefix matches; returns how
    /// many took it. Subscribers found gone are removed.
    pub(crate) fn deliver(&self, delivery: &Arc<Delivery>) -> usize {
        let mut delivered = 0;
        let mut gone = Vec::new();
        for entry in self.entries.read().iter() {
            if !delivery.topic.starts_with(entry.prefix.as_str()) {
                continue;
            }
            match self.offer(entry, delivery) {
                Offered::Taken => delivered += 1,
                Offered::Full => {
                    // One line per thousand drops, not a flood.
                    let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                    if before.is_multiple_of(1000) {
                        log::warn!(
                            "pubsub: a subscriber of `{}` is {HIGH_WATER} messages behind; message on {} dropped ({} dropped so far)",
                            entry.prefix,
                            delivery.topic,
                            before + 1
                        );
                    }
                }
                Offered::Gone => gone.push(entry.id),
            }
        }
        for id in gone {
            self.remove(id);
        }
        delivered
    }

    fn offer(&self, entry: &Entry, delivery: &Arc<Delivery>) -> Offered {
        match &entry.sink {
            Sink::Actor(recipient) => {
                if entry.pending.fetch_add(1, Ordering::AcqRel) >= HIGH_WATER {
                    entry.pending.fetch_sub(1, Ordering::AcqRel);
                    return Offered::Full;
                }
                if !recipient.connected() {
                    entry.pending.fetch_sub(1, Ordering::AcqRel);
                    return Offered::Gone;
                }
                // The high-water mark above bounds what waits in the actor's
                // mailbox, whatever the mailbox's own capacity (actix's default
                // of 16 would drop bursts).
                recipient.do_send(Published {
                    delivery: delivery.clone(),
                    _ticket: Ticket(entry.pending.clone()),
                });
                Offered::Taken
            }
            Sink::Lines(tx) => match tx.try_send(delivery.json_line()) {
                Ok(()) => Offered::Taken,
                Err(mpsc::error::TrySendError::Full(_)) => Offered::Full,
                Err(mpsc::error::TrySendError::Closed(_)) => Offered::Gone,
            },
        }
    }

    /// Messages dropped because a subscriber was past its high-water mark.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Offered {
    Taken,
    Full,
    Gone,
}

/// Whether a subscriber to any of `prefixes` wants `topic`, and how many do.
pub(crate) fn matching(prefixes: &BTreeMap<String, u32>, topic: &str) -> u32 {
    prefixes
        .iter()
        .filter(|(prefix, _)| topic.starts_with(prefix.as_str()))
        .map(|(_, n)| *n)
        .sum()
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
            topic.escape_debug()
        )));
    }
    Ok(())
}

/// The longest topic or prefix, in bytes.
pub const MAX_TOPIC: usize = 1024;

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
