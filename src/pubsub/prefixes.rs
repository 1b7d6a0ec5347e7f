//! The bounds of a table of topic prefixes, and how many of its subscribers
//! want a topic: the same for this node's subscribers and for another node's
//! as it announces them.

use std::collections::BTreeMap;

/// Distinct prefixes a node's subscribers may hold at once; a subscription to a
/// new prefix past it gets `Overloaded`. A peer's table is kept up to it too.
pub const MAX_PREFIXES: usize = 10_000;

/// The longest topic or prefix, in bytes.
pub const MAX_TOPIC: usize = 1024;

/// How many subscribers to `prefixes` want `topic`.
pub(crate) fn matching(prefixes: &BTreeMap<String, u32>, topic: &str) -> u32 {
    // Scanning costs the table's size, looking up each prefix of the topic the
    // topic's length: take the cheaper.
    if prefixes.len() <= topic.len() + 1 {
        prefixes
            .iter()
            .filter(|(prefix, _)| topic.starts_with(prefix.as_str()))
            .fold(0, |sum, (_, n)| sum.saturating_add(*n))
    } else {
        topic
            .char_indices()
            .map(|(at, _)| at)
            .chain([topic.len()])
            .filter_map(|end| prefixes.get(&topic[..end]))
            .fold(0, |sum, n| sum.saturating_add(*n))
    }
}
