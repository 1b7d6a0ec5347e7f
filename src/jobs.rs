//! Job queues, as ZeroMQ's PUSH/PULL without its first-joiner problem and with
//! delivery that loses nothing.
//!
//! # Where a queue lives
//!
//! Every queue of the cluster is held in memory by one node: the master (a node
//! without a bridge holds its own). `push` from any node hands the job to it and
//! returns once it is queued. Workers of a service that consumes the queue
//! ([`ServiceBuilder::consumes`](crate::ServiceBuilder::consumes)) take jobs one
//! at a time per unit of concurrency, and only when they are online and free:
//! taking *is* the announcement that a worker is ready, so a worker that starts
//! first is not flooded while the others connect.
//!
//! # What survives which failure
//!
//! A job stays leased to its worker until the worker's handler answers.
//!
//! | failure | what happens to the job |
//! |---|---|
//! | the handler panics or returns an error | delivered again, to any ready worker |
//! | the worker is killed or restarts | delivered again |
//! | the worker's node dies or its link drops | delivered again at once (the cluster state sees the node down) |
//! | no answer within the queue's `lease` | delivered again (a worker that does answer later is ignored) |
//! | delivered `max_attempts` times | moved to the queue's dead letters, with a `JobDead` event |
//! | the holding node dies | queued jobs are lost with it: nothing is written to disk |
//!
//! Delivery is therefore at least once: a job can run twice when its worker did
//! the work but died before its answer reached the cluster state. Exactly one answer
//! completes each job; later answers for it are ignored.

mod queue;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::error::{ErrorKind, ServiceError};
use crate::events::{EventBus, LifecycleEvent};
use queue::{Buried, Job, Queue, Taker};

/// A job handed to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Given {
    /// The job's id in its queue.
    pub(crate) id: u64,
    /// Which delivery this is, from 1.
    pub(crate) attempt: u32,
    /// The job as JSON.
    pub(crate) job: Box<RawValue>,
}

/// How a worker's delivery of a job ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Answer {
    /// The failure, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ServiceError>,
    /// Whether a failure counts against `max_attempts` (not when the worker's own
    /// node is shutting down).
    pub(crate) counts: bool,
}

/// A job that failed `max_attempts` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job's id in its queue.
    pub id: u64,
    /// The job as pushed.
    pub job: serde_json::Value,
    /// How many times it was delivered.
    pub attempts: u32,
    /// Its last failure.
    pub error: ServiceError,
}

/// A queue as `GET /v1/queues` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// The queue's name.
    pub name: String,
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Jobs a worker holds now.
    pub leased: usize,
    /// Workers waiting for a job.
    pub ready_workers: usize,
    /// Jobs pushed since the cluster state started.
    pub pushed: u64,
    /// Jobs completed (acknowledged by a worker).
    pub completed: u64,
    /// Deliveries that failed and were retried or buried (not counting jobs handed
    /// back unrun because their worker's node was stopping or its worker exited).
    pub failures: u64,
    /// Bytes of JSON of the jobs queued and leased (at most `queues.NAME.max_bytes`).
    #[serde(default)]
    pub bytes: usize,
    /// Jobs that failed `max_attempts` times, oldest first.
    pub dead: Vec<DeadLetter>,
}

/// The queues a node holds.
pub(crate) struct JobQueues {
    node: String,
    queues: Mutex<HashMap<String, Queue>>,
    events: EventBus,
    next_id: AtomicU64,
    next_taker: AtomicU64,
}

impl std::fmt::Debug for JobQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueues")
            .field("node", &self.node)
            .finish()
    }
}

impl JobQueues {
    pub(crate) fn new(
        node: &str,
        configs: BTreeMap<String, QueueConfig>,
        events: EventBus,
    ) -> JobQueues {
        // Only declared queues exist: a name from outside never creates one.
        let queues = configs
            .iter()
            .map(|(name, config)| (name.clone(), Queue::new(config.clone())))
            .collect();
        JobQueues {
            node: node.to_string(),
            queues: Mutex::new(queues),
            events,
            next_id: AtomicU64::new(1),
            next_taker: AtomicU64::new(1),
        }
    }

    /// Runs `f` on queue `name`; `NoSuchService` when no config declares it.
    fn with_queue<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Queue) -> R,
    ) -> Result<R, ServiceError> {
        let mut queues = self.queues.lock();
        match queues.get_mut(name) {
            Some(queue) => Ok(f(queue)),
            None => Err(ServiceError::no_such_service(format!(
                "no queue `{}` is declared (queues: in the config of node {})",
                crate::logging::untrusted(name),
                self.node
            ))),
        }
    }

    /// Queues `job` (JSON) and returns its id; `Overloaded` when the queue is full.
    pub(crate) fn push(&self, name: &str, json: Box<RawValue>) -> Result<u64, ServiceError> {
        check_name(name)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.with_queue(name, |queue| {
            queue.push(
                name,
                Job {
                    id,
                    json,
                    attempts: 0,
                },
            )
        })??;
        Ok(id)
    }

    /// Waits up to `wait` for a job for `worker` of `node`; `None` when none came.
    pub(crate) async fn take(
        &self,
        name: &str,
        node: &str,
        worker: &str,
        wait: Duration,
    ) -> Result<Option<Given>, ServiceError> {
        check_name(name)?;
        let taker = self.next_taker.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let now = self.with_queue(name, |queue| {
            let taker = Taker {
                id: taker,
                node: node.to_string(),
                worker: worker.to_string(),
                tx,
            };
            match queue.ready.pop_front() {
                Some(job) => match queue.lease(job, taker) {
                    Ok(given) => Some(given),
                    Err(job) => {
                        queue.ready.push_front(job);
                        None
                    }
                },
                None => {
                    queue.takers.push_back(taker);
                    None
                }
            }
        })?;
        if now.is_some() {
            return Ok(now);
        }
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(given)) => Ok(Some(given)),
            Ok(Err(_)) => Ok(None),
            Err(_) => {
                // Leave the line; a job handed over in the same instant is still ours.
                let _gone = self.with_queue(name, |queue| queue.takers.retain(|t| t.id != taker));
                Ok(rx.try_recv().ok())
            }
        }
    }

    /// Ends delivery `attempt` of job `id`: completed, or failed and retried or
    /// buried. An answer for a delivery that is no longer current is ignored.
    pub(crate) fn ack(&self, name: &str, id: u64, attempt: u32, answer: Answer) {
        let dead = self.with_queue(name, |queue| {
            let current = queue
                .leased
                .get(&id)
                .is_some_and(|l| l.job.attempts == attempt);
            if !current {
                log::debug!("queue {name}: late answer for job {id} (delivery {attempt}) ignored");
                return None;
            }
            let lease = queue.leased.remove(&id)?;
            match answer.error {
                None => {
                    queue.completed += 1;
                    queue.release(&lease.job);
                    None
                }
                Some(error) => queue.failed(lease.job, error, answer.counts),
            }
        });
        let dead = dead.unwrap_or_else(|e| {
            log::debug!("answer for job {id} ignored: {e}");
            None
        });
        if let Some(dead) = dead {
            self.bury(name, dead);
        }
    }

    /// Node `node` is gone: its jobs are delivered again and its waiting workers
    /// leave the line.
    pub(crate) fn node_down(&self, node: &str) {
        let mut buried = Vec::new();
        let mut queues = self.queues.lock();
        for (name, queue) in queues.iter_mut() {
            queue.takers.retain(|t| t.node != node);
            let lost: Vec<u64> = queue
                .leased
                .iter()
                .filter(|(_, l)| l.node == node)
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                if let Some(lease) = queue.leased.remove(&id) {
                    log::warn!(
                        "queue {name}: job {id} was with {} on node {node}, which is down; delivering it again",
                        lease.worker
                    );
                    let error = ServiceError::new(
                        ErrorKind::NodeDown,
                        format!("node {node} went down while {} held the job", lease.worker),
                    );
                    if let Some(dead) = queue.failed(lease.job, error, true) {
                        buried.push((name.clone(), dead));
                    }
                }
            }
        }
        drop(queues);
        for (name, dead) in buried {
            self.bury(&name, dead);
        }
    }

    /// Jobs held past their lease are delivered again.
    pub(crate) fn expire(&self, now: Instant) {
        let mut buried = Vec::new();
        let mut queues = self.queues.lock();
        for (name, queue) in queues.iter_mut() {
            let late: Vec<u64> = queue
                .leased
                .iter()
                .filter(|(_, l)| l.expires <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in late {
                if let Some(lease) = queue.leased.remove(&id) {
                    let error = ServiceError::timeout(format!(
                        "{} held the job longer than the queue's lease of {:?}",
                        lease.worker, queue.config.lease
                    ));
                    if let Some(dead) = queue.failed(lease.job, error, true) {
                        buried.push((name.clone(), dead));
                    }
                }
            }
        }
        drop(queues);
        for (name, dead) in buried {
            self.bury(&name, dead);
        }
    }

    fn bury(&self, name: &str, dead: Buried) {
        self.events.publish(LifecycleEvent::JobDead {
            queue: name.to_string(),
            job: dead.letter.id,
            attempts: dead.letter.attempts,
            error: dead.letter.error.to_string(),
        });
        self.with_queue(name, |queue| queue.bury(name, dead))
            .unwrap_or_else(|e| log::error!("dead letter lost: {e}"));
    }

    /// Every queue, by name.
    pub(crate) fn status(&self) -> Vec<QueueStatus> {
        let queues = self.queues.lock();
        let mut all: Vec<QueueStatus> = queues
            .iter()
            .map(|(name, q)| QueueStatus {
                name: name.clone(),
                queued: q.ready.len(),
                leased: q.leased.len(),
                ready_workers: q.takers.iter().filter(|t| !t.tx.is_closed()).count(),
                pushed: q.pushed,
                completed: q.completed,
                failures: q.failures,
                bytes: q.bytes,
                dead: q.dead.iter().map(|d| d.letter.clone()).collect(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(format!(
            "queue name `{}` must be 1 to 128 printable characters",
            name.escape_debug()
        )));
    }
    Ok(())
}
