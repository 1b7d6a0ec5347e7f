//! This node's NATS subscriptions for publications: one per subject filter its
//! subscribers' prefixes need (see `subjects::Subjects::topic_filter`), held
//! while any subscriber needs it.
//!
//! Two filters can carry one publication (`P.pub.>` and `P.pub.users.>`), and
//! the node must hand it to its subscribers once: a publication is taken only
//! from the widest ready filter that carries it. A filter is ready once the
//! server has its subscription, so while a wider one is being added the
//! narrower one still delivers.

use std::collections::BTreeMap;

use parking_lot::RwLock;

use super::subjects::carries;

/// One filter: how many prefixes need it, and whether the server has it.
#[derive(Debug, Default)]
struct Filter {
    holders: usize,
    ready: bool,
}

/// The filters.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    filters: RwLock<BTreeMap<String, Filter>>,
}

/// What a change to the filters asks of the NATS subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Todo {
    Subscribe(String),
    Unsubscribe(String),
    Nothing,
}

impl Filters {
    /// One more prefix needs `filter`.
    pub(crate) fn add(&self, filter: String) -> Todo {
        let mut filters = self.filters.write();
        let entry = filters.entry(filter.clone()).or_default();
        entry.holders += 1;
        if entry.holders == 1 {
            Todo::Subscribe(filter)
        } else {
            Todo::Nothing
        }
    }

    /// One prefix fewer needs `filter`.
    pub(crate) fn remove(&self, filter: &str) -> Todo {
        let mut filters = self.filters.write();
        let Some(entry) = filters.get_mut(filter) else {
            return Todo::Nothing;
        };
        entry.holders = entry.holders.saturating_sub(1);
        if entry.holders == 0 {
            filters.remove(filter);
            Todo::Unsubscribe(filter.to_string())
        } else {
            Todo::Nothing
        }
    }

    /// The server has the subscription of `filter`.
    pub(crate) fn ready(&self, filter: &str) {
        if let Some(entry) = self.filters.write().get_mut(filter) {
            entry.ready = true;
        }
    }

    /// Whether a publication on `subject` that came through `filter` is taken:
    /// `filter` is the widest ready filter that carries it (ties: the first by
    /// name).
    pub(crate) fn takes(&self, filter: &str, subject: &str) -> bool {
        let filters = self.filters.read();
        if filters.len() == 1 {
            return filters.contains_key(filter);
        }
        let widest = filters
            .iter()
            .filter(|(f, e)| e.ready && carries(f, subject))
            .min_by_key(|(f, _)| (f.len(), *f))
            .map(|(f, _)| f.as_str());
        widest == Some(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_is_taken_once_from_the_widest_ready_filter() {
        let f = Filters::default();
        assert_eq!(
            f.add("c.pub.a.>".into()),
            Todo::Subscribe("c.pub.a.>".into())
        );
        f.ready("c.pub.a.>");
        assert_eq!(f.add("c.pub.a.>".into()), Todo::Nothing);
        assert!(f.takes("c.pub.a.>", "c.pub.a.x"));
        assert_eq!(f.add("c.pub.>".into()), Todo::Subscribe("c.pub.>".into()));
        // Until the wider one is ready, the narrower one delivers.
        assert!(f.takes("c.pub.a.>", "c.pub.a.x"));
        assert!(!f.takes("c.pub.>", "c.pub.a.x"));
        f.ready("c.pub.>");
        assert!(!f.takes("c.pub.a.>", "c.pub.a.x"));
        assert!(f.takes("c.pub.>", "c.pub.a.x"));
        assert!(f.takes("c.pub.>", "c.pub.b"));
        assert_eq!(f.remove("c.pub.>"), Todo::Unsubscribe("c.pub.>".into()));
        assert!(f.takes("c.pub.a.>", "c.pub.a.x"));
        assert_eq!(f.remove("c.pub.a.>"), Todo::Nothing);
        assert_eq!(f.remove("c.pub.a.>"), Todo::Unsubscribe("c.pub.a.>".into()));
        assert_eq!(f.remove("c.pub.a.>"), Todo::Nothing);
        assert!(f.filters.read().is_empty());
    }
}
