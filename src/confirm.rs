//! Confirmations, as clustr-node's: workers confirm an id, and the master waits
//! until `n` distinct senders have confirmed it. A sender that confirms the same
//! id again is counted once (clustr-node counted every message).
//!
//! Counts live on the master (a node without a bridge keeps its own), from the
//! first confirmation on, so a wait registered late still sees the earlier ones.
//! At most [`KEEP`] ids are remembered; past that, the oldest id nobody waits for
//! is forgotten. With a durable cluster state the counts are on disk before a
//! confirmation is answered, and survive a restart of the master.

use std::collections::{HashMap, HashSet, VecDeque};

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::ServiceError;
use crate::store::{Change, Loaded, Store};

/// Ids remembered at once.
pub(crate) const KEEP: usize = 10_000;
/// Longest confirmation id or sender name, in bytes.
const MAX_NAME: usize = 256;

#[derive(Default)]
struct Entry {
    senders: HashSet<String>,
    waiters: Vec<(usize, oneshot::Sender<usize>)>,
}

/// The confirmations a node counts.
pub(crate) struct Confirmations {
    state: std::sync::Arc<Mutex<State>>,
    store: Option<Store>,
    next_order: AtomicU64,
}

#[derive(Default)]
struct State {
    ids: HashMap<String, Entry>,
    order: VecDeque<String>,
}

impl std::fmt::Debug for Confirmations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmations")
            .field("ids", &self.state.lock().ids.len())
            .finish()
    }
}

impl Confirmations {
    /// Confirmations kept in `store` (in memory when `None`), starting from those
    /// it held (`loaded`).
    pub(crate) fn new(store: Option<Store>, loaded: &mut Loaded) -> Confirmations {
        let mut state = State::default();
        let confirms = std::mem::take(&mut loaded.confirms);
        let next = confirms
            .last()
            .map_or(1, |(order, _, _)| order.saturating_add(1));
        for (_, id, sender) in confirms {
            let senders = &mut state.entry(&id).0.senders;
            if senders.len() < KEEP {
                senders.insert(sender);
            }
        }
        Confirmations {
            state: std::sync::Arc::new(Mutex::new(state)),
            store,
            next_order: AtomicU64::new(next),
        }
    }

    /// `sender` confirms `id`; returns how many distinct senders have, once that
    /// is kept.
    pub(crate) async fn confirm(&self, id: &str, sender: &str) -> Result<usize, ServiceError> {
        for (what, text) in [("confirmation id", id), ("sender", sender)] {
            if text.is_empty() || text.len() > MAX_NAME || text.chars().any(char::is_control) {
                return Err(ServiceError::bad_request(format!(
                    "{what} `{}` must be 1 to {MAX_NAME} printable characters",
                    crate::logging::untrusted(text)
                )));
            }
        }
        let Some(store) = &self.store else {
            return count(&mut self.state.lock(), id, sender, None);
        };
        let full = self
            .state
            .lock()
            .ids
            .get(id)
            .is_some_and(|e| e.senders.len() >= KEEP && !e.senders.contains(sender));
        if full {
            return Err(ServiceError::overloaded(format!(
                "confirmation id {} already has {KEEP} senders",
                crate::logging::untrusted(id)
            )));
        }
        // Counted once written: a confirmation is never answered, nor a waiter
        // woken, before it is on disk, and a failed write counts nothing.
        let (answer, answered) = oneshot::channel();
        let state = self.state.clone();
        let (owner, who, keeper) = (id.to_string(), sender.to_string(), store.clone());
        let changes = vec![Change::Confirm {
            id: id.to_string(),
            sender: sender.to_string(),
            order: self.next_order.fetch_add(1, Ordering::Relaxed),
        }];
        store.commit_then(changes, move |kept| {
            let result = match kept {
                Ok(()) => count(&mut state.lock(), &owner, &who, Some(&keeper)),
                Err(e) => Err(e.into()),
            };
            let _ = answer.send(result);
        })?;
        answered.await.unwrap_or_else(|_| {
            Err(ServiceError::service_failed(
                "the cluster state stopped before the confirmation was written",
            ))
        })
    }

    /// Resolves once `n` distinct senders have confirmed `id` (at once if they
    /// already have), with their count.
    /// `Overloaded` when [`KEEP`] waits on `id` are pending already.
    pub(crate) fn wait(
        &self,
        n: usize,
        id: &str,
    ) -> Result<oneshot::Receiver<usize>, crate::error::ServiceError> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.lock();
        let (entry, forgotten) = state.entry(id);
        if let (Some(old), Some(store)) = (forgotten, &self.store) {
            store.record(vec![Change::Forget { id: old }]);
        }
        let count = entry.senders.len();
        if count >= n {
            let _ = tx.send(count);
        } else {
            entry.waiters.retain(|(_, tx)| !tx.is_closed());
            if entry.waiters.len() >= KEEP {
                return Err(crate::error::ServiceError::overloaded(format!(
                    "{KEEP} waits on confirmation id {id} are pending already"
                )));
            }
            entry.waiters.push((n, tx));
        }
        Ok(rx)
    }
}

/// Counts `sender`'s confirmation of `id` in `state` and wakes the waits it
/// meets; returns the count. An id forgotten to make room is forgotten in `store`
/// too.
fn count(
    state: &mut State,
    id: &str,
    sender: &str,
    store: Option<&Store>,
) -> Result<usize, ServiceError> {
    let (entry, forgotten) = state.entry(id);
    if entry.senders.len() >= KEEP && !entry.senders.contains(sender) {
        return Err(ServiceError::overloaded(format!(
            "confirmation id {} already has {KEEP} senders",
            crate::logging::untrusted(id)
        )));
    }
    entry.senders.insert(sender.to_string());
    let count = entry.senders.len();
    let (due, waiting): (Vec<_>, Vec<_>) = entry
        .waiters
        .drain(..)
        .partition(|(n, tx)| *n <= count || tx.is_closed());
    entry.waiters = waiting;
    for (_, tx) in due {
        let _ = tx.send(count);
    }
    if let (Some(old), Some(store)) = (forgotten, store) {
        store.record(vec![Change::Forget { id: old }]);
    }
    Ok(count)
}

impl State {
    /// The entry of `id`, made if new; and the id forgotten to make room, if any.
    fn entry(&mut self, id: &str) -> (&mut Entry, Option<String>) {
        let mut forgotten = None;
        if !self.ids.contains_key(id) {
            if self.ids.len() >= KEEP {
                forgotten = self.forget_one();
            }
            self.order.push_back(id.to_string());
        }
        (self.ids.entry(id.to_string()).or_default(), forgotten)
    }

    /// Forgets the oldest id nobody waits for.
    fn forget_one(&mut self) -> Option<String> {
        let position = self.order.iter().position(|id| {
            self.ids
                .get(id)
                .is_none_or(|e| e.waiters.iter().all(|(_, tx)| tx.is_closed()))
        });
        if let Some(old) = position.and_then(|p| self.order.remove(p)) {
            log::debug!("confirmations: forgetting id {old}");
            self.ids.remove(&old);
            return Some(old);
        }
        None
    }
}
