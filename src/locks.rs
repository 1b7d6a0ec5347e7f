//! Cluster-wide exclusive locks, as cluster-hub's, without its deadlock.
//!
//! The lock table lives on the master (a node without a bridge holds its own).
//! A lock is granted to one holder at a time, waiters in the order they asked,
//! each grant with a fencing token larger than every token granted before it.
//! A resource guarded by a lock should refuse writes carrying a token smaller
//! than the last it saw.
//!
//! Every grant has a lease, 30 s unless the caller asks for another, which the
//! holder's guard renews while it lives. A lock is released when its
//! [`LockGuard`](crate::LockGuard) drops (also when the holding worker panics or
//! is killed, since its state drops with it), when the holder's node dies or
//! loses its link, and when its lease runs out unrenewed. A waiter that is gone
//! (its caller gave up, its worker died, its node died) is removed from the line
//! and never granted the lock: cluster-hub kept such waiters queued, and the lock
//! was then granted to nobody forever.
//!
//! With a durable cluster state ([`store`](crate::store)) a grant is on disk,
//! with the token ceiling, before its holder learns its token. So tokens
//! strictly increase across restarts of the master, and a master that restarts
//! keeps every lock that was held when it stopped until that lock's lease runs
//! out: the holder's renewals re-assert it, and nobody else is granted it
//! meanwhile. No two live holders ever both hold a valid token.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ServiceError;
use crate::store::{committed, Change, Loaded, Store};

/// A lock's lease when its caller asks for none.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Waiters one lock may have; more get `Overloaded`.
const MAX_WAITERS: usize = 10_000;

/// Who asks for a lock: a node and its request number there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) node: String,
    pub(crate) req: u64,
    /// The worker or node asking, for logs.
    pub(crate) owner: String,
    pub(crate) lease: Duration,
}

struct Holding {
    claim: Claim,
    token: u64,
    expires: Instant,
}

/// A grant as a waiter receives it: its token, and the commit that keeps it.
struct Grant {
    token: u64,
    written: Option<Written>,
}

pub(crate) type Written =
    Result<oneshot::Receiver<Result<(), crate::store::StoreError>>, ServiceError>;

struct Waiter {
    claim: Claim,
    tx: oneshot::Sender<Grant>,
}

/// A held lock as the store keeps it.
#[derive(Serialize, Deserialize)]
struct Record {
    node: String,
    req: u64,
    owner: String,
    token: u64,
    lease_ms: u64,
    /// When the lease ends, in milliseconds since the Unix epoch.
    expires_ms: u64,
}

#[derive(Default)]
struct Lock {
    holder: Option<Holding>,
    waiters: VecDeque<Waiter>,
}

/// The lock table a node holds.
pub(crate) struct Locks {
    table: Mutex<HashMap<String, Lock>>,
    next_token: AtomicU64,
    store: Option<Store>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("held", &self.table.lock().len())
            .finish()
    }
}

/// Now, in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Locks {
    /// The lock table, in memory when `store` is `None`, else kept in `store`,
    /// starting from the locks held when it was last written (`loaded`).
    pub(crate) fn new(store: Option<Store>, loaded: &mut Loaded) -> Locks {
        let first = if store.is_some() {
            loaded.fence.max(1)
        } else {
            // Without a store, tokens start from the clock, so that they still
            // grow across restarts of a master whose clock does.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1)
        };
        let mut table = HashMap::new();
        let now_ms = unix_ms();
        for (key, record) in std::mem::take(&mut loaded.locks) {
            let Ok(record) = serde_json::from_slice::<Record>(&record) else {
                log::error!("lock {key}: its record on disk is unreadable; dropped");
                continue;
            };
            let left = Duration::from_millis(record.expires_ms.saturating_sub(now_ms));
            log::info!(
                "lock {key}: held by {} (token {}) when the cluster state stopped; kept for its lease, {left:?} more, unless renewed",
                record.owner,
                record.token
            );
            let holder = Holding {
                claim: Claim {
                    node: record.node,
                    req: record.req,
                    owner: record.owner,
                    lease: Duration::from_millis(record.lease_ms),
                },
                token: record.token,
                expires: crate::deadline::tokio_after(left),
            };
            table.insert(
                key,
                Lock {
                    holder: Some(holder),
                    waiters: VecDeque::new(),
                },
            );
        }
        Locks {
            table: Mutex::new(table),
            next_token: AtomicU64::new(first),
            store,
        }
    }

    /// Waits up to `wait` for lock `key`; returns its fencing token once the grant
    /// is kept.
    pub(crate) async fn acquire(
        &self,
        key: &str,
        claim: Claim,
        wait: Duration,
    ) -> Result<u64, ServiceError> {
        check_key(key)?;
        let (tx, mut rx) = oneshot::channel();
        let who = claim.clone();
        {
            let mut table = self.table.lock();
            let lock = table.entry(key.to_string()).or_default();
            if lock.waiters.len() >= MAX_WAITERS {
                return Err(ServiceError::overloaded(format!(
                    "lock {key} already has {MAX_WAITERS} waiters"
                )));
            }
            lock.waiters.push_back(Waiter { claim, tx });
            if lock.holder.is_none() {
                self.grant_next(key, lock);
            }
        }
        let grant = match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(_)) => {
                return Err(ServiceError::service_failed(format!(
                    "lock {key}: the wait was ended by the lock table (the waiter's node is down or the holder is stopping)"
                )))
            }
            Err(_) => {
                // Leave the line, or give back a grant made in the same instant.
                let _ = self.release(key, &who.node, who.req);
                return Err(ServiceError::timeout(format!(
                    "lock {key} not granted within {wait:?}"
                )));
            }
        };
        let kept = match (grant.written, &self.store) {
            (None, _) | (_, None) => Ok(()),
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(rx)), Some(store)) => committed(rx, store.file()).await.map_err(Into::into),
        };
        if let Err(e) = kept {
            let _ = self.release(key, &who.node, who.req);
            return Err(e);
        }
        Ok(grant.token)
    }

    /// Renews the lease of `node`'s claim `req` on `key`; `ServiceFailed` when
    /// that claim does not hold the lock (any more).
    pub(crate) async fn renew(&self, key: &str, node: &str, req: u64) -> Result<(), ServiceError> {
        check_key(key)?;
        let written = {
            let mut table = self.table.lock();
            let holding = table
                .get_mut(key)
                .and_then(|l| l.holder.as_mut())
                .filter(|h| h.claim.node == node && h.claim.req == req);
            let Some(holding) = holding else {
                return Err(ServiceError::service_failed(format!(
                    "lock {key} is no longer held by this guard (released by its lease, its node's loss or a restart)"
                )));
            };
            holding.expires = crate::deadline::tokio_after(holding.claim.lease);
            self.write(key, Some(holding))
        };
        self.kept(written).await
    }

    /// The change that writes `key`'s holder, sent to the store when there is one.
    fn write(&self, key: &str, holder: Option<&Holding>) -> Option<Written> {
        let store = self.store.as_ref()?;
        let record = holder.map(|h| {
            let record = Record {
                node: h.claim.node.clone(),
                req: h.claim.req,
                owner: h.claim.owner.clone(),
                token: h.token,
                lease_ms: h.claim.lease.as_millis() as u64,
                expires_ms: unix_ms().saturating_add(h.claim.lease.as_millis() as u64),
            };
            serde_json::to_vec(&record).unwrap_or_default()
        });
        let mut changes = Vec::with_capacity(2);
        if let Some(h) = holder {
            changes.push(Change::Fence(h.token.saturating_add(1)));
        }
        changes.push(Change::Lock {
            key: key.to_string(),
            holder: record,
        });
        Some(store.commit(changes).map_err(Into::into))
    }

    /// Waits for a write from [`Locks::write`].
    pub(crate) async fn kept(&self, written: Option<Written>) -> Result<(), ServiceError> {
        match (written, &self.store) {
            (Some(Ok(rx)), Some(store)) => committed(rx, store.file()).await.map_err(Into::into),
            (Some(Err(e)), _) => Err(e),
            _ => Ok(()),
        }
    }

    /// Gives `key` to the first waiter still there.
    fn grant_next(&self, key: &str, lock: &mut Lock) {
        while let Some(waiter) = lock.waiters.pop_front() {
            if waiter.tx.is_closed() {
                log::debug!("lock {key}: waiter {} is gone; skipped", waiter.claim.owner);
                continue;
            }
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            let holding = Holding {
                expires: crate::deadline::tokio_after(waiter.claim.lease),
                claim: waiter.claim,
                token,
            };
            let written = self.write(key, Some(&holding));
            let owner = holding.claim.owner.clone();
            if waiter.tx.send(Grant { token, written }).is_ok() {
                log::debug!("lock {key}: granted to {owner} (token {token})");
                lock.holder = Some(holding);
                return;
            }
            log::debug!("lock {key}: waiter {owner} is gone; skipped");
            if let Some(store) = &self.store {
                store.record(vec![Change::Lock {
                    key: key.to_string(),
                    holder: None,
                }]);
            }
        }
    }

    /// Ends `node`'s claim `req` on `key`: releases the lock if it holds it, or
    /// leaves the line if it waits.
    /// Returns the write of the release to wait for, when there is one.
    pub(crate) fn release(&self, key: &str, node: &str, req: u64) -> Option<Written> {
        let mut table = self.table.lock();
        let lock = table.get_mut(key)?;
        let holds = lock
            .holder
            .as_ref()
            .is_some_and(|h| h.claim.node == node && h.claim.req == req);
        let mut written = None;
        if holds {
            lock.holder = None;
            written = self.write(key, None);
            self.grant_next(key, lock);
        } else {
            lock.waiters
                .retain(|w| !(w.claim.node == node && w.claim.req == req));
        }
        if lock.holder.is_none() && lock.waiters.is_empty() {
            table.remove(key);
        }
        written
    }

    /// Releases `node`'s claim `req` on `key` and waits until that is kept.
    pub(crate) async fn unlock(&self, key: &str, node: &str, req: u64) -> Result<(), ServiceError> {
        check_key(key)?;
        let written = self.release(key, node, req);
        self.kept(written).await
    }

    /// Node `node` is gone: its locks are released and its waiters leave.
    pub(crate) fn node_down(&self, node: &str) {
        let mut table = self.table.lock();
        for (key, lock) in table.iter_mut() {
            lock.waiters.retain(|w| w.claim.node != node);
            if lock.holder.as_ref().is_some_and(|h| h.claim.node == node) {
                log::warn!("lock {key}: its holder's node {node} is down; released");
                lock.holder = None;
                self.forget(key);
                self.grant_next(key, lock);
            }
        }
        table.retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
    }

    /// Locks held past their lease are released.
    pub(crate) fn expire(&self, now: Instant) {
        let mut table = self.table.lock();
        for (key, lock) in table.iter_mut() {
            let late = lock.holder.as_ref().is_some_and(|h| h.expires <= now);
            if late {
                if let Some(h) = lock.holder.take() {
                    log::warn!(
                        "lock {key}: {}'s lease ran out (token {}); released",
                        h.claim.owner,
                        h.token
                    );
                }
                self.forget(key);
                self.grant_next(key, lock);
            }
        }
        table.retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
    }
}

impl Locks {
    /// Writes, without waiting, that `key` has no holder.
    fn forget(&self, key: &str) {
        if let Some(store) = &self.store {
            store.record(vec![Change::Lock {
                key: key.to_string(),
                holder: None,
            }]);
        }
    }
}

fn check_key(key: &str) -> Result<(), ServiceError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(format!(
            "lock key `{}` must be 1 to 256 printable characters",
            crate::logging::untrusted(key)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn renewals_and_releases_of_outside_keys_are_checked_as_grants_are() {
        let locks = Locks::new(None, &mut Loaded::default());
        for key in [
            "x".repeat(10 * 1024 * 1024),
            "evil\nFORGED".to_string(),
            String::new(),
        ] {
            let renewed = locks.renew(&key, "peer", 1).await.unwrap_err();
            assert_eq!(renewed.kind, crate::error::ErrorKind::BadRequest);
            assert!(renewed.message.len() < 1_000, "quoted cut");
            let released = locks.unlock(&key, "peer", 1).await.unwrap_err();
            assert_eq!(released.kind, crate::error::ErrorKind::BadRequest);
        }
        // A key that was never held: the renewal is refused, the release is a no-op.
        let err = locks.renew("free", "peer", 1).await.unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::ServiceFailed);
        locks.unlock("free", "peer", 1).await.unwrap();
    }
}
