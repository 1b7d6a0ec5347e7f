//! An in-memory backbone: several nodes of one process linked without sockets.
//!
//! Every node started on the same [`MemoryNetwork`] (with
//! [`Node::start_with_transport`](crate::Node::start_with_transport) and
//! [`MemoryNetwork::backbone`]) is linked to every other at once: requests,
//! one-way sends, cluster operations, status and kills are handed to the other
//! node's side of the seam (`transport::Inbound`) directly, and a publication
//! goes straight into the other nodes' subscriber tables. The node started with
//! role `master` holds the cluster's queues and locks, as on a bridge. A node
//! that shuts down leaves the network: the others see it down.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::config::Role;
use crate::error::ServiceError;
use crate::pubsub::{Change, Delivery};
use crate::status::NodeStatus;
use crate::transport::{
    self, Backbone, BridgeStats, Call, Inbound, Incoming, Link, Member, Offer, Offered, Pending,
    Transport,
};

/// Nodes of one process that link to each other in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    net: Arc<Net>,
}

#[derive(Debug, Default)]
struct Net {
    nodes: Mutex<BTreeMap<String, Arc<MemoryNode>>>,
}

impl MemoryNetwork {
    /// A network with no node on it yet.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// The backbone for one node of this network.
    pub fn backbone(&self) -> Backbone {
        let net = self.net.clone();
        Backbone(Box::new(move |me: Member, inbound: Inbound| {
            if net.nodes.lock().contains_key(&me.name) {
                return Err(format!(
                    "a node named {} is on the memory network already",
                    me.name
                ));
            }
            let node = Arc::new(MemoryNode {
                offers: RwLock::new(me.services.clone()),
                me,
                inbound,
                net: Arc::downgrade(&net),
                leaving: AtomicBool::new(false),
                serving: Arc::default(),
                loads: Mutex::default(),
            });
            let others: Vec<Arc<MemoryNode>> = {
                let mut nodes = net.nodes.lock();
                let others = nodes.values().cloned().collect();
                nodes.insert(node.me.name.clone(), node.clone());
                others
            };
            // The master hears of each node that joins, as on a bridge.
            for other in &others {
                if other.is_master() {
                    other.inbound.node_up(&node.me.name);
                }
                if node.is_master() {
                    node.inbound.node_up(&other.me.name);
                }
            }
            Ok(node as Arc<dyn Transport>)
        }))
    }

    /// The names of the nodes on the network now.
    pub fn nodes(&self) -> Vec<String> {
        self.net.nodes.lock().keys().cloned().collect()
    }
}

/// One node's side of the network.
struct MemoryNode {
    me: Member,
    /// Its services now (`me.services` as it started, then as scaled).
    offers: RwLock<Vec<Offer>>,
    inbound: Inbound,
    net: Weak<Net>,
    /// The node is draining: no new requests for any worker come to it.
    leaving: AtomicBool,
    /// Requests of other nodes being served here now.
    serving: Arc<AtomicU64>,
    /// This node's load on each service of each other node.
    loads: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
}

impl std::fmt::Debug for MemoryNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNode")
            .field("node", &self.me.name)
            .finish()
    }
}

impl MemoryNode {
    fn is_master(&self) -> bool {
        self.me.role == Role::Master.to_string()
    }

    /// The other nodes on the network.
    fn others(&self) -> Vec<Arc<MemoryNode>> {
        let Some(net) = self.net.upgrade() else {
            return Vec::new();
        };
        let nodes = net.nodes.lock();
        nodes
            .values()
            .filter(|n| n.me.name != self.me.name)
            .cloned()
            .collect()
    }

    fn link_to(self: &Arc<Self>, to: Arc<MemoryNode>) -> Arc<MemoryLink> {
        Arc::new(MemoryLink {
            from: self.clone(),
            to,
        })
    }

    fn load(&self, node: &str, service: &str) -> Arc<AtomicU64> {
        self.loads
            .lock()
            .entry((node.to_string(), service.to_string()))
            .or_default()
            .clone()
    }
}

/// One node's link to another on the same network.
struct MemoryLink {
    from: Arc<MemoryNode>,
    to: Arc<MemoryNode>,
}

/// Counts one request being served until it drops.
struct Serving(Arc<AtomicU64>);

impl Serving {
    fn start(counter: &Arc<AtomicU64>) -> Serving {
        counter.fetch_add(1, Ordering::AcqRel);
        Serving(counter.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl MemoryLink {
    fn up(&self) -> Result<(), ServiceError> {
        let linked = self
            .from
            .net
            .upgrade()
            .is_some_and(|net| net.nodes.lock().contains_key(&self.to.me.name));
        if linked {
            Ok(())
        } else {
            Err(transport::node_down(
                &self.to.me.name,
                "it left the network",
            ))
        }
    }

    /// Serves `call` on the other node in a task; `answer` gets the reply's JSON.
    fn serve(
        &self,
        call: Call<'_>,
        payload: &[u8],
        answer: impl FnOnce(Result<Vec<u8>, ServiceError>) + 'static,
    ) -> Result<(), ServiceError> {
        self.up()?;
        if call.worker.is_none() && self.to.leaving.load(Ordering::Acquire) {
            return Err(transport::leaving(&self.to.me.name));
        }
        let incoming = Incoming {
            service: call.service.to_string(),
            subject: call.subject.to_string(),
            payload: Bytes::copy_from_slice(payload),
            timeout_ms: call.timeout_ms(),
            worker: call.worker,
        };
        let to = self.to.clone();
        let from = self.from.me.name.clone();
        let serving = Serving::start(&to.serving);
        let serve = async move {
            let _serving = serving;
            answer(to.inbound.serve(incoming, &from).await);
        };
        match transport::serving_span(call.trace) {
            None => drop(actix_rt::spawn(serve)),
            Some(span) => drop(actix_rt::spawn(crate::trace::scope(Some(span), serve))),
        }
        Ok(())
    }

    fn cluster_op(
        &self,
        op: &[u8],
        answer: impl FnOnce(Result<Vec<u8>, ServiceError>) + 'static,
    ) -> Result<(), ServiceError> {
        self.up()?;
        let serving = Serving::start(&self.to.serving);
        let op = self
            .to
            .inbound
            .local
            .cluster(Bytes::copy_from_slice(op), self.from.me.name.clone());
        actix_rt::spawn(async move {
            let _serving = serving;
            answer(op.await);
        });
        Ok(())
    }
}

fn one_way(from: String) -> impl FnOnce(Result<Vec<u8>, ServiceError>) {
    move |answer| {
        if let Err(e) = answer {
            log::warn!(
                "one-way request from {from} failed: {}",
                crate::logging::untrusted(&e.to_string())
            );
        }
    }
}

impl Link for MemoryLink {
    fn node(&self) -> &str {
        &self.to.me.name
    }

    fn offer(&self, service: &str) -> Option<(Offer, Arc<AtomicU64>)> {
        let offer = self.to.offer(service)?;
        Some((offer, self.from.load(&self.to.me.name, service)))
    }

    fn request(&self, call: Call<'_>, payload: &[u8]) -> Result<Pending, ServiceError> {
        let (tx, pending) = Pending::new(0);
        self.serve(call, payload, move |answer| {
            let _ = tx.send(answer.map(Bytes::from));
        })?;
        Ok(pending)
    }

    fn tell(&self, call: Call<'_>, payload: &[u8]) -> Result<(), ServiceError> {
        self.serve(call, payload, one_way(self.from.me.name.clone()))
    }

    fn forget(&self, _id: u64) {
        // The answer goes to a receiver that is gone.
    }

    fn cluster(&self, op: &[u8]) -> Result<Pending, ServiceError> {
        let (tx, pending) = Pending::new(0);
        self.cluster_op(op, move |answer| {
            let _ = tx.send(answer.map(Bytes::from));
        })?;
        Ok(pending)
    }

    fn status(&self, _deadline: Instant) -> BoxFuture<'_, Option<NodeStatus>> {
        let status = self.up().ok().map(|()| self.to.inbound.local.status());
        Box::pin(async move { status })
    }

    fn kill(&self, worker: &str, _deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>> {
        let killing = self
            .up()
            .and_then(|()| worker.parse())
            .map(|worker| self.to.inbound.local.kill(worker));
        Box::pin(async move { killing?.await })
    }

    fn kill_node(&self, code: i32, _deadline: Instant) -> BoxFuture<'_, Result<(), ServiceError>> {
        let answer = self.up().and_then(|()| self.to.inbound.local.exit(code));
        Box::pin(async move { answer })
    }

    fn admin(
        &self,
        op: serde_json::Value,
        _deadline: Instant,
    ) -> BoxFuture<'_, Result<serde_json::Value, ServiceError>> {
        let command = self.up().map(|()| self.to.inbound.local.admin(op));
        Box::pin(async move { command?.await })
    }
}

impl Transport for MemoryNode {
    fn link(&self, node: &str) -> Option<Arc<dyn Link>> {
        let me = self.me()?;
        let to = self.net.upgrade()?.nodes.lock().get(node).cloned()?;
        (to.me.name != self.me.name).then(|| me.link_to(to) as Arc<dyn Link>)
    }

    fn links(&self) -> Vec<Arc<dyn Link>> {
        let Some(me) = self.me() else {
            return Vec::new();
        };
        self.others()
            .into_iter()
            .map(|to| me.link_to(to) as Arc<dyn Link>)
            .collect()
    }

    fn offering(&self, service: &str) -> Vec<Offered> {
        let Some(me) = self.me() else {
            return Vec::new();
        };
        self.others()
            .into_iter()
            .filter(|to| !to.leaving.load(Ordering::Acquire))
            .filter_map(|to| {
                let offer = to.offer(service)?;
                let load = self.load(&to.me.name, service);
                Some((me.link_to(to) as Arc<dyn Link>, offer, load))
            })
            .collect()
    }

    fn members(&self) -> Vec<Member> {
        let Some(net) = self.net.upgrade() else {
            return vec![self.member()];
        };
        let mut members: Vec<Member> = net.nodes.lock().values().map(|n| n.member()).collect();
        if members.iter().all(|m| m.name != self.me.name) {
            members.push(self.member());
        }
        members
    }

    fn master(&self) -> Option<String> {
        self.members()
            .into_iter()
            .find(|m| m.role == Role::Master.to_string())
            .map(|m| m.name)
    }

    fn returning(&self, _service: &str) -> Option<Instant> {
        None
    }

    fn publish(&self, delivery: &Delivery) -> usize {
        let mut reached = 0;
        let mut shared: Option<Arc<Delivery>> = None;
        for other in self.others() {
            let wanted = other.inbound.pubsub.matching(&delivery.topic);
            if wanted == 0 {
                continue;
            }
            let delivery = shared.get_or_insert_with(|| {
                Arc::new(Delivery::json(
                    delivery.topic.clone(),
                    delivery.meta.clone(),
                    delivery.json_bytes().clone(),
                ))
            });
            other.inbound.pubsub.deliver(delivery);
            reached += wanted as usize;
        }
        reached
    }

    fn subscribers(&self, topic: &str) -> usize {
        self.others()
            .iter()
            .map(|n| n.inbound.pubsub.matching(topic) as usize)
            .sum()
    }

    fn subscriptions_changed(&self, _change: Change) {
        // The other nodes read this node's subscriber table itself.
    }

    fn leave(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        self.leaving.store(true, Ordering::Release);
        Box::pin(async {})
    }

    fn flush(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            while self.serving.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }

    fn offer_changed(&self, offer: Offer) {
        // The others read this node's offers themselves.
        let mut offers = self.offers.write();
        match offers.iter_mut().find(|o| o.name == offer.name) {
            Some(old) => *old = offer,
            None => offers.push(offer),
        }
    }

    fn stop(&self) {
        let Some(net) = self.net.upgrade() else {
            return;
        };
        let gone = net.nodes.lock().remove(&self.me.name).is_some();
        if gone {
            for other in self.others() {
                other
                    .inbound
                    .node_down(&self.me.name, "it left the network");
            }
        }
    }

    fn addr(&self) -> Option<SocketAddr> {
        None
    }

    fn stats(&self) -> Option<BridgeStats> {
        None
    }
}

impl MemoryNode {
    /// This node's member entry, with its services now.
    fn member(&self) -> Member {
        Member {
            services: self.offers.read().clone(),
            ..self.me.clone()
        }
    }

    /// This node's offer of `service` now.
    fn offer(&self, service: &str) -> Option<Offer> {
        self.offers
            .read()
            .iter()
            .find(|o| o.name == service)
            .cloned()
    }

    /// This node, as the network holds it, while it is on it.
    fn me(&self) -> Option<Arc<MemoryNode>> {
        self.net.upgrade()?.nodes.lock().get(&self.me.name).cloned()
    }
}
