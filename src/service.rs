//! A service's definition with its actor type erased: one [`Route`] per subject,
//! and [`LocalService`], the service as it runs on this node (the router carries
//! requests through it). Routes keep the typed pieces (the send function and the
//! guard chain of message type `M`) behind `Any`, and get them back by `TypeId`
//! when a typed call arrives, so in-process calls never serialize.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::config::ServiceConfig;
use crate::dealer::Dealer;
use crate::error::ServiceError;
use crate::guard::{GuardChain, Meta, Origin, Rejection};
use crate::inbox;
use crate::message::Request;
use crate::metrics::ServiceMetrics;
use crate::trace::TraceContext;
use crate::worker::{self, Incarnation, Mailbox, WorkerSlot};

/// Hands `msg` to a worker's mailbox (its traced inbox when the request has a
/// trace), or gives it back if the mailbox is closed.
pub(crate) type SendFn<M> =
    fn(&Mailbox, M, Option<TraceContext>) -> Result<oneshot::Receiver<<M as Message>::Result>, M>;

/// Decodes a JSON request, runs it through the typed path and encodes the reply,
/// which passes on as the JSON text it is, never parsed again.
pub(crate) type JsonFn = fn(
    Arc<LocalService>,
    bytes::Bytes,
    Option<Duration>,
    Origin,
    Option<Arc<Incarnation>>,
) -> BoxFuture<'static, Result<Box<RawValue>, ServiceError>>;

/// A service-wide guard: sees every request's [`Meta`], whatever its subject.
pub(crate) type ServiceGuard = Arc<dyn Fn(&Meta<'_>) -> Result<(), Rejection> + Send + Sync>;

/// One subject of a service.
pub(crate) struct Route {
    pub(crate) subject: &'static str,
    type_id: TypeId,
    type_name: &'static str,
    send: Box<dyn Any + Send + Sync>,
    guards: Box<dyn Any + Send + Sync>,
    pub(crate) json: JsonFn,
}

impl Route {
    /// The route of message type `M`, handled by actor `A`, whose JSON requests
    /// `json` serves.
    pub(crate) fn new<A, M>(json: JsonFn) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<M>,
        M: Request,
    {
        Route {
            subject: M::SUBJECT,
            type_id: TypeId::of::<M>(),
            type_name: std::any::type_name::<M>(),
            send: Box::new(send_to::<A, M> as SendFn<M>),
            guards: Box::new(GuardChain::<M>::new()),
            json,
        }
    }

    /// The typed send function and guards, if this route is of message type `M`.
    pub(crate) fn typed<M: Request>(&self) -> Result<(SendFn<M>, &GuardChain<M>), ServiceError> {
        let send = self.send.downcast_ref::<SendFn<M>>();
        let guards = self.guards.downcast_ref::<GuardChain<M>>();
        match (send, guards) {
            (Some(send), Some(guards)) => Ok((*send, guards)),
            _ => Err(ServiceError::bad_request(format!(
                "subject `{}` takes {}, not {}",
                self.subject,
                self.type_name,
                std::any::type_name::<M>()
            ))),
        }
    }

    pub(crate) fn guards_mut<M: Request>(&mut self) -> Option<&mut GuardChain<M>> {
        self.guards.downcast_mut::<GuardChain<M>>()
    }

    pub(crate) fn is_type<M: 'static>(&self) -> bool {
        self.type_id == TypeId::of::<M>()
    }

    pub(crate) fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({} -> {})", self.subject, self.type_name)
    }
}

fn send_to<A, M>(
    mailbox: &Mailbox,
    msg: M,
    trace: Option<TraceContext>,
) -> Result<oneshot::Receiver<M::Result>, M>
where
    A: Actor<Context = Context<A>> + Handler<M>,
    M: Request,
{
    let Some(mailboxes) = worker::mailboxes::<A>(mailbox) else {
        return Err(msg);
    };
    match trace {
        None => mailboxes.address.send(msg).map_err(|e| e.into_inner()),
        Some(trace) => inbox::send(&mailboxes.traced, msg, trace),
    }
}

/// A service as the app defines it: name, routes and guards.
pub(crate) struct ServiceDef {
    pub(crate) name: String,
    pub(crate) routes: HashMap<&'static str, Route, foldhash::fast::RandomState>,
    pub(crate) guards: Vec<ServiceGuard>,
    /// The job queues its workers take from, with the subject each job is.
    pub(crate) consumes: Vec<(String, &'static str)>,
}

impl ServiceDef {
    pub(crate) fn new(name: String) -> Self {
        ServiceDef {
            name,
            routes: HashMap::default(),
            guards: Vec::new(),
            consumes: Vec::new(),
        }
    }
}

impl fmt::Debug for ServiceDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut subjects: Vec<_> = self.routes.keys().collect();
        subjects.sort();
        f.debug_struct("ServiceDef")
            .field("name", &self.name)
            .field("subjects", &subjects)
            .finish()
    }
}

/// A service running on this node: its definition, config, dealer and worker slots.
#[derive(Debug)]
pub(crate) struct LocalService {
    pub(crate) name: String,
    pub(crate) def: Arc<ServiceDef>,
    pub(crate) config: ServiceConfig,
    pub(crate) dealer: Dealer,
    /// The workers the service has now, by index; its supervisor changes them.
    pub(crate) slots: Slots,
    /// The node's worker threads, in the order the service's workers take them:
    /// worker `i` runs on `threads[i % threads.len()]`.
    pub(crate) threads: Vec<ArbiterHandle>,
    /// Requests served, errors by kind and latency, for `GET /metrics`.
    pub(crate) metrics: ServiceMetrics,
}

/// The slots of a service's workers, index `i` at position `i`: a snapshot that
/// a scale replaces whole. Readers (status, metrics, the `least_loaded`
/// routing) take the snapshot under a read lock held only to clone an `Arc`,
/// then read it without one; the request path itself goes through the dealer
/// and never reads it.
#[derive(Debug)]
pub(crate) struct Slots(RwLock<Arc<[Arc<WorkerSlot>]>>);

impl Slots {
    pub(crate) fn new(slots: Vec<Arc<WorkerSlot>>) -> Self {
        Slots(RwLock::new(slots.into()))
    }

    /// The workers now.
    pub(crate) fn get(&self) -> Arc<[Arc<WorkerSlot>]> {
        self.0.read().clone()
    }

    /// How many workers the service has now.
    pub(crate) fn len(&self) -> usize {
        self.0.read().len()
    }

    /// Replaces the workers (the supervisor, when the service is scaled).
    pub(crate) fn set(&self, slots: Vec<Arc<WorkerSlot>>) {
        *self.0.write() = slots.into();
    }
}
