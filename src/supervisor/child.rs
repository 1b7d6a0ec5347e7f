//! What the supervisor keeps of each worker index: its slot, its current
//! incarnation and whether it is coming back, or leaving after a scale-down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::worker::{Incarnation, KillSwitch, WorkerSlot};

/// One worker index of a supervised service.
pub(super) struct Child {
    /// The index's slot now (status shows it while the index is below `target`).
    pub(super) slot: Arc<WorkerSlot>,
    pub(super) generation: u64,
    pub(super) running: Option<(Arc<Incarnation>, KillSwitch)>,
    /// Set when the strategy stopped this worker because a sibling failed: its
    /// exit restarts it after this delay without counting as a failure.
    pub(super) restart_after: Option<Duration>,
    pub(super) restart_pending: bool,
    /// Set when a scale-down removed the running worker: until when it may
    /// finish what it holds. Its exit restarts nothing.
    pub(super) retiring: Option<Instant>,
}

impl Child {
    pub(super) fn new(slot: Arc<WorkerSlot>) -> Self {
        Child {
            slot,
            generation: 0,
            running: None,
            restart_after: None,
            restart_pending: false,
            retiring: None,
        }
    }

    /// Nothing runs, nor is about to: a new worker may start at this index.
    pub(super) fn is_idle(&self) -> bool {
        self.running.is_none() && self.retiring.is_none() && !self.restart_pending
    }
}
