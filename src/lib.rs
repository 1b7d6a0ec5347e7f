//! colony: typed, supervised clusters of actix actors.
//!
//! # Layout
//!
//! In the order a request flows through a node:
//!
//! - [`config`] reads a node's YAML config and checks every key.
//! - [`app`] is where an application lists its services: an actor type and one typed
//!   line per message it handles; [`message`] defines what a typed message is.
//! - [`guard`] holds the middleware that may change or reject a message first.
//! - `node` bootstraps a config's services and is the handle for every call
//!   ([`Node::request`], [`Node::tell`], [`Node::broadcast`], …); [`node::run`] is
//!   the long-running entry point.
//! - `master` is the root actor of a node; it starts one `supervisor` actor per
//!   service, which starts and restarts that service's workers.
//! - `remote` decides, by the service's routing, whether a call stays on this node
//!   or crosses to another that runs the service, over the node's [`transport`]:
//!   the seam where a backbone plugs in.
//! - `router` resolves a service name and carries a request through the service's
//!   `dealer` (the load-balancing broker) into a `worker`'s mailbox and the reply back.
//! - [`bridge`] is the TCP backbone: authenticated, framed links that carry
//!   requests to workers on other nodes and the cluster's member table; [`certs`]
//!   makes the cluster CA and node certificates for its TLS. [`memory`] links
//!   nodes of one process without sockets.
//! - [`pubsub`] is publish/subscribe across the cluster (prefix filtering at the
//!   publisher, clustr-node's channels); [`jobs`] (job queues), `locks` and `confirm`
//!   are kept by the master in `holder`, which other nodes reach over their transport.
//! - [`messages`] holds the lifecycle events every actor can subscribe to.
//! - [`error`] is the error every failed call returns, with its kinds.
//! - `spawn` starts the node processes of a config's `spawn:` list and keeps them
//!   running (pm2's backoff and crash-loop guard, rolling reloads).
//! - [`status`] is what the status endpoint and command show; `metrics` is the
//!   Prometheus text of `GET /metrics`.
//! - `deadline` turns durations from outside into deadlines that cannot overflow.
//! - `api` serves the HTTP API; [`cli`] is the `colony` command line; [`logging`]
//!   formats log lines with node and worker.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod api;
pub mod app;
pub mod bridge;
pub mod certs;
pub mod cli;
pub mod config;
mod confirm;
mod deadline;
mod dealer;
pub mod error;
pub mod guard;
mod holder;
pub mod jobs;
mod locks;
pub mod logging;
mod master;
pub mod memory;
pub mod message;
pub mod messages;
mod metrics;
pub mod node;
pub mod pubsub;
mod remote;
mod router;
mod service;
mod spawn;
pub mod status;
mod supervisor;
pub mod transport;
mod worker;

pub use app::{App, ServiceBuilder, ServiceFactory, WorkerContext, MASTER_SERVICE};
pub use config::{ConfigError, NodeConfig};
pub use error::{ErrorKind, ServiceError};
pub use guard::{Guard, Meta, Origin, Rejection};
pub use jobs::{DeadLetter, QueueStatus};
pub use message::{Outcome, ReplyOf, Request, WorkerId};
pub use messages::LifecycleEvent;
pub use node::{LockGuard, LockOptions, Node, StartError};
pub use pubsub::{channel, PublishMeta, Published, Subscription};
pub use worker::{current_worker, ExitReason, WorkerState};
