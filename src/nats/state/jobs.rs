//! Job queues as JetStream work-queue streams.
//!
//! Each queue `Q` is a stream `P_JOBS_Q` (subject `P.state.jobs.Q`) that keeps
//! at most `capacity` jobs and `max_bytes` bytes, refusing pushes past them
//! (`Overloaded`), and one durable pull consumer `workers` that every node
//! takes from. A job's id is its stream sequence and its attempt is
//! JetStream's delivery count; a delivery's lease is the consumer's
//! `ack_wait`, the queue's `lease`.
//!
//! A take keeps the delivered message on the node that took it, under a fresh
//! lease token, until the worker's answer comes: a success acks it, a failure
//! naks it (delivered again at once) or, on its last attempt, buries it: the
//! dead letter is written to `P_DEAD_Q` (at most `dead_letters` of them, the
//! oldest dropped first) and the message terminated. A message delivered past
//! `max_attempts` (its last holder's lease ran out) is buried when taken.
//!
//! JetStream itself does not cap deliveries (`max_deliver` is unlimited): a
//! capped message whose last holder dies stays in the stream and is never
//! delivered nor buried, while uncapped its next take buries it.
//!
//! Counts cost no write on the way of a job: `pushed` is the stream's last
//! sequence, the jobs buried are the dead-letter stream's last sequence (each
//! letter published once, deduplicated by job id), and `completed` is what is
//! neither still in the stream nor buried. Only `failures` is a counter, in the
//! `P_counts` bucket, updated by compare-and-set.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{AckKind, Context, Message};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::queue::{Queue, MAX_QUEUES};
use super::{failed, CAS_TRIES};
use crate::config::QueueConfig;
use crate::error::ServiceError;
use crate::jobs::{Answer, DeadLetter, Given, QueueStatus};
use crate::logging::untrusted;

/// Deliveries one node may hold unanswered; more takes get `Overloaded`.
const MAX_HELD: usize = 100_000;
/// How often deliveries past their lease are dropped from the held map.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// A delivery a worker of this node holds.
struct Held {
    queue: String,
    id: u64,
    attempt: u32,
    message: Message,
    /// When its lease ends: an answer after this is late, and ignored.
    until: Instant,
}

#[derive(Default)]
struct HeldMap {
    by_lease: HashMap<u64, Held>,
    pruned: Option<Instant>,
}

/// The job queues, in JetStream: those this node declares, made (or bound)
/// when it starts, and those other nodes declare, bound when first used.
pub(super) struct Jobs {
    js: Context,
    prefix: String,
    node: String,
    queues: parking_lot::RwLock<BTreeMap<String, Arc<Queue>>>,
    held: Mutex<HeldMap>,
    counts: kv::Store,
    next_lease: AtomicU64,
    /// Where a job buried here is told (`JobDead`), once the node has booted.
    pub(super) events: std::sync::OnceLock<crate::events::EventBus>,
}

impl Jobs {
    /// Creates or binds the streams and consumers of `configs`.
    pub(super) async fn open(
        js: &Context,
        prefix: &str,
        node: &str,
        configs: &BTreeMap<String, QueueConfig>,
        replicas: usize,
        counts: kv::Store,
    ) -> Result<Jobs, String> {
        let mut queues = BTreeMap::new();
        for (name, config) in configs {
            let queue = Queue::open(js, prefix, name, config, replicas).await?;
            queues.insert(name.clone(), Arc::new(queue));
        }
        let mut lease = [0u8; 8];
        let _ = getrandom::fill(&mut lease);
        Ok(Jobs {
            js: js.clone(),
            prefix: prefix.to_string(),
            node: node.to_string(),
            queues: parking_lot::RwLock::new(queues),
            held: Mutex::new(HeldMap::default()),
            counts,
            events: std::sync::OnceLock::new(),
            next_lease: AtomicU64::new(u64::from_le_bytes(lease) >> 1),
        })
    }

    /// Queue `name`: `BadRequest` for a name no queue can have,
    /// `NoSuchService` when no node's config declares it.
    async fn queue(&self, name: &str) -> Result<Arc<Queue>, ServiceError> {
        crate::jobs::check_name(name)?;
        if let Some(queue) = self.queues.read().get(name) {
            return Ok(queue.clone());
        }
        let none = || {
            ServiceError::no_such_service(format!(
                "no queue `{}` is declared (queues: in a node's config; node {} knows none)",
                untrusted(name),
                self.node
            ))
        };
        if self.queues.read().len() >= MAX_QUEUES {
            return Err(none());
        }
        let bound = Queue::bind(&self.js, &self.prefix, name)
            .await
            .map_err(|e| failed(format_args!("bind queue {}", untrusted(name)), e))?
            .ok_or_else(none)?;
        let mut queues = self.queues.write();
        Ok(queues
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(bound))
            .clone())
    }

    /// Queues `job` and returns its id once the server has stored it;
    /// `Overloaded` when the queue is full.
    pub(super) async fn push(&self, name: &str, job: Box<RawValue>) -> Result<u64, ServiceError> {
        let queue = &*self.queue(name).await?;
        let len = job.get().len();
        if len > queue.config.max_bytes {
            return Err(ServiceError::overloaded(format!(
                "job of {len} bytes would pass queues.{}.max_bytes ({})",
                untrusted(name),
                queue.config.max_bytes
            )));
        }
        let payload = Bytes::from(String::from(Box::<str>::from(job)));
        // The trace it is pushed in travels in the stored message's headers.
        let sent = match crate::nats::wire::trace_headers(crate::trace::current()) {
            None => self.js.publish(queue.subject.clone(), payload).await,
            Some(headers) => {
                self.js
                    .publish_with_headers(queue.subject.clone(), headers, payload)
                    .await
            }
        };
        let ack = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        ack.map(|ack| ack.sequence)
            .map_err(|e| queue.refused_push(len, e))
    }

    /// Waits up to `wait` for a job; `None` when none came.
    pub(super) async fn take(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<Option<Given>, ServiceError> {
        let queue = &*self.queue(name).await?;
        self.make_room()?;
        let deadline = crate::deadline::tokio_after(wait);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = queue.fetch_one(left).await? else {
                return Ok(None);
            };
            let info = message
                .info()
                .map_err(|e| failed("read a delivery", e))
                .map(|i| (i.stream_sequence, i.delivered));
            let (id, delivered) = info?;
            let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
            if attempt > queue.config.max_attempts {
                let error = ServiceError::timeout(format!(
                    "its holder kept it past the queue's lease of {:?} on its last attempt",
                    queue.config.lease
                ));
                self.count_failure(queue).await;
                self.bury_logged(queue, &message, id, attempt - 1, error)
                    .await;
                continue;
            }
            let job = match serde_json::from_slice::<Box<RawValue>>(&message.payload) {
                Ok(job) => job,
                Err(e) => {
                    let error = ServiceError::bad_request(format!("the job is not JSON: {e}"));
                    self.bury_logged(queue, &message, id, attempt, error).await;
                    continue;
                }
            };
            let lease = self.next_lease.fetch_add(1, Ordering::Relaxed);
            let held = Held {
                queue: name.to_string(),
                id,
                attempt,
                message,
                until: crate::deadline::tokio_after(queue.config.lease),
            };
            let trace = crate::nats::wire::read_trace(held.message.headers.as_ref());
            self.held.lock().by_lease.insert(lease, held);
            return Ok(Some(Given {
                id,
                attempt,
                lease,
                job,
                trace,
            }));
        }
    }

    /// Makes room for one more held delivery: those past their lease are
    /// dropped now and then; `Overloaded` when the map is full of live ones.
    fn make_room(&self) -> Result<(), ServiceError> {
        let mut held = self.held.lock();
        let now = Instant::now();
        let due = held.pruned.is_none_or(|at| now >= at + PRUNE_EVERY);
        if due || held.by_lease.len() >= MAX_HELD {
            held.by_lease.retain(|_, h| h.until > now);
            held.pruned = Some(now);
        }
        if held.by_lease.len() >= MAX_HELD {
            return Err(ServiceError::overloaded(format!(
                "node {} holds {MAX_HELD} jobs unanswered",
                self.node
            )));
        }
        Ok(())
    }

    /// Ends delivery `attempt` (lease `lease`) of job `id`: completed, or
    /// failed and delivered again or buried; answered once the server has it.
    /// An answer for a delivery this node does not hold, or past its lease, is
    /// ignored, as the master ignores late answers.
    pub(super) async fn ack(
        &self,
        name: &str,
        id: u64,
        attempt: u32,
        lease: u64,
        answer: Answer,
    ) -> Result<(), ServiceError> {
        let queue = &*match self.queue(name).await {
            Ok(queue) => queue,
            Err(e) => {
                log::debug!("answer for job {id} ignored: {e}");
                return Ok(());
            }
        };
        let held = {
            let mut held = self.held.lock();
            let current = held.by_lease.get(&lease).is_some_and(|h| {
                h.queue == name && h.id == id && h.attempt == attempt && h.until > Instant::now()
            });
            current.then(|| held.by_lease.remove(&lease)).flatten()
        };
        let Some(held) = held else {
            log::debug!(
                "queue {}: late answer for job {id} (delivery {attempt}) ignored",
                untrusted(name)
            );
            return Ok(());
        };
        let message = &held.message;
        match answer.error {
            None => message
                .double_ack()
                .await
                .map_err(|e| failed(format_args!("complete job {id}"), e)),
            Some(error) if !answer.counts => {
                log::debug!("job {id} handed back unrun: {error}");
                nak(message, id).await
            }
            Some(error) => {
                self.count_failure(queue).await;
                if attempt >= queue.config.max_attempts {
                    self.bury(queue, message, id, attempt, error).await
                } else {
                    log::debug!("job {id} failed (delivery {attempt}): {error}");
                    nak(message, id).await
                }
            }
        }
    }

    /// Writes job `id`'s dead letter, then ends its message.
    async fn bury(
        &self,
        queue: &Queue,
        message: &Message,
        id: u64,
        attempts: u32,
        error: ServiceError,
    ) -> Result<(), ServiceError> {
        let job = serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
        });
        let letter = DeadLetter {
            id,
            job,
            attempts,
            error,
        };
        let body = serde_json::to_vec(&letter)
            .map_err(|e| ServiceError::bad_request(format!("dead letter is not JSON: {e}")))?;
        let mut headers = async_nats::HeaderMap::new();
        // A letter written twice (its message's end was lost) is stored once.
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.to_string().as_str());
        let what = format!("write the dead letter of job {id}");
        self.js
            .publish_with_headers(queue.dead_subject.clone(), headers, body.into())
            .await
            .map_err(|e| failed(&what, e))?
            .await
            .map_err(|e| failed(&what, e))?;
        message
            .double_ack_with(AckKind::Term)
            .await
            .map_err(|e| failed(format_args!("end job {id}"), e))?;
        match self.events.get() {
            // The event's log line says it.
            Some(events) => events.publish(crate::events::LifecycleEvent::JobDead {
                queue: queue.name.clone(),
                job: id,
                attempts,
                error: letter.error.to_string(),
            }),
            None => log::error!(
                "queue {}: job {id} failed {attempts} times; moved to its dead letters: {}",
                untrusted(&queue.name),
                letter.error
            ),
        }
        Ok(())
    }

    /// Buries as [`bury`](Self::bury) does, logging a failure: the message
    /// comes back when its lease ends, and is buried then.
    async fn bury_logged(
        &self,
        queue: &Queue,
        message: &Message,
        id: u64,
        attempts: u32,
        error: ServiceError,
    ) {
        if let Err(e) = self.bury(queue, message, id, attempts, error).await {
            log::warn!("{e}; it is buried when delivered again");
        }
    }

    /// Adds one to `queue`'s failures, by compare-and-set; a count that cannot
    /// be written is logged, not an error of the answer.
    async fn count_failure(&self, queue: &Queue) {
        let key = &queue.failures_key;
        for _ in 0..CAS_TRIES {
            let (count, revision) = match self.counts.entry(key.as_str()).await {
                Ok(Some(e)) if e.operation == Operation::Put => (counter(&e.value), e.revision),
                Ok(Some(e)) => (0, e.revision),
                Ok(None) => (0, 0),
                Err(e) => {
                    log::warn!("queue {}: failure not counted: {e}", untrusted(&queue.name));
                    return;
                }
            };
            let value = Bytes::from(count.saturating_add(1).to_string());
            match self.counts.update(key, value, revision).await {
                Ok(_) => return,
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => {
                    log::warn!("queue {}: failure not counted: {e}", untrusted(&queue.name));
                    return;
                }
            }
        }
        log::warn!(
            "queue {}: failure not counted: {CAS_TRIES} writers raced",
            untrusted(&queue.name)
        );
    }

    /// Every queue this node declares, by name, counted across the cluster.
    pub(super) async fn status(&self) -> Result<Vec<QueueStatus>, ServiceError> {
        let known = Queue::names(&self.js, &self.prefix)
            .await
            .map_err(|e| failed("list the queues", e))?;
        let mut queues = Vec::new();
        for name in known {
            if let Ok(queue) = self.queue(&name).await {
                queues.push((name, queue));
            }
        }
        let mut all = Vec::with_capacity(queues.len());
        for (name, queue) in &queues {
            let what = format!("read queue {}", untrusted(name));
            let jobs = queue.jobs.get_info().await.map_err(|e| failed(&what, e))?;
            let consumer = queue
                .consumer
                .get_info()
                .await
                .map_err(|e| failed(&what, e))?;
            let dead = queue.dead.get_info().await.map_err(|e| failed(&what, e))?;
            let failures = match self.counts.entry(queue.failures_key.as_str()).await {
                Ok(Some(e)) if e.operation == Operation::Put => counter(&e.value),
                Ok(_) => 0,
                Err(e) => return Err(failed(&what, e)),
            };
            let pushed = jobs.state.last_sequence;
            let buried = dead.state.last_sequence;
            all.push(QueueStatus {
                name: name.clone(),
                queued: usize::try_from(consumer.num_pending).unwrap_or(usize::MAX),
                leased: consumer.num_ack_pending,
                ready_workers: consumer.num_waiting,
                pushed,
                completed: pushed
                    .saturating_sub(jobs.state.messages)
                    .saturating_sub(buried),
                failures,
                bytes: usize::try_from(jobs.state.bytes).unwrap_or(usize::MAX),
                dead: queue.dead_letters(&dead).await?,
            });
        }
        Ok(all)
    }
}

/// Delivers `message` again at once.
async fn nak(message: &Message, id: u64) -> Result<(), ServiceError> {
    message
        .double_ack_with(AckKind::Nak(None))
        .await
        .map_err(|e| failed(format_args!("hand job {id} back"), e))
}

/// A counter's value; one that is unreadable counts from 0.
fn counter(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
