//! Cluster-wide exclusive locks, as cluster-hub's, without its deadlock.
//!
//! The lock table lives on the master (a node without a bridge holds its own).
//! A lock is granted to one holder at a time, waiters in the order they asked,
//! each grant with a fencing token larger than every token granted before it,
//! also across restarts of the master (tokens start from the clock in
//! microseconds). A resource guarded by a lock should refuse writes carrying a
//! token smaller than the last it saw.
//!
//! A lock is released when its [`LockGuard`](crate::LockGuard) drops (also when the
//! holding worker panics or is killed, since its state drops with it), when the
//! holder's node dies or loses its link, and when its optional lease runs out.
//! A waiter that is gone (its caller gave up, its worker died, its node died)
//! is removed from the line and never granted the lock: cluster-hub kept such
//! waiters queued, and the lock was then granted to nobody forever.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ServiceError;

/// Waiters one lock may have; more get `Overloaded`.
const MAX_WAITERS: usize = 10_000;

/// Who asks for a lock: a node and its request number there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) node: String,
    pub(crate) req: u64,
    /// The worker or node asking, for logs.
    pub(crate) owner: String,
    pub(crate) lease: Option<Duration>,
}

struct Holding {
    claim: Claim,
    token: u64,
    expires: Option<Instant>,
}

struct Waiter {
    claim: Claim,
    tx: oneshot::Sender<u64>,
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
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("held", &self.table.lock().len())
            .finish()
    }
}

impl Default for Locks {
    fn default() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Locks {
            table: Mutex::default(),
            next_token: AtomicU64::new(micros),
        }
    }
}

impl Locks {
    /// Waits up to `wait` for lock `key`; returns its fencing token.
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
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(token)) => Ok(token),
            Ok(Err(_)) => Err(ServiceError::service_failed(format!(
                "lock {key}: the wait was ended by the lock table (the waiter's node is down or the holder is stopping)"
            ))),
            Err(_) => {
                // Leave the line, or give back a grant made in the same instant.
                self.release(key, &who.node, who.req);
                Err(ServiceError::timeout(format!(
                    "lock {key} not granted within {wait:?}"
                )))
            }
        }
    }

    /// Gives `key` to the first waiter still there.
    fn grant_next(&self, key: &str, lock: &mut Lock) {
        while let Some(waiter) = lock.waiters.pop_front() {
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            if waiter.tx.send(token).is_ok() {
                log::debug!(
                    "lock {key}: granted to {} (token {token})",
                    waiter.claim.owner
                );
                lock.holder = Some(Holding {
                    expires: waiter.claim.lease.map(crate::deadline::tokio_after),
                    claim: waiter.claim,
                    token,
                });
                return;
            }
            log::debug!("lock {key}: waiter {} is gone; skipped", waiter.claim.owner);
        }
    }

    /// Ends `node`'s claim `req` on `key`: releases the lock if it holds it, or
    /// leaves the line if it waits.
    pub(crate) fn release(&self, key: &str, node: &str, req: u64) {
        let mut table = self.table.lock();
        let Some(lock) = table.get_mut(key) else {
            return;
        };
        let holds = lock
            .holder
            .as_ref()
            .is_some_and(|h| h.claim.node == node && h.claim.req == req);
        if holds {
            lock.holder = None;
            self.grant_next(key, lock);
        } else {
            lock.waiters
                .retain(|w| !(w.claim.node == node && w.claim.req == req));
        }
        if lock.holder.is_none() && lock.waiters.is_empty() {
            table.remove(key);
        }
    }

    /// Node `node` is gone: its locks are released and its waiters leave.
    pub(crate) fn node_down(&self, node: &str) {
        let mut table = self.table.lock();
        for (key, lock) in table.iter_mut() {
            lock.waiters.retain(|w| w.claim.node != node);
            if lock.holder.as_ref().is_some_and(|h| h.claim.node == node) {
                log::warn!("lock {key}: its holder's node {node} is down; released");
                lock.holder = None;
                self.grant_next(key, lock);
            }
        }
        table.retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
    }

    /// Locks held past their lease are released.
    pub(crate) fn expire(&self, now: Instant) {
        let mut table = self.table.lock();
        for (key, lock) in table.iter_mut() {
            let late = lock
                .holder
                .as_ref()
                .is_some_and(|h| h.expires.is_some_and(|e| e <= now));
            if late {
                if let Some(h) = lock.holder.take() {
                    log::warn!(
                        "lock {key}: {}'s lease ran out (token {}); released",
                        h.claim.owner,
                        h.token
                    );
                }
                self.grant_next(key, lock);
            }
        }
        table.retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
    }
}

fn check_key(key: &str) -> Result<(), ServiceError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(format!(
            "lock key `{}` must be 1 to 256 printable characters",
            key.escape_debug()
        )));
    }
    Ok(())
}
