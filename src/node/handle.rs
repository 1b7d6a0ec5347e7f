//! A running node's handle, [`Node`], and the state every clone of it shares;
//! the hooks through which the surfaces that started it reach back in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::Arbiter;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::bridge::BridgeError;
use crate::config::{ConfigError, Role};
use crate::dealer::Availability;
use crate::error::ServiceError;
use crate::events::{EventBus, LifecycleEvent};
use crate::message::WorkerId;
use crate::pubsub::PubSub;
use crate::remote::{self, Target};
use crate::root::{Root, Shutdown, StopActor, Subscribe};
use crate::router::Router;
use crate::state::ClusterState;
use crate::status::NodeStatus;
use crate::transport::{Local, Transport};

/// The child node processes a node spawned, as the node reaches them: for status,
/// reloads and its shutdown. The `spawn` surface implements it.
pub(crate) trait Children: Send + Sync {
    /// Each child as status shows it.
    fn statuses(&self) -> Vec<NodeStatus>;
    /// Restarts `node`, or every child, one at a time; returns the nodes reloaded.
    fn reload<'a>(
        &'a self,
        node: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<String>, ServiceError>>;
    /// Stops every child; returns once all have exited.
    fn stop(&self) -> BoxFuture<'_, ()>;
}

/// Stops a server the surface started for this node (the HTTP API) gracefully:
/// the future resolves once its requests in flight are done.
pub(crate) type StopServer = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Whether node `name` has joined this node's cluster with every worker running.
pub(crate) type Probe = Arc<dyn Fn(String) -> BoxFuture<'static, bool> + Send + Sync>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config does not fit the app.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API's or the messenger listener's address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `api.listen` or `messenger.listen`.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bridge could not start (no secret, bad TLS files, address in use).
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The cluster state's directory or file cannot be used.
    #[error(transparent)]
    State(#[from] crate::store::StoreError),
    /// The transport the node was started on could not link it.
    #[error("transport: {0}")]
    Transport(String),
    /// The API token file could not be read or is empty.
    #[error("api.token_file {path}: {problem}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

/// A running node. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) started: Instant,
    pub(super) router: Router,
    pub(super) root: Mutex<Option<Addr<Root>>>,
    pub(super) arbiters: Mutex<Vec<Arbiter>>,
    /// Stops the HTTP API, once the surface has started it.
    pub(super) api: Mutex<Option<StopServer>>,
    pub(super) api_addr: Option<SocketAddr>,
    /// The backbone that links this node to the others, if any.
    pub(super) transport: std::sync::OnceLock<Arc<dyn Transport>>,
    /// Tells the transport of changes to this node's subscriptions while it lives.
    pub(super) announcer: std::sync::OnceLock<Arc<crate::pubsub::Announce>>,
    /// Round-robin position for services routed `round_robin`.
    pub(super) turn: std::sync::atomic::AtomicUsize,
    pub(super) stopping: std::sync::atomic::AtomicBool,
    pub(super) pubsub: Arc<PubSub>,
    /// The cluster's queues, locks and confirmations, when this node holds them.
    pub(super) state: Option<Arc<ClusterState>>,
    /// Numbers this node's lock claims.
    pub(super) next_claim: std::sync::atomic::AtomicU64,
    /// The child node processes this node spawned.
    pub(super) spawner: std::sync::OnceLock<Box<dyn Children>>,
    /// The node's lifecycle events.
    pub(super) events: EventBus,
    /// How often this node's parent restarted it.
    pub(super) restarts: u64,
    /// Calls from this node that failed on the way to another node.
    pub(super) call_failures: crate::metrics::CallFailures,
    /// Node messenger listeners this node calls, serves and shouts to.
    pub(super) messenger: std::sync::OnceLock<crate::messenger::Running>,
    /// The node's recent log lines.
    pub(super) log: Arc<crate::logging::LogRing>,
    /// Bytes of log lines one answer to another node may carry: a part of the
    /// bridge's frame, so that it fits with room for JSON's escapes.
    pub(super) log_answer_bytes: usize,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Node {
    /// Attaches the stop of the HTTP API server the surface started for this node;
    /// [`shutdown`](Self::shutdown) calls it.
    pub(crate) fn attach_api(&self, stop: StopServer) {
        *self.inner.api.lock() = Some(stop);
    }

    /// Attaches the child processes the surface spawned for this node.
    pub(crate) fn attach_children(&self, children: Box<dyn Children>) {
        let _ = self.inner.spawner.set(children);
    }

    /// The node's lifecycle events, to publish to.
    pub(crate) fn events(&self) -> EventBus {
        self.inner.events.clone()
    }

    /// Asks, without keeping this node alive, whether a node has joined it and
    /// serves ([`Probe`]).
    pub(crate) fn probe(&self) -> Probe {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |child: String| {
            let node = weak.upgrade().map(|inner| Node { inner });
            Box::pin(async move {
                match node {
                    Some(node) => node.serves(&child).await,
                    None => false,
                }
            })
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The node's role.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Where the HTTP API listens, if it does.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.inner.api_addr
    }

    /// The backbone that links this node to the others, if any.
    pub(super) fn transport(&self) -> Option<&dyn Transport> {
        self.inner.transport.get().map(Arc::as_ref)
    }

    /// Where this node's bridge listens, if it has one.
    pub fn bridge_addr(&self) -> Option<SocketAddr> {
        self.transport().and_then(|t| t.addr())
    }

    pub(super) fn target(&self, service: &str) -> Result<Target, ServiceError> {
        remote::target(
            &self.inner.router,
            self.transport(),
            service,
            &self.inner.turn,
        )
    }

    /// Sends every lifecycle event of this node to `subscriber`. Delivery never
    /// blocks the supervisor: an event that does not fit the subscriber's mailbox is
    /// logged and dropped, so give a subscriber that must see bursts (a one_for_all
    /// restart of many workers) room with `Context::set_mailbox_capacity`.
    pub async fn subscribe_events(
        &self,
        subscriber: Recipient<LifecycleEvent>,
    ) -> Result<(), ServiceError> {
        self.root()?
            .send(Subscribe(subscriber))
            .await
            .map_err(|_| node_stopped(self.name()))
    }

    /// Restarts `node`, or every node this node spawned, one at a time with no
    /// failed requests: each is drained, then started again and
    /// online before the next. Returns the nodes reloaded.
    pub async fn reload(&self, node: Option<&str>) -> Result<Vec<String>, ServiceError> {
        match self.inner.spawner.get() {
            Some(spawner) => spawner.reload(node).await,
            None => Err(ServiceError::bad_request(format!(
                "node {} spawns no nodes (its config has no `spawn:` list); reload through the node that spawns them",
                self.name()
            ))),
        }
    }

    /// Stops gracefully: the API stops accepting connections and finishes its
    /// requests, services stop taking work, requests in flight get until `drain`
    /// to finish, then every worker and thread stops.
    pub async fn shutdown(&self, drain: Duration) {
        if self
            .inner
            .stopping
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        log::info!(
            target: "colony::node",
            "node {}: shutting down (drain up to {:?})",
            self.name(),
            drain
        );
        // Children first: they may still need this node while they drain.
        if let Some(spawner) = self.inner.spawner.get() {
            spawner.stop().await;
        }
        let deadline = crate::deadline::after(drain);
        // No new requests from other nodes: each answers once it will send none.
        // What they sent before is served.
        if let Some(transport) = self.transport() {
            transport
                .leave(tokio::time::Instant::now() + LEAVE_TIMEOUT.min(drain))
                .await;
        }
        // Stop taking new work; requests already queued are still served.
        let why = format!("node {} is shutting down", self.name());
        for service in self.inner.router.services() {
            service.dealer.close(Availability::Closed(why.clone()));
        }
        // No new messenger Speakers; no more calls to Node listeners.
        if let Some(messenger) = self.inner.messenger.get() {
            messenger.stop();
        }
        // Streams of published messages end, so that the API can finish them.
        self.inner.pubsub.close();
        let api = self.inner.api.lock().take();
        if let Some(stop) = api {
            // Graceful: in-flight HTTP requests complete before the server stops.
            stop().await;
        }
        let root = self.inner.root.lock().take();
        if let Some(root) = root {
            // A root already gone has nothing left to drain.
            let _ = root.send(Shutdown { deadline }).await;
            root.do_send(StopActor);
        }
        // Whatever still waits past the drain gets an answer, not a hang.
        for service in self.inner.router.services() {
            let error = ServiceError::service_failed(format!(
                "service {} stopped before serving this request: {why}",
                service.name
            ));
            service.dealer.shut(Availability::Gone(why.clone()), error);
        }
        if let Some(transport) = self.transport() {
            // The last replies to other nodes go out before the links close.
            transport
                .flush(tokio::time::Instant::now() + FLUSH_TIMEOUT)
                .await;
            transport.stop();
        }
        for arbiter in self.inner.arbiters.lock().drain(..) {
            arbiter.stop();
        }
        // The state file is let go, for a node started on it next.
        if let Some(state) = &self.inner.state {
            state.close();
        }
        log::info!(target: "colony::node", "node {}: stopped", self.name());
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn root(&self) -> Result<Addr<Root>, ServiceError> {
        self.inner
            .root
            .lock()
            .clone()
            .ok_or_else(|| node_stopped(self.name()))
    }
}

/// The node as its transport sees it: weak, so that the transport does not keep
/// it alive.
pub(super) struct WeakNode(pub(super) std::sync::Weak<Inner>);

impl Local for WeakNode {
    fn status(&self) -> NodeStatus {
        match self.0.upgrade() {
            Some(inner) => Node { inner }.status(),
            None => NodeStatus::default(),
        }
    }

    fn kill(
        &self,
        worker: WorkerId,
    ) -> futures::future::BoxFuture<'static, Result<(), ServiceError>> {
        let node = self.0.upgrade().map(|inner| Node { inner });
        Box::pin(async move {
            match node {
                Some(node) if worker.node == node.name() => node.kill(&worker).await,
                Some(node) => Err(ServiceError::no_such_service(format!(
                    "worker {worker} is not on node {}",
                    node.name()
                ))),
                None => Err(ServiceError::service_failed("node is shutting down")),
            }
        })
    }

    fn cluster(
        &self,
        op: bytes::Bytes,
        from: String,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, ServiceError>> {
        let state = self.0.upgrade().and_then(|inner| inner.state.clone());
        Box::pin(async move {
            match state {
                Some(state) => state.serve(&op, &from).await,
                None => Err(ServiceError::no_such_service(
                    "this node does not hold the cluster's queues and locks (the master does)",
                )),
            }
        })
    }

    fn exit(&self, code: i32) -> Result<(), ServiceError> {
        match self.0.upgrade() {
            Some(inner) => {
                Node { inner }.exit_soon(code);
                Ok(())
            }
            None => Err(ServiceError::service_failed("node is shutting down")),
        }
    }

    fn admin(
        &self,
        op: serde_json::Value,
    ) -> futures::future::BoxFuture<'static, Result<serde_json::Value, ServiceError>> {
        let node = self.0.upgrade().map(|inner| Node { inner });
        Box::pin(async move {
            match node {
                Some(node) => node.admin_json(op).await,
                None => Err(ServiceError::service_failed("node is shutting down")),
            }
        })
    }

    fn node_down(&self, node: &str) {
        if let Some(state) = self.0.upgrade().and_then(|inner| inner.state.clone()) {
            state.node_down(node);
        }
    }
}

/// How long a stopping node waits for its last replies to be written.
pub(super) const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a stopping node waits for its peers to stop sending it requests.
pub(super) const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long status and remote kills wait for each peer's answer.
pub(super) const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn node_stopped(name: &str) -> ServiceError {
    ServiceError::service_failed(format!("node {name} is shutting down"))
}
