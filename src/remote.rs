//! Calls that may cross to another node: where a request goes (this node or a peer,
//! by the service's `routing`), and the typed and JSON calls over the node's
//! [`Transport`]. Only a request that leaves the node is serialized.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::config::Routing;
use crate::error::ServiceError;
use crate::message::{ReplyOf, Request, WorkerId};
use crate::router::Router;
use crate::service::LocalService;
use crate::transport::{Call, Link, Offer, Transport};

/// Where a request goes.
pub(crate) enum Target {
    /// A worker of this node.
    Local(Arc<LocalService>),
    /// Another node that runs the service.
    Remote(Remote),
}

/// A service on another node and our load on it.
pub(crate) struct Remote {
    pub(crate) link: Arc<dyn Link>,
    pub(crate) offer: Offer,
    load: Arc<AtomicU64>,
}

impl Remote {
    fn load_ratio(&self) -> f64 {
        self.load.load(Ordering::Relaxed) as f64 / self.offer.capacity.max(1) as f64
    }

    fn saturated(&self) -> bool {
        self.load.load(Ordering::Relaxed) >= self.offer.capacity as u64
    }

    /// The service's own timeout on that node, unless the caller set one.
    pub(crate) fn timeout(&self, timeout: Option<Duration>) -> Duration {
        timeout.unwrap_or(Duration::from_millis(self.offer.timeout_ms))
    }

    /// The node the service runs on.
    pub(crate) fn node(&self) -> &str {
        self.link.node()
    }

    fn call_of<'a>(
        &'a self,
        subject: &'a str,
        timeout: Duration,
        worker: Option<usize>,
    ) -> Call<'a> {
        Call {
            service: &self.offer.name,
            subject,
            timeout,
            worker: worker.map(|w| w as u32),
            trace: crate::trace::current(),
        }
    }

    /// The `debug` line of a request sent to this node; within a traced
    /// request it names the trace, as the serving node's line does.
    #[inline]
    fn log_sent(&self, subject: &str) {
        if log::Level::Debug <= log::max_level() {
            log_sent(&self.offer.name, subject, self.node());
        }
    }

    /// Sends `payload` (the message's JSON) and waits for the reply's JSON.
    async fn call(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
        worker: Option<usize>,
    ) -> Result<Bytes, ServiceError> {
        self.load.fetch_add(1, Ordering::Relaxed);
        let _settled = LoadGuard(&self.load);
        self.log_sent(subject);
        let deadline = crate::deadline::tokio_after(timeout);
        let pending = self
            .link
            .request(self.call_of(subject, timeout, worker), payload)?;
        pending
            .wait(self.link.as_ref(), deadline, || {
                ServiceError::timeout(format!(
                    "no reply from node {} for {}/{subject} in time",
                    self.node(),
                    self.offer.name
                ))
            })
            .await
    }

    /// A typed request to this remote service.
    pub(crate) async fn request<M: Request>(
        &self,
        msg: &M,
        timeout: Option<Duration>,
        worker: Option<usize>,
    ) -> Result<ReplyOf<M>, ServiceError> {
        let payload = serde_json::to_vec(msg)
            .map_err(|e| ServiceError::bad_request(format!("message is not JSON: {e}")))?;
        let reply = self
            .call(M::SUBJECT, &payload, self.timeout(timeout), worker)
            .await?;
        serde_json::from_slice(&reply).map_err(|e| {
            ServiceError::bad_request(format!(
                "reply from node {} does not fit the reply type: {e}",
                self.node()
            ))
        })
    }

    /// A one-way message to this remote service (or one of its workers).
    pub(crate) async fn tell<M: Request>(
        &self,
        msg: &M,
        worker: Option<usize>,
    ) -> Result<(), ServiceError> {
        let payload = serde_json::to_vec(msg)
            .map_err(|e| ServiceError::bad_request(format!("message is not JSON: {e}")))?;
        self.load.fetch_add(1, Ordering::Relaxed);
        let _settled = LoadGuard(&self.load);
        self.log_sent(M::SUBJECT);
        let call = self.call_of(M::SUBJECT, self.timeout(None), worker);
        self.link.tell(call, &payload)
    }

    /// A JSON request, as the HTTP API forwards it.
    pub(crate) async fn request_json(
        &self,
        subject: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Box<RawValue>, ServiceError> {
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            body
        };
        let reply = self
            .call(subject, body, self.timeout(timeout), None)
            .await?;
        // Checked as JSON, and passed on as it came.
        let not_json = |e: String| {
            ServiceError::bad_request(format!("reply from node {} is not JSON: {e}", self.node()))
        };
        let text = String::from_utf8(reply.to_vec()).map_err(|e| not_json(e.to_string()))?;
        RawValue::from_string(text).map_err(|e| not_json(e.to_string()))
    }

    /// The ids of the remote service's workers.
    pub(crate) fn worker_ids(&self) -> impl Iterator<Item = WorkerId> + '_ {
        (0..self.offer.workers).map(|i| WorkerId::new(self.node(), &self.offer.name, i))
    }
}

/// Out of line, so that the request path carries no formatting code.
#[cold]
#[inline(never)]
fn log_sent(service: &str, subject: &str, node: &str) {
    log::debug!(
        "request {}/{}: to node {node}",
        crate::logging::untrusted(service),
        crate::logging::untrusted(subject),
    );
}

struct LoadGuard<'a>(&'a AtomicU64);

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every other node that runs `service`, over a live link, in name order (so that
/// ties between equally loaded nodes break the same way every time). Nothing is
/// allocated when no peer offers the service: local calls on a bridged node pay
/// only a read lock here.
pub(crate) fn remotes(transport: Option<&dyn Transport>, service: &str) -> Vec<Remote> {
    let Some(transport) = transport else {
        return Vec::new();
    };
    let mut found: Vec<Remote> = transport
        .offering(service)
        .into_iter()
        .map(|(link, offer, load)| Remote { link, offer, load })
        .collect();
    found.sort_by(|a, b| a.node().cmp(b.node()));
    found
}

/// The remote service `service` on node `node`.
pub(crate) fn remote_on(
    transport: Option<&dyn Transport>,
    node: &str,
    service: &str,
) -> Result<Remote, ServiceError> {
    let link = transport.and_then(|t| t.link(node)).ok_or_else(|| {
        ServiceError::new(
            crate::ErrorKind::NodeDown,
            format!("node {node} is not connected to this node"),
        )
    })?;
    let (offer, load) = link.offer(service).ok_or_else(|| {
        ServiceError::no_such_service(format!("node {node} runs no service `{service}`"))
    })?;
    Ok(Remote { link, offer, load })
}

/// Picks where a request for `service` goes, by the service's routing policy: this
/// node's own config decides; a service this node does not run goes to the least
/// loaded node that does.
pub(crate) fn target(
    router: &Router,
    transport: Option<&dyn Transport>,
    service: &str,
    turn: &AtomicUsize,
) -> Result<Target, ServiceError> {
    let local = router.get(service);
    let remotes = remotes(transport, service);
    let local = match (local, remotes.is_empty()) {
        (Some(local), true) => return Ok(Target::Local(local)),
        // Only now the error's message, which names the services that do run.
        (None, true) => return router.service(service).map(Target::Local),
        // A node that is stopping sends new requests to the others.
        (Some(local), false) if !local.dealer.is_open() => None,
        (Some(local), false) => Some(local),
        (None, false) => None,
    };
    // One ticket per request: it breaks ties between equally loaded nodes (two
    // requests routed at the same instant both see the same loads, and must not
    // both pick the first node by name) and takes the round-robin turn.
    let ticket = turn.fetch_add(1, Ordering::Relaxed);
    let mut ranked: Vec<_> = remotes.into_iter().map(|r| (r.load_ratio(), r)).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let low = ranked[0].0;
    let tied = ranked
        .iter()
        .take_while(|(load, _)| *load <= low)
        .count()
        .max(1);
    let (_, least) = ranked.swap_remove(ticket % tied);
    let mut remotes: Vec<_> = ranked.into_iter().map(|(_, r)| r).collect();
    remotes.sort_by(|a, b| a.load_ratio().total_cmp(&b.load_ratio()));
    let Some(local) = local else {
        return Ok(Target::Remote(least));
    };
    let choose_local = match local.config.routing {
        Routing::LocalFirst => local.dealer.has_idle() || least.saturated(),
        Routing::LeastLoaded => local_load(&local) <= least.load_ratio(),
        Routing::RoundRobin => {
            let nodes = remotes.len() + 2;
            let n = ticket % nodes;
            if n == 0 {
                true
            } else if n == 1 {
                false
            } else {
                return Ok(Target::Remote(remotes.swap_remove(n - 2)));
            }
        }
    };
    Ok(if choose_local {
        Target::Local(local)
    } else {
        Target::Remote(least)
    })
}

fn local_load(service: &LocalService) -> f64 {
    let slots = service.slots.get();
    let in_flight: u64 = slots
        .iter()
        .map(|s| s.in_flight.load(Ordering::Relaxed))
        .sum();
    let capacity = slots.len() * service.config.concurrency;
    in_flight as f64 / capacity.max(1) as f64
}
