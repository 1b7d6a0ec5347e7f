//! The cluster state: what the master holds for the whole cluster, the job
//! queues ([`jobs`](crate::jobs)),
//! the lock table ([`locks`](crate::locks)) and the confirmation counts
//! ([`confirm`](crate::confirm)). A node without a bridge holds its own.
//!
//! Other nodes reach the cluster state with [`Op`]s sent as cluster operations over
//! their transport's link to the master (see `transport::Link::cluster`); the
//! master itself calls it directly, without JSON. When a node goes down, the
//! cluster state delivers its jobs again, releases its locks and drops its
//! waiters.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{QueueConfig, StateMode, StateSection};
use crate::confirm::Confirmations;
use crate::error::ServiceError;
use crate::events::EventBus;
use crate::jobs::{Answer, JobQueues};
use crate::locks::{Claim, Locks};
use crate::store::{Loaded, Store, StoreError};

/// How often leases of jobs and locks are checked.
const SWEEP: Duration = Duration::from_millis(100);

/// An operation on the cluster state, as other nodes send it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    Push {
        queue: String,
        job: Box<RawValue>,
        /// The trace the job is pushed in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<crate::trace::TraceContext>,
    },
    Take {
        queue: String,
        worker: String,
        wait_ms: u64,
    },
    Ack {
        queue: String,
        job: u64,
        attempt: u32,
        lease: u64,
        answer: Answer,
    },
    Lock {
        key: String,
        req: u64,
        owner: String,
        wait_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    Unlock {
        key: String,
        req: u64,
    },
    Renew {
        key: String,
        req: u64,
    },
    Confirm {
        id: String,
        sender: String,
    },
    Queues,
}

/// The cluster's queues, locks and confirmations, on the node that holds them.
#[derive(Debug)]
pub(crate) struct ClusterState {
    store: Option<Store>,
    pub(crate) jobs: JobQueues,
    pub(crate) locks: Locks,
    pub(crate) confirmations: Confirmations,
}

impl ClusterState {
    /// A cluster state for node `node`, kept as `config` says (read back from its
    /// directory when durable), checking leases in a task on the current runtime
    /// for as long as the cluster state lives.
    pub(crate) fn start(
        node: &str,
        queues: std::collections::BTreeMap<String, QueueConfig>,
        config: &StateSection,
        events: EventBus,
    ) -> Result<Arc<ClusterState>, StoreError> {
        let (store, mut loaded) = match config.mode {
            StateMode::Durable => {
                let (store, loaded) = Store::open(&config.dir_of(node))?;
                (Some(store), loaded)
            }
            StateMode::Memory => (None, Loaded::default()),
        };
        let state = Arc::new(ClusterState {
            store: store.clone(),
            jobs: JobQueues::new(node, queues, events, store.clone(), &mut loaded),
            locks: Locks::new(store.clone(), &mut loaded),
            confirmations: Confirmations::new(store, &mut loaded),
        });
        let weak = Arc::downgrade(&state);
        actix_rt::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP);
            loop {
                ticks.tick().await;
                let Some(state) = weak.upgrade() else { break };
                let now = tokio::time::Instant::now();
                state.jobs.expire(now);
                state.locks.expire(now);
            }
        });
        Ok(state)
    }

    /// Closes the state's file, once what is waiting is written.
    pub(crate) fn close(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }

    /// Node `node` is gone.
    pub(crate) fn node_down(&self, node: &str) {
        self.jobs.node_down(node);
        self.locks.node_down(node);
    }

    /// Serves an [`Op`] from node `from`; the reply is JSON.
    pub(crate) async fn serve(&self, op: &[u8], from: &str) -> Result<Vec<u8>, ServiceError> {
        let op: Op = serde_json::from_slice(op)
            .map_err(|e| ServiceError::bad_request(format!("malformed cluster operation: {e}")))?;
        let reply = match op {
            Op::Push { queue, job, trace } => {
                let pushed = crate::trace::scope(trace, self.jobs.push(&queue, job));
                serde_json::to_vec(&pushed.await?)
            }
            Op::Take {
                queue,
                worker,
                wait_ms,
            } => {
                let wait = Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
                // The worker's name reaches log lines: escaped and cut.
                let worker = crate::logging::untrusted(&worker).to_string();
                serde_json::to_vec(&self.jobs.take(&queue, from, &worker, wait).await?)
            }
            Op::Ack {
                queue,
                job,
                attempt,
                lease,
                answer,
            } => {
                self.jobs.ack(&queue, job, attempt, lease, answer).await?;
                Ok(b"null".to_vec())
            }
            Op::Lock {
                key,
                req,
                owner,
                wait_ms,
                lease_ms,
            } => {
                let claim = Claim {
                    node: from.to_string(),
                    req,
                    // The owner's name reaches log lines: escaped and cut.
                    owner: crate::logging::untrusted(&owner).to_string(),
                    lease: lease_ms.map_or(crate::locks::DEFAULT_LEASE, |l| {
                        Duration::from_millis(l.min(MAX_LEASE_MS))
                    }),
                };
                let wait = Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
                serde_json::to_vec(&self.locks.acquire(&key, claim, wait).await?)
            }
            Op::Unlock { key, req } => {
                self.locks.unlock(&key, from, req).await?;
                Ok(b"null".to_vec())
            }
            Op::Renew { key, req } => {
                self.locks.renew(&key, from, req).await?;
                Ok(b"null".to_vec())
            }
            Op::Confirm { id, sender } => {
                serde_json::to_vec(&self.confirmations.confirm(&id, &sender).await?)
            }
            Op::Queues => serde_json::to_vec(&self.jobs.status()),
        };
        reply.map_err(|e| ServiceError::bad_request(format!("reply is not JSON: {e}")))
    }
}

/// The longest wait a remote take or lock may ask for.
const MAX_WAIT_MS: u64 = 10 * 60 * 1000;
/// The longest lease a remote lock may ask for: a week, as for every duration
/// of a config ([`MAX_DURATION`](crate::config::limits::MAX_DURATION)).
const MAX_LEASE_MS: u64 = crate::config::limits::MAX_DURATION.as_millis() as u64;
