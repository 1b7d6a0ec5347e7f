//! The cluster messaging calls of a node: publish and subscribe, job queues,
//! locks and confirmations. Queues, locks and confirmations are kept by the
//! master in the cluster state (see `state`); this node calls it directly when it
//! is the master, or over its link to the master otherwise. A backbone that keeps
//! the cluster state itself (NATS, on JetStream) is called by every node alike.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::handle::Node;
use crate::error::{ErrorKind, ServiceError};
use crate::jobs::{Answer, Given, QueueStatus};
use crate::message::WorkerId;
use crate::pubsub::{
    channel, check_topic, Delivery, LineReceiver, PublishMeta, Published, Sink, Subscription,
};
use crate::state::{ClusterState, Op};
use crate::transport::{BridgeStats, Link, Pending, SharedState};

/// Extra time a call to the master gets beyond the wait it asks for.
pub(super) const MARGIN: Duration = Duration::from_secs(5);
/// How long a call to the master that does not wait may take.
pub(super) const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the cluster's queues, locks and confirmations are, seen from a node.
pub(super) enum StateAt {
    Here(Arc<ClusterState>),
    Link(Arc<dyn Link>),
    Shared(Arc<dyn SharedState>),
}

/// Who is calling: the worker whose handler runs now, else the node.
pub(super) fn caller(node: &str) -> String {
    crate::logging::current_worker()
        .map(|w| w.to_string())
        .unwrap_or_else(|| node.to_string())
}

impl Node {
    /// Publishes `msg` under `topic` to every subscriber of the cluster whose
    /// prefix it matches; returns how many subscribers it was handed to. The
    /// message carries who published it (this node, and the worker whose handler
    /// calls this). Never waits: a subscriber past its high-water mark misses it.
    ///
    /// The count is of accepted deliveries: this node's subscribers that took the
    /// message within their bounds, plus, for each other node whose link queue took
    /// it, the subscribers that node holds for the topic. Those that missed it here
    /// (a subscriber past its bounds, a link whose queue is full) are not counted,
    /// and are counted in `colony_publish_dropped_total` instead. Whether a remote
    /// subscriber then drops it at its own bounds is not known when publishing (no
    /// acknowledgement comes back): the remote node counts that drop in its own
    /// `colony_publish_dropped_total`.
    pub fn publish<T>(&self, topic: &str, msg: T) -> Result<usize, ServiceError>
    where
        T: Serialize + Send + Sync + 'static,
    {
        check_topic(topic, "topic")?;
        let meta = PublishMeta::here(&self.inner.name);
        Ok(self.deliver(Arc::new(Delivery::local(topic, meta, msg))))
    }

    /// Publishes a JSON message, as `POST /v1/publish` does; `delivered` counts as
    /// [`publish`](Self::publish)'s answer does.
    pub(crate) fn publish_json(&self, topic: &str, json: Bytes) -> Result<usize, ServiceError> {
        check_topic(topic, "topic")?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&json)
            .map_err(|e| ServiceError::bad_request(format!("message is not JSON: {e}")))?;
        let meta = PublishMeta {
            node: self.inner.name.clone(),
            worker: None,
            service: None,
        };
        Ok(self.deliver(Arc::new(Delivery::json(topic.to_string(), meta, json))))
    }

    fn deliver(&self, delivery: Arc<Delivery>) -> usize {
        self.inner.pubsub.count_published();
        let here = self.inner.pubsub.deliver(&delivery);
        let there = self.transport().map_or(0, |b| b.publish(&delivery));
        here + there
    }

    /// Delivers every message of the cluster whose topic starts with `prefix` to
    /// `recipient` (an actor implementing `Handler<`[`Published`]`>`), until the
    /// returned [`Subscription`] drops. Keep it in the actor's state.
    ///
    /// The actor may hold [`HIGH_WATER`](crate::pubsub::HIGH_WATER) messages or
    /// [`HIGH_WATER_BYTES`](crate::pubsub::HIGH_WATER_BYTES) bytes delivered but not
    /// yet handled; past either, messages to it are dropped and counted.
    /// `Overloaded` when `prefix` is new and this node's subscribers hold
    /// [`MAX_PREFIXES`](crate::pubsub::MAX_PREFIXES) distinct prefixes already.
    pub fn subscribe(
        &self,
        prefix: &str,
        recipient: Recipient<Published>,
    ) -> Result<Subscription, ServiceError> {
        check_topic(prefix, "prefix")?;
        self.inner.pubsub.add(prefix, Sink::Actor(recipient))
    }

    /// Joins worker `worker` to clustr-node's three channels: public, its
    /// service's group and its own private channel (see [`channel`]).
    pub fn join_channels(
        &self,
        worker: &WorkerId,
        recipient: Recipient<Published>,
    ) -> Result<Vec<Subscription>, ServiceError> {
        channel::of_worker(worker)
            .iter()
            .map(|topic| self.subscribe(topic, recipient.clone()))
            .collect()
    }

    /// A subscription whose messages arrive as JSON lines on a queue of at most
    /// `lines` lines and `api.subscribe_buffer` bytes; past either, messages are
    /// dropped, and the reader gets a line `{"dropped":N}` before the next one.
    pub(crate) fn subscribe_lines(
        &self,
        prefix: &str,
        lines: usize,
    ) -> Result<(Subscription, LineReceiver), ServiceError> {
        check_topic(prefix, "prefix")?;
        let (tx, rx) = self.inner.pubsub.line_queue(lines);
        Ok((self.inner.pubsub.add(prefix, Sink::Lines(tx))?, rx))
    }

    /// How many subscribers in the cluster a message on `topic` would reach now,
    /// as far as this node knows.
    pub fn subscribers(&self, topic: &str) -> usize {
        let here = self.inner.pubsub.matching(topic) as usize;
        here + self.transport().map_or(0, |b| b.subscribers(topic))
    }

    /// Published messages this node dropped because a subscriber was past its
    /// high-water marks (in messages or bytes) or a link's send queue was full: one
    /// per subscriber that missed a message.
    pub fn publish_dropped(&self) -> u64 {
        self.inner.pubsub.dropped()
    }

    /// Traffic over this node's bridge, if it has one.
    pub fn bridge_stats(&self) -> Option<BridgeStats> {
        self.transport().and_then(|t| t.stats())
    }

    pub(super) fn state_at(&self) -> Result<StateAt, ServiceError> {
        if let Some(state) = &self.inner.state {
            return Ok(StateAt::Here(state.clone()));
        }
        let transport = self.transport().ok_or_else(|| {
            ServiceError::no_such_service("this node holds no queues and has no bridge")
        })?;
        if let Some(shared) = transport.shared_state() {
            return Ok(StateAt::Shared(shared));
        }
        let master = transport.master().ok_or_else(|| {
            ServiceError::new(
                ErrorKind::NodeDown,
                format!(
                    "node {} knows no master, which holds the cluster's queues and locks",
                    self.inner.name
                ),
            )
        })?;
        transport.link(&master).map(StateAt::Link).ok_or_else(|| {
            ServiceError::new(
                ErrorKind::NodeDown,
                format!(
                    "the master {master} is not connected to node {}",
                    self.inner.name
                ),
            )
        })
    }

    pub(super) async fn call_state<R: DeserializeOwned>(
        link: &Arc<dyn Link>,
        op: &Op,
        timeout: Duration,
    ) -> Result<R, ServiceError> {
        let pending = Self::send_state(link, op)?;
        Self::answer_of(link, pending, timeout).await
    }

    /// Does `op` at the cluster state `at`, away from this node, within `timeout`.
    pub(super) async fn call_remote<R: DeserializeOwned>(
        at: StateAt,
        op: Op,
        timeout: Duration,
    ) -> Result<R, ServiceError> {
        match at {
            StateAt::Link(link) => Self::call_state(&link, &op, timeout).await,
            StateAt::Shared(shared) => {
                let reply = tokio::time::timeout(timeout, shared.serve(op))
                    .await
                    .map_err(|_| {
                        ServiceError::timeout("no answer from the cluster state in time")
                    })??;
                serde_json::from_slice(&reply).map_err(|e| {
                    ServiceError::bad_request(format!(
                        "unreadable answer of the cluster state: {e}"
                    ))
                })
            }
            StateAt::Here(_) => Err(ServiceError::bad_request(
                "the cluster state is on this node",
            )),
        }
    }

    /// Sends `op` to the master over `link` now; its answer comes with
    /// [`Node::answer_of`].
    pub(super) fn send_state(link: &Arc<dyn Link>, op: &Op) -> Result<Pending, ServiceError> {
        let payload = serde_json::to_vec(op)
            .map_err(|e| ServiceError::bad_request(format!("operation is not JSON: {e}")))?;
        link.cluster(&payload)
    }

    /// Waits up to `timeout` for the master's answer to an operation sent.
    pub(super) async fn answer_of<R: DeserializeOwned>(
        link: &Arc<dyn Link>,
        pending: Pending,
        timeout: Duration,
    ) -> Result<R, ServiceError> {
        let deadline = crate::deadline::tokio_after(timeout);
        let reply = pending
            .wait(link.as_ref(), deadline, || {
                ServiceError::timeout(format!(
                    "no answer from the master {} to a cluster operation in time",
                    link.node()
                ))
            })
            .await?;
        serde_json::from_slice(&reply).map_err(|e| {
            ServiceError::bad_request(format!(
                "unreadable answer from the master {}: {e}",
                link.node()
            ))
        })
    }

    /// Pushes `job` onto the cluster's job queue `queue` and returns its id once
    /// the queue holds it; a worker of a service that
    /// [consumes](crate::ServiceBuilder::consumes) the queue will run it at least
    /// once. `Overloaded` when the queue is at its capacity.
    pub async fn push<M: Serialize>(&self, queue: &str, job: &M) -> Result<u64, ServiceError> {
        let json = serde_json::value::to_raw_value(job)
            .map_err(|e| ServiceError::bad_request(format!("job is not JSON: {e}")))?;
        self.push_json(queue, json).await
    }

    /// Pushes a JSON job, as `POST /v1/push` does.
    pub(crate) async fn push_json(
        &self,
        queue: &str,
        job: Box<RawValue>,
    ) -> Result<u64, ServiceError> {
        match self.state_at()? {
            StateAt::Here(state) => state.jobs.push(queue, job).await,
            remote => {
                let op = Op::Push {
                    queue: queue.to_string(),
                    job,
                    trace: crate::trace::current(),
                };
                Self::call_remote(remote, op, STATE_TIMEOUT).await
            }
        }
    }

    /// Every job queue of the cluster, with its counts and dead letters.
    pub async fn queues(&self) -> Result<Vec<QueueStatus>, ServiceError> {
        match self.state_at()? {
            StateAt::Here(state) => Ok(state.jobs.status()),
            remote => Self::call_remote(remote, Op::Queues, STATE_TIMEOUT).await,
        }
    }

    /// Waits up to `wait` for a job of `queue` for `worker`.
    pub(crate) async fn take(
        &self,
        queue: &str,
        worker: &str,
        wait: Duration,
    ) -> Result<Option<Given>, ServiceError> {
        match self.state_at()? {
            StateAt::Here(state) => state.jobs.take(queue, self.name(), worker, wait).await,
            remote => {
                let op = Op::Take {
                    queue: queue.to_string(),
                    worker: worker.to_string(),
                    wait_ms: wait.as_millis() as u64,
                };
                Self::call_remote(remote, op, wait + MARGIN).await
            }
        }
    }

    /// Ends delivery `given` of a job of `queue`; answered once the cluster
    /// state has kept the outcome.
    pub(crate) async fn ack(
        &self,
        queue: &str,
        given: &Given,
        answer: Answer,
    ) -> Result<(), ServiceError> {
        let (id, attempt, lease) = (given.id, given.attempt, given.lease);
        match self.state_at()? {
            StateAt::Here(state) => state.jobs.ack(queue, id, attempt, lease, answer).await,
            remote => {
                let op = Op::Ack {
                    queue: queue.to_string(),
                    job: id,
                    attempt,
                    lease,
                    answer,
                };
                Self::call_remote::<()>(remote, op, STATE_TIMEOUT).await
            }
        }
    }

    /// Confirms `id` to the master as the calling worker (or this node, outside
    /// a worker); returns how many distinct senders have confirmed it. Repeats
    /// from one sender count once.
    pub fn confirm(&self, id: &str) -> impl Future<Output = Result<usize, ServiceError>> + 'static {
        let node = self.clone();
        let id = id.to_string();
        let sender = caller(self.name());
        async move {
            match node.state_at()? {
                StateAt::Here(state) => state.confirmations.confirm(&id, &sender).await,
                remote => {
                    let op = Op::Confirm { id, sender };
                    Self::call_remote(remote, op, STATE_TIMEOUT).await
                }
            }
        }
    }

    /// On the master: resolves once `n` distinct senders have confirmed `id` (at
    /// once if they already have), with their count; `Timeout` if they have not
    /// within `timeout`. Each call fires once.
    pub fn on_confirmation(
        &self,
        n: usize,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<usize, ServiceError>> + 'static {
        let shared = self.transport().and_then(|t| t.shared_state());
        let waiting = match (&self.inner.state, shared) {
            (Some(state), _) => state.confirmations.wait(n, id),
            (None, Some(shared)) => shared.confirmed(n, id),
            (None, None) => Err(ServiceError::no_such_service(format!(
                "confirmations are counted on the master; node {} is not it",
                self.inner.name
            ))),
        };
        let name = self.inner.name.clone();
        let id = id.to_string();
        async move {
            match tokio::time::timeout(timeout, waiting?).await {
                Ok(count) => count.map_err(|_| super::handle::node_stopped(&name)),
                Err(_) => Err(ServiceError::timeout(format!(
                    "fewer than {n} senders confirmed `{id}` within {}",
                    humantime::format_duration(timeout)
                ))),
            }
        }
    }
}
