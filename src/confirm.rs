//! Confirmations, as clustr-node's: workers confirm an id, and the master waits
//! until `n` distinct senders have confirmed it. A sender that confirms the same
//! id again is counted once (clustr-node counted every message).
//!
//! Counts live on the master (a node without a bridge keeps its own), from the
//! first confirmation on, so a wait registered late still sees the earlier ones.
//! At most [`KEEP`] ids are remembered; past that, the oldest id nobody waits for
//! is forgotten.

use std::collections::{HashMap, HashSet, VecDeque};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Ids remembered at once.
pub(crate) const KEEP: usize = 10_000;

#[derive(Default)]
struct Entry {
    senders: HashSet<String>,
    waiters: Vec<(usize, oneshot::Sender<usize>)>,
}

/// The confirmations a node counts.
#[derive(Default)]
pub(crate) struct Confirmations {
    state: Mutex<State>,
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
    /// `sender` confirms `id`; returns how many distinct senders have.
    pub(crate) fn confirm(&self, id: &str, sender: &str) -> usize {
        let mut state = self.state.lock();
        let entry = state.entry(id);
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
        count
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
        let entry = state.entry(id);
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

impl State {
    fn entry(&mut self, id: &str) -> &mut Entry {
        if !self.ids.contains_key(id) {
            if self.ids.len() >= KEEP {
                self.forget_one();
            }
            self.order.push_back(id.to_string());
        }
        self.ids.entry(id.to_string()).or_default()
    }

    /// Forgets the oldest id nobody waits for.
    fn forget_one(&mut self) {
        let position = self.order.iter().position(|id| {
            self.ids
                .get(id)
                .is_none_or(|e| e.waiters.iter().all(|(_, tx)| tx.is_closed()))
        });
        if let Some(old) = position.and_then(|p| self.order.remove(p)) {
            log::debug!("confirmations: forgetting id {old}");
            self.ids.remove(&old);
        }
    }
}
