//! The bridge itself: its links, the member table, its counters, and what the
//! node asks of it as its `transport::Transport`. How it starts and connects is
//! in `connect`; what its links carry in `session`, `control`, `identity` and
//! `pubsub`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_rt::{Arbiter, ArbiterHandle};
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};

use super::counters::Counters;
use super::handshake::Secret;
use super::peer::Peer;
use super::tls::Tls;
use super::wire::Member;
use crate::config::{BridgeSection, Role};
use crate::pubsub::{Change, Delivery};
use crate::transport::{BridgeStats, Inbound, Link, Offer, Offered, Transport};

/// One peer request being served; see [`Bridge::serving`].
pub(crate) struct Serving(Arc<AtomicU64>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A node's bridge to the rest of the cluster.
pub(crate) struct Bridge {
    pub(super) me: Member,
    pub(super) config: BridgeSection,
    pub(super) secret: Secret,
    pub(super) tls: Option<Tls>,
    /// Where what peers send goes.
    pub(super) inbound: Inbound,
    pub(crate) counters: Arc<Counters>,
    pub(super) arbiter: Arbiter,
    pub(super) peers: RwLock<HashMap<String, Arc<Peer>>>,
    pub(super) members: Mutex<BTreeMap<String, Member>>,
    pub(super) dialing: Mutex<Vec<String>>,
    /// The node linked now at each `bridge.join` address: the masters this node
    /// joined (see `identity`).
    pub(super) joined: Mutex<HashMap<SocketAddr, String>>,
    pub(super) stopping: AtomicBool,
    /// Peer requests being served now.
    pub(super) serving: Arc<AtomicU64>,
    /// Services offered by nodes that said they were leaving, with until when a
    /// request for one of them waits for a node that runs it to (re)appear.
    pub(super) returning: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("node", &self.me.name)
            .finish()
    }
}

impl Bridge {
    pub(crate) fn config(&self) -> &BridgeSection {
        &self.config
    }

    pub(super) fn handle(&self) -> ArbiterHandle {
        self.arbiter.handle()
    }

    pub(super) fn is_master(&self) -> bool {
        self.me.role == Role::Master.to_string()
    }

    /// The live link to `node`.
    pub(crate) fn peer(&self, node: &str) -> Option<Arc<Peer>> {
        self.peers.read().get(node).filter(|p| p.is_up()).cloned()
    }

    /// Every live link.
    pub(crate) fn peers(&self) -> Vec<Arc<Peer>> {
        let mut peers: Vec<_> = self
            .peers
            .read()
            .values()
            .filter(|p| p.is_up())
            .cloned()
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        peers
    }

    /// The members this node knows of, itself included.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.members.lock().values().cloned().collect()
    }

    /// The master's name, if a member is the master.
    pub(crate) fn master(&self) -> Option<String> {
        self.members
            .lock()
            .values()
            .find(|m| m.role == Role::Master.to_string())
            .map(|m| m.name.clone())
    }

    /// Tells every peer that this node is leaving and waits (until `deadline`) for
    /// each to answer: from then on no new request comes, while those already sent
    /// are served.
    pub(crate) async fn leave(&self, deadline: tokio::time::Instant) {
        let peers = self.peers();
        futures::future::join_all(peers.iter().map(|p| p.leave(deadline))).await;
    }

    /// Traffic since the bridge started.
    pub(crate) fn stats(&self) -> BridgeStats {
        let c = &self.counters;
        BridgeStats {
            frames_in: std::array::from_fn(|i| c.frames_in[i].load(Ordering::Relaxed)),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            links_opened: c.links_opened.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            peers_up: self.peers().len() as u64,
        }
    }

    /// Until when a request for `service`, which no node runs now, may wait for a
    /// node that left to come back with it.
    pub(crate) fn returning(&self, service: &str) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let mut returning = self.returning.lock();
        returning.retain(|_, until| *until > now);
        returning.get(service).copied()
    }

    /// Counts one peer request as being served until the guard drops.
    pub(crate) fn serving(&self) -> Serving {
        self.serving.fetch_add(1, Ordering::AcqRel);
        Serving(self.serving.clone())
    }

    /// Waits (until `deadline`) for the peer requests being served to be answered
    /// and for every queued frame to be written.
    pub(crate) async fn flush(&self, deadline: tokio::time::Instant) {
        let done = || {
            self.serving.load(Ordering::Acquire) == 0 && self.peers().iter().all(|p| p.flushed())
        };
        while !done() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Closes every link and stops connecting.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for peer in self.peers() {
            peer.shut();
        }
        self.arbiter.stop();
    }
}

impl Transport for Bridge {
    fn link(&self, node: &str) -> Option<Arc<dyn Link>> {
        self.peer(node).map(|p| p as Arc<dyn Link>)
    }

    fn links(&self) -> Vec<Arc<dyn Link>> {
        self.peers()
            .into_iter()
            .map(|p| p as Arc<dyn Link>)
            .collect()
    }

    fn offering(&self, service: &str) -> Vec<Offered> {
        self.peers
            .read()
            .values()
            .filter(|p| p.is_up() && !p.leaving.load(Ordering::Acquire))
            .filter_map(|p| {
                p.offer(service)
                    .map(|(offer, load)| (p.clone() as Arc<dyn Link>, offer, load))
            })
            .collect()
    }

    fn members(&self) -> Vec<Member> {
        Bridge::members(self)
    }

    fn master(&self) -> Option<String> {
        Bridge::master(self)
    }

    fn returning(&self, service: &str) -> Option<tokio::time::Instant> {
        Bridge::returning(self, service)
    }

    fn publish(&self, delivery: &Delivery) -> usize {
        Bridge::publish(self, delivery)
    }

    fn subscribers(&self, topic: &str) -> usize {
        Bridge::subscribers(self, topic)
    }

    fn subscriptions_changed(&self, change: Change) {
        self.announce(change)
    }

    fn leave(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(Bridge::leave(self, deadline))
    }

    fn flush(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(Bridge::flush(self, deadline))
    }

    fn offer_changed(&self, offer: Offer) {
        self.announce_offer(offer)
    }

    fn stop(&self) {
        Bridge::stop(self)
    }

    fn addr(&self) -> Option<SocketAddr> {
        Some(self.me.bridge)
    }

    fn stats(&self) -> Option<BridgeStats> {
        Some(Bridge::stats(self))
    }
}
