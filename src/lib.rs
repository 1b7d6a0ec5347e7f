//! colony: typed, supervised clusters of actix actors.
//!
//! # Layout
//!
//! Six layers; a module imports only from its own layer or those below it, never
//! in a circle (`tests/layers.rs` checks both, and new code goes in the lowest
//! layer it can). A request enters at the top and works its way down:
//!
//! ```text
//!  6 surfaces          cli  api  run  spawn  certs    the outside: command line,
//!        |                                            HTTP, a whole node, children
//!  5 the node          node  app                      bootstrap, the handle for calls,
//!        |                                            a config checked against the app
//!  4 transports        bridge  memory  nats           backbones: TCP links, nodes of
//!        |             messenger                      one process in memory, or NATS;
//!        |                                            Node messenger's protocol
//!  3 cluster services  transport  remote  pubsub      what crosses nodes, written
//!        |             jobs  locks  confirm  state    against the transport seam;
//!        |             store                          the state's file on disk
//!  2 in-node runtime   root  supervisor  router       one node's request path:
//!        |             dealer  worker  service        name → dealer → worker → reply
//!        |             inbox  metrics
//!  1 core types        error  message  guard          what every layer speaks
//!                      events  deadline  logging
//!                      backoff  config  status
//!                      trace
//! ```
//!
//! - Surfaces: [`cli`] is the `colony` command line; `api` serves the HTTP API
//!   and the live dashboard at `GET /`;
//!   `run` assembles a whole node ([`Node::start`], [`run()`]): the config checked,
//!   the API bound, the node booted, then the API served and the `spawn:` children
//!   started (`spawn`: pm2's backoff and crash-loop guard, rolling reloads) and
//!   attached to the node through hooks the node defines; [`certs`] makes the
//!   cluster CA and node certificates.
//! - The node: `node` bootstraps a config's services and its backbone and is the
//!   handle for every call ([`Node::request`], [`Node::tell`], [`Node::broadcast`],
//!   …); `node::check` checks a config against the [`app`], where an application
//!   lists its services: an actor type and one typed line per message.
//! - Transports implement [`transport`]'s traits: [`bridge`] connects nodes with
//!   authenticated, framed TCP (or TLS) links; [`memory`] links nodes of one
//!   process without sockets; `nats` joins them through a NATS server, with the
//!   cluster state in JetStream. A new backbone is one new folder here.
//! - Cluster services: [`transport`] is the seam where a backbone plugs in
//!   (requests, replies and one-way sends; publishes and subscription changes;
//!   cluster-state operations; membership and liveness); `remote` decides whether
//!   a call stays on this node or crosses to another that runs the service;
//!   [`pubsub`] is publish/subscribe across the cluster; [`jobs`] (job queues),
//!   `locks` and `confirm` are kept by the master in `state`, which other nodes
//!   reach over their transport, and written to disk by [`store`].
//! - In-node runtime: `root` is the root actor of a node; it starts one
//!   `supervisor` per service, which starts, restarts and scales its workers; `router`
//!   carries a request through the service's `dealer` (the load-balancing broker)
//!   into a `worker`'s mailbox and the reply back (a traced request into its
//!   `inbox`, so that the handler runs within the trace); `metrics` is `GET /metrics`.
//! - Core types: [`config`] reads a node's YAML config and checks every key it can
//!   alone; [`message`] defines a typed message; [`guard`] the middleware that may
//!   change or reject it; [`error`] the error every failed call returns;
//!   [`events`] the lifecycle events; [`status`] what status shows; `deadline`
//!   turns outside durations into deadlines; `backoff` is the one retry backoff;
//!   [`trace`] is the W3C trace context a request carries across nodes (and
//!   [`trace::current`] tells a handler its request's); [`logging`] formats log
//!   lines with node, worker and trace, and keeps each node's recent ones in a
//!   ring that `GET /v1/logs` reads.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod api;
pub mod app;
mod backoff;
pub mod bridge;
pub mod certs;
pub mod cli;
pub mod config;
mod confirm;
mod deadline;
mod dealer;
pub mod error;
pub mod events;
pub mod guard;
mod inbox;
pub mod jobs;
mod locks;
pub mod logging;
pub mod memory;
pub mod message;
mod messenger;
mod metrics;
mod nats;
pub mod node;
pub mod pubsub;
mod remote;
mod root;
mod router;
mod run;
mod service;
mod spawn;
mod state;
pub mod status;
pub mod store;
mod supervisor;
pub mod trace;
pub mod transport;
mod worker;

pub use app::{App, ServiceBuilder, ServiceFactory, WorkerContext, MASTER_SERVICE};
pub use config::{ConfigError, NodeConfig};
pub use error::{ErrorKind, ServiceError};
pub use events::{ExitReason, LifecycleEvent};
pub use guard::{Guard, Meta, Origin, Rejection};
pub use jobs::{DeadLetter, QueueStatus};
pub use logging::current_worker;
pub use message::{Outcome, ReplyOf, Request, WorkerId};
pub use node::{LockGuard, LockOptions, Node, StartError};
pub use pubsub::{channel, PublishMeta, Published, Subscription};
pub use run::run;
pub use trace::TraceContext;
pub use worker::WorkerState;
