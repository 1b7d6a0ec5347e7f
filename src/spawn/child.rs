//! A spawned child as the spawner and the task that watches it share it: its
//! entry in the `spawn:` list, its phase, and the commands it takes.

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::SpawnConfig;
use crate::error::ServiceError;

/// Where a child is in its life, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Started, not yet listening.
    Starting,
    /// Its API and bridge are bound.
    Listening,
    /// Joined the cluster, every worker running.
    Online,
    /// Draining after SIGTERM.
    Stopping,
    /// Exited; waiting out its backoff.
    Restarting,
    /// Crash-looped; not restarted until a reload.
    Errored,
    /// Stopped for good.
    Stopped,
}

impl Phase {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Listening => "listening",
            Phase::Online => "online",
            Phase::Stopping => "stopping",
            Phase::Restarting => "restarting",
            Phase::Errored => "errored",
            Phase::Stopped => "stopped",
        }
    }
}

/// One child of a node, as the spawner and its watcher share it.
pub(super) struct Child {
    pub(super) name: String,
    pub(super) entry: SpawnConfig,
    /// The CPU it is pinned to, `cpu: auto` resolved by its place in the list.
    pub(super) cpu: Option<usize>,
    /// The child has a bridge; without one, listening is online.
    pub(super) bridged: bool,
    pub(super) state: Mutex<ChildState>,
    pub(super) commands: mpsc::Sender<Command>,
}

/// What is known of a child's process now.
#[derive(Debug, Clone)]
pub(super) struct ChildState {
    pub(super) phase: Phase,
    pub(super) pid: Option<u32>,
    pub(super) restarts: u64,
    pub(super) since: Instant,
}

/// What the spawner asks of a child's watcher.
pub(super) enum Command {
    Reload(oneshot::Sender<Result<(), ServiceError>>),
    Stop(oneshot::Sender<()>),
}
