//! The dealer of one service: ZeroMQ's load-balancing broker.
//!
//! Each worker announces its free capacity as credits, `concurrency` of them when it
//! comes online and one more each time it finishes a request. A request takes the
//! least-recently-used credit (the front of the idle queue) and the credit goes to
//! the back when the worker finishes, so a slow worker, holding its credits longer,
//! is offered less work. With no credit free, requests wait in a FIFO of at most
//! `queue` entries; past that they get `Overloaded`.
//!
//! A worker that a scale-down removes is retired here ([`Dealer::retire`]): its
//! free credits go, and those it gives back are dropped, so it gets no new
//! request while it finishes what it holds.
//!
//! The dealer is a lock-guarded broker rather than a mailbox actor: callers take and
//! return credits under a short lock in their own task, and the request goes straight
//! to the worker's mailbox. A mailbox hop through a dealer actor would double the
//! thread wake-ups of every request.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::ServiceError;
use crate::worker::Incarnation;

/// Whether a service takes requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Availability {
    Open,
    /// Restart intensity exceeded: every request gets `ServiceFailed`.
    Failed(String),
    /// The node is shutting down: new requests are refused.
    Closed(String),
    /// Every worker exited and none is coming back (policy): `NoSuchService`.
    Gone(String),
}

/// A request's turn at a worker: either at once, or after waiting in line.
pub(crate) enum Acquired {
    Ready(Arc<Incarnation>),
    Waiting(Turn),
}

/// A place in the dealer's line: resolves to the worker whose credit it was
/// handed. Dropped unread after a credit reached it (its caller gave up at that
/// moment), it gives the credit back, so the worker loses no capacity.
#[derive(Debug)]
pub(crate) struct Turn {
    granted: oneshot::Receiver<Result<Arc<Incarnation>, ServiceError>>,
    state: Arc<Mutex<State>>,
}

impl std::future::Future for Turn {
    type Output = Result<Result<Arc<Incarnation>, ServiceError>, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.granted).poll(cx)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // No credit can arrive after this; one that arrived unread goes back.
        self.granted.close();
        if let Ok(Ok(worker)) = self.granted.try_recv() {
            let mut state = self.state.lock();
            if state.is_current(&worker) {
                state.grant(worker);
            }
        }
    }
}

type Waiter = oneshot::Sender<Result<Arc<Incarnation>, ServiceError>>;

/// The broker of one service.
#[derive(Debug)]
pub(crate) struct Dealer {
    service: String,
    queue_limit: usize,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    availability: Availability,
    /// The current incarnation of each worker index, if it runs.
    workers: Vec<Option<Arc<Incarnation>>>,
    /// Free capacity, least recently used first.
    idle: VecDeque<Arc<Incarnation>>,
    waiting: VecDeque<Waiter>,
}

impl Dealer {
    pub(crate) fn new(service: &str, workers: usize, queue_limit: usize) -> Self {
        Dealer {
            service: service.to_string(),
            queue_limit,
            state: Arc::new(Mutex::new(State {
                availability: Availability::Open,
                workers: vec![None; workers],
                idle: VecDeque::new(),
                waiting: VecDeque::new(),
            })),
        }
    }

    /// Takes a credit, or a place in line for one. A request from another node
    /// is still admitted while the node drains: it was sent before that node
    /// learnt that this one is leaving.
    pub(crate) fn acquire(&self, from_peer: bool) -> Result<Acquired, ServiceError> {
        let mut state = self.state.lock();
        let draining = matches!(state.availability, Availability::Closed(_));
        if !(from_peer && draining) {
            self.check_open(&state)?;
        }
        while let Some(worker) = state.idle.pop_front() {
            if state.is_current(&worker) {
                return Ok(Acquired::Ready(worker));
            }
        }
        if state.waiting.len() >= self.queue_limit {
            // Waiters whose caller gave up still hold a place; clear them first.
            state.waiting.retain(|w| !w.is_closed());
            if state.waiting.len() >= self.queue_limit {
                return Err(ServiceError::overloaded(format!(
                    "service {} has {} requests waiting, its queue limit",
                    self.service, self.queue_limit
                )));
            }
        }
        let (tx, granted) = oneshot::channel();
        state.waiting.push_back(tx);
        Ok(Acquired::Waiting(Turn {
            granted,
            state: self.state.clone(),
        }))
    }

    /// Gives a credit back after the worker finished a request. A credit of an
    /// incarnation that has since exited is dropped.
    pub(crate) fn release(&self, worker: Arc<Incarnation>) {
        let mut state = self.state.lock();
        if state.is_current(&worker) {
            state.grant(worker);
        }
    }

    /// A worker came online with `credits` of capacity.
    pub(crate) fn add_worker(&self, worker: Arc<Incarnation>, credits: usize) {
        let mut state = self.state.lock();
        let index = worker.slot.id.index;
        if index >= state.workers.len() {
            state.workers.resize(index + 1, None);
        }
        state.workers[index] = Some(worker.clone());
        for _ in 0..credits {
            state.grant(worker.clone());
        }
    }

    /// A worker exited: its credits go. Waiting requests stay in line for the others.
    pub(crate) fn remove_worker(&self, index: usize, generation: u64) {
        let mut state = self.state.lock();
        let current = state.workers.get(index).and_then(Option::as_ref);
        if current.is_some_and(|w| w.generation == generation) {
            state.workers[index] = None;
            state
                .idle
                .retain(|w| !(w.slot.id.index == index && w.generation == generation));
        }
    }

    /// A scale-down removes `workers`: they are handed no new request (nor
    /// found by [`worker`](Self::worker)), and their free credits go, in one
    /// pass however many they are.
    pub(crate) fn retire(&self, workers: &[Arc<Incarnation>]) {
        let mut state = self.state.lock();
        for worker in workers {
            worker.retire();
        }
        state.idle.retain(|w| !w.is_retiring());
    }

    /// The running incarnation of worker `index`, unless a scale-down removed it.
    pub(crate) fn worker(&self, index: usize) -> Option<Arc<Incarnation>> {
        let state = self.state.lock();
        state
            .workers
            .get(index)
            .cloned()
            .flatten()
            .filter(|w| !w.is_retiring())
    }

    /// The worker the next [`acquire`](Self::acquire) would most likely get:
    /// the first with a free credit. A hint only: others may take it first.
    pub(crate) fn next_idle(&self) -> Option<Arc<Incarnation>> {
        let state = self.state.lock();
        state.idle.iter().find(|w| state.is_current(w)).cloned()
    }

    /// Every running incarnation, but those a scale-down removed.
    pub(crate) fn workers(&self) -> Vec<Arc<Incarnation>> {
        let state = self.state.lock();
        state
            .workers
            .iter()
            .flatten()
            .filter(|w| !w.is_retiring())
            .cloned()
            .collect()
    }

    /// Stops taking new requests; those waiting are still served.
    pub(crate) fn close(&self, availability: Availability) {
        self.state.lock().availability = availability;
    }

    /// Stops taking requests: waiting and future ones get `error`.
    pub(crate) fn shut(&self, availability: Availability, error: ServiceError) {
        let mut state = self.state.lock();
        state.availability = availability;
        for waiter in state.waiting.drain(..) {
            // A waiter that gave up needs no answer.
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Whether a worker has a free credit now.
    pub(crate) fn has_idle(&self) -> bool {
        let state = self.state.lock();
        state.idle.iter().any(|w| state.is_current(w))
    }

    /// Requests waiting for a free worker, not counting callers that gave up.
    pub(crate) fn queued(&self) -> usize {
        let state = self.state.lock();
        state.waiting.iter().filter(|w| !w.is_closed()).count()
    }

    /// Whether the service takes new requests.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state.lock().availability, Availability::Open)
    }

    pub(crate) fn availability(&self) -> Availability {
        self.state.lock().availability.clone()
    }

    fn check_open(&self, state: &State) -> Result<(), ServiceError> {
        match &state.availability {
            Availability::Open => Ok(()),
            Availability::Failed(why) => Err(ServiceError::service_failed(format!(
                "service {} has failed: {why}",
                self.service
            ))),
            Availability::Closed(why) => Err(ServiceError::service_failed(format!(
                "service {} is not taking requests: {why}",
                self.service
            ))),
            Availability::Gone(why) => Err(ServiceError::no_such_service(format!(
                "no worker of service {} exists: {why}",
                self.service
            ))),
        }
    }
}

impl State {
    fn is_current(&self, worker: &Arc<Incarnation>) -> bool {
        worker.is_alive()
            && !worker.is_retiring()
            && self
                .workers
                .get(worker.slot.id.index)
                .and_then(Option::as_ref)
                .is_some_and(|w| w.generation == worker.generation)
    }

    /// Hands the credit to the first live waiter, or puts it at the back of the line.
    fn grant(&mut self, worker: Arc<Incarnation>) {
        let mut worker = worker;
        while let Some(waiter) = self.waiting.pop_front() {
            match waiter.send(Ok(worker)) {
                Ok(()) => return,
                // The caller gave up waiting: the credit goes to the next in line.
                Err(returned) => match returned {
                    Ok(back) => worker = back,
                    Err(_) => return,
                },
            }
        }
        self.idle.push_back(worker);
    }
}
