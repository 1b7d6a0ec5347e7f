//! Child node processes (SPEC §4 `spawn`): the node that lists them starts each
//! one, pinned to its CPU when asked, and keeps it running with pm2's discipline.
//!
//! - Events as Node's cluster module: `fork` (the process started), `listening`
//!   (its API and bridge are bound; the child says so on the pipe it finds at
//!   `$COLONY_NOTIFY_FD`), `online` (it joined the cluster and its workers run),
//!   `exit` (code or signal).
//! - A child that exits is started again after a backoff that starts at 100 ms and
//!   grows ×1.5 up to 15 s; 30 s of uptime resets it. `max_restarts` exits in a
//!   row, each within `min_uptime` of the start, leave it `errored`: it is not
//!   started again until a reload.
//! - A reload restarts children one at a time: the new config is checked first (a
//!   broken one leaves the old process serving), then the old process drains (it
//!   leaves the cluster, so no new request reaches it, and finishes what it holds),
//!   and the replacement starts and must be online, with every worker running,
//!   before the next child is touched. A node name is one process at a time, so the
//!   replacement cannot overlap the old one; the other nodes carry the load between.
//! - Children die with the node that spawned them: SIGTERM and a drain on a
//!   graceful stop, and the kernel's parent-death signal (SIGTERM) if that node is
//!   killed outright.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::error::ServiceError;
use crate::events::EventBus;
use crate::node::{Children, Probe};
use crate::status::NodeStatus;

mod child;
mod watcher;

use child::{Child, ChildState, Command, Phase};
use watcher::Watcher;

/// The children of one node.
pub(crate) struct NodeSpawner {
    children: Vec<Arc<Child>>,
    stopping: Arc<AtomicBool>,
    reloading: tokio::sync::Mutex<()>,
}

impl NodeSpawner {
    /// Starts every child of `config` (whose configs are `spawned`, in order).
    /// Call inside the actix system whose main thread lives as long as the node:
    /// the children's parent-death signal is tied to it.
    pub(crate) fn start(
        config: &NodeConfig,
        spawned: Vec<NodeConfig>,
        events: EventBus,
        probe: Probe,
        bridge: Option<std::net::SocketAddr>,
    ) -> NodeSpawner {
        let stopping = Arc::new(AtomicBool::new(false));
        let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("colony"));
        let children = config
            .spawn
            .iter()
            .zip(spawned)
            .enumerate()
            .map(|(position, (entry, child_config))| {
                let (commands, receiver) = mpsc::channel(4);
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                let child = Arc::new(Child {
                    name: child_config.node.name.clone(),
                    entry: entry.clone(),
                    cpu: entry.cpu.map(|c| c.resolve(position, cpus)),
                    bridged: child_config.bridge.is_some(),
                    state: Mutex::new(ChildState {
                        phase: Phase::Starting,
                        pid: None,
                        restarts: 0,
                        since: Instant::now(),
                    }),
                    commands,
                });
                let watcher = Watcher {
                    child: child.clone(),
                    program: entry.command.clone().unwrap_or_else(|| program.clone()),
                    events: events.clone(),
                    probe: probe.clone(),
                    bridge,
                    stopping: stopping.clone(),
                    commands: receiver,
                };
                actix_rt::spawn(watcher.run());
                child
            })
            .collect();
        NodeSpawner {
            children,
            stopping,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The names of the children, in `spawn` order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.children.iter().map(|c| c.name.clone()).collect()
    }

    /// Each child as status shows it: what the spawner knows (pid, state,
    /// restarts, pinned CPU); the child's own report adds its services.
    pub(crate) fn statuses(&self) -> Vec<NodeStatus> {
        self.children
            .iter()
            .map(|child| {
                let state = child.state.lock().clone();
                NodeStatus {
                    name: child.name.clone(),
                    role: "worker".into(),
                    pid: state.pid.unwrap_or(0),
                    state: state.phase.as_str().into(),
                    uptime_ms: match state.phase {
                        Phase::Listening | Phase::Online => {
                            state.since.elapsed().as_millis() as u64
                        }
                        _ => 0,
                    },
                    restarts: state.restarts,
                    cpus: child.cpu.map(|c| vec![c]).unwrap_or_default(),
                    services: Vec::new(),
                    ..NodeStatus::default()
                }
            })
            .collect()
    }

    /// Restarts `node`, or every child one after the other, each drained first
    /// and online again before the next. Returns the nodes reloaded.
    pub(crate) async fn reload(&self, node: Option<&str>) -> Result<Vec<String>, ServiceError> {
        let targets: Vec<Arc<Child>> = match node {
            None => self.children.clone(),
            Some(name) => match self.children.iter().find(|c| c.name == name) {
                Some(child) => vec![child.clone()],
                None => {
                    return Err(ServiceError::bad_request(format!(
                        "node {name} is not spawned by this node; it spawns {}",
                        listing(&self.names())
                    )))
                }
            },
        };
        let _one_at_a_time = self.reloading.lock().await;
        let mut done = Vec::new();
        for child in targets {
            if self.stopping.load(Ordering::Acquire) {
                return Err(ServiceError::service_failed("the node is shutting down"));
            }
            let (reply, answer) = oneshot::channel();
            let gone = || ServiceError::service_failed(format!("node {} is stopped", child.name));
            child
                .commands
                .send(Command::Reload(reply))
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())??;
            done.push(child.name.clone());
        }
        Ok(done)
    }

    /// Stops every child: SIGTERM, a drain of up to 15 s, then SIGKILL. Returns
    /// once every child has exited. No child is restarted after this.
    pub(crate) async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let waits = self.children.iter().map(|child| async move {
            let (done, stopped) = oneshot::channel();
            if child.commands.send(Command::Stop(done)).await.is_ok() {
                let _ = stopped.await;
            }
        });
        futures::future::join_all(waits).await;
    }
}

fn listing(names: &[String]) -> String {
    if names.is_empty() {
        "no nodes".into()
    } else {
        names.join(", ")
    }
}

/// The node reaches its children only through [`Children`].
impl Children for NodeSpawner {
    fn statuses(&self) -> Vec<NodeStatus> {
        NodeSpawner::statuses(self)
    }

    fn reload<'a>(
        &'a self,
        node: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<String>, ServiceError>> {
        Box::pin(NodeSpawner::reload(self, node))
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(NodeSpawner::stop(self))
    }
}
