//! One other node's subscriptions: the topic prefixes its subscribers hold, as
//! it announces them over its backbone.
//!
//! The map of a peer's prefixes is keyed by names from outside, so it is bounded:
//! at most [`MAX_PREFIXES`] distinct prefixes of at most [`MAX_TOPIC`] bytes are
//! kept (an honest node never holds more). What a peer announces past that is
//! ignored and counted, with a warning now and then, and the link stays up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use super::prefixes::{matching, MAX_PREFIXES, MAX_TOPIC};

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
                "node {peer} announced subscriptions past the bounds of \
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
