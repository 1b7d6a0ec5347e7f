//! Guards: middleware that runs before a message reaches a worker, as messenger's
//! `memberOnly`. A guard sees the typed message (no serialization in-process), may
//! change it, and passes it on with `Ok(())` or rejects it with a reason, which the
//! caller receives as [`ErrorKind::Rejected`](crate::ErrorKind::Rejected).
//!
//! Guards run on the caller's side of the dealer, so a rejected message never takes a
//! worker's capacity.

use std::fmt;

/// Where a request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A caller inside this node (an actor or a task).
    Local,
    /// The node's HTTP API.
    Http,
    /// Another node of the cluster, by name.
    Node(String),
}

/// What a guard knows about a request besides the message itself.
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    /// The service addressed.
    pub service: &'a str,
    /// The subject addressed.
    pub subject: &'static str,
    /// Where the request came from.
    pub origin: &'a Origin,
}

/// A guard's reason for rejecting a message.
pub type Rejection = String;

/// A guard of messages of type `M`: any `Fn(&mut M, &Meta) -> Result<(), Rejection>`.
pub trait Guard<M>: Send + Sync + 'static {
    /// Pass (`Ok`), possibly after changing `msg`, or reject with a reason.
    fn check(&self, msg: &mut M, meta: &Meta<'_>) -> Result<(), Rejection>;
}

impl<M, F> Guard<M> for F
where
    F: Fn(&mut M, &Meta<'_>) -> Result<(), Rejection> + Send + Sync + 'static,
{
    fn check(&self, msg: &mut M, meta: &Meta<'_>) -> Result<(), Rejection> {
        self(msg, meta)
    }
}

/// The guards of one subject, run in the order they were added.
pub(crate) struct GuardChain<M: 'static> {
    guards: Vec<Box<dyn Guard<M>>>,
}

impl<M: 'static> GuardChain<M> {
    pub(crate) fn new() -> Self {
        GuardChain { guards: Vec::new() }
    }

    pub(crate) fn push(&mut self, guard: impl Guard<M>) {
        self.guards.push(Box::new(guard));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    pub(crate) fn check(&self, msg: &mut M, meta: &Meta<'_>) -> Result<(), Rejection> {
        self.guards.iter().try_for_each(|g| g.check(msg, meta))
    }
}

impl<M: 'static> fmt::Debug for GuardChain<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuardChain({} guards)", self.guards.len())
    }
}
