//! Serving the peer's requests: each request read is served on the thread of
//! the worker it will most likely go to, so that the request reaches the
//! worker's mailbox without waking another thread, and the reply is queued (and
//! on plain TCP written, see `outbox`) where it is produced. The requests of one
//! read go to each worker's thread in one task.
//!
//! A request whose worker is not known yet (none free, or no such service) is
//! served on the link's own thread, as is every cluster operation.
//!
//! A traced request is served alone, in a task (or a box) of its own within
//! its span: the batches of untraced ones hold nothing for traces.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;

use super::peer::Peer;
use super::state::{Bridge, Serving};
use super::wire;
use crate::error::ServiceError;
use crate::trace::TraceContext;
use crate::transport::{serving_span, Incoming};
use crate::worker::Incarnation;

/// The peer's requests served at once; past it the reader reads no more until
/// one is answered, and TCP holds the peer back.
pub(super) const MAX_SERVING: usize = 8192;

/// A request of the peer being served on the link's thread.
pub(super) type Served = BoxFuture<'static, ()>;

/// How many of the peer's requests a link serves now, wherever they are served.
#[derive(Default)]
pub(super) struct Load {
    count: AtomicUsize,
    /// Told when the count falls below [`MAX_SERVING`].
    below: Notify,
}

impl Load {
    /// Whether reading waits until a request is answered.
    pub(super) fn full(&self) -> bool {
        self.count.load(Ordering::Acquire) >= MAX_SERVING
    }

    /// Waits until the count falls below [`MAX_SERVING`] (or was told so).
    pub(super) async fn below(&self) {
        self.below.notified().await;
    }

    fn take(self: &Arc<Self>) -> Taken {
        self.count.fetch_add(1, Ordering::AcqRel);
        Taken(self.clone())
    }
}

/// One request counted in a [`Load`] until it drops.
struct Taken(Arc<Load>);

impl Drop for Taken {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == MAX_SERVING {
            self.0.below.notify_one();
        }
    }
}

/// A request of the peer, answered exactly once: by its reply, or, if it is
/// dropped unserved (its worker's thread stopped), by an error.
struct Job {
    peer: Arc<Peer>,
    incoming: Option<Incoming>,
    id: u64,
    one_way: bool,
    answered: bool,
    /// Counted until the reply is queued, so that a stopping node can wait for
    /// its last replies to go out.
    _counted: Serving,
    _load: Taken,
}

impl Job {
    async fn serve(mut self, bridge: Arc<Bridge>) {
        let Some(incoming) = self.incoming.take() else {
            return;
        };
        let answer = bridge.inbound.serve(incoming, &self.peer.name).await;
        self.answered = true;
        reply(&self.peer, self.id, self.one_way, answer);
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.answered {
            let error = ServiceError::service_failed(format!(
                "request {} from node {} was dropped unserved: its worker's thread stopped",
                self.id, self.peer.name
            ));
            reply(&self.peer, self.id, self.one_way, Err(error));
        }
    }
}

/// The requests of one read, by where they will be served.
#[derive(Default)]
pub(super) struct Batch {
    here: Vec<Job>,
    by_worker: Vec<(Arc<Incarnation>, Vec<Job>)>,
    /// Traced requests, each with its span and the worker whose thread serves it.
    traced: Vec<(Option<Arc<Incarnation>>, TraceContext, Job)>,
}

impl Batch {
    /// Adds the peer's request `id` (`one_way`: no reply wanted), made within
    /// the caller's `trace`, if any.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        bridge: &Bridge,
        peer: &Arc<Peer>,
        load: &Arc<Load>,
        incoming: Incoming,
        id: u64,
        one_way: bool,
        trace: Option<TraceContext>,
    ) {
        let worker = bridge
            .inbound
            .router
            .likely_worker(&incoming.service, incoming.worker.map(|w| w as usize));
        let job = Job {
            peer: peer.clone(),
            incoming: Some(incoming),
            id,
            one_way,
            answered: false,
            _counted: bridge.serving(),
            _load: load.take(),
        };
        if let Some(span) = serving_span(trace) {
            self.traced.push((worker, span, job));
            return;
        }
        let Some(worker) = worker else {
            self.here.push(job);
            return;
        };
        let index = worker.slot.id.index;
        match self
            .by_worker
            .iter_mut()
            .find(|(w, _)| w.slot.id.index == index)
        {
            Some((_, jobs)) => jobs.push(job),
            None => self.by_worker.push((worker, vec![job])),
        }
    }

    /// Starts serving the batch: on the workers' threads, and in `here` for the
    /// requests served on the link's thread.
    pub(super) fn dispatch(&mut self, bridge: &Arc<Bridge>, here: &mut FuturesUnordered<Served>) {
        for job in self.here.drain(..) {
            here.push(Box::pin(job.serve(bridge.clone())));
        }
        for (worker, jobs) in self.by_worker.drain(..) {
            let bridge = bridge.clone();
            // Dropped unrun if the thread has stopped: each job then answers
            // with an error.
            worker.arbiter.spawn(async move {
                let mut all: FuturesUnordered<_> = jobs
                    .into_iter()
                    .map(|job| job.serve(bridge.clone()))
                    .collect();
                while all.next().await.is_some() {}
            });
        }
        for (worker, span, job) in self.traced.drain(..) {
            let serve = crate::trace::scope(Some(span), job.serve(bridge.clone()));
            match worker {
                // Dropped unrun if the thread has stopped: the job answers
                // with an error.
                Some(worker) => drop(worker.arbiter.spawn(serve)),
                None => here.push(Box::pin(serve)),
            }
        }
    }
}

/// Queues the answer to the peer's call `id` (none for a one-way call).
pub(super) fn reply(peer: &Peer, id: u64, one_way: bool, answer: Result<Vec<u8>, ServiceError>) {
    if one_way {
        if let Err(e) = answer {
            log::warn!(
                "one-way request from {} failed: {}",
                peer.name,
                crate::logging::untrusted(&e.to_string())
            );
        }
        return;
    }
    let (ok, payload) = match answer {
        Ok(json) => (true, json),
        Err(e) => (false, serde_json::to_vec(&e).unwrap_or_default()),
    };
    let max = peer.max_frame();
    let mut frame = BytesMut::with_capacity(16 + payload.len());
    let encoded = wire::encode_reply(&mut frame, max, id, ok, &payload).or_else(|e| {
        let error = ServiceError::bad_request(format!("reply too large: {e}"));
        let payload = serde_json::to_vec(&error).unwrap_or_default();
        wire::encode_reply(&mut frame, max, id, false, &payload)
    });
    if encoded.is_ok() {
        if let Err(e) = peer.send(frame.freeze()) {
            log::warn!("reply to node {} lost: {e}", peer.name);
        }
    }
}
