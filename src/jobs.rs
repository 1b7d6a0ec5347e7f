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
//! | the holding node dies (`state.mode: durable`, the default) | every job whose push was answered and that has not completed is delivered again when it restarts, with its attempt count; counters and dead letters are kept |
//! | the holding node dies (`state.mode: memory`) | queued jobs are lost with it |
//!
//! In durable mode a push, an ack and a failure are answered only once they are
//! on disk ([`store`](crate::store)). Job ids never repeat, across restarts
//! too, and each delivery carries a lease token that an answer must echo: an
//! answer to a delivery from before a restart completes nothing.
//!
//! Delivery is therefore at least once: a job can run twice when its worker did
//! the work but died before its answer reached the cluster state. Exactly one answer
//! completes each job (and counts it in `completed`); later answers for it are
//! ignored.

mod queue;
mod recover;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::error::{ErrorKind, ServiceError};
use crate::events::{EventBus, LifecycleEvent};
use crate::store::{Change, Loaded, Store};
use crate::trace::TraceContext;
use queue::{Buried, Job, Queue, Taker};

/// A job handed to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Given {
    /// The job's id in its queue.
    pub(crate) id: u64,
    /// Which delivery this is, from 1.
    pub(crate) attempt: u32,
    /// The delivery's lease token, which its answer carries.
    pub(crate) lease: u64,
    /// The job as JSON.
    pub(crate) job: Box<RawValue>,
    /// The trace it was pushed in, if any: it is worked within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<TraceContext>,
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
    queues: Arc<Mutex<HashMap<String, Queue>>>,
    events: EventBus,
    store: Option<Store>,
    next_id: AtomicU64,
    next_taker: AtomicU64,
    next_lease: AtomicU64,
}

impl std::fmt::Debug for JobQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueues")
            .field("node", &self.node)
            .finish()
    }
}

impl JobQueues {
    /// The queues declared by `configs`, in memory when `store` is `None`,
    /// else kept in `store`, starting from what it held (`loaded`).
    pub(crate) fn new(
        node: &str,
        configs: BTreeMap<String, QueueConfig>,
        events: EventBus,
        store: Option<Store>,
        loaded: &mut Loaded,
    ) -> JobQueues {
        // Only declared queues exist: a name from outside never creates one.
        let mut queues: HashMap<String, Queue> = configs
            .iter()
            .map(|(name, config)| {
                (
                    name.clone(),
                    Queue::new(name, config.clone(), store.is_some()),
                )
            })
            .collect();
        for event in recover::restore(&mut queues, loaded, store.as_ref()) {
            events.publish(event);
        }
        let mut lease = [0u8; 8];
        let _ = getrandom::fill(&mut lease);
        JobQueues {
            node: node.to_string(),
            queues: Arc::new(Mutex::new(queues)),
            events,
            store,
            next_id: AtomicU64::new(loaded.seq.saturating_add(1)),
            next_taker: AtomicU64::new(1),
            next_lease: AtomicU64::new(u64::from_le_bytes(lease) >> 1),
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

    /// Queues `job` (JSON), within the current trace, and returns its id once
    /// it is kept (on disk, when durable); `Overloaded` when the queue is full,
    /// `ServiceFailed` when it cannot be written.
    pub(crate) async fn push(&self, name: &str, json: Box<RawValue>) -> Result<u64, ServiceError> {
        check_name(name)?;
        let len = json.get().len();
        let trace = crate::trace::current();
        let Some(store) = &self.store else {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            return self.with_queue(name, |queue| {
                queue.admit(len)?;
                queue.enter(Job {
                    id,
                    json,
                    attempts: 0,
                    trace,
                });
                Ok(id)
            })?;
        };
        // The job enters the queue when its commit is done, in the writer's
        // callback: a pusher that stops waiting (its client went away) leaves
        // nothing half done.
        let (answer, answered) = oneshot::channel();
        let queues = self.queues.clone();
        let owner = name.to_string();
        self.with_queue(name, |queue| {
            queue.admit(len)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let changes = vec![
                Change::Job {
                    queue: name.to_string(),
                    id,
                    json: json.get().as_bytes().to_vec(),
                },
                Change::Count {
                    queue: name.to_string(),
                    counter: "pushed",
                    add: 1,
                },
                Change::Seq(id),
            ];
            let keeper = store.clone();
            let entered = move |kept: Result<(), crate::store::StoreError>| {
                let mut all = queues.lock();
                let Some(queue) = all.get_mut(&owner) else {
                    return;
                };
                let result = match kept {
                    Ok(()) => {
                        queue.enter(Job {
                            id,
                            json,
                            attempts: 0,
                            trace,
                        });
                        // Handed straight to a waiting worker: its delivery count.
                        queue.record(&keeper);
                        Ok(id)
                    }
                    Err(e) => {
                        queue.refuse(len);
                        Err(ServiceError::from(e))
                    }
                };
                let _ = answer.send(result);
            };
            store.commit_then(changes, entered).map_err(|e| {
                queue.refuse(len);
                ServiceError::from(e)
            })
        })??;
        answered.await.unwrap_or_else(|_| {
            Err(ServiceError::service_failed(format!(
                "the cluster state stopped before job of queue {name} was written"
            )))
        })
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
        let token = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let now = self.with_queue(name, |queue| {
            let taker = Taker {
                id: taker,
                node: node.to_string(),
                worker: worker.to_string(),
                token,
                tx,
            };
            let given = match queue.ready.pop_front() {
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
            };
            // The delivery count is written without waiting: after a crash a
            // delivery that was not written yet counts once less.
            self.record(queue);
            given
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

    /// Ends delivery `attempt` (lease `lease`) of job `id`: completed, or failed
    /// and retried or buried; answered once that is kept. An answer for a
    /// delivery that is no longer current is ignored.
    pub(crate) async fn ack(
        &self,
        name: &str,
        id: u64,
        attempt: u32,
        lease: u64,
        answer: Answer,
    ) -> Result<(), ServiceError> {
        let outcome = self.with_queue(name, |queue| {
            let current = queue
                .leased
                .get(&id)
                .is_some_and(|l| l.job.attempts == attempt && l.token == lease);
            if !current {
                log::debug!("queue {name}: late answer for job {id} (delivery {attempt}) ignored");
                return Ok(None);
            }
            let Some(lease) = queue.leased.remove(&id) else {
                return Ok(None);
            };
            let (done, dead) = match answer.error {
                None => {
                    queue.completed += 1;
                    queue.release(&lease.job);
                    queue.note(|q| Change::Done {
                        queue: q.to_string(),
                        id,
                    });
                    queue.note(|q| Change::Count {
                        queue: q.to_string(),
                        counter: "completed",
                        add: 1,
                    });
                    (Some(lease.job), None)
                }
                Some(error) => {
                    let dead = queue
                        .failed(lease.job, error, answer.counts)
                        .map(|dead| bury(queue, dead));
                    (None, dead)
                }
            };
            let (Some(store), Some(log)) = (&self.store, queue.log.as_mut()) else {
                return Ok(Some((dead, None)));
            };
            let (tell, told) = oneshot::channel();
            let changes = std::mem::take(log);
            let queues = self.queues.clone();
            let owner = name.to_string();
            // Runs once the outcome is written or has failed, whether or not the
            // worker still waits: a completion that is not on disk puts the job
            // back in line, to be delivered again.
            let kept = move |kept: Result<(), crate::store::StoreError>| {
                if let (Err(_), Some(job)) = (&kept, done) {
                    if let Some(queue) = queues.lock().get_mut(&owner) {
                        queue.completed = queue.completed.saturating_sub(1);
                        queue.bytes = queue.bytes.saturating_add(job.bytes());
                        queue.back(job);
                    }
                }
                let _ = tell.send(kept.map_err(ServiceError::from));
            };
            store
                .commit_then(changes, kept)
                .map_err(ServiceError::from)
                .map(|()| Some((dead, Some(told))))
        });
        let (dead, told) = match outcome {
            Ok(Ok(Some(outcome))) => outcome,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                log::debug!("answer for job {id} ignored: {e}");
                return Ok(());
            }
        };
        if let Some(event) = dead {
            self.events.publish(event);
        }
        let Some(told) = told else {
            return Ok(());
        };
        told.await.unwrap_or_else(|_| {
            Err(ServiceError::service_failed(format!(
                "the cluster state stopped before the answer for job {id} was written"
            )))
        })
    }

    /// Node `node` is gone: its jobs are delivered again and its waiting workers
    /// leave the line.
    pub(crate) fn node_down(&self, node: &str) {
        self.fail_leases(
            |lease| lease.node == node,
            |lease, _| {
                log::warn!(
                    "job {} was with {} on node {node}, which is down; delivering it again",
                    lease.job.id,
                    lease.worker
                );
                ServiceError::new(
                    ErrorKind::NodeDown,
                    format!("node {node} went down while {} held the job", lease.worker),
                )
            },
        );
        let mut queues = self.queues.lock();
        for queue in queues.values_mut() {
            queue.takers.retain(|t| t.node != node);
        }
    }

    /// Jobs held past their lease are delivered again.
    pub(crate) fn expire(&self, now: Instant) {
        self.fail_leases(
            |lease| lease.expires <= now,
            |lease, config| {
                ServiceError::timeout(format!(
                    "{} held the job longer than the queue's lease of {:?}",
                    lease.worker, config.lease
                ))
            },
        );
    }

    /// Ends every lease that `which` picks as failed with `error`.
    fn fail_leases(
        &self,
        which: impl Fn(&queue::Lease) -> bool,
        error: impl Fn(&queue::Lease, &QueueConfig) -> ServiceError,
    ) {
        let mut events = Vec::new();
        let mut queues = self.queues.lock();
        for queue in queues.values_mut() {
            let ended: Vec<u64> = queue
                .leased
                .iter()
                .filter(|(_, l)| which(l))
                .map(|(id, _)| *id)
                .collect();
            for id in ended {
                if let Some(lease) = queue.leased.remove(&id) {
                    let error = error(&lease, &queue.config);
                    if let Some(dead) = queue.failed(lease.job, error, true) {
                        events.push(bury(queue, dead));
                    }
                }
            }
            self.record(queue);
        }
        drop(queues);
        for event in events {
            self.events.publish(event);
        }
    }

    /// Sends the changes `queue` noted to the store without waiting for them.
    fn record(&self, queue: &mut Queue) {
        if let Some(store) = &self.store {
            queue.record(store);
        }
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

/// Keeps `dead` in its queue's dead letters; returns the event that says so.
fn bury(queue: &mut Queue, dead: Buried) -> LifecycleEvent {
    let event = LifecycleEvent::JobDead {
        queue: queue.name.clone(),
        job: dead.letter.id,
        attempts: dead.letter.attempts,
        error: dead.letter.error.to_string(),
    };
    let name = queue.name.clone();
    queue.bury(&name, dead);
    event
}

pub(crate) fn check_name(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(format!(
            "queue name `{}` must be 1 to 128 printable characters",
            crate::logging::untrusted(name)
        )));
    }
    Ok(())
}
