//! The NATS backbone as the node sees it: `Transport` over the peers heard
//! of, each reached by a `link::NatsLink`; and how a node on NATS starts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::connect::Prepared;
use super::link;
use super::node::NatsNode;
use super::outbox::Out;
use super::peers::{Peer, Peers};
use super::serve;
use super::topics::Filters;
use super::wire;
use crate::pubsub::{Change, Delivery};
use crate::transport::{
    Backbone, BridgeStats, Inbound, Link, Member, Offer, Offered, SharedState, Transport,
};

/// The backbone a node starts on when its config has `nats:`: what
/// [`prepare`](super::prepare) made ready, linked to the node when it boots.
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
        state.tell(inbound.events.clone());
        let (changes, changed) = tokio::sync::mpsc::unbounded_channel();
        let max_payload = client.server_info().max_payload.max(1024);
        let node = Arc::new_cyclic(|this| NatsNode {
            this: this.clone(),
            instance: client.new_inbox().replace("_INBOX.", ""),
            inbox,
            offers: parking_lot::RwLock::new(me.services.clone()),
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

    fn link_to(self: &Arc<Self>, peer: Arc<Peer>) -> Arc<dyn Link> {
        Arc::new(link::NatsLink {
            node: self.clone(),
            peer,
        })
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
        let mut members = vec![self.member()];
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
            subject: self.subjects.topic(&delivery.topic).into(),
            reply: None,
            payload,
            call: None,
            headers: wire::trace_headers(delivery.trace),
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

    fn offer_changed(&self, offer: Offer) {
        // The next beat carries it.
        let mut offers = self.offers.write();
        match offers.iter_mut().find(|o| o.name == offer.name) {
            Some(old) => *old = offer,
            None => offers.push(offer),
        }
    }

    fn stop(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let gone = wire::Beat {
            instance: self.instance.clone(),
            member: self.member(),
            leaving: true,
            gone: true,
            subs: 0,
        };
        if let Ok(payload) = serde_json::to_vec(&gone) {
            let _ = self.outbox.push(Out {
                subject: self.subjects.beat(&self.me.name).into(),
                reply: None,
                payload: Bytes::from(payload),
                call: None,
                headers: None,
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
