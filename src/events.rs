//! The lifecycle events of workers and services, mirroring Node's cluster events
//! (`fork`, `online`, `exit`), plus `restart` and `service_failed`, why a worker
//! exited, and the bus that carries the events to subscribers.

use std::sync::Arc;

use actix::prelude::*;
use parking_lot::Mutex;
use serde::Serialize;

use crate::message::WorkerId;

/// Why a worker's actor ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "message", rename_all = "snake_case")]
pub enum ExitReason {
    /// The actor stopped itself (or was stopped by a graceful shutdown).
    Stopped,
    /// A handler (or the factory) panicked; the panic's message.
    Panicked(String),
    /// The worker was killed: by `colony kill`, or by its supervisor's strategy.
    Killed,
}

impl ExitReason {
    /// Whether the exit was a failure, which restarts a `transient` worker.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Stopped)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::Panicked(msg) => write!(f, "panicked: {msg}"),
            ExitReason::Killed => f.write_str("killed"),
        }
    }
}

/// Something that happened to a worker or a service. Any actor can subscribe with
/// [`Node::subscribe`](crate::Node::subscribe).
#[derive(Debug, Clone, PartialEq, Serialize, Message)]
#[rtype(result = "()")]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// A worker's actor is being started on its arbiter.
    Fork {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker's actor is built and takes requests.
    Online {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker's actor ended.
    Exit {
        /// The worker.
        worker: WorkerId,
        /// Why it ended.
        reason: ExitReason,
    },
    /// The supervisor starts the worker again after `delay_ms`.
    Restart {
        /// The worker.
        worker: WorkerId,
        /// How many times this worker has been restarted, this one included.
        restarts: u64,
        /// The backoff before this restart.
        delay_ms: u64,
    },
    /// A node joined the cluster (seen at the master).
    NodeUp {
        /// The node.
        node: String,
    },
    /// A node left the cluster or became unreachable.
    NodeDown {
        /// The node.
        node: String,
        /// Why, in words.
        reason: String,
    },
    /// The service exceeded its restart intensity and is down.
    ServiceFailed {
        /// The node of the service.
        node: String,
        /// The service.
        service: String,
        /// Why, in words.
        reason: String,
    },
    /// A spawned node's process started (seen at the node that spawned it).
    NodeFork {
        /// The node.
        node: String,
        /// Its process id.
        pid: u32,
    },
    /// A spawned node bound its API and bridge.
    NodeListening {
        /// The node.
        node: String,
        /// Its process id.
        pid: u32,
        /// Where its HTTP API listens, if it has one.
        api: Option<std::net::SocketAddr>,
        /// Where its bridge listens, if it has one.
        bridge: Option<std::net::SocketAddr>,
    },
    /// A spawned node joined the cluster and its workers run.
    NodeOnline {
        /// The node.
        node: String,
        /// Its process id.
        pid: u32,
    },
    /// A spawned node's process ended.
    NodeExit {
        /// The node.
        node: String,
        /// Its process id.
        pid: u32,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// The backoff before it is started again; `None` when it is not restarted
        /// (the node is stopping, reloading or errored).
        restart_in_ms: Option<u64>,
    },
    /// A spawned node crashed `max_restarts` times in a row within `min_uptime`: it
    /// is left `errored` until a reload.
    NodeErrored {
        /// The node.
        node: String,
        /// How often it was restarted.
        restarts: u64,
    },
    /// A job failed `max_attempts` times and went to its queue's dead letters
    /// (seen on the node that holds the queue).
    JobDead {
        /// The queue.
        queue: String,
        /// The job's id.
        job: u64,
        /// How many times it was delivered.
        attempts: u32,
        /// Its last failure.
        error: String,
    },
}

/// Delivers lifecycle events to subscribed actors. Each subscriber's mailbox is
/// bounded: an event it has no room for is logged as dropped, and a subscriber
/// that stopped is forgotten.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventBus {
    subscribers: Arc<Mutex<Vec<Recipient<LifecycleEvent>>>>,
}

impl EventBus {
    pub(crate) fn subscribe(&self, subscriber: Recipient<LifecycleEvent>) {
        self.subscribers.lock().push(subscriber);
    }

    pub(crate) fn publish(&self, event: LifecycleEvent) {
        match &event {
            LifecycleEvent::Exit {
                reason: ExitReason::Panicked(_) | ExitReason::Killed,
                ..
            } => log::warn!("{}", describe(&event)),
            // An exit that is restarted, or not clean, is worth a warning.
            LifecycleEvent::NodeExit {
                code,
                restart_in_ms,
                ..
            } if restart_in_ms.is_some() || *code != Some(0) => {
                log::warn!("{}", describe(&event))
            }
            LifecycleEvent::ServiceFailed { .. }
            | LifecycleEvent::NodeDown { .. }
            | LifecycleEvent::NodeErrored { .. }
            | LifecycleEvent::JobDead { .. } => {
                log::error!("{}", describe(&event))
            }
            _ => log::info!("{}", describe(&event)),
        }
        self.subscribers
            .lock()
            .retain(|s| match s.try_send(event.clone()) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    log::warn!(
                        "event subscriber's mailbox is full; dropped: {}",
                        describe(&event)
                    );
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
    }
}

/// One line describing `event`, for logs.
pub fn describe(event: &LifecycleEvent) -> String {
    match event {
        LifecycleEvent::Fork { worker } => format!("worker {worker}: fork"),
        LifecycleEvent::Online { worker } => format!("worker {worker}: online"),
        LifecycleEvent::Exit { worker, reason } => format!("worker {worker}: exit ({reason})"),
        LifecycleEvent::Restart {
            worker,
            restarts,
            delay_ms,
        } => format!("worker {worker}: restart #{restarts} after {delay_ms}ms"),
        LifecycleEvent::ServiceFailed {
            node,
            service,
            reason,
        } => format!("service {node}/{service} failed: {reason}"),
        LifecycleEvent::NodeUp { node } => format!("node {node}: up"),
        LifecycleEvent::NodeDown { node, reason } => format!("node {node}: down ({reason})"),
        LifecycleEvent::NodeFork { node, pid } => format!("node {node}: fork (pid {pid})"),
        LifecycleEvent::NodeListening {
            node, api, bridge, ..
        } => format!(
            "node {node}: listening (api {}, bridge {})",
            api.map_or("none".into(), |a| a.to_string()),
            bridge.map_or("none".into(), |a| a.to_string())
        ),
        LifecycleEvent::NodeOnline { node, pid } => format!("node {node}: online (pid {pid})"),
        LifecycleEvent::NodeExit {
            node,
            pid,
            code,
            signal,
            restart_in_ms,
        } => {
            let how = match (code, signal) {
                (Some(code), _) => format!("code {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "unknown status".into(),
            };
            match restart_in_ms {
                Some(ms) => format!("node {node}: exit (pid {pid}, {how}); restart in {ms}ms"),
                None => format!("node {node}: exit (pid {pid}, {how})"),
            }
        }
        LifecycleEvent::NodeErrored { node, restarts } => {
            format!("node {node}: errored after {restarts} restarts; not restarted until a reload")
        }
        LifecycleEvent::JobDead {
            queue,
            job,
            attempts,
            error,
        } => format!("queue {queue}: job {job} is dead after {attempts} attempts: {error}"),
    }
}
