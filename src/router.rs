//! The router: the single entry point for requests from any source (local callers,
//! the HTTP API), and the request path through a service's dealer to a worker.
//!
//! A request takes a credit from the dealer, goes straight into the worker's mailbox
//! and waits for the reply on its own oneshot channel, so the reply returns to its
//! origin without another hop. Whatever happens to the caller (a timeout, a dropped
//! future), the credit goes back only when the worker has really finished: the wait
//! moves to a detached task, so a late reply is dropped safely and the worker is
//! never offered more than `concurrency` requests at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use parking_lot::RwLock;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

use crate::dealer::Acquired;
use crate::error::ServiceError;
use crate::events::ExitReason;
use crate::guard::{Meta, Origin};
use crate::message::{Outcome, ReplyOf, Request, WorkerId};
use crate::service::{JsonFn, LocalService, SendFn};
use crate::worker::Incarnation;

/// Resolves service names to the services running on this node.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    node: Arc<str>,
    services: Arc<RwLock<HashMap<String, Arc<LocalService>, foldhash::fast::RandomState>>>,
}

impl Router {
    pub(crate) fn new(node: &str) -> Self {
        Router {
            node: node.into(),
            services: Arc::default(),
        }
    }

    pub(crate) fn insert(&self, service: Arc<LocalService>) {
        self.services.write().insert(service.name.clone(), service);
    }

    /// The running service `name`, if this node runs it.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<LocalService>> {
        self.services.read().get(name).cloned()
    }

    /// The running service `name`, or `NoSuchService`.
    pub(crate) fn service(&self, name: &str) -> Result<Arc<LocalService>, ServiceError> {
        if let Some(service) = self.get(name) {
            return Ok(service);
        }
        let mut running: Vec<String> = self.services.read().keys().cloned().collect();
        running.sort();
        Err(ServiceError::no_such_service(format!(
            "no worker of service `{}` exists (node {} runs: {})",
            crate::logging::untrusted(name),
            self.node,
            running.join(", ")
        )))
    }

    /// Every running service, sorted by name.
    pub(crate) fn services(&self) -> Vec<Arc<LocalService>> {
        let mut all: Vec<_> = self.services.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A JSON request to this node's `service`/`subject` (or its worker `worker`),
    /// as the HTTP API and other nodes send it.
    pub(crate) async fn request_json(
        &self,
        service: &str,
        subject: &str,
        body: bytes::Bytes,
        timeout: Option<Duration>,
        origin: Origin,
        worker: Option<usize>,
    ) -> Result<Box<RawValue>, ServiceError> {
        let service = self.service(service)?;
        let started = Instant::now();
        let served = async {
            let json = service.route_json(subject)?;
            let worker = match worker {
                Some(index) => Some(service.dealer.worker(index).ok_or_else(|| {
                    ServiceError::no_such_service(format!(
                        "worker {}/{}/{index} is not running",
                        self.node, service.name
                    ))
                })?),
                None => None,
            };
            json(service.clone(), body, timeout, origin, worker).await
        }
        .await;
        service.metrics.record(&served, started.elapsed());
        served
    }

    /// The worker a request to `service` (or to its worker `worker`) would most
    /// likely be handed to now, if one is running; see [`Dealer::next_idle`].
    ///
    /// [`Dealer::next_idle`]: crate::dealer::Dealer::next_idle
    pub(crate) fn likely_worker(
        &self,
        service: &str,
        worker: Option<usize>,
    ) -> Option<Arc<Incarnation>> {
        let services = self.services.read();
        let service = services.get(service)?;
        match worker {
            Some(index) => service.dealer.worker(index),
            None => service.dealer.next_idle(),
        }
    }

    /// The running worker `id` of this node.
    pub(crate) fn worker(
        &self,
        id: &WorkerId,
    ) -> Result<(Arc<LocalService>, Arc<Incarnation>), ServiceError> {
        let not_running = || {
            ServiceError::no_such_service(format!(
                "worker {} is not running on node {}",
                crate::logging::untrusted(&id.to_string()),
                self.node
            ))
        };
        if id.node != *self.node {
            return Err(not_running());
        }
        let service = self.service(&id.service).map_err(|_| not_running())?;
        let worker = service.dealer.worker(id.index).ok_or_else(not_running)?;
        Ok((service, worker))
    }
}

/// The JSON entry of `M`'s route: decodes the request, carries it down the typed
/// path and encodes the reply.
pub(crate) fn call_json<M: Request>(
    service: Arc<LocalService>,
    body: bytes::Bytes,
    timeout: Option<Duration>,
    origin: Origin,
    worker: Option<Arc<Incarnation>>,
) -> BoxFuture<'static, Result<Box<RawValue>, ServiceError>> {
    Box::pin(async move {
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &body
        };
        let msg: M = serde_json::from_slice(body).map_err(|e| {
            ServiceError::bad_request(format!(
                "{}/{}: payload does not fit {}: {e}",
                service.name,
                M::SUBJECT,
                short_type_name::<M>()
            ))
        })?;
        let reply = match worker {
            Some(worker) => service.request_worker(worker, msg, timeout, origin).await?,
            None => service.request(msg, timeout, origin).await?,
        };
        serde_json::value::to_raw_value(&reply)
            .map_err(|e| ServiceError::bad_request(format!("reply is not JSON: {e}")))
    })
}

fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

impl LocalService {
    /// Request `msg` from the next free worker and wait for its reply.
    pub(crate) async fn request<M: Request>(
        self: &Arc<Self>,
        mut msg: M,
        timeout: Option<Duration>,
        origin: Origin,
    ) -> Result<ReplyOf<M>, ServiceError> {
        let timeout = timeout.unwrap_or(self.config.timeout);
        let deadline = crate::deadline::tokio_after(timeout);
        let send = self.prepare(&mut msg, &origin)?;
        let from_peer = matches!(origin, Origin::Node(_));
        let flight = self
            .dispatch(msg, send, deadline, timeout, from_peer)
            .await?;
        flight.reply(deadline, timeout).await
    }

    /// [`request`](Self::request), counted in the service's metrics: the entry of
    /// a typed request made on this node (JSON requests are counted by the router).
    pub(crate) async fn serve<M: Request>(
        self: &Arc<Self>,
        msg: M,
        timeout: Option<Duration>,
        origin: Origin,
    ) -> Result<ReplyOf<M>, ServiceError> {
        let started = Instant::now();
        let served = self.request(msg, timeout, origin).await;
        self.metrics.record(&served, started.elapsed());
        served
    }

    /// Hand `msg` to the next free worker; its reply is discarded.
    pub(crate) async fn tell<M: Request>(
        self: &Arc<Self>,
        mut msg: M,
        origin: Origin,
    ) -> Result<(), ServiceError> {
        let timeout = self.config.timeout;
        let send = self.prepare(&mut msg, &origin)?;
        let from_peer = matches!(origin, Origin::Node(_));
        self.dispatch(
            msg,
            send,
            crate::deadline::tokio_after(timeout),
            timeout,
            from_peer,
        )
        .await
        .map(drop)
    }

    /// Request `msg` from one particular worker, outside the dealer's line.
    pub(crate) async fn request_worker<M: Request>(
        self: &Arc<Self>,
        worker: Arc<Incarnation>,
        mut msg: M,
        timeout: Option<Duration>,
        origin: Origin,
    ) -> Result<ReplyOf<M>, ServiceError> {
        let timeout = timeout.unwrap_or(self.config.timeout);
        let deadline = crate::deadline::tokio_after(timeout);
        let send = self.prepare(&mut msg, &origin)?;
        let flight = self.send_direct(worker, msg, send)?;
        flight.reply(deadline, timeout).await
    }

    /// `msg` to every running worker; one result per worker.
    pub(crate) async fn request_all<M: Request + Clone>(
        self: &Arc<Self>,
        msg: M,
        timeout: Option<Duration>,
        origin: Origin,
    ) -> Vec<(WorkerId, Result<ReplyOf<M>, ServiceError>)> {
        let calls = self.dealer.workers().into_iter().map(|worker| {
            let id = worker.slot.id.clone();
            let call = self.request_worker(worker, msg.clone(), timeout, origin.clone());
            async move { (id, call.await) }
        });
        join_all(calls).await
    }

    /// `msg` to every running worker without waiting for replies; how many got it.
    /// A worker that cannot take it (at its bound, or just exited) is named in the log.
    pub(crate) fn broadcast<M: Request + Clone>(
        self: &Arc<Self>,
        mut msg: M,
        origin: Origin,
    ) -> Result<usize, ServiceError> {
        let send = self.prepare(&mut msg, &origin)?;
        let mut reached = 0;
        for worker in self.dealer.workers() {
            match self.send_direct(worker, msg.clone(), send) {
                Ok(_) => reached += 1,
                Err(e) => log::warn!("broadcast {}/{}: {e}", self.name, M::SUBJECT),
            }
        }
        Ok(reached)
    }

    /// Looks up the JSON entry of `subject`.
    pub(crate) fn route_json(&self, subject: &str) -> Result<JsonFn, ServiceError> {
        match self.def.routes.get(subject) {
            Some(route) => Ok(route.json),
            None => {
                let mut subjects: Vec<&str> = self.def.routes.keys().copied().collect();
                subjects.sort();
                Err(ServiceError::bad_request(format!(
                    "service {} has no subject `{subject}` (it has: {})",
                    self.name,
                    subjects.join(", ")
                )))
            }
        }
    }

    /// Finds `M`'s route and runs the guards. Every request this node serves
    /// passes here, typed or JSON, and is logged here (no request's future
    /// grows for it).
    fn prepare<M: Request>(&self, msg: &mut M, origin: &Origin) -> Result<SendFn<M>, ServiceError> {
        served_here(&self.name, M::SUBJECT, origin);
        let route = self.def.routes.get(M::SUBJECT).ok_or_else(|| {
            ServiceError::bad_request(format!(
                "service {} does not handle subject `{}`",
                self.name,
                M::SUBJECT
            ))
        })?;
        let (send, guards) = route.typed::<M>()?;
        if !guards.is_empty() || !self.def.guards.is_empty() {
            let meta = Meta {
                service: &self.name,
                subject: M::SUBJECT,
                origin,
            };
            for guard in &self.def.guards {
                guard(&meta).map_err(ServiceError::rejected)?;
            }
            guards.check(msg, &meta).map_err(ServiceError::rejected)?;
        }
        Ok(send)
    }

    /// Waits for a credit and puts `msg` in that worker's mailbox.
    async fn dispatch<M: Request>(
        self: &Arc<Self>,
        mut msg: M,
        send: SendFn<M>,
        deadline: Instant,
        timeout: Duration,
        from_peer: bool,
    ) -> Result<InFlight<M::Result>, ServiceError> {
        loop {
            let worker = match self.dealer.acquire(from_peer)? {
                Acquired::Ready(worker) => worker,
                // Boxed: the wait for a credit is the exception, and every
                // request's future would carry its timer.
                Acquired::Waiting(turn) => match Box::pin(timeout_at(deadline, turn)).await {
                    Ok(Ok(granted)) => granted?,
                    Ok(Err(_)) => {
                        return Err(ServiceError::service_failed(format!(
                            "service {} stopped while the request waited",
                            self.name
                        )))
                    }
                    Err(_) => {
                        return Err(ServiceError::timeout(format!(
                            "no worker of {} was free within {}",
                            self.name,
                            humantime::format_duration(timeout)
                        )))
                    }
                },
            };
            // A credit of a worker that a scale-down removed meanwhile is dropped.
            if !worker.hold() {
                continue;
            }
            match send(&worker.mailbox, msg, crate::trace::current()) {
                Ok(reply) => return Ok(InFlight::new(self.clone(), worker, reply, true)),
                // The worker exited after its credit was taken: try the next one.
                Err(back) => {
                    worker.unhold();
                    msg = back;
                }
            }
        }
    }

    fn send_direct<M: Request>(
        self: &Arc<Self>,
        worker: Arc<Incarnation>,
        msg: M,
        send: SendFn<M>,
    ) -> Result<InFlight<M::Result>, ServiceError> {
        let limit = self.config.concurrency.saturating_add(self.config.queue) as u64;
        if worker.slot.in_flight.load(Ordering::Relaxed) >= limit {
            return Err(ServiceError::overloaded(format!(
                "worker {} has {limit} requests in flight",
                worker.slot.id
            )));
        }
        if !worker.hold() {
            return Err(ServiceError::no_such_service(format!(
                "worker {} is being removed by a scale-down",
                worker.slot.id
            )));
        }
        match send(&worker.mailbox, msg, crate::trace::current()) {
            Ok(reply) => Ok(InFlight::new(self.clone(), worker, reply, false)),
            Err(_) => {
                worker.unhold();
                Err(ServiceError::no_such_service(format!(
                    "worker {} is not running",
                    worker.slot.id
                )))
            }
        }
    }
}

/// The `debug` line of each request this node serves, naming where it came
/// from. Within a traced
/// request it names the trace, as every node's lines on the request's way do,
/// so that a request can be followed through the logs alone.
#[inline]
fn served_here(service: &str, subject: &str, origin: &Origin) {
    if log::Level::Debug <= log::max_level() {
        log_served_here(service, subject, origin);
    }
}

/// Out of line, so that the request path carries no formatting code.
#[cold]
#[inline(never)]
fn log_served_here(service: &str, subject: &str, origin: &Origin) {
    let (service, subject) = (
        crate::logging::untrusted(service),
        crate::logging::untrusted(subject),
    );
    match origin {
        Origin::Local => log::debug!("request {service}/{subject} from here: served here"),
        Origin::Http => log::debug!("request {service}/{subject} from http: served here"),
        Origin::Node(node) => log::debug!(
            "request {service}/{subject} from node {}: served here",
            crate::logging::untrusted(node)
        ),
    }
}

/// How long a caller whose reply channel closed waits to learn whether the worker
/// died. An exit is published microseconds after the panic; a worker still alive
/// after this dropped the reply on its own (a panic inside an async handler).
const EXIT_GRACE: Duration = Duration::from_millis(250);

fn exit_grace(deadline: Instant) -> Instant {
    deadline.min(Instant::now() + EXIT_GRACE)
}

/// A request in a worker's hands. Settles the worker's counters and credit exactly
/// once: when the reply comes, or, if the caller stops waiting, in a detached task
/// that waits for the worker to finish.
struct InFlight<T: Send + 'static> {
    service: Arc<LocalService>,
    worker: Option<Arc<Incarnation>>,
    reply: Option<oneshot::Receiver<T>>,
    credit: bool,
}

impl<T: Send + 'static> InFlight<T> {
    fn new(
        service: Arc<LocalService>,
        worker: Arc<Incarnation>,
        reply: oneshot::Receiver<T>,
        credit: bool,
    ) -> Self {
        // Counted in `in_flight` already, by `Incarnation::hold`.
        InFlight {
            service,
            worker: Some(worker),
            reply: Some(reply),
            credit,
        }
    }

    fn settle(service: &LocalService, worker: Arc<Incarnation>, handled: bool, credit: bool) {
        worker.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if handled {
            worker.slot.handled.fetch_add(1, Ordering::Relaxed);
        }
        if credit {
            service.dealer.release(worker);
        }
    }

    /// Waits for the reply until `deadline`.
    async fn reply(mut self, deadline: Instant, timeout: Duration) -> Result<T::Reply, ServiceError>
    where
        T: Outcome,
    {
        let Some(worker) = self.worker.clone() else {
            return Err(ServiceError::handler_panicked("request already settled"));
        };
        let waited = match self.reply.as_mut() {
            Some(reply) => timeout_at(deadline, reply).await,
            None => return Err(ServiceError::handler_panicked("request already settled")),
        };
        match waited {
            Ok(Ok(outcome)) => {
                self.finish(true);
                outcome.into_result()
            }
            Ok(Err(_closed)) => {
                // The credit goes back only once the worker's fate is known: a worker
                // that died must not be handed the next request in line.
                // Boxed: a rare wait that every request's future would carry.
                let reason = Box::pin(worker.exit_reason(exit_grace(deadline))).await;
                self.finish(false);
                let id = &worker.slot.id;
                Err(ServiceError::handler_panicked(match reason {
                    Some(ExitReason::Panicked(why)) => format!("worker {id} panicked: {why}"),
                    Some(ExitReason::Killed) => {
                        format!("worker {id} was killed while handling the request")
                    }
                    Some(ExitReason::Stopped) => format!("worker {id} stopped before replying"),
                    None => format!(
                        "worker {id} dropped the request without replying (did an async handler panic?)"
                    ),
                }))
            }
            Err(_elapsed) => Err(ServiceError::timeout(format!(
                "no reply from {} within {}",
                worker.slot.id,
                humantime::format_duration(timeout)
            ))),
        }
    }

    fn finish(&mut self, handled: bool) {
        self.reply = None;
        if let Some(worker) = self.worker.take() {
            Self::settle(&self.service, worker, handled, self.credit);
        }
    }
}

impl<T: Send + 'static> Drop for InFlight<T> {
    fn drop(&mut self) {
        let (Some(worker), Some(reply)) = (self.worker.take(), self.reply.take()) else {
            return;
        };
        // The worker still holds the request: its credit comes back when it finishes
        // (or exits, which closes the channel), never earlier. The wait runs on the
        // worker's own arbiter, which lives as long as the worker can reply; should
        // it be gone, the guard settles at once.
        let settle = Settle {
            service: self.service.clone(),
            worker: Some(worker.clone()),
            credit: self.credit,
            handled: false,
        };
        worker.arbiter.spawn(async move {
            let handled = reply.await.is_ok();
            if !handled {
                let worker = settle.worker.clone();
                if let Some(worker) = worker {
                    worker.exit_reason(Instant::now() + EXIT_GRACE).await;
                }
            }
            settle.finish(handled);
        });
    }
}

/// Settles a request abandoned by its caller when dropped: after the worker's reply,
/// or when the wait is cancelled.
struct Settle {
    service: Arc<LocalService>,
    worker: Option<Arc<Incarnation>>,
    credit: bool,
    handled: bool,
}

impl Settle {
    fn finish(mut self, handled: bool) {
        self.handled = handled;
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            InFlight::<()>::settle(&self.service, worker, self.handled, self.credit);
        }
    }
}

/// The request future must be `Send`: the HTTP API awaits it on its own threads.
#[allow(dead_code)]
fn request_future_is_send<M: Request>(service: Arc<LocalService>, msg: M) {
    fn is_send<F: Send>(_: &F) {}
    is_send(&service.request(msg, None, Origin::Local));
}
