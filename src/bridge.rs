//! The bridge: how nodes find, authenticate and talk to each other.
//!
//! Every node listens on `bridge.listen`. A worker node dials the master(s) in
//! `bridge.join` and announces itself (`Join`: its addresses and the services it
//! runs with their capacity). The master keeps the member table and sends it to
//! every member on each change; members then connect to each other directly (the
//! node whose name sorts first dials), so a request to any node costs one network
//! round trip. A link that stays silent for three heartbeats is down: requests
//! waiting on it fail with `NodeDown`, the master drops the member and tells the
//! others, and the dialer reconnects with exponential backoff and jitter (100 ms
//! up to 5 s). Node up and down are lifecycle events.
//!
//! - `state`: the bridge itself: its links, the member table, its counters, and
//!   the node's `transport::Transport`.
//! - `connect`: starting (the listener, the dial loops) and opening a connection
//!   under one deadline for TLS and the handshake.
//! - `accept`: incoming connections before authentication: the caps on
//!   handshakes, overall and per source, and the refusal log.
//! - `frame`: length-prefixed frames with a maximum checked before allocation.
//! - `wire`: the messages inside frames.
//! - `handshake`: version agreement and the HMAC proof of the cluster secret.
//! - `tls`: optional mutual TLS under the handshake.
//! - `identity`: who may hold a link: one live link per name, one master, the
//!   member table only from it, certificates that name their node.
//! - `peer`: one live link, as a `transport::Link`: its send queue and one table of the
//!   calls waiting for its answers.
//! - `outbox`: a link's unwritten bytes, flushed by its senders' threads on plain
//!   TCP or by its writer task.
//! - `session`: the tasks of one connection: writer, reader, heartbeats.
//! - `serve`: the peer's requests, served on their workers' threads.
//! - `conn`, `counters`: a connection's byte stream; the bridge's traffic counts.
//! - `control`: every control message after the handshake: membership,
//!   subscription tables, status, kills, leaving.
//! - `pubsub`: publications and subscription changes across links.
//! - `subscriptions`: the topic prefixes a peer's subscribers hold, bounded.
//!
//! Connections are read, and heartbeats kept, on the bridge's own arbiter thread,
//! apart from the workers': a handler that holds its thread never silences a link.
//! The peer's requests are served on the threads of the workers they go to.
//!
//! The bridge is a backbone: it implements `transport::Transport`, and calls into
//! its node through `transport::Inbound`.

mod accept;
pub(crate) mod conn;
mod connect;
mod control;
mod control_frame;
mod counters;
pub mod frame;
pub mod handshake;
mod identity;
pub(crate) mod outbox;
mod peer;
mod pubsub;
mod serve;
mod session;
mod state;
pub(crate) mod tls;
pub mod wire;

pub use crate::transport::BridgeStats;
pub use connect::BridgeError;
pub(crate) use state::Bridge;
