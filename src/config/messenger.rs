//! `messenger:` — speaking the Node `messenger` library's protocol, so that a
//! system built on it moves to colony one service at a time: colony serves the
//! Speakers it already runs, calls the Node listeners not yet ported (a service
//! with `messenger: [host:port, …]`), and shouts to those still listening.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::input;

/// At most this many routes, shouts, shout targets or listener addresses.
pub(crate) const MAX_ENTRIES: usize = 1024;
/// The largest `max_message`: 64 MiB.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// `messenger:` — colony as a messenger listener, and what it shouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessengerSection {
    /// Where Node Speakers connect; absent, this node listens for none.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A messenger subject asked with `request` → `service/subject` in colony.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// A messenger subject sent with `shout` or `send` → the colony topic it is
    /// published on.
    #[serde(default)]
    pub shouts: BTreeMap<String, String>,
    /// Node listeners that hear colony's publications as shouts.
    #[serde(default)]
    pub shout_to: Vec<ShoutTo>,
    /// The longest message, in bytes, read or written; a longer one closes its
    /// connection (read) or fails its call (written).
    #[serde(default = "default_max_message", deserialize_with = "input::integer")]
    pub max_message: usize,
    /// Speaker connections served at once; more are closed at once.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "input::integer"
    )]
    pub max_connections: usize,
}

/// `messenger.shout_to[i]:` — listeners, and which topics they hear as what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShoutTo {
    /// The listeners, `host:port`.
    pub to: Vec<String>,
    /// A colony topic (exact) → the messenger subject it is shouted as.
    pub topics: BTreeMap<String, String>,
}

fn default_max_message() -> usize {
    1024 * 1024
}

fn default_max_connections() -> usize {
    1024
}

/// Checks a listener address `host:port` (a name or an IP, and a port).
pub fn check_address(address: &str) -> Result<(), String> {
    let shown = crate::logging::untrusted(address);
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{shown}` is not host:port"));
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    match port.parse::<u16>() {
        Ok(port) if port > 0 && host_ok => Ok(()),
        _ => Err(format!("`{shown}` is not host:port")),
    }
}

/// Checks a route's target, `service/subject`; returns its two parts.
pub fn split_target(target: &str) -> Result<(&str, &str), String> {
    match target.split_once('/') {
        Some((service, subject)) if !service.is_empty() && !subject.is_empty() => {
            Ok((service, subject))
        }
        _ => Err(format!(
            "`{}` is not service/subject",
            crate::logging::untrusted(target)
        )),
    }
}

impl MessengerSection {
    /// Every value's rules; the key of the first one broken, and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        let fail = |key: String, problem: String| Err((key, problem));
        if self.max_message < 64 {
            return fail("messenger.max_message".into(), "must be at least 64".into());
        }
        if self.max_message > MAX_MESSAGE {
            return fail(
                "messenger.max_message".into(),
                format!("must be at most {MAX_MESSAGE}"),
            );
        }
        if self.max_connections == 0 {
            return fail(
                "messenger.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        let entries = self.routes.len() + self.shouts.len() + self.shout_to.len();
        if entries > MAX_ENTRIES {
            return fail(
                "messenger".into(),
                format!("has {entries} routes, shouts and targets; at most {MAX_ENTRIES}"),
            );
        }
        for (subject, target) in &self.routes {
            split_target(target).map_err(|p| (format!("messenger.routes.{subject}"), p))?;
        }
        for (subject, topic) in &self.shouts {
            if topic.is_empty() {
                return fail(
                    format!("messenger.shouts.{subject}"),
                    "names no topic".into(),
                );
            }
        }
        for (i, target) in self.shout_to.iter().enumerate() {
            if target.to.is_empty() || target.to.len() > MAX_ENTRIES {
                return fail(
                    format!("messenger.shout_to[{i}].to"),
                    format!("must list 1 to {MAX_ENTRIES} listeners"),
                );
            }
            for address in &target.to {
                check_address(address).map_err(|p| (format!("messenger.shout_to[{i}].to"), p))?;
            }
            if target.topics.is_empty() || target.topics.len() > MAX_ENTRIES {
                return fail(
                    format!("messenger.shout_to[{i}].topics"),
                    format!("must map 1 to {MAX_ENTRIES} topics"),
                );
            }
        }
        Ok(())
    }
}
