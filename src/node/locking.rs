//! Cluster-wide locks as a node's caller sees them: [`Node::lock_with`] waits for
//! a grant, and the [`LockGuard`] it returns keeps the lock's lease renewed while
//! it lives, says when the lock is lost ([`LockGuard::lost`]), and releases the
//! lock when it drops, asking the master until it answers or the lease ends.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::handle::Node;
use super::messaging::{caller, StateAt, MARGIN, STATE_TIMEOUT};
use crate::backoff::Backoff;
use crate::config::limits::MAX_DURATION;
use crate::error::{ErrorKind, ServiceError};
use crate::locks::{Claim, DEFAULT_LEASE};
use crate::state::Op;

/// The shortest lease a lock may have.
const MIN_LEASE: Duration = Duration::from_millis(30);
/// Retries of a release the master did not answer: 50 ms to 1 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// How [`Node::lock_with`] waits and holds.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// How long to wait for the lock before `Timeout`. Default: 30 s; at most a week.
    pub wait: Duration,
    /// The lock's lease: without a renewal within it, the master releases the
    /// lock (and the guard's fencing token is stale). Default: 30 s; at least 30 ms,
    /// at most a week.
    pub lease: Duration,
    /// Whether the guard renews the lease while it lives (every third of the
    /// lease). Default: yes. Without renewal the lock is released when the lease
    /// ends, even if the guard still lives.
    pub renew: bool,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            wait: Duration::from_secs(30),
            lease: DEFAULT_LEASE,
            renew: true,
        }
    }
}

/// A cluster-wide lock, held until this guard drops.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    node: Node,
    key: String,
    req: u64,
    lease: Duration,
    token: u64,
    /// Why the lock was lost, once it is.
    lost: watch::Receiver<Option<ServiceError>>,
    /// Dropped with the guard: tells its keeper to release the lock.
    _held: watch::Sender<()>,
}

impl LockGuard {
    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token of this grant: larger than every token granted before.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Resolves when this guard no longer holds the lock: its lease ran out
    /// unrenewed, the master released it (this node lost its link to the master,
    /// or the master restarted past the lease), or its renewal was refused. Says
    /// why. Work guarded by the lock should stop, and its token be treated as
    /// stale.
    pub fn lost(&self) -> impl Future<Output = ServiceError> + 'static {
        let mut lost = self.lost.clone();
        async move {
            match lost.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_else(|| gone("lost")),
                Err(_) => gone("its keeper stopped"),
            }
        }
    }

    /// Whether the lock is known lost now.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }
}

fn gone(why: &str) -> ServiceError {
    ServiceError::service_failed(format!("the lock is lost: {why}"))
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        release_now(&self.node, &self.key, self.req, self.lease);
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish()
    }
}

/// Withdraws a lock claim if the wait for it ends without a guard (the caller
/// gave up, timed out or was dropped with its worker).
struct Claiming {
    node: Node,
    key: String,
    req: u64,
    lease: Duration,
    armed: bool,
}

impl Drop for Claiming {
    fn drop(&mut self) {
        if self.armed {
            release_now(&self.node, &self.key, self.req, self.lease);
        }
    }
}

impl Node {
    /// Takes the cluster-wide lock `key`, waiting up to 30 s, with a 30 s lease
    /// that the guard renews while it lives.
    pub fn lock(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<LockGuard, ServiceError>> + 'static {
        self.lock_with(key, LockOptions::default())
    }

    /// Takes the cluster-wide lock `key`. Waiters are served first come, first
    /// served; the guard carries a fencing token and releases the lock when it
    /// drops. A caller that stops waiting leaves the line.
    pub fn lock_with(
        &self,
        key: &str,
        options: LockOptions,
    ) -> impl Future<Output = Result<LockGuard, ServiceError>> + 'static {
        let node = self.clone();
        let key = key.to_string();
        // Who asks is known now, inside the handler, not when the future runs.
        let owner = caller(self.name());
        // A week at most, as for every duration of a config: no deadline overflows.
        let lease = options.lease.clamp(MIN_LEASE, MAX_DURATION);
        let wait = options.wait.min(MAX_DURATION);
        async move {
            let req = node.inner.next_claim.fetch_add(1, Ordering::Relaxed);
            let mut claiming = Claiming {
                node: node.clone(),
                key: key.clone(),
                req,
                lease,
                armed: true,
            };
            let token = match node.state_at()? {
                StateAt::Here(state) => {
                    let claim = Claim {
                        node: node.name().to_string(),
                        req,
                        owner,
                        lease,
                    };
                    state.locks.acquire(&key, claim, wait).await?
                }
                remote => {
                    let op = Op::Lock {
                        key: key.clone(),
                        req,
                        owner,
                        wait_ms: wait.as_millis() as u64,
                        lease_ms: Some(lease.as_millis() as u64),
                    };
                    Self::call_remote(remote, op, wait + MARGIN).await?
                }
            };
            claiming.armed = false;
            let (lost_tx, lost) = watch::channel(None);
            let (held, dropped) = watch::channel(());
            let keeper = keep(
                node.clone(),
                key.clone(),
                req,
                lease,
                options.renew,
                lost_tx,
                dropped,
            );
            actix_rt::spawn(keeper);
            Ok(LockGuard {
                node,
                key,
                req,
                lease,
                token,
                lost,
                _held: held,
            })
        }
    }

    /// Asks the cluster state to do `op` on this node's claim `req` on `key`.
    async fn claim_op(&self, op: Op, timeout: Duration) -> Result<(), ServiceError> {
        match (self.state_at()?, op) {
            (StateAt::Here(state), Op::Unlock { key, req }) => {
                state.locks.unlock(&key, self.name(), req).await
            }
            (StateAt::Here(state), Op::Renew { key, req }) => {
                state.locks.renew(&key, self.name(), req).await
            }
            (StateAt::Here(_), _) => Ok(()),
            (remote, op) => Self::call_remote::<()>(remote, op, timeout).await,
        }
    }
}

/// Keeps the lease of a granted lock renewed until its guard drops (which
/// releases it), noting in `lost` when the lock is lost.
async fn keep(
    node: Node,
    key: String,
    req: u64,
    lease: Duration,
    renew: bool,
    lost: watch::Sender<Option<ServiceError>>,
    mut dropped: watch::Receiver<()>,
) {
    let mut ends = Instant::now() + lease;
    let every = lease / 3;
    loop {
        let next = if renew { Instant::now() + every } else { ends };
        tokio::select! {
            _ = dropped.changed() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if node.is_stopping() {
            // The node goes away: its link's loss releases what it holds.
            return;
        }
        if lost.borrow().is_some() {
            continue;
        }
        if !renew {
            let _ = lost.send(Some(ServiceError::timeout(format!(
                "lock {key}: its lease of {lease:?} ran out"
            ))));
            continue;
        }
        let asked = Instant::now();
        let op = Op::Renew {
            key: key.clone(),
            req,
        };
        match node.claim_op(op, every.max(MIN_LEASE)).await {
            Ok(()) => ends = asked + lease,
            // The master releases the locks of a node whose link drops: a lost
            // link is a lost lock, as is a refused renewal.
            Err(e) if e.kind != ErrorKind::Timeout || Instant::now() >= ends => {
                log::warn!("lock {key}: lost: {e}");
                let _ = lost.send(Some(e));
            }
            Err(e) => log::debug!("lock {key}: renewal not answered yet: {e}"),
        }
    }
}

/// Releases claim `req` on `key` now: at once on the node that holds the lock
/// table, else by a request sent now, whose answer (and any retry) a task awaits.
/// Released even when known lost: the master ignores a release of a claim that
/// no longer holds the lock, and a master that restarted may still keep it.
fn release_now(node: &Node, key: &str, req: u64, lease: Duration) {
    let ends = Instant::now() + lease;
    let in_task = tokio::runtime::Handle::try_current().is_ok();
    match node.state_at() {
        Ok(StateAt::Here(state)) => {
            let written = state.locks.release(key, node.name(), req);
            if let (Some(written), true) = (written, in_task) {
                let (state, key) = (state.clone(), key.to_string());
                actix_rt::spawn(async move {
                    if let Err(e) = state.locks.kept(Some(written)).await {
                        log::error!("lock {key}: its release is not on disk: {e}");
                    }
                });
            }
        }
        Ok(StateAt::Link(link)) if in_task => {
            let op = Op::Unlock {
                key: key.to_string(),
                req,
            };
            let sent = Node::send_state(&link, &op);
            let (node, key) = (node.clone(), key.to_string());
            actix_rt::spawn(async move {
                let answered = match sent {
                    Ok(pending) => Node::answer_of::<()>(&link, pending, STATE_TIMEOUT).await,
                    Err(e) => Err(e),
                };
                if answered.is_err() {
                    release(&node, &key, req, ends).await;
                }
            });
        }
        _ if in_task => {
            let (node, key) = (node.clone(), key.to_string());
            actix_rt::spawn(async move { release(&node, &key, req, ends).await });
        }
        _ => log::warn!("lock {key}: released outside a runtime; the master releases it when its lease ends or this node's link drops"),
    }
}

/// Asks the master to release claim `req` on `key` until it answers or the lease
/// ends (after which the master has released it anyway).
async fn release(node: &Node, key: &str, req: u64, ends: Instant) {
    let mut backoff = RETRY;
    loop {
        let op = Op::Unlock {
            key: key.to_string(),
            req,
        };
        let left = ends.saturating_duration_since(Instant::now());
        match node.claim_op(op, left.min(STATE_TIMEOUT)).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay >= ends {
                    log::warn!("lock {key}: the master did not answer its release ({e}); its lease ends it");
                    return;
                }
                log::debug!("lock {key}: release not answered ({e}); asking again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
