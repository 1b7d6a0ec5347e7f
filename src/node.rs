//! The node: bootstraps a config's services on arbiter threads under its root actor,
//! links it to the cluster, and is the handle through which actors and tasks make
//! calls. What serves it to the outside (the HTTP API, the child processes it
//! spawns) is attached by the surface that starts it ([`Node::start`], in `run`),
//! through the hooks `Children` and `StopServer`.
//!
//! [`Node::start`] must be called inside an actix `System`.
//!
//! The handle and its state are in `handle`; every other file here adds to it
//! and imports it from there, never from this file, which only declares and
//! re-exports: `boot` starts a node, `calls` and `messaging` are its calls,
//! `consumer` takes jobs for its services, `status` and `metrics` report on it,
//! `admin` carries out operators' commands (scaling a service, reading log
//! lines) here or on the node they are for, `command` is their form on the
//! wire; `logs` reads the node's recent log lines, and other nodes' through
//! `admin`.

mod admin;
mod boot;
mod calls;
pub mod check;
mod command;
mod consumer;
mod handle;
mod locking;
mod logs;
mod messaging;
mod messenger;
mod metrics;
pub(crate) mod spawned;
mod status;

pub(crate) use handle::{Children, Probe, StopServer};
pub use handle::{Node, StartError};
pub use locking::{LockGuard, LockOptions};
pub(crate) use logs::LogBatch;
