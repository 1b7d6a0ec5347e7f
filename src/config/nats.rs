//! `nats:` — the cluster over a NATS server instead of the bridge: where the
//! server is, how this node proves who it is, and the subject namespace the
//! cluster's traffic and state live under.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::input;

/// `nats:` — the NATS server(s) the node joins the cluster through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// One server URL or a list (`nats://host:4222`, `tls://host:4222`); the
    /// client picks among them and reconnects to any.
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// A file holding the server's auth token (private, as `api.token_file`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A NATS `.creds` file (a user JWT and its nkey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// TLS to the server.
    #[serde(default)]
    pub tls: Option<NatsTls>,
    /// The subject namespace of the cluster: its subjects, streams and buckets
    /// all start with it. Clusters that share a server use different prefixes.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Interval of this node's presence beats; a node silent for three is down.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Copies JetStream keeps of the cluster's queues, locks and confirmations:
    /// 1 on one server, 3 on a three-server cluster.
    #[serde(default = "default_replicas", deserialize_with = "input::integer")]
    pub replicas: usize,
}

/// `nats.tls:` — PEM files for TLS to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    /// The CA that signs the server's certificate, if not a system root.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This node's client certificate, when the server asks for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// The subject namespace unless `nats.prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "colony";

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}
fn default_heartbeat() -> Duration {
    Duration::from_millis(500)
}
fn default_replicas() -> usize {
    1
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

impl NatsSection {
    /// Checks what the section can alone: URLs, the prefix, the numbers.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.url.is_empty() {
            return Err(("nats.url", "lists no server".into()));
        }
        if self.url.len() > 64 {
            return Err(("nats.url", "lists more than 64 servers".into()));
        }
        for url in &self.url {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s))
                || !url.contains("://");
            if !scheme_ok || url.is_empty() || url.len() > 1024 || url.contains(char::is_whitespace)
            {
                return Err((
                    "nats.url",
                    format!(
                        "`{}` is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT)",
                        crate::logging::untrusted(url)
                    ),
                ));
            }
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 32
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return Err((
                "nats.prefix",
                format!(
                    "`{}` is not 1 to 32 characters of A-Z, a-z, 0-9, _ and - \
                     (it names subjects, streams and buckets)",
                    crate::logging::untrusted(&self.prefix)
                ),
            ));
        }
        if self.heartbeat < Duration::from_millis(10) || self.heartbeat > Duration::from_secs(60) {
            return Err(("nats.heartbeat", "must be from 10ms to 60s".into()));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(("nats.replicas", "must be from 1 to 5".into()));
        }
        if let Some(tls) = &self.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(("nats.tls", "cert and key go together".into()));
            }
        }
        Ok(())
    }
}
