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
//! | the worker's node dies or its link drops | delivered again at once (the holder sees the node down) |
//! | no answer within the queue's `lease` | delivered again (a worker that does answer later is ignored) |
//! | delivered `max_attempts` times | moved to the queue's dead letters, with a `JobDead` event |
//! | the holding node dies | queued jobs are lost with it: nothing is written to disk |
//!
//! Delivery is therefore at least once: a job can run twice when its worker did
//! the work but died before its answer reached the holder. Exactly one answer
//! completes each job; later answers for it are ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::error::{ErrorKind, ServiceError};
use crate::messages::{EventBus, LifecycleEvent};

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
    /// Jobs pushed since the holder started.
    pub pushed: u64,
    /// Jobs completed (acknowledged by a worker).
    pub completed: u64,
    /// Deliveries that failed and were retried or buried (not counting jobs handed
    /// back unrun because their worker's node was stopping or its worker exited).
    pub failures: u64,
    /// Jobs that failed `max_attempts` times, oldest first.
    pub dead: Vec<DeadLetter>,
}

struct Job {
    id: u64,
    json: Box<RawValue>,
    attempts: u32,
}

struct Lease {
    job: Job,
    node: String,
    worker: String,
    expires: Instant,
}

struct Taker {
    id: u64,
    node: String,
    worker: String,
    tx: oneshot::Sender<Given>,
}

struct Queue {
    config: QueueConfig,
    ready: VecDeque<Job>,
    leased: HashMap<u64, Lease>,
    takers: VecDeque<Taker>,
    pushed: u64,
    completed: u64,
    failures: u64,
    dead: VecDeque<DeadLetter>,
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
                name.escape_debug(),
                self.node
            ))),
        }
    }

    /// Queues `job` (JSON) and returns its id; `Overloaded` when the queue is full.
    pub(crate) fn push(&self, name: &str, json: Box<RawValue>) -> Result<u64, ServiceError> {
        check_name(name)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.with_queue(name, |queue| {
            if queue.ready.len() >= queue.config.capacity {
                return Err(ServiceError::overloaded(format!(
                    "queue {name} holds {} jobs, its capacity",
                    queue.config.capacity
                )));
            }
            queue.pushed += 1;
            queue.offer(Job {
                id,
                json,
                attempts: 0,
            });
            Ok(id)
        })?
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

    fn bury(&self, name: &str, dead: DeadLetter) {
        self.events.publish(LifecycleEvent::JobDead {
            queue: name.to_string(),
            job: dead.id,
            attempts: dead.attempts,
            error: dead.error.to_string(),
        });
        self.with_queue(name, |queue| {
            if queue.dead.len() >= queue.config.dead_letters {
                if let Some(old) = queue.dead.pop_front() {
                    log::error!(
                        "queue {name}: dead letters are full ({}); the oldest, job {}, is dropped: {}",
                        queue.config.dead_letters,
                        old.id,
                        old.job
                    );
                }
            }
            queue.dead.push_back(dead);
        })
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
                dead: q.dead.iter().cloned().collect(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

impl Queue {
    fn new(config: QueueConfig) -> Queue {
        Queue {
            config,
            ready: VecDeque::new(),
            leased: HashMap::new(),
            takers: VecDeque::new(),
            pushed: 0,
            completed: 0,
            failures: 0,
            dead: VecDeque::new(),
        }
    }

    /// Hands `job` to the first ready worker, or puts it in line.
    fn offer(&mut self, mut job: Job) {
        while let Some(taker) = self.takers.pop_front() {
            match self.lease(job, taker) {
                Ok(_) => return,
                Err(back) => job = back,
            }
        }
        self.ready.push_back(job);
    }

    /// Leases `job` to `taker`; gives the job back when the taker is gone.
    fn lease(&mut self, mut job: Job, taker: Taker) -> Result<Given, Job> {
        job.attempts += 1;
        let given = Given {
            id: job.id,
            attempt: job.attempts,
            job: job.json.clone(),
        };
        if taker.tx.send(given.clone()).is_err() {
            job.attempts -= 1;
            return Err(job);
        }
        self.leased.insert(
            job.id,
            Lease {
                job,
                node: taker.node,
                worker: taker.worker,
                expires: crate::deadline::tokio_after(self.config.lease),
            },
        );
        Ok(given)
    }

    /// A delivery failed: the job goes back in line, first, or is returned to be
    /// buried when it has used its attempts.
    fn failed(&mut self, mut job: Job, error: ServiceError, counts: bool) -> Option<DeadLetter> {
        if counts {
            self.failures += 1;
        } else {
            job.attempts = job.attempts.saturating_sub(1);
        }
        if job.attempts >= self.config.max_attempts {
            return Some(DeadLetter {
                id: job.id,
                job: serde_json::from_str(job.json.get()).unwrap_or_default(),
                attempts: job.attempts,
                error,
            });
        }
        log::debug!("job {} failed (delivery {}): {error}", job.id, job.attempts);
        let mut job = job;
        while let Some(taker) = self.takers.pop_front() {
            match self.lease(job, taker) {
                Ok(_) => return None,
                Err(back) => job = back,
            }
        }
        self.ready.push_front(job);
        None
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
