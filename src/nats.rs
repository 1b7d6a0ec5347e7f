//! The NATS backbone: every node of the cluster joins through a NATS server (or
//! a cluster of them), with no link of its own to any other node.
//!
//! - Membership and liveness: each node beats on `P.hb.NODE` every
//!   `nats.heartbeat` with its member entry; a node silent for three beats is
//!   down, and the calls it holds fail with `NodeDown`, as on the bridge.
//! - Calls: a request for a service is routed by colony (least loaded,
//!   `local_first`, draining nodes skipped) and sent to the chosen node's
//!   `P.node.NODE.req`; its answer comes back to this node's inbox. Knowing the
//!   node that holds each call is what lets its loss be `NodeDown` rather than
//!   a timeout. Status, kills and subscription tables go on `P.node.NODE.ctl`.
//! - Services for NATS clients: each service is registered with the NATS
//!   services API (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS` answer with the
//!   `io.nats.micro.v1` schemas), served on `P.svc.SERVICE.SUBJECT` in a queue
//!   group, so `nats request colony.svc.math.sum '{"a":1,"b":2}'` is served.
//! - Pub/sub: topics are subjects (`subjects`); a node subscribes to the filters
//!   its subscribers' prefixes need, and tells the others its prefix table so a
//!   publisher knows who wants what.
//! - The cluster state (job queues, locks, confirmations) lives in JetStream
//!   (`state`), reached by every node alike.
//!
//! The files: `connect` joins the server before the node boots; `node` is the
//! node's side (peers, calls waiting, counts); `cluster` is the transport the
//! node calls, `link` one other node, `serve` the node's tasks, `control` the
//! control requests it answers, `outbox` what
//! waits to be sent; `subjects` lists the subjects, `wire` what goes in the
//! messages, `peers` and `topics` what the node knows of the others'
//! subscriptions and its own; `state` is the cluster state in JetStream.

mod cluster;
mod connect;
mod control;
mod link;
mod node;
mod outbox;
mod peers;
mod serve;
mod state;
mod subjects;
mod topics;
mod wire;

pub(crate) use cluster::backbone;
pub(crate) use connect::prepare;
