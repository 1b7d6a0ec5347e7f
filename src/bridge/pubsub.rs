//! Publish/subscribe across links (see the crate's `pubsub` for the model).
//!
//! Each node tells each peer the topic prefixes its subscribers hold: its whole
//! table when the link opens, then each change in order ([`Control::Subscribed`],
//! [`Control::Unsubscribed`]). A change that a peer's full send queue cannot take
//! is not lost: that peer gets the whole table again from its link's next
//! heartbeat tick on, and changes after it.
//!
//! What each peer announces is kept, bounded, in its link's
//! `pubsub::PeerSubscriptions`.

use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::peer::Peer;
use super::state::Bridge;
use super::wire::{self, Control};
use crate::pubsub::{Change, Delivery};

impl Bridge {
    /// Tells every peer of a change to this node's subscriptions. Runs in turn
    /// with every other change (see `PubSub::with_prefixes`). A peer whose queue
    /// cannot take it gets the whole table again instead, from its link's next
    /// heartbeat tick on (see [`Bridge::resync`]).
    pub(super) fn announce(&self, change: Change) {
        let control = match change {
            Change::Added(prefix) => Control::Subscribed { prefix },
            Change::Removed(prefix) => Control::Unsubscribed { prefix },
        };
        let mut frame = BytesMut::new();
        if let Err(e) = control.encode(&mut frame, self.config.max_frame) {
            log::error!("bridge: subscription change does not fit a frame: {e}");
            return;
        }
        let frame = frame.freeze();
        for peer in self.peers() {
            if peer.resync.load(Ordering::Acquire) {
                continue;
            }
            if let Err(e) = peer.send(frame.clone()) {
                log::warn!(
                    "bridge: subscription change not sent to {} ({e}); it gets the whole table once its queue has room",
                    peer.name
                );
                peer.resync.store(true, Ordering::Release);
            }
        }
    }

    /// Sends `peer` this node's whole subscription table, after a change could not
    /// be queued to it; changes flow again once the table is queued.
    pub(crate) fn resync(&self, peer: &Peer) {
        self.inbound.pubsub.with_prefixes(|prefixes| {
            if !peer.resync.load(Ordering::Acquire) {
                return;
            }
            let mut frame = BytesMut::new();
            if let Err(e) =
                (Control::Subscriptions { prefixes }).encode(&mut frame, self.config.max_frame)
            {
                log::error!("bridge: subscription table does not fit a frame: {e}");
                return;
            }
            if peer.send(frame.freeze()).is_ok() {
                peer.resync.store(false, Ordering::Release);
            }
        });
    }

    /// Sends `delivery` to every peer with a matching subscriber; returns how many
    /// subscribers hold it on the peers whose send queue took it. Those on a peer
    /// whose queue was full are counted as dropped.
    pub(crate) fn publish(&self, delivery: &Delivery) -> usize {
        let mut frame: Option<bytes::Bytes> = None;
        let mut reached = 0;
        for peer in self.peers.read().values().filter(|p| p.is_up()) {
            let wanted = peer.subscribers(&delivery.topic);
            if wanted == 0 {
                continue;
            }
            if frame.is_none() {
                let mut buf = BytesMut::new();
                let encoded = wire::encode_publish(
                    &mut buf,
                    self.config.max_frame,
                    &delivery.topic,
                    &delivery.meta.node,
                    delivery.meta.worker.as_deref().unwrap_or(""),
                    delivery.trace,
                    delivery.json_bytes(),
                );
                if let Err(e) = encoded {
                    log::warn!(
                        "pubsub: message on {} not sent: {e}",
                        crate::logging::untrusted(&delivery.topic)
                    );
                    return reached;
                }
                frame = Some(buf.freeze());
            }
            if let Some(frame) = &frame {
                match peer.send(frame.clone()) {
                    Ok(()) => reached += wanted as usize,
                    // Its subscribers miss it, as at their own high-water marks.
                    Err(e) => self.inbound.pubsub.count_dropped(
                        u64::from(wanted),
                        &delivery.topic,
                        || e.message,
                    ),
                }
            }
        }
        reached
    }

    /// How many subscribers of other nodes want `topic`.
    pub(crate) fn subscribers(&self, topic: &str) -> usize {
        self.peers
            .read()
            .values()
            .filter(|p| p.is_up())
            .map(|p| p.subscribers(topic) as usize)
            .sum()
    }

    /// A publication from another node, for this node's subscribers.
    pub(crate) fn deliver(&self, frame: wire::PublishFrame) {
        self.inbound.deliver(
            frame.topic,
            frame.node,
            frame.worker,
            frame.trace,
            frame.payload,
        );
    }
}
