//! The seam between a node's cluster services and the backbone that links it to
//! the other nodes: this is where a backbone plugs in.
//!
//! A backbone implements two traits:
//!
//! - `Transport`: this node's side of the cluster: the live `Link`s to the
//!   other nodes, the member table, publications to other nodes' subscribers and
//!   changes to this node's subscriptions, leaving and stopping.
//! - `Link`: one other node: requests, replies and one-way sends to a service
//!   (or one of its workers) on it; cluster-state operations (job queues, locks,
//!   confirmations) sent to the node that holds the state; its status, kills.
//!
//! And it calls into its own node through `Inbound`: requests from other nodes
//! for this node's workers, their publications for this node's subscribers,
//! cluster-state operations when this node holds the state, and membership and
//! liveness events (a node up, a node down).
//!
//! The cluster services (`remote`'s routing, pub/sub across nodes, the cluster state's
//! client side in the node) are written against these traits only. The bridge
//! (TCP, optionally TLS) is one backbone; `memory` links nodes of one process.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

use crate::error::{ErrorKind, ServiceError};
use crate::events::{EventBus, LifecycleEvent};
use crate::guard::Origin;
use crate::message::WorkerId;
use crate::pubsub::{Announce, Change, Delivery, PubSub, PublishMeta};
use crate::router::Router;
use crate::status::NodeStatus;
use crate::trace::TraceContext;

/// A node of the cluster as the member table knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name.
    pub name: String,
    /// `master` or `worker`.
    pub role: String,
    /// Where its bridge listens.
    pub bridge: SocketAddr,
    /// Where its HTTP API listens, if it has one.
    pub api: Option<SocketAddr>,
    /// The services it runs.
    pub services: Vec<Offer>,
}

/// A service a member runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The service's name.
    pub name: String,
    /// Its worker count on that member.
    pub workers: usize,
    /// Requests it takes at once: workers × concurrency.
    pub capacity: usize,
    /// Its request timeout there, for callers that set none.
    pub timeout_ms: u64,
}

/// Traffic over a node's bridge since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BridgeStats {
    /// Frames received, by kind: control, request, reply, heartbeat, publish,
    /// cluster operation.
    pub frames_in: [u64; 6],
    /// Bytes received (frame bodies and headers).
    pub bytes_in: u64,
    /// Bytes written to links.
    pub bytes_out: u64,
    /// Links opened (first connections and reconnects).
    pub links_opened: u64,
    /// Links opened to a node this node had been linked with before.
    pub reconnects: u64,
    /// Peers linked now.
    pub peers_up: u64,
}

/// A request to a service on another node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// The service.
    pub(crate) service: &'a str,
    /// The message's subject.
    pub(crate) subject: &'a str,
    /// How long the other node may take to serve it.
    pub(crate) timeout: Duration,
    /// The worker (by index) that must take it; any worker when `None`.
    pub(crate) worker: Option<u32>,
    /// The trace the call is part of, if any.
    pub(crate) trace: Option<TraceContext>,
}

impl Call<'_> {
    /// The timeout in milliseconds, as the wire carries it.
    pub(crate) fn timeout_ms(&self) -> u32 {
        self.timeout.as_millis().min(u128::from(u32::MAX)) as u32
    }
}

/// What a call to another node comes back with: the reply's JSON, or the error.
pub(crate) type Answer = Result<Bytes, ServiceError>;

/// A call sent over a [`Link`] whose answer has not come yet.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The call's number on its link, to [`forget`](Link::forget) it by.
    pub(crate) id: u64,
    rx: oneshot::Receiver<Answer>,
}

impl Pending {
    /// A pending call numbered `id`, and where its answer goes.
    pub(crate) fn new(id: u64) -> (oneshot::Sender<Answer>, Pending) {
        let (tx, rx) = oneshot::channel();
        (tx, Pending { id, rx })
    }

    /// Waits for the answer until `deadline`; `late` is the error if none came
    /// by then (the link forgets the call).
    pub(crate) async fn wait(
        self,
        link: &dyn Link,
        deadline: Instant,
        late: impl FnOnce() -> ServiceError,
    ) -> Answer {
        match timeout_at(deadline, self.rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(node_down(link.node(), "its link closed")),
            Err(_) => {
                link.forget(self.id);
                Err(late())
            }
        }
    }
}

/// `NodeDown` for node `node`, and why.
pub(crate) fn node_down(node: &str, why: &str) -> ServiceError {
    ServiceError::new(ErrorKind::NodeDown, format!("node {node} is down: {why}"))
}

/// Ends the message of a request refused before it was sent because its node is
/// leaving: safe to send to another node.
const NOT_SENT: &str = "the request was not sent";

/// The error of a request for any worker of a service on node `node`, which is
/// leaving: the request was not sent, and may go to another node.
pub(crate) fn leaving(node: &str) -> ServiceError {
    ServiceError::new(
        ErrorKind::NodeDown,
        format!("node {node} is leaving; {NOT_SENT}"),
    )
}

/// Whether `error` is a request refused before it was sent, because the node
/// chosen for it is leaving: the caller may route it again.
pub(crate) fn not_sent(error: &ServiceError) -> bool {
    error.kind == ErrorKind::NodeDown && error.message.ends_with(NOT_SENT)
}

/// One other node, over a live link.
pub(crate) trait Link: Send + Sync {
    /// The other node's name.
    fn node(&self) -> &str;
    /// The node's offer of `service`, and this node's load on it.
    fn offer(&self, service: &str) -> Option<(Offer, Arc<AtomicU64>)>;
    /// Sends a request (the message's JSON); its answer is the reply's JSON. A
    /// request any worker may take is not sent to a node that is leaving (see
    /// [`not_sent`]).
    fn request(&self, call: Call<'_>, payload: &[u8]) -> Result<Pending, ServiceError>;
    /// Sends a request no reply comes for, as [`request`](Self::request) sends.
    fn tell(&self, call: Call<'_>, payload: &[u8]) -> Result<(), ServiceError>;
    /// Forgets a pending call whose caller stopped waiting.
    fn forget(&self, id: u64);
    /// Sends a cluster-state operation (see `state`) to the node, which holds
    /// the state; the answer is the operation's JSON.
    fn cluster(&self, op: &[u8]) -> Result<Pending, ServiceError>;
    /// The node's status, if it answers by `deadline`.
    fn status(&self, deadline: Instant) -> BoxFuture<'_, Option<NodeStatus>>;
    /// Kills worker `worker` (`NODE/SERVICE/INDEX`) of the node.
    fn kill(&self, worker: &str, deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>>;
    /// Ends the node's process with exit `code`.
    fn kill_node(&self, code: i32, deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>>;
    /// Has the node carry out an operator's command (`node::admin`: scale a
    /// service, read its log lines), as JSON both ways.
    fn admin(&self, op: Value, deadline: Instant) -> BoxFuture<'_, Result<Value, ServiceError>>;
}

/// A live link and the node's offer of a service on it, with this node's load.
pub(crate) type Offered = (Arc<dyn Link>, Offer, Arc<AtomicU64>);

/// This node's side of the cluster, as a backbone links it.
pub(crate) trait Transport: Send + Sync {
    /// The live link to `node`.
    fn link(&self, node: &str) -> Option<Arc<dyn Link>>;
    /// Every live link, in node name order.
    fn links(&self) -> Vec<Arc<dyn Link>>;
    /// The live links to nodes that run `service` and are not leaving.
    fn offering(&self, service: &str) -> Vec<Offered>;
    /// The members this node knows of, itself included.
    fn members(&self) -> Vec<Member>;
    /// The master's name, if a member is the master.
    fn master(&self) -> Option<String>;
    /// Until when a request for `service`, which no node runs now, may wait for
    /// a node that left to come back with it.
    fn returning(&self, service: &str) -> Option<Instant>;
    /// Sends `delivery` to the other nodes' matching subscribers; returns how many
    /// subscribers hold it.
    fn publish(&self, delivery: &Delivery) -> usize;
    /// How many subscribers of other nodes want `topic`.
    fn subscribers(&self, topic: &str) -> usize;
    /// A change to this node's subscriptions, for the other nodes to know which
    /// publications it wants. Called in turn with every other change (see
    /// `PubSub::with_prefixes`).
    fn subscriptions_changed(&self, change: Change);
    /// Tells every other node that this node is leaving, and waits (until
    /// `deadline`) for each to send no new requests.
    fn leave(&self, deadline: Instant) -> BoxFuture<'_, ()>;
    /// Waits (until `deadline`) for the requests of other nodes being served to
    /// be answered and sent.
    fn flush(&self, deadline: Instant) -> BoxFuture<'_, ()>;
    /// This node's offer of a service changed (it was scaled): the other nodes
    /// learn it, so that their routing weighs the new capacity.
    fn offer_changed(&self, offer: Offer);
    /// Closes every link.
    fn stop(&self);
    /// Where this node's bridge listens, for a backbone with an address.
    fn addr(&self) -> Option<SocketAddr>;
    /// Traffic since the transport started, for a backbone that counts it.
    fn stats(&self) -> Option<BridgeStats>;
    /// The cluster state, for a backbone that keeps it itself (every node reaches
    /// it alike); `None` when the master holds it.
    fn shared_state(&self) -> Option<Arc<dyn SharedState>> {
        None
    }
}

/// The cluster's queues, locks and confirmations where a backbone keeps them
/// itself (NATS: JetStream streams and buckets) rather than on the master.
pub(crate) trait SharedState: Send + Sync {
    /// Does `op` for this node; the answer is the JSON the master would answer.
    fn serve(&self, op: crate::state::Op) -> BoxFuture<'static, Result<Vec<u8>, ServiceError>>;
    /// Resolves once `n` distinct senders have confirmed `id`, with their count
    /// (at once if they already have).
    fn confirmed(&self, n: usize, id: &str) -> Result<oneshot::Receiver<usize>, ServiceError>;
}

/// Hands every change to this node's subscriptions (`pubsub`) to `transport`,
/// for as long as the returned hook lives.
pub(crate) fn announce_changes(transport: &Arc<dyn Transport>, pubsub: &PubSub) -> Arc<Announce> {
    let transport = Arc::downgrade(transport);
    let announce: Arc<Announce> = Arc::new(move |change| {
        if let Some(transport) = transport.upgrade() {
            transport.subscriptions_changed(change);
        }
    });
    pubsub.on_change(Arc::downgrade(&announce));
    announce
}

/// What a transport asks of its own node beyond its workers.
pub(crate) trait Local: Send + Sync {
    /// This node's status.
    fn status(&self) -> NodeStatus;
    /// Kills one of this node's workers.
    fn kill(&self, worker: WorkerId) -> BoxFuture<'static, Result<(), ServiceError>>;
    /// Serves a cluster-state operation (see `state`) sent by node `from`.
    fn cluster(&self, op: Bytes, from: String)
        -> BoxFuture<'static, Result<Vec<u8>, ServiceError>>;
    /// Node `node` went down: the state it held here is released.
    fn node_down(&self, node: &str);
    /// Exits this node's process with `code` shortly, as if it crashed.
    fn exit(&self, code: i32) -> Result<(), ServiceError>;
    /// Carries out an operator's command sent by another node (see [`Link::admin`]).
    fn admin(&self, op: Value) -> BoxFuture<'static, Result<Value, ServiceError>>;
}

/// The node as its transport sees it: where what other nodes send goes.
#[derive(Clone)]
pub(crate) struct Inbound {
    pub(crate) router: Router,
    pub(crate) events: EventBus,
    pub(crate) pubsub: Arc<PubSub>,
    pub(crate) local: Arc<dyn Local>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

/// A request from another node.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) service: String,
    pub(crate) subject: String,
    pub(crate) payload: Bytes,
    pub(crate) timeout_ms: u32,
    pub(crate) worker: Option<u32>,
}

/// The span in which this node serves a request whose caller's trace is
/// `caller`. The request's trace travels beside its [`Incoming`], not in it:
/// the serving futures of untraced requests (allocated per request, some in
/// batches) hold nothing for it, and a traced one is served in a task or box
/// of its own, within its span ([`trace::scope`](crate::trace::scope)).
pub(crate) fn serving_span(caller: Option<TraceContext>) -> Option<TraceContext> {
    caller.map(|caller| caller.child())
}

impl Inbound {
    /// Serves node `from`'s request with this node's own workers; the answer is
    /// the reply's JSON.
    pub(crate) async fn serve(
        &self,
        request: Incoming,
        from: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        // A peer's timeout is bounded as a local one is (at most an hour).
        let timeout = Duration::from_millis(u64::from(request.timeout_ms.max(1)))
            .min(crate::config::limits::MAX_TIMEOUT);
        let reply = self
            .router
            .request_json(
                &request.service,
                &request.subject,
                request.payload,
                Some(timeout),
                Origin::Node(from.to_string()),
                request.worker.map(|w| w as usize),
            )
            .await?;
        // The reply's JSON text as it was written, without a copy.
        Ok(String::from(Box::<str>::from(reply)).into_bytes())
    }

    /// A publication from node `node` (by its worker `worker`, empty if none),
    /// made within `trace`, for this node's subscribers.
    pub(crate) fn deliver(
        &self,
        topic: String,
        node: String,
        worker: String,
        trace: Option<TraceContext>,
        payload: Bytes,
    ) {
        crate::trace::scope_sync(trace, || self.deliver_here(topic, node, worker, payload));
    }

    fn deliver_here(&self, topic: String, node: String, worker: String, payload: Bytes) {
        let worker = (!worker.is_empty()).then_some(worker);
        let service = worker
            .as_deref()
            .and_then(|w| w.parse::<WorkerId>().ok())
            .map(|w| w.service);
        let meta = PublishMeta {
            node,
            worker,
            service,
        };
        let delivery = Arc::new(Delivery::json(topic, meta, payload));
        let delivered = self.pubsub.deliver(&delivery);
        log::debug!(
            "publication on {} from node {}: delivered to {delivered} subscribers here",
            crate::logging::untrusted(&delivery.topic),
            crate::logging::untrusted(&delivery.meta.node),
        );
    }

    /// Node `node` joined the cluster.
    pub(crate) fn node_up(&self, node: &str) {
        self.events.publish(LifecycleEvent::NodeUp {
            node: node.to_string(),
        });
    }

    /// Node `node` is down, for `why`: what it held here is released.
    pub(crate) fn node_down(&self, node: &str, why: &str) {
        self.local.node_down(node);
        self.events.publish(LifecycleEvent::NodeDown {
            node: node.to_string(),
            reason: why.to_string(),
        });
    }
}

/// A backbone a node starts on instead of its config's bridge (see
/// [`Node::start_with_transport`](crate::Node::start_with_transport)), such as
/// [`MemoryNetwork::backbone`](crate::memory::MemoryNetwork::backbone).
///
/// It gets this node's [`Member`] entry and where what other nodes send goes;
/// it fails (the node does not start) with why it cannot link the node.
pub struct Backbone(pub(crate) Box<Attach>);

/// Links a node, given its member entry and its inbound side, to a backbone.
pub(crate) type Attach = dyn FnOnce(Member, Inbound) -> Result<Arc<dyn Transport>, String> + Send;

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backbone")
    }
}
