//! Publish/subscribe across links (see the crate's `pubsub` for the model).
//!
//! Each node tells each peer the topic prefixes its subscribers hold: its whole
//! table when the link opens, then each change in order ([`Control::Subscribed`],
//! [`Control::Unsubscribed`]). A change that a peer's full send queue cannot take
//! is not lost: that peer gets the whole table again from its link's next
//! heartbeat tick on, and changes after it.
//!
//! The map of a peer's prefixes is keyed by names from outside, so it is bounded:
//! at most [`MAX_PREFIXES`] distinct prefixes of at most [`MAX_TOPIC`] bytes are
//! kept (an honest node never holds more). What a peer announces past that is
//! ignored and counted, with a warning now and then, and the link stays up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use parking_lot::RwLock;

use super::peer::Peer;
use super::wire::{self, Control};
use super::Bridge;
use crate::pubsub::{matching, Change, Delivery, MAX_PREFIXES, MAX_TOPIC};

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
        self.inbound
            .deliver(frame.topic, frame.node, frame.worker, frame.payload);
    }
}

/// One peer's subscriptions.
#[derive(Debug, Default)]
pub(crate) struct PeerSubscriptions {
    prefixes: RwLock<BTreeMap<String, u32>>,
    /// Announcements ignored for being past the bounds.
    ignored: AtomicU64,
}

impl PeerSubscriptions {
    /// Takes the peer's whole table, as it sends it when the link opens.
    pub(crate) fn replace(&self, peer: &str, mut table: BTreeMap<String, u32>) {
        let before = table.len();
        table.retain(|prefix, count| prefix.len() <= MAX_TOPIC && *count > 0);
        while table.len() > MAX_PREFIXES {
            table.pop_last();
        }
        if table.len() < before {
            self.ignore(peer);
        }
        *self.prefixes.write() = table;
    }

    /// The peer's subscribers hold one more subscription to `prefix`.
    pub(crate) fn add(&self, peer: &str, prefix: String) {
        if prefix.len() > MAX_TOPIC {
            return self.ignore(peer);
        }
        let mut prefixes = self.prefixes.write();
        if let Some(count) = prefixes.get_mut(&prefix) {
            *count = count.saturating_add(1);
        } else if prefixes.len() < MAX_PREFIXES {
            prefixes.insert(prefix, 1);
        } else {
            drop(prefixes);
            self.ignore(peer);
        }
    }

    /// The peer's subscribers hold one subscription fewer to `prefix`.
    pub(crate) fn remove(&self, prefix: &str) {
        let mut prefixes = self.prefixes.write();
        if let Some(count) = prefixes.get_mut(prefix) {
            *count -= 1;
            if *count == 0 {
                prefixes.remove(prefix);
            }
        }
    }

    /// How many of the peer's subscribers want `topic`.
    pub(crate) fn matching(&self, topic: &str) -> u32 {
        matching(&self.prefixes.read(), topic)
    }

    /// Counts an announcement (a table or a change) of which a part or all was
    /// ignored.
    fn ignore(&self, peer: &str) {
        let before = self.ignored.fetch_add(1, Ordering::Relaxed);
        // The first time, then once per thousand: a hostile peer cannot flood the log.
        if before.is_multiple_of(1000) {
            log::warn!(
                "bridge: node {peer} announced subscriptions past the bounds of \
                 {MAX_PREFIXES} prefixes of at most {MAX_TOPIC} bytes; what is past them \
                 is ignored ({} announcements so far)",
                before + 1
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_and_changes_past_the_cap_are_ignored() {
        let subs = PeerSubscriptions::default();
        let table = (0..MAX_PREFIXES + 5)
            .map(|i| (format!("p{i:06}"), 1))
            .collect();
        subs.replace("peer", table);
        assert_eq!(subs.prefixes.read().len(), MAX_PREFIXES);
        assert_eq!(subs.ignored.load(Ordering::Relaxed), 1);
        assert_eq!(subs.matching("p000000.x"), 1);
        assert_eq!(subs.matching(&format!("p{:06}", MAX_PREFIXES)), 0);

        subs.add("peer", "q".into());
        assert_eq!(subs.matching("q"), 0, "past the cap");
        subs.add("peer", "p000001".into());
        assert_eq!(subs.matching("p000001"), 2, "a known prefix still counts");
        subs.remove("p000000");
        subs.add("peer", "q".into());
        assert_eq!(subs.matching("q"), 1, "room again");
        subs.add("peer", "x".repeat(MAX_TOPIC + 1));
        assert_eq!(subs.prefixes.read().len(), MAX_PREFIXES);
    }
}
