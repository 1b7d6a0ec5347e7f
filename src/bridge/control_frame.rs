//! The messages of `CONTROL` frames (see `wire`): handshake, membership,
//! status, subscriptions, leaving, kills and operators' commands, as
//! self-describing JSON.

use std::collections::BTreeMap;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ServiceError;
use crate::pubsub::MAX_PREFIXES;
use crate::status::NodeStatus;
use crate::transport::Member;

/// Handshake, membership and status messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// First message each way: who is speaking, a fresh nonce, and (from the side
    /// that accepted the connection) its proof over the dialer's nonce.
    Hello {
        /// The sender's protocol version.
        version: u16,
        /// The sender's node name.
        node: String,
        /// 32 random bytes, hex.
        nonce: String,
        /// HMAC proof of the cluster secret, hex (accepting side only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<String>,
    },
    /// The dialer's proof over the acceptor's nonce.
    Proof {
        /// HMAC proof, hex.
        proof: String,
    },
    /// The handshake succeeded.
    Welcome,
    /// The connection is refused, and why.
    Refused {
        /// The reason, for the log of the refused side.
        reason: String,
    },
    /// A node announces itself to the master.
    Join {
        /// The joining node.
        member: Member,
    },
    /// The master's member table, sent on every change.
    Members {
        /// Every member, the master included.
        members: Vec<Member>,
    },
    /// Asks for the receiver's status.
    StatusRequest {
        /// Matches the reply.
        id: u64,
    },
    /// The receiver's status.
    StatusReply {
        /// The request's id.
        id: u64,
        /// The node's status.
        status: Box<NodeStatus>,
    },
    /// Kill one of the receiver's workers, as `colony kill` does.
    Kill {
        /// Matches the reply.
        id: u64,
        /// The worker id, `NODE/SERVICE/INDEX`.
        worker: String,
    },
    /// The topic prefixes the sender's subscribers hold, with how many hold each;
    /// sent once when a link opens (and again if a change could not be queued).
    /// [`Control::Subscribed`] and [`Control::Unsubscribed`] carry the changes.
    Subscriptions {
        /// Prefix to subscriber count. At most [`MAX_PREFIXES`] + 1 entries are
        /// read from the wire; the rest are skipped unread.
        #[serde(deserialize_with = "capped_table")]
        prefixes: BTreeMap<String, u32>,
    },
    /// One more of the sender's subscribers holds `prefix`.
    Subscribed {
        /// The topic prefix.
        prefix: String,
    },
    /// One fewer of the sender's subscribers holds `prefix`.
    Unsubscribed {
        /// The topic prefix.
        prefix: String,
    },
    /// The sender is draining: send it no new requests, then answer
    /// [`Control::LeavingAck`]. Requests sent before the answer still reach it, and
    /// it serves them.
    Leaving {
        /// Matches the answer.
        id: u64,
    },
    /// Every request sent before this one to the leaving node is on its way.
    LeavingAck {
        /// The [`Control::Leaving`]'s id.
        id: u64,
    },
    /// Exit the receiver's process with `code`, as if it crashed (`colony kill`
    /// with a node name); answered by a [`Control::KillReply`] first.
    KillNode {
        /// Matches the reply.
        id: u64,
        /// The exit code.
        code: i32,
    },
    /// An operator's command for the receiver (see `Link::admin`); answered by a
    /// [`Control::AdminReply`].
    Admin {
        /// Matches the reply.
        id: u64,
        /// The command.
        op: serde_json::Value,
    },
    /// The outcome of a [`Control::Admin`]: its answer, or why it failed.
    AdminReply {
        /// The request's id.
        id: u64,
        /// The command's answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<serde_json::Value>,
        /// Why the command failed, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ServiceError>,
    },
    /// The outcome of a [`Control::Kill`] or [`Control::KillNode`].
    KillReply {
        /// The request's id.
        id: u64,
        /// Why the kill failed, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ServiceError>,
    },
}

/// Reads a prefix table, keeping at most one entry past [`MAX_PREFIXES`] (so that
/// the receiver knows the sender went past it) and skipping the rest unread.
fn capped_table<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u32>, D::Error> {
    struct Capped;
    impl<'de> Visitor<'de> for Capped {
        type Value = BTreeMap<String, u32>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of topic prefixes to subscriber counts")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut table = BTreeMap::new();
            while table.len() <= MAX_PREFIXES {
                match map.next_entry::<String, u32>()? {
                    Some((prefix, count)) => table.insert(prefix, count),
                    None => return Ok(table),
                };
            }
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(table)
        }
    }
    d.deserialize_map(Capped)
}
