//! The node: bootstraps a config's services on arbiter threads under its root actor,
//! links it to the cluster, and is the handle through which actors and tasks make
//! calls. What serves it to the outside (the HTTP API, the child processes it
//! spawns) is attached by the surface that starts it ([`Node::start`], in `run`),
//! through the hooks `Children` and `StopServer`.
//!
//! [`Node::start`] must be called inside an actix `System`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::Arbiter;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::app::{App, AppService, MASTER_SERVICE};
use crate::bridge::{Bridge, BridgeError};
use crate::config::{ConfigError, NodeConfig, Role, ServiceConfig};
use crate::dealer::{Availability, Dealer};
use crate::error::ServiceError;
use crate::events::{EventBus, LifecycleEvent};
use crate::holder::Holder;
use crate::message::WorkerId;
use crate::pubsub::PubSub;
use crate::remote::{self, Target};
use crate::root::{Root, Shutdown, StopActor, Subscribe};
use crate::router::Router;
use crate::service::LocalService;
use crate::status::NodeStatus;
use crate::supervisor::Supervisor;
use crate::transport::{self, Backbone, Inbound, Local, Member, Offer, Transport};
use crate::worker::WorkerSlot;

mod calls;
pub mod check;
mod consumer;
mod messaging;
mod metrics;
pub(crate) mod spawned;
mod status;

pub use messaging::{LockGuard, LockOptions};

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
    /// The API address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `api.listen`.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bridge could not start (no secret, bad TLS files, address in use).
    #[error(transparent)]
    Bridge(#[from] BridgeError),
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
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    role: Role,
    started: Instant,
    router: Router,
    root: Mutex<Option<Addr<Root>>>,
    arbiters: Mutex<Vec<Arbiter>>,
    /// Stops the HTTP API, once the surface has started it.
    api: Mutex<Option<StopServer>>,
    api_addr: Option<SocketAddr>,
    /// The backbone that links this node to the others, if any.
    transport: std::sync::OnceLock<Arc<dyn Transport>>,
    /// Tells the transport of changes to this node's subscriptions while it lives.
    announcer: std::sync::OnceLock<Arc<crate::pubsub::Announce>>,
    /// Round-robin position for services routed `round_robin`.
    turn: std::sync::atomic::AtomicUsize,
    stopping: std::sync::atomic::AtomicBool,
    pubsub: Arc<PubSub>,
    /// The cluster's queues, locks and confirmations, when this node holds them.
    holder: Option<Arc<Holder>>,
    /// Numbers this node's lock claims.
    next_claim: std::sync::atomic::AtomicU64,
    /// The child node processes this node spawned.
    spawner: std::sync::OnceLock<Box<dyn Children>>,
    /// The node's lifecycle events.
    events: EventBus,
    /// How often this node's parent restarted it.
    restarts: u64,
    /// Calls from this node that failed on the way to another node.
    call_failures: crate::metrics::CallFailures,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Node {
    /// Starts the services `config` lists, from `app`, each under its supervisor,
    /// and the bridge; `api_addr` is where the surface has bound the HTTP API, told
    /// to the cluster. Returns once everything is started; requests made before a
    /// worker is online wait for it at the dealer. The config has been checked
    /// (`check::check`) before. With a `backbone`, the node is linked to the
    /// others by it instead of by the config's bridge.
    pub(crate) fn boot(
        app: App,
        config: NodeConfig,
        api_addr: Option<SocketAddr>,
        backbone: Option<Backbone>,
    ) -> Result<Node, StartError> {
        let mut config = config;
        // A spawned worker with a bridge but nowhere to join joins its parent.
        if let (Some(bridge), false) = (&mut config.bridge, config.node.role == Some(Role::Master))
        {
            if bridge.join.is_empty() {
                bridge.join.extend(spawned::parent_bridge());
            }
        }
        let name = config.node.name.clone();

        let arbiters: Vec<Arbiter> = (0..config.node.threads()).map(|_| Arbiter::new()).collect();
        let handles: Vec<_> = arbiters.iter().map(Arbiter::handle).collect();
        let router = Router::new(&name);
        let events = EventBus::default();
        let pubsub = Arc::new(PubSub::new(config.api.subscribe_buffer));
        // The master holds the cluster's queues and locks; a node alone holds its own.
        let role = config.role();
        let holds = role == Role::Master || (config.bridge.is_none() && backbone.is_none());
        let holder = holds.then(|| Holder::start(&name, config.queues.clone(), events.clone()));
        let node = Node {
            inner: Arc::new(Inner {
                name: name.clone(),
                role,
                started: Instant::now(),
                router: router.clone(),
                root: Mutex::new(None),
                arbiters: Mutex::new(arbiters),
                api: Mutex::new(None),
                api_addr,
                transport: std::sync::OnceLock::new(),
                announcer: std::sync::OnceLock::new(),
                turn: Default::default(),
                stopping: Default::default(),
                pubsub: pubsub.clone(),
                holder,
                next_claim: Default::default(),
                spawner: std::sync::OnceLock::new(),
                events: events.clone(),
                restarts: spawned::restarts_from_env(),
                call_failures: Default::default(),
            }),
        };

        let mut supervisors = Vec::new();
        let mut consumers = Vec::new();
        let mut spread = 0;
        for AppService { def, bind } in app.services {
            let service_config = if def.name == MASTER_SERVICE {
                if role != Role::Master {
                    continue;
                }
                ServiceConfig {
                    workers: Some(1),
                    ..ServiceConfig::default()
                }
            } else {
                match config.services.get(&def.name) {
                    Some(c) => c.clone(),
                    None => continue,
                }
            };
            let workers = service_config.workers.unwrap_or(handles.len());
            let slots = (0..workers)
                .map(|i| Arc::new(WorkerSlot::new(WorkerId::new(&name, &def.name, i))))
                .collect();
            let service = Arc::new(LocalService {
                name: def.name.clone(),
                dealer: Dealer::new(&def.name, workers, service_config.queue),
                config: service_config,
                def: Arc::new(def),
                slots,
                metrics: Default::default(),
            });
            router.insert(service.clone());
            if !service.def.consumes.is_empty() {
                consumers.push((service.clone(), spread));
            }
            // Rotate each service's first worker so that services share the threads.
            let mut arbiters = handles.clone();
            arbiters.rotate_left(spread % handles.len());
            spread += workers;
            let supervisor = Supervisor::new(
                service.clone(),
                bind(&node),
                &name,
                arbiters,
                events.clone(),
            );
            supervisors.push((service.name.clone(), supervisor));
        }
        let offers: Vec<Offer> = router
            .services()
            .iter()
            .map(|s| Offer {
                name: s.name.clone(),
                workers: s.slots.len(),
                capacity: s.slots.len() * s.config.concurrency,
                timeout_ms: s.config.timeout.as_millis() as u64,
            })
            .collect();
        let inbound = Inbound {
            router: router.clone(),
            events: events.clone(),
            pubsub: pubsub.clone(),
            local: Arc::new(WeakNode(Arc::downgrade(&node.inner))),
        };
        let mut me = Member {
            name: name.clone(),
            role: role.to_string(),
            bridge: ([0, 0, 0, 0], 0).into(),
            api: api_addr,
            services: offers,
        };
        // Before any worker starts: a transport that cannot start leaves nothing to
        // undo but the idle threads.
        let transport: Option<Result<Arc<dyn Transport>, StartError>> = match backbone {
            Some(backbone) => Some((backbone.0)(me, inbound).map_err(StartError::Transport)),
            None => config.bridge.clone().map(|section| {
                me.bridge = section.listen;
                match Bridge::start(me, section, inbound) {
                    Ok(bridge) => Ok(bridge as Arc<dyn Transport>),
                    Err(e) => Err(e.into()),
                }
            }),
        };
        match transport {
            Some(Ok(transport)) => {
                let _ = node.inner.transport.set(transport);
            }
            Some(Err(e)) => {
                for arbiter in node.inner.arbiters.lock().drain(..) {
                    arbiter.stop();
                }
                return Err(e);
            }
            None => {}
        }
        if let Some(transport) = node.inner.transport.get() {
            let announcer = transport::announce_changes(transport, &pubsub);
            let _ = node.inner.announcer.set(announcer);
        }
        let root = Root::new(&name, events.clone(), supervisors).start();
        *node.inner.root.lock() = Some(root);
        for (service, spread) in consumers {
            consumer::start(&node, &service, &handles, spread);
        }

        Ok(node)
    }

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
    fn transport(&self) -> Option<&dyn Transport> {
        self.inner.transport.get().map(Arc::as_ref)
    }

    /// Where this node's bridge listens, if it has one.
    pub fn bridge_addr(&self) -> Option<SocketAddr> {
        self.transport().and_then(|t| t.addr())
    }

    fn target(&self, service: &str) -> Result<Target, ServiceError> {
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
        log::info!("node {}: stopped", self.name());
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn root(&self) -> Result<Addr<Root>, ServiceError> {
        self.inner
            .root
            .lock()
            .clone()
            .ok_or_else(|| node_stopped(self.name()))
    }
}

/// The node as its transport sees it: weak, so that the transport does not keep
/// it alive.
struct WeakNode(std::sync::Weak<Inner>);

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
        let holder = self.0.upgrade().and_then(|inner| inner.holder.clone());
        Box::pin(async move {
            match holder {
                Some(holder) => holder.serve(&op, &from).await,
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

    fn node_down(&self, node: &str) {
        if let Some(holder) = self.0.upgrade().and_then(|inner| inner.holder.clone()) {
            holder.node_down(node);
        }
    }
}

/// How long a stopping node waits for its last replies to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a stopping node waits for its peers to stop sending it requests.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long status and remote kills wait for each peer's answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

fn node_stopped(name: &str) -> ServiceError {
    ServiceError::service_failed(format!("node {name} is shutting down"))
}
