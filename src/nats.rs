//! The NATS backbone: every node of the cluster joins through a NATS server (or
//! a cluster of them), with no link of its own to any other node.
//!
//! - Membership and liveness: each node beats on `P.hb.NODE` every
//!   `nats.heartbeat` with its member entry; a node silent for three beats is
//!   down, and the calls it holds fail with `NodeDown`, as on the bridge.
//! - Calls: a request for a service is routed by colony (least loaded,
//!   `local_first`, draining nodes skipped) and sent to the chosen node's
//!   `P.node.NODE.req`; its answer comes back to this node's inbox. Knowing the
//!   node that holds each call is what lets its loss be `NodeDown` rather than
//!   a timeout. Status, kills and subscription tables go on `P.node.NODE.ctl`.
//! - Services for NATS clients: each service is registered with the NATS
//!   services API (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS` answer with the
//!   `io.nats.micro.v1` schemas), served on `P.svc.SERVICE.SUBJECT` in a queue
//!   group, so `nats request colony.svc.math.sum '{"a":1,"b":2}'` is served.
//! - Pub/sub: topics are subjects (`subjects`); a node subscribes to the filters
//!   its subscribers' prefixes need, and tells the others its prefix table so a
//!   publisher knows who wants what.
//! - The cluster state (job queues, locks, confirmations) lives in JetStream
//!   (`state`), reached by every node alike.
//!
//! The subjects are listed in `subjects`; what goes in the messages, in `wire`.

mod connect;
mod link;
mod outbox;
mod peers;
mod serve;
mod state;
mod subjects;
mod topics;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Role;
use crate::error::ServiceError;
use crate::pubsub::{Change, Delivery};
use crate::transport::{
    self, Answer, Backbone, BridgeStats, Inbound, Link, Member, Offered, SharedState, Transport,
};

pub(crate) use connect::{prepare, Prepared};
use outbox::{Out, Outbox};
use peers::{Peer, Peers};
use state::JetStreamState;
use subjects::Subjects;
use topics::Filters;

/// Beats a node may miss before it is down.
const MISSED_BEATS: u32 = 3;
/// Kinds of message received, as [`BridgeStats::frames_in`] counts them.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Control = 0,
    Request = 1,
    Reply = 2,
    Beat = 3,
    Publication = 4,
}

/// Calls waiting for an answer at most.
const MAX_CALLS: usize = 1 << 20;

/// A call waiting for its answer: where the answer goes, and the node that
/// holds the call.
type Waiting = (oneshot::Sender<Answer>, Arc<str>);

/// This node's side of the cluster over NATS.
pub(crate) struct NatsNode {
    me: Member,
    /// This run of the node, so the others tell a restart from a beat.
    instance: String,
    client: Client,
    subjects: Subjects,
    inbound: Inbound,
    heartbeat: Duration,
    peers: Peers,
    /// Calls waiting for their answer, by number: where it goes, and the node
    /// that holds the call.
    calls: Mutex<HashMap<u64, Waiting>>,
    next_call: AtomicU64,
    /// Where answers to this node's calls come: `INBOX.<call>`.
    inbox: String,
    outbox: Arc<Outbox>,
    /// Largest message the server takes.
    max_payload: usize,
    leaving: AtomicBool,
    stopped: AtomicBool,
    /// Requests of other nodes (and NATS clients) being served here now.
    serving: Arc<AtomicU64>,
    filters: Filters,
    /// Changes to this node's subscriptions, for the task that subscribes.
    changes: tokio::sync::mpsc::UnboundedSender<Change>,
    /// The version of this node's subscription table, one up per change.
    subs_version: AtomicU64,
    state: Arc<JetStreamState>,
    tasks: Mutex<Vec<actix_rt::task::JoinHandle<()>>>,
    /// Messages received, by kind, as [`BridgeStats::frames_in`] counts them.
    received: [AtomicU64; 6],
    /// This transport, for the links it hands out.
    this: std::sync::Weak<NatsNode>,
}

impl std::fmt::Debug for NatsNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsNode")
            .field("node", &self.me.name)
            .finish_non_exhaustive()
    }
}

/// The backbone a node starts on when its config has `nats:`: what
/// [`prepare`] made ready, linked to the node when it boots.
pub(crate) fn backbone(prepared: Prepared) -> Backbone {
    Backbone(Box::new(move |me: Member, inbound: Inbound| {
        Ok(NatsNode::start(prepared, me, inbound) as Arc<dyn Transport>)
    }))
}

impl NatsNode {
    fn start(prepared: Prepared, me: Member, inbound: Inbound) -> Arc<NatsNode> {
        let Prepared {
            client,
            subjects,
            heartbeat,
            state,
            subscriptions,
            inbox,
            disconnects,
        } = prepared;
        let (changes, changed) = tokio::sync::mpsc::unbounded_channel();
        let max_payload = client.server_info().max_payload.max(1024);
        let node = Arc::new_cyclic(|this| NatsNode {
            this: this.clone(),
            instance: client.new_inbox().replace("_INBOX.", ""),
            inbox,
            me,
            client,
            subjects,
            inbound,
            heartbeat,
            peers: Peers::default(),
            calls: Mutex::default(),
            next_call: AtomicU64::new(1),
            outbox: Arc::default(),
            max_payload,
            leaving: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            serving: Arc::default(),
            filters: Filters::default(),
            changes,
            subs_version: AtomicU64::new(0),
            state,
            tasks: Mutex::default(),
            received: Default::default(),
        });
        serve::start(&node, subscriptions, changed, disconnects);
        node
    }

    /// Counts a message received.
    fn count(&self, kind: Kind) {
        self.received[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        let handle = actix_rt::spawn(task);
        self.tasks.lock().push(handle);
    }

    fn is_master(member: &Member) -> bool {
        member.role == Role::Master.to_string()
    }

    /// Registers a call held by node `node`; its number and where its answer
    /// comes.
    fn register(&self, node: &str) -> Result<(u64, transport::Pending), ServiceError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, pending) = transport::Pending::new(id);
        let mut calls = self.calls.lock();
        if calls.len() >= MAX_CALLS {
            return Err(ServiceError::new(
                crate::error::ErrorKind::Overloaded,
                format!("{MAX_CALLS} calls over NATS are waiting for answers already"),
            ));
        }
        calls.insert(id, (tx, Arc::from(node)));
        Ok((id, pending))
    }

    /// Answers call `id`.
    fn answer(&self, id: u64, answer: Answer) {
        if let Some((tx, _)) = self.calls.lock().remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Fails every call node `node` holds, for `why`.
    fn fail_calls_of(&self, node: &str, why: &str) {
        let failed: Vec<_> = {
            let mut calls = self.calls.lock();
            let ids: Vec<u64> = calls
                .iter()
                .filter(|(_, (_, n))| &**n == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| calls.remove(&id)).collect()
        };
        for (tx, _) in failed {
            let _ = tx.send(Err(transport::node_down(node, why)));
        }
    }

    /// Fails every call waiting for an answer, for `why`.
    fn fail_all_calls(&self, why: &str) {
        let failed: Vec<_> = self.calls.lock().drain().collect();
        for (_, (tx, node)) in failed {
            let _ = tx.send(Err(transport::node_down(&node, why)));
        }
    }

    /// Sends a message (to a node's subject, maybe with a reply inbox) through
    /// the outbox.
    fn send(&self, out: Out) -> Result<(), ServiceError> {
        if out.payload.len() > self.max_payload {
            return Err(ServiceError::bad_request(format!(
                "a message of {} bytes is more than the NATS server takes ({} bytes, its max_payload)",
                out.payload.len(),
                self.max_payload
            )));
        }
        self.outbox.push(out)
    }

    /// Node `peer` is down, for `why`.
    fn down(&self, peer: &Peer, why: &str) {
        self.fail_calls_of(&peer.name, why);
        peer.subs.replace(&peer.name, Default::default());
        peer.subs_version.store(0, Ordering::Release);
        log::warn!("nats: node {} is down: {why}", peer.name);
        // The master releases the locks the node held, as on the bridge, when
        // it is itself connected: a node cut off from the server sees every
        // other node fall silent, and must not release their locks.
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if Self::is_master(&self.me) && connected {
            self.state.node_down(&peer.name);
        }
        self.inbound.node_down(&peer.name, why);
    }

    fn link_to(self: &Arc<Self>, peer: Arc<Peer>) -> Arc<dyn Link> {
        Arc::new(link::NatsLink {
            node: self.clone(),
            peer,
        })
    }

    /// This transport, for a link.
    fn this(&self) -> Option<Arc<NatsNode>> {
        self.this.upgrade()
    }
}

impl Transport for NatsNode {
    fn link(&self, node: &str) -> Option<Arc<dyn Link>> {
        let peer = self.peers.get(node).filter(|p| p.is_up())?;
        Some(self.this()?.link_to(peer))
    }

    fn links(&self) -> Vec<Arc<dyn Link>> {
        let Some(me) = self.this() else {
            return Vec::new();
        };
        self.peers.up().into_iter().map(|p| me.link_to(p)).collect()
    }

    fn offering(&self, service: &str) -> Vec<Offered> {
        let Some(me) = self.this() else {
            return Vec::new();
        };
        self.peers
            .up()
            .into_iter()
            .filter(|p| !p.leaving.load(Ordering::Acquire))
            .filter_map(|p| {
                let offer = p
                    .member
                    .read()
                    .services
                    .iter()
                    .find(|o| o.name == service)?
                    .clone();
                let load = p.load(service)?;
                Some((me.link_to(p), offer, load))
            })
            .collect()
    }

    fn members(&self) -> Vec<Member> {
        let mut members = vec![self.me.clone()];
        members.extend(self.peers.all().iter().map(|p| p.member.read().clone()));
        members
    }

    fn master(&self) -> Option<String> {
        if Self::is_master(&self.me) {
            return Some(self.me.name.clone());
        }
        self.peers
            .up()
            .into_iter()
            .find(|p| Self::is_master(&p.member.read()))
            .map(|p| p.name.clone())
    }

    fn returning(&self, _service: &str) -> Option<Instant> {
        None
    }

    fn publish(&self, delivery: &Delivery) -> usize {
        let wanted: usize = self
            .peers
            .up()
            .iter()
            .map(|p| p.subs.matching(&delivery.topic) as usize)
            .sum();
        if wanted == 0 {
            return 0;
        }
        let payload = wire::publication(
            &delivery.topic,
            &self.me.name,
            delivery.meta.worker.as_deref().unwrap_or(""),
            delivery.json_bytes(),
        );
        let out = Out {
            subject: self.subjects.topic(&delivery.topic),
            reply: None,
            payload,
            call: None,
        };
        match self.send(out) {
            Ok(()) => wanted,
            Err(e) => {
                log::debug!("nats: a publication was not sent: {e}");
                0
            }
        }
    }

    fn subscribers(&self, topic: &str) -> usize {
        self.peers
            .up()
            .iter()
            .map(|p| p.subs.matching(topic) as usize)
            .sum()
    }

    fn subscriptions_changed(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    fn leave(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        self.leaving.store(true, Ordering::Release);
        Box::pin(async move {
            // The others stop sending new requests when they hear it; what is on
            // its way still arrives and is served while the node drains.
            serve::beat(self).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
        })
    }

    fn flush(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            while self.serving.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = tokio::time::timeout_at(deadline, self.client.flush()).await;
        })
    }

    fn stop(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let gone = wire::Beat {
            instance: self.instance.clone(),
            member: self.me.clone(),
            leaving: true,
            gone: true,
            subs: 0,
        };
        if let Ok(payload) = serde_json::to_vec(&gone) {
            let _ = self.outbox.push(Out {
                subject: self.subjects.beat(&self.me.name),
                reply: None,
                payload: Bytes::from(payload),
                call: None,
            });
        }
        for peer in self.peers.up() {
            self.fail_calls_of(&peer.name, "this node stopped");
        }
        // The outbox's writer gets a moment to send the last beat; then every
        // task ends, and the client's connection with the last clone.
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let client = self.client.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
            for task in tasks {
                task.abort();
            }
        });
    }

    fn addr(&self) -> Option<SocketAddr> {
        None
    }

    fn stats(&self) -> Option<BridgeStats> {
        let stats = self.client.statistics();
        Some(BridgeStats {
            frames_in: std::array::from_fn(|i| self.received[i].load(Ordering::Relaxed)),
            bytes_in: stats.in_bytes.load(Ordering::Relaxed),
            bytes_out: stats.out_bytes.load(Ordering::Relaxed),
            links_opened: stats.connects.load(Ordering::Relaxed),
            reconnects: stats.connects.load(Ordering::Relaxed).saturating_sub(1),
            peers_up: self.peers.up().len() as u64,
        })
    }

    fn shared_state(&self) -> Option<Arc<dyn SharedState>> {
        Some(self.state.clone())
    }
}
