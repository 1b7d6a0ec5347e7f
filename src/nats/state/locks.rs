//! Locks in the key-value bucket `P_locks`: one key per lock (its name
//! [encoded](super::encode)), whose value names the holder and when its lease
//! ends.
//!
//! Every write is a compare-and-set on the key's revision, so two claims never
//! both win. A grant's fencing token is the revision of the write that granted
//! it, which the bucket makes larger than every write before it, across
//! restarts of any node or server; renewals keep it in the value. A lock whose
//! lease has ended (by the clock of the node that looks) is free to the next
//! claim. A claim that waits watches the key and claims again when it changes
//! or the holder's lease ends.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Entry, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{changed, encode, failed, CAS_TRIES, RECHECK};
use crate::error::ServiceError;
use crate::logging::untrusted;

/// Locks a node's loss may release at once.
const MAX_RELEASED: usize = 100_000;
/// How long releasing a lost node's locks may take.
const RELEASE_WITHIN: Duration = Duration::from_secs(30);

/// Who asks for a lock: a node and its request number there.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub(super) node: String,
    pub(super) req: u64,
    /// The worker or node asking, for logs.
    pub(super) owner: String,
    pub(super) lease: Duration,
}

/// A held lock, as the bucket keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    node: String,
    req: u64,
    owner: String,
    /// The grant's fencing token; absent in the granting write, whose revision
    /// it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    lease_ms: u64,
    /// When the lease ends, in milliseconds since the Unix epoch.
    expires_ms: u64,
}

impl Record {
    fn of(claim: &Claim, token: Option<u64>) -> Record {
        let lease_ms = u64::try_from(claim.lease.as_millis()).unwrap_or(u64::MAX);
        Record {
            node: claim.node.clone(),
            req: claim.req,
            owner: claim.owner.clone(),
            token,
            lease_ms,
            expires_ms: unix_ms().saturating_add(lease_ms),
        }
    }

    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn holds(&self, node: &str, req: u64) -> bool {
        self.node == node && self.req == req && self.expires_ms > unix_ms()
    }
}

/// What a claim found.
enum Claimed {
    Granted(u64),
    /// Held by another until `expires_ms`.
    Held(u64),
    /// Another write came first: look again.
    Raced,
}

/// The lock bucket as this node reaches it.
pub(super) struct Locks {
    store: kv::Store,
    changes: broadcast::Sender<String>,
    runtime: tokio::runtime::Handle,
}

impl Locks {
    /// Locks in `store`, whose changes `changes` carries.
    pub(super) fn new(
        store: kv::Store,
        changes: broadcast::Sender<String>,
        runtime: tokio::runtime::Handle,
    ) -> Locks {
        Locks {
            store,
            changes,
            runtime,
        }
    }

    /// The bucket.
    pub(super) fn store(&self) -> &kv::Store {
        &self.store
    }

    /// Waits up to `wait` for lock `key`; returns its fencing token once the
    /// grant is stored.
    pub(super) async fn acquire(
        &self,
        key: &str,
        claim: Claim,
        wait: Duration,
    ) -> Result<u64, ServiceError> {
        check_key(key)?;
        let token = encode(key);
        // Watching before looking: no release falls between the two.
        let mut changes = self.changes.subscribe();
        let deadline = crate::deadline::tokio_after(wait);
        loop {
            let held_until = match self.claim(key, &token, &claim).await? {
                Claimed::Granted(token) => {
                    log::debug!(
                        "lock {}: granted to {} (token {token})",
                        untrusted(key),
                        claim.owner
                    );
                    return Ok(token);
                }
                // Another claim wrote first: look again at once.
                Claimed::Raced => Instant::now(),
                Claimed::Held(expires_ms) => {
                    let left = expires_ms.saturating_sub(unix_ms()).saturating_add(1);
                    crate::deadline::tokio_after(Duration::from_millis(left))
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(ServiceError::timeout(format!(
                    "lock {} not granted within {wait:?}",
                    untrusted(key)
                )));
            }
            if held_until > now {
                let until = deadline.min(held_until).min(now + RECHECK);
                changed(&mut changes, |k| k == token, until).await;
            }
        }
    }

    /// Claims `key` (encoded `token`) if it is free or its lease has ended.
    async fn claim(&self, key: &str, token: &str, claim: &Claim) -> Result<Claimed, ServiceError> {
        let what = || format!("claim lock {}", untrusted(key));
        let entry = self
            .store
            .entry(token)
            .await
            .map_err(|e| failed(what(), e))?;
        let revision = match entry {
            None => 0,
            Some(entry) if entry.operation != Operation::Put => entry.revision,
            Some(entry) => match serde_json::from_slice::<Record>(&entry.value) {
                Ok(held) if held.expires_ms > unix_ms() => {
                    return Ok(Claimed::Held(held.expires_ms))
                }
                Ok(held) => {
                    log::warn!(
                        "lock {}: {}'s lease ran out (token {}); released",
                        untrusted(key),
                        held.owner,
                        held.token.unwrap_or(entry.revision)
                    );
                    entry.revision
                }
                Err(e) => {
                    log::error!(
                        "lock {}: its record is unreadable ({e}); released",
                        untrusted(key)
                    );
                    entry.revision
                }
            },
        };
        let record = Record::of(claim, None);
        match self.store.update(token, record.bytes(), revision).await {
            Ok(revision) => Ok(Claimed::Granted(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Claimed::Raced),
            Err(e) => Err(failed(what(), e)),
        }
    }

    /// Renews the lease of `node`'s claim `req` on `key`; `ServiceFailed` when
    /// that claim does not hold the lock (any more).
    pub(super) async fn renew(&self, key: &str, node: &str, req: u64) -> Result<(), ServiceError> {
        check_key(key)?;
        let token = encode(key);
        for _ in 0..CAS_TRIES {
            let Some((entry, held)) = self.holder(key, &token).await? else {
                break;
            };
            if !held.holds(node, req) {
                break;
            }
            let claim = Claim {
                node: held.node,
                req,
                owner: held.owner,
                lease: Duration::from_millis(held.lease_ms),
            };
            let record = Record::of(&claim, Some(held.token.unwrap_or(entry.revision)));
            match self
                .store
                .update(&token, record.bytes(), entry.revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(failed(format_args!("renew lock {}", untrusted(key)), e)),
            }
        }
        Err(ServiceError::service_failed(format!(
            "lock {} is no longer held by this guard (released by its lease, its node's loss or a restart)",
            untrusted(key)
        )))
    }

    /// Releases `node`'s claim `req` on `key` if it holds it; a claim that
    /// does not is a no-op.
    pub(super) async fn unlock(&self, key: &str, node: &str, req: u64) -> Result<(), ServiceError> {
        check_key(key)?;
        let token = encode(key);
        for _ in 0..CAS_TRIES {
            let Some((entry, held)) = self.holder(key, &token).await? else {
                return Ok(());
            };
            if held.node != node || held.req != req {
                return Ok(());
            }
            match self
                .store
                .delete_expect_revision(&token, Some(entry.revision))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(failed(format_args!("release lock {}", untrusted(key)), e)),
            }
        }
        Err(failed(
            format_args!("release lock {}", untrusted(key)),
            "writers raced",
        ))
    }

    /// The entry of `key` (encoded `token`) and its holder's record, if one
    /// is written there.
    async fn holder(
        &self,
        key: &str,
        token: &str,
    ) -> Result<Option<(Entry, Record)>, ServiceError> {
        let entry = self
            .store
            .entry(token)
            .await
            .map_err(|e| failed(format_args!("read lock {}", untrusted(key)), e))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e)))
            .map(|(record, entry)| (entry, record)))
    }

    /// Node `node` is down: the locks it holds are released, in a task on the
    /// state's runtime. Every other node does the same; the compare-and-set
    /// makes all but the first a no-op.
    pub(super) fn node_down(&self, node: &str) {
        let (store, node) = (self.store.clone(), node.to_string());
        self.runtime.spawn(async move {
            let released = tokio::time::timeout(RELEASE_WITHIN, release_all(&store, &node)).await;
            match released {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => log::warn!("{n} locks of node {node}, which is down, released"),
                Ok(Err(e)) => log::warn!("the locks of node {node}, which is down, are released by their leases: {e}"),
                Err(_) => log::warn!("the locks of node {node}, which is down, not all released within {RELEASE_WITHIN:?}; their leases end them"),
            }
        });
    }
}

/// Releases every lock of `node` in `store`; returns how many.
async fn release_all(store: &kv::Store, node: &str) -> Result<usize, async_nats::Error> {
    let mut keys = store.keys().await?;
    let mut released = 0;
    let mut seen = 0;
    while let Some(key) = keys.next().await {
        let key = key?;
        seen += 1;
        if seen > MAX_RELEASED {
            break;
        }
        let Some(entry) = store.entry(key.as_str()).await? else {
            continue;
        };
        let theirs = entry.operation == Operation::Put
            && serde_json::from_slice::<Record>(&entry.value).is_ok_and(|r| r.node == node);
        if theirs
            && store
                .delete_expect_revision(&key, Some(entry.revision))
                .await
                .is_ok()
        {
            released += 1;
        }
    }
    Ok(released)
}

/// Now, in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn check_key(key: &str) -> Result<(), ServiceError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(format!(
            "lock key `{}` must be 1 to 256 printable characters",
            untrusted(key)
        )));
    }
    Ok(())
}

#[cfg(test)]
impl Locks {
    /// The token of `key`'s holder, if it is held.
    pub(super) async fn token_of(&self, key: &str) -> Option<u64> {
        let token = encode(key);
        let (entry, held) = self.holder(key, &token).await.ok()??;
        Some(held.token.unwrap_or(entry.revision))
    }
}
