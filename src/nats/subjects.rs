//! The NATS subjects of a cluster, all under its prefix (`nats.prefix`, default
//! `colony`):
//!
//! | subject                      | what goes on it                                   |
//! |------------------------------|---------------------------------------------------|
//! | `P.node.NODE.req`            | requests and sends for node NODE's workers        |
//! | `P.node.NODE.ctl`            | its status, kills, its subscription table         |
//! | `P.hb.NODE`                  | NODE's presence beats (membership and liveness)   |
//! | `P.subs.NODE`                | changes to NODE's subscriptions                   |
//! | `P.pub.TOPIC`                | publications, the topic's `.`-parts as tokens     |
//! | `P.svc.SERVICE.SUBJECT`      | a service for NATS clients (queue group)          |
//!
//! A name or topic part that NATS cannot carry as a token (empty, or holding
//! anything but `A-Z a-z 0-9 _ -`: spaces, wildcards, `$`) is written as `~`
//! and its bytes in hex. A plain token never starts with `~`, so no two parts
//! share a token, and a topic prefix that ends on a `.` is a subject filter the
//! server applies exactly.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `part` travels as it is.
fn plain(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One subject token for `part`.
pub(crate) fn token(part: &str) -> Cow<'_, str> {
    if plain(part) {
        return Cow::Borrowed(part);
    }
    let mut hex = String::with_capacity(1 + 2 * part.len());
    hex.push('~');
    for b in part.bytes() {
        let _ = write!(hex, "{b:02x}");
    }
    Cow::Owned(hex)
}

/// The part a token stands for, if it is one [`token`] makes.
pub(crate) fn part(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix('~') else {
        return plain(token).then(|| token.to_string());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The subjects of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The subjects under `prefix` (checked by the config: a plain token).
    pub(crate) fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    /// Requests for node `node`'s workers.
    pub(crate) fn requests(&self, node: &str) -> String {
        format!("{}.node.{}.req", self.prefix, token(node))
    }

    /// Control requests for node `node`.
    pub(crate) fn control(&self, node: &str) -> String {
        format!("{}.node.{}.ctl", self.prefix, token(node))
    }

    /// Node `node`'s presence beats.
    pub(crate) fn beat(&self, node: &str) -> String {
        format!("{}.hb.{}", self.prefix, token(node))
    }

    /// Every node's presence beats.
    pub(crate) fn beats(&self) -> String {
        format!("{}.hb.*", self.prefix)
    }

    /// Changes to node `node`'s subscriptions.
    pub(crate) fn subscriptions(&self, node: &str) -> String {
        format!("{}.subs.{}", self.prefix, token(node))
    }

    /// Every node's subscription changes.
    pub(crate) fn all_subscriptions(&self) -> String {
        format!("{}.subs.*", self.prefix)
    }

    /// The node a per-node subject (`P.hb.NODE`, `P.subs.NODE`) is of.
    pub(crate) fn node_of(&self, subject: &str) -> Option<String> {
        part(subject.rsplit('.').next()?)
    }

    /// A publication on `topic`.
    pub(crate) fn topic(&self, topic: &str) -> String {
        let mut subject = format!("{}.pub", self.prefix);
        for part in topic.split('.') {
            subject.push('.');
            subject.push_str(&token(part));
        }
        subject
    }

    /// The subject filter that carries every topic starting with `prefix`: the
    /// whole parts of the prefix (those before its last `.`) and `>`. The server
    /// filters exactly when the prefix is empty or ends with `.`; otherwise the
    /// filter is wider, and the node's own table picks what it wants.
    pub(crate) fn topic_filter(&self, prefix: &str) -> String {
        let mut filter = format!("{}.pub", self.prefix);
        if let Some((whole, _rest)) = prefix.rsplit_once('.') {
            for part in whole.split('.') {
                filter.push('.');
                filter.push_str(&token(part));
            }
        }
        filter.push_str(".>");
        filter
    }

    /// The subjects NATS clients reach service `service` on: `P.svc.SERVICE.>`,
    /// the tokens after it being the colony subject's parts.
    pub(crate) fn service(&self, service: &str) -> String {
        format!("{}.svc.{}", self.prefix, token(service))
    }

    /// The colony subject of a NATS client's request on `subject`, under
    /// service subject `service` (see [`service`](Self::service)).
    pub(crate) fn service_subject(service: &str, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(service)?.strip_prefix('.')?;
        let parts: Option<Vec<String>> = rest.split('.').map(part).collect();
        Some(parts?.join("."))
    }
}

/// Whether filter `filter` (a subject ending `.>`) carries `subject`.
pub(crate) fn carries(filter: &str, subject: &str) -> bool {
    let stem = &filter[..filter.len().saturating_sub(1)];
    subject.len() > stem.len() && subject.starts_with(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_nats_cannot_carry_are_written_in_hex() {
        assert_eq!(token("math"), "math");
        assert_eq!(token("a b"), "~612062");
        assert_eq!(token(""), "~");
        assert_eq!(token("*"), "~2a");
        assert_eq!(token(">"), "~3e");
        assert_eq!(token("~x"), "~7e78");
        for p in ["math", "a b", "", "*", ">", "~x", "ünï", "$SYS"] {
            assert_eq!(part(&token(p)).as_deref(), Some(p), "{p}");
        }
        assert_eq!(part("~zz"), None);
        assert_eq!(part("~6"), None);
        assert_eq!(part("a*"), None);
    }

    #[test]
    fn topic_filters_follow_prefix_semantics() {
        let s = Subjects::new("colony");
        assert_eq!(s.topic("users.deleted"), "colony.pub.users.deleted");
        assert_eq!(s.topic("a b.*"), "colony.pub.~612062.~2a");
        assert_eq!(s.topic_filter(""), "colony.pub.>");
        assert_eq!(s.topic_filter("users."), "colony.pub.users.>");
        assert_eq!(s.topic_filter("users.del"), "colony.pub.users.>");
        assert_eq!(s.topic_filter("use"), "colony.pub.>");
        // Every topic the prefix matches is carried by its filter.
        for (prefix, topic) in [
            ("users.", "users.deleted"),
            ("users.", "users."),
            ("users.", "users.a.b"),
            ("users.del", "users.deleted"),
            ("use", "users"),
            ("", ""),
            ("a b.", "a b.x y"),
        ] {
            assert!(topic.starts_with(prefix));
            assert!(
                carries(&s.topic_filter(prefix), &s.topic(topic)),
                "{prefix} / {topic}"
            );
        }
        assert!(!carries("colony.pub.users.>", "colony.pub.users"));
        assert!(!carries("colony.pub.users.>", "colony.pub.usersx.a"));
    }

    #[test]
    fn service_subjects_round_trip() {
        let s = Subjects::new("colony");
        let svc = s.service("math");
        assert_eq!(svc, "colony.svc.math");
        assert_eq!(
            Subjects::service_subject(&svc, "colony.svc.math.sum").as_deref(),
            Some("sum")
        );
        assert_eq!(
            Subjects::service_subject(&svc, "colony.svc.math.users.~612062").as_deref(),
            Some("users.a b")
        );
        assert_eq!(Subjects::service_subject(&svc, "colony.svc.math"), None);
        assert_eq!(
            s.node_of("colony.hb.~612062").as_deref(),
            Some("a b"),
            "a node name in hex"
        );
    }
}
