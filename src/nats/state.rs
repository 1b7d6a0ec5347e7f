//! The cluster state kept in JetStream: the job queues, locks and
//! confirmations that a master holds on the bridge are, on NATS, kept by the
//! NATS server(s) themselves, and every node reaches them alike. No node holds
//! them, so none is a single point of loss.
//!
//! # Names
//!
//! Under the cluster's prefix `P` (`nats.prefix`):
//!
//! | what | JetStream | subjects or keys |
//! |---|---|---|
//! | the jobs of queue `Q` | work-queue stream `P_JOBS_Q`, durable pull consumer `workers` | `P.state.jobs.Q` |
//! | the dead letters of `Q` | stream `P_DEAD_Q` (discard old) | `P.state.dead.Q` |
//! | failure counts | key-value bucket `P_counts` | `failures.Q` |
//! | locks | key-value bucket `P_locks` | the lock's key |
//! | confirmations | key-value bucket `P_confirms` (discard old) | `ID.SENDER` |
//!
//! Queue names, lock keys, confirmation ids and senders come from outside;
//! each becomes one token of a name by [`encode`], which NATS subjects, stream
//! names and bucket keys all accept, and which no two names share.
//!
//! # Durability
//!
//! Every stream and bucket is on file storage with `nats.replicas` copies. A
//! push, an ack, a grant and a confirmation are answered once the server has
//! stored them. The server writes to its files at once but syncs them to disk
//! every `sync_interval` (two minutes by default): so a restart of the
//! nats-server process loses nothing, but to lose nothing acknowledged when
//! the *machine* stops, set `jetstream { sync_interval: always }` in the
//! server's config (each write fsync'd), or run three servers with
//! `nats.replicas: 3`, where a write is acknowledged once a majority holds it.
//!
//! # How it differs from the master's state
//!
//! - A job held by a node that dies is delivered again when its lease runs
//!   out (the master redelivers at once when it sees the node down).
//! - A delivery handed back unrun (`counts: false`) still counts as a delivery
//!   in JetStream, so it uses one of the job's attempts.
//! - Waiters for a lock are not served in the order they asked: each retries
//!   its claim when the lock is released or its lease ends. Leases are judged
//!   by the clocks of the nodes, which must agree to well within a lease.
//! - Each node serves the queues its own config declares (`queues:`).

mod confirm;
mod jobs;
mod locks;
mod queue;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::QueueConfig;
use crate::error::ServiceError;
use crate::state::Op;
use confirm::Confirms;
use jobs::Jobs;
use locks::Locks;

/// The longest wait a take or lock may ask for, as on the master.
const MAX_WAIT_MS: u64 = 10 * 60 * 1000;
/// The longest lease a lock may ask for: a week, as on the master.
const MAX_LEASE_MS: u64 = crate::config::limits::MAX_DURATION.as_millis() as u64;
/// How often a waiter looks again even when no change was seen: a watch that
/// was down (the server restarting) may have missed one.
const RECHECK: Duration = Duration::from_secs(1);
/// Key changes a watcher keeps for slow waiters; a waiter that falls behind
/// looks again.
const CHANGES: usize = 4096;
/// Compare-and-set attempts before a write gives up.
const CAS_TRIES: usize = 32;

/// The cluster's queues, locks and confirmations in JetStream, as one node
/// reaches them.
pub(crate) struct JetStreamState {
    inner: Arc<Inner>,
    /// The tasks that watch the buckets, ended with the state.
    watchers: Vec<tokio::task::AbortHandle>,
}

struct Inner {
    node: String,
    jobs: Jobs,
    locks: Arc<Locks>,
    confirms: Arc<Confirms>,
}

impl std::fmt::Debug for JetStreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamState")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Drop for JetStreamState {
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}

impl JetStreamState {
    /// Creates or binds the streams and buckets under `prefix` for `queues`.
    pub(crate) async fn open(
        js: async_nats::jetstream::Context,
        prefix: &str,
        node: &str,
        queues: &BTreeMap<String, QueueConfig>,
        replicas: usize,
    ) -> Result<Arc<JetStreamState>, String> {
        let runtime = tokio::runtime::Handle::current();
        let counts = bucket(&js, &format!("{prefix}_counts"), replicas).await?;
        let jobs = Jobs::open(&js, prefix, node, queues, replicas, counts).await?;
        let (lock_changes, _) = broadcast::channel(CHANGES);
        let locks = bucket(&js, &format!("{prefix}_locks"), replicas).await?;
        let locks = Arc::new(Locks::new(locks, lock_changes.clone(), runtime.clone()));
        let (confirm_changes, _) = broadcast::channel(CHANGES);
        let confirms = confirm::bucket(&js, prefix, replicas).await?;
        let watchers = vec![
            runtime
                .spawn(watch(confirms.clone(), confirm_changes.clone()))
                .abort_handle(),
            runtime
                .spawn(watch(locks.store().clone(), lock_changes))
                .abort_handle(),
        ];
        let confirms = Arc::new(Confirms::new(confirms, confirm_changes, runtime));
        Ok(Arc::new(JetStreamState {
            inner: Arc::new(Inner {
                node: node.to_string(),
                jobs,
                locks,
                confirms,
            }),
            watchers,
        }))
    }

    /// Jobs buried by this node are told on `events` from now on (`JobDead`).
    pub(crate) fn tell(&self, events: crate::events::EventBus) {
        let _ = self.inner.jobs.events.set(events);
    }

    /// Node `node` is down: the locks it holds are released (its jobs come
    /// back when their leases end).
    pub(crate) fn node_down(&self, node: &str) {
        self.inner.locks.node_down(node);
    }
}

impl crate::transport::SharedState for JetStreamState {
    fn serve(&self, op: Op) -> BoxFuture<'static, Result<Vec<u8>, ServiceError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.serve(op).await })
    }

    fn confirmed(&self, n: usize, id: &str) -> Result<oneshot::Receiver<usize>, ServiceError> {
        self.inner.confirms.confirmed(n, id)
    }
}

impl Inner {
    /// Does `op` for this node; the answer is the JSON the master answers.
    async fn serve(&self, op: Op) -> Result<Vec<u8>, ServiceError> {
        let reply = match op {
            Op::Push { queue, job, trace } => {
                let pushed = crate::trace::scope(trace, self.jobs.push(&queue, job));
                serde_json::to_vec(&pushed.await?)
            }
            Op::Take { queue, wait_ms, .. } => {
                let wait = Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
                serde_json::to_vec(&self.jobs.take(&queue, wait).await?)
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
                let claim = locks::Claim {
                    node: self.node.clone(),
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
                self.locks.unlock(&key, &self.node, req).await?;
                Ok(b"null".to_vec())
            }
            Op::Renew { key, req } => {
                self.locks.renew(&key, &self.node, req).await?;
                Ok(b"null".to_vec())
            }
            Op::Confirm { id, sender } => {
                serde_json::to_vec(&self.confirms.confirm(&id, &sender).await?)
            }
            Op::Queues => serde_json::to_vec(&self.jobs.status().await?),
        };
        reply.map_err(|e| ServiceError::bad_request(format!("reply is not JSON: {e}")))
    }
}

/// `text` as one token that NATS subjects, stream names and bucket keys all
/// accept: ASCII letters, digits and `-` stay, every other byte is `_` and
/// its two hex digits. Two texts never share a token.
pub(crate) fn encode(text: &str) -> String {
    use std::fmt::Write;
    let mut token = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(char::from(byte));
        } else {
            let _ = write!(token, "_{byte:02X}");
        }
    }
    token
}

/// `ServiceFailed`: the cluster state on NATS could not do `what`.
fn failed(what: impl Display, e: impl Display) -> ServiceError {
    ServiceError::service_failed(format!("the cluster state on NATS could not {what}: {e}"))
}

/// Creates or binds key-value bucket `name`, one value per key, on file.
async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    js.create_or_update_key_value(kv::Config {
        bucket: name.to_string(),
        description: "colony cluster state".to_string(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas,
        // A lock record or a counter: small.
        max_value_size: 64 * 1024,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or bind the JetStream bucket {name}: {e}"))
}

/// Sends the key of every change to `store` on `changes`, for as long as the
/// task runs. While the watch is down (the server restarting), an empty key
/// tells every waiter that anything may have changed.
async fn watch(store: kv::Store, changes: broadcast::Sender<String>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match store.watch_all().await {
            Ok(mut entries) => {
                backoff.reset();
                while let Some(entry) = entries.next().await {
                    match entry {
                        // Nobody waiting is no loss: a waiter looks before it waits.
                        Ok(entry) => drop(changes.send(entry.key)),
                        Err(e) => {
                            log::debug!("watch of bucket {} broke: {e}", store.name);
                            break;
                        }
                    }
                }
            }
            Err(e) => log::debug!("cannot watch bucket {}: {e}", store.name),
        }
        drop(changes.send(String::new()));
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Waits until `changes` names a key that `wanted` picks (or says anything may
/// have changed, or fell behind), or until `until`.
async fn changed(
    changes: &mut broadcast::Receiver<String>,
    wanted: impl Fn(&str) -> bool,
    until: Instant,
) {
    let seen = async {
        loop {
            match changes.recv().await {
                Ok(key) if key.is_empty() || wanted(&key) => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = tokio::time::timeout_at(until, seen).await;
}
