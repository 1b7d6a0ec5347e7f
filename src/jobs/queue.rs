//! One queue's jobs, waiting and leased, and its dead letters, with the bytes of
//! job JSON each holds: `queues.NAME.max_bytes` bounds both.

use std::collections::{HashMap, VecDeque};

use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{DeadLetter, Given};
use crate::config::QueueConfig;
use crate::error::ServiceError;
use crate::store::{Change, Store};
use crate::trace::TraceContext;

pub(super) struct Job {
    pub(super) id: u64,
    pub(super) json: Box<RawValue>,
    pub(super) attempts: u32,
    /// The trace it was pushed in; not kept on disk, so a job recovered after
    /// a restart has none.
    pub(super) trace: Option<TraceContext>,
}

impl Job {
    /// What the job costs the queue: its JSON.
    pub(super) fn bytes(&self) -> usize {
        self.json.get().len()
    }
}

pub(super) struct Lease {
    pub(super) job: Job,
    /// The lease's token: an answer must carry it.
    pub(super) token: u64,
    pub(super) node: String,
    pub(super) worker: String,
    pub(super) expires: Instant,
}

pub(super) struct Taker {
    pub(super) id: u64,
    pub(super) node: String,
    pub(super) worker: String,
    pub(super) token: u64,
    pub(super) tx: oneshot::Sender<Given>,
}

/// A dead letter and the bytes of JSON it was pushed as.
pub(super) struct Buried {
    pub(super) letter: DeadLetter,
    pub(super) bytes: usize,
}

pub(super) struct Queue {
    /// The queue's name.
    pub(super) name: String,
    pub(super) config: QueueConfig,
    /// Changes to write to the store, when the state is durable.
    pub(super) log: Option<Vec<Change>>,
    /// Pushes admitted and waiting for their commit.
    pub(super) admitted: usize,
    pub(super) ready: VecDeque<Job>,
    pub(super) leased: HashMap<u64, Lease>,
    pub(super) takers: VecDeque<Taker>,
    pub(super) pushed: u64,
    pub(super) completed: u64,
    pub(super) failures: u64,
    pub(super) dead: VecDeque<Buried>,
    /// Bytes of JSON of the jobs in `ready` and `leased`.
    pub(super) bytes: usize,
    /// Bytes of JSON of the jobs in `dead`.
    pub(super) dead_bytes: usize,
}

impl Queue {
    pub(super) fn new(name: &str, config: QueueConfig, durable: bool) -> Queue {
        Queue {
            name: name.to_string(),
            config,
            log: durable.then(Vec::new),
            admitted: 0,
            ready: VecDeque::new(),
            leased: HashMap::new(),
            takers: VecDeque::new(),
            pushed: 0,
            completed: 0,
            failures: 0,
            dead: VecDeque::new(),
            bytes: 0,
            dead_bytes: 0,
        }
    }

    /// Makes room for a job of `len` bytes; `Overloaded` when it would pass
    /// `capacity` or `max_bytes`.
    pub(super) fn admit(&mut self, len: usize) -> Result<(), ServiceError> {
        let name = &self.name;
        if self.ready.len().saturating_add(self.admitted) >= self.config.capacity {
            return Err(ServiceError::overloaded(format!(
                "queue {name} holds {} jobs, its capacity (queues.{name}.capacity)",
                self.config.capacity
            )));
        }
        let total = self.bytes.saturating_add(len);
        if total > self.config.max_bytes {
            return Err(ServiceError::overloaded(format!(
                "queue {name} holds {} bytes of jobs; this one of {len} bytes would pass \
                 queues.{name}.max_bytes ({})",
                self.bytes, self.config.max_bytes
            )));
        }
        self.bytes = total;
        self.admitted += 1;
        Ok(())
    }

    /// An admitted job is kept (written, when durable): it is offered to workers.
    pub(super) fn enter(&mut self, job: Job) {
        self.admitted = self.admitted.saturating_sub(1);
        self.pushed += 1;
        self.offer(job);
    }

    /// An admitted job of `len` bytes could not be kept: its room is free again.
    pub(super) fn refuse(&mut self, len: usize) {
        self.admitted = self.admitted.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(len);
    }

    /// Sends the changes noted so far to `store` without waiting for them.
    pub(super) fn record(&mut self, store: &Store) {
        if let Some(log) = self.log.as_mut().filter(|l| !l.is_empty()) {
            store.record(std::mem::take(log));
        }
    }

    /// Notes a change for the store, when the state is durable.
    pub(super) fn note(&mut self, change: impl FnOnce(&str) -> Change) {
        if let Some(log) = &mut self.log {
            log.push(change(&self.name));
        }
    }

    /// A job left the queue for good (completed or buried): its bytes are free.
    pub(super) fn release(&mut self, job: &Job) {
        self.bytes = self.bytes.saturating_sub(job.bytes());
    }

    /// Keeps `dead`, dropping the oldest dead letters while `dead_letters` of
    /// them or `max_bytes` of their JSON would be passed.
    pub(super) fn bury(&mut self, name: &str, dead: Buried) {
        while !self.dead.is_empty()
            && (self.dead.len() >= self.config.dead_letters
                || self.dead_bytes.saturating_add(dead.bytes) > self.config.max_bytes)
        {
            let Some(old) = self.dead.pop_front() else {
                break;
            };
            self.dead_bytes = self.dead_bytes.saturating_sub(old.bytes);
            let id = old.letter.id;
            self.note(|q| Change::Undead {
                queue: q.to_string(),
                id,
            });
            log::error!(
                "queue {name}: dead letters are full ({} of them, {} bytes at most); the oldest, job {}, is dropped: {}",
                self.config.dead_letters,
                self.config.max_bytes,
                old.letter.id,
                old.letter.job
            );
        }
        self.dead_bytes = self.dead_bytes.saturating_add(dead.bytes);
        if self.log.is_some() {
            let letter = serde_json::to_vec(&dead.letter).unwrap_or_default();
            let id = dead.letter.id;
            self.note(|q| Change::Dead {
                queue: q.to_string(),
                id,
                letter,
            });
        }
        self.dead.push_back(dead);
    }

    /// A job whose completion could not be kept: to the first ready worker, or
    /// first in line.
    pub(super) fn back(&mut self, mut job: Job) {
        while let Some(taker) = self.takers.pop_front() {
            match self.lease(job, taker) {
                Ok(_) => return,
                Err(returned) => job = returned,
            }
        }
        self.ready.push_front(job);
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
    pub(super) fn lease(&mut self, mut job: Job, taker: Taker) -> Result<Given, Job> {
        job.attempts = job.attempts.saturating_add(1);
        let given = Given {
            id: job.id,
            attempt: job.attempts,
            lease: taker.token,
            job: job.json.clone(),
            trace: job.trace,
        };
        if taker.tx.send(given.clone()).is_err() {
            job.attempts -= 1;
            return Err(job);
        }
        let (id, attempts) = (job.id, job.attempts);
        self.note(|q| Change::Attempts {
            queue: q.to_string(),
            id,
            attempts,
        });
        self.leased.insert(
            job.id,
            Lease {
                token: taker.token,
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
    pub(super) fn failed(
        &mut self,
        mut job: Job,
        error: ServiceError,
        counts: bool,
    ) -> Option<Buried> {
        if counts {
            self.failures += 1;
            self.note(|q| Change::Count {
                queue: q.to_string(),
                counter: "failures",
                add: 1,
            });
        } else {
            job.attempts = job.attempts.saturating_sub(1);
            let (id, attempts) = (job.id, job.attempts);
            self.note(|q| Change::Attempts {
                queue: q.to_string(),
                id,
                attempts,
            });
        }
        if job.attempts >= self.config.max_attempts {
            self.release(&job);
            let id = job.id;
            self.note(|q| Change::Done {
                queue: q.to_string(),
                id,
            });
            return Some(Buried {
                bytes: job.bytes(),
                letter: DeadLetter {
                    id: job.id,
                    job: serde_json::from_str(job.json.get()).unwrap_or_default(),
                    attempts: job.attempts,
                    error,
                },
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
