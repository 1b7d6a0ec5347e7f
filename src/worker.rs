//! Workers: one instance of a service's actor, running on one of the node's arbiter
//! threads, and the bookkeeping that outlives each instance.
//!
//! actix lets a panic in a handler unwind out of the actor's context future, which
//! closes the mailbox and nothing more. colony runs every worker's context future
//! inside `catch_unwind`, so the panic becomes an [`ExitReason::Panicked`] that the
//! supervisor acts on and that callers caught mid-request read back as
//! `HandlerPanicked` with the panic's message.
//!
//! A worker index (`master/math/0`) keeps one [`WorkerSlot`], counters and state,
//! for as long as the service has that many workers: the node's life, unless a
//! scale-down removes the index (a later scale-up gives it a fresh slot). Each
//! start of the actor is an [`Incarnation`] with its own mailbox and generation
//! number, so a reply or an exit from an earlier incarnation can never be
//! mistaken for the current one.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use actix::dev::channel::{self, AddressSender};
use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures::FutureExt;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::events::ExitReason;
use crate::inbox;
use crate::logging::with_current_worker;
use crate::message::WorkerId;

/// The state of a worker as shown in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Being built on its arbiter.
    Starting,
    /// Taking requests.
    Running,
    /// Exited; a restart is scheduled after its backoff.
    Restarting,
    /// Exited and not restarted (policy, shutdown or a failed service).
    Stopped,
}

/// What lasts of a worker index across restarts: its id, state and counters.
#[derive(Debug)]
pub(crate) struct WorkerSlot {
    pub(crate) id: WorkerId,
    pub(crate) handled: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) state: Mutex<(WorkerState, Instant)>,
}

impl WorkerSlot {
    pub(crate) fn new(id: WorkerId) -> Self {
        WorkerSlot {
            id,
            handled: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            state: Mutex::new((WorkerState::Starting, Instant::now())),
        }
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        *self.state.lock() = (state, Instant::now());
    }
}

/// A worker's mailboxes with its actor type erased: a [`Mailboxes<A>`].
pub(crate) type Mailbox = Box<dyn Any + Send + Sync>;

/// Where an `A` worker's messages go: actix's mailbox, and the inbox of traced
/// requests (see [`inbox`](crate::inbox)).
pub(crate) struct Mailboxes<A: Actor<Context = Context<A>>> {
    pub(crate) address: AddressSender<A>,
    pub(crate) traced: inbox::Sender<A>,
}

/// One start of a worker's actor.
pub(crate) struct Incarnation {
    pub(crate) slot: Arc<WorkerSlot>,
    pub(crate) generation: u64,
    pub(crate) mailbox: Mailbox,
    /// The arbiter the actor runs on; it outlives every request the actor holds.
    pub(crate) arbiter: ArbiterHandle,
    alive: AtomicBool,
    /// Set by a scale-down that removes this worker: see [`retire`](Self::retire).
    retiring: AtomicBool,
    exit: watch::Sender<Option<ExitReason>>,
}

impl std::fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incarnation")
            .field("id", &self.slot.id)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Incarnation {
    /// Whether the actor still runs. Turns false before its mailbox closes.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Marks the worker as removed by a scale-down: from now on no request is
    /// handed to it, and what it holds may finish.
    ///
    /// Sequentially consistent, as is the count a request takes on the worker
    /// before it sends ([`hold`](Self::hold)): whoever comes second sees the
    /// other, so a drain that finds no request counted after this call knows
    /// none is on its way to the mailbox either.
    pub(crate) fn retire(&self) {
        self.retiring.store(true, Ordering::SeqCst);
    }

    /// Counts a request on the worker (`in_flight`) before it goes into the
    /// mailbox, unless a scale-down has retired the worker: then nothing is
    /// counted, and the request goes elsewhere. The count comes first and the
    /// check second, so either this request sees the worker retired, or the
    /// drain that reads the count after [`retire`](Self::retire) sees it and
    /// waits: a removed worker never stops with a request in its mailbox.
    #[inline]
    pub(crate) fn hold(&self) -> bool {
        self.slot.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.is_retiring() {
            self.unhold();
            return false;
        }
        true
    }

    /// Takes back the count of a request [`hold`](Self::hold) counted but did
    /// not send.
    pub(crate) fn unhold(&self) {
        self.slot.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a scale-down removed the worker (see [`retire`](Self::retire)).
    pub(crate) fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    /// Why this incarnation ended, waiting for it up to `deadline`: callers whose
    /// reply channel closed learn why, and a draining supervisor learns when.
    pub(crate) async fn exit_reason(&self, deadline: tokio::time::Instant) -> Option<ExitReason> {
        let mut rx = self.exit.subscribe();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(reason)) => reason.clone(),
            _ => None,
        }
    }

    fn record_exit(&self, reason: ExitReason) {
        self.alive.store(false, Ordering::Release);
        self.exit.send_replace(Some(reason));
    }
}

/// Ends an incarnation at once: dropped, the exit reads `killed`; fired with
/// [`KillSwitch::stop`], it reads `stopped` (a graceful shutdown after draining).
#[derive(Debug)]
pub(crate) struct KillSwitch(oneshot::Sender<ExitReason>);

impl KillSwitch {
    pub(crate) fn stop(self) {
        // The worker already ended if nobody listens: nothing left to stop.
        let _ = self.0.send(ExitReason::Stopped);
    }
}

/// A worker's actor is built and runs on its arbiter.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerOnline {
    pub(crate) index: usize,
    pub(crate) generation: u64,
}

/// A worker's actor ended, however it ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerExited {
    pub(crate) index: usize,
    pub(crate) generation: u64,
    /// The incarnation's slot: after a scale-down and up, no longer the index's.
    pub(crate) slot: Arc<WorkerSlot>,
    pub(crate) reason: ExitReason,
}

/// Builds the actor of type `A` for the worker with the given id. The app's factory
/// is made into one for each node, with whatever else it is given bound in.
pub(crate) type Factory<A> = Arc<dyn Fn(WorkerId) -> A + Send + Sync>;

/// Starts one incarnation of a service's worker, its actor type erased.
pub(crate) type StartWorker =
    Arc<dyn Fn(SpawnArgs) -> (Arc<Incarnation>, KillSwitch) + Send + Sync>;

/// What starts incarnations of `A` workers built by `factory`.
pub(crate) fn start_worker<A>(factory: Factory<A>) -> StartWorker
where
    A: Actor<Context = Context<A>>,
{
    Arc::new(move |args| spawn(factory.clone(), args))
}

/// Everything needed to start one incarnation, and who hears how it goes.
pub(crate) struct SpawnArgs {
    pub(crate) arbiter: ArbiterHandle,
    pub(crate) slot: Arc<WorkerSlot>,
    pub(crate) generation: u64,
    pub(crate) online: Recipient<WorkerOnline>,
    pub(crate) exited: Recipient<WorkerExited>,
}

/// Starts one incarnation of an `A` worker on `args.arbiter`. `args.online` hears
/// once the actor is built and `args.exited` when it ends, however it ends; if the
/// arbiter is gone, the exit comes at once.
fn spawn<A>(factory: Factory<A>, args: SpawnArgs) -> (Arc<Incarnation>, KillSwitch)
where
    A: Actor<Context = Context<A>>,
{
    // Buffer 0: actix never parks the sender; the dealer's credits bound the mailbox.
    let (tx, rx) = channel::channel::<A>(0);
    let (traced, inbox) = inbox::open::<A>();
    let (kill_tx, kill_rx) = oneshot::channel::<ExitReason>();
    let incarnation = Arc::new(Incarnation {
        slot: args.slot.clone(),
        generation: args.generation,
        mailbox: Box::new(Mailboxes {
            address: tx,
            traced,
        }) as Mailbox,
        arbiter: args.arbiter.clone(),
        alive: AtomicBool::new(true),
        retiring: AtomicBool::new(false),
        exit: watch::Sender::new(None),
    });
    let index = args.slot.id.index;
    let generation = args.generation;
    let online = args.online;
    let exited = args.exited.clone();
    let inc = incarnation.clone();
    let spawned = args.arbiter.spawn_fn(move || {
        let id = Arc::new(inc.slot.id.clone());
        let built = with_current_worker(&id, || {
            std::panic::catch_unwind(AssertUnwindSafe(|| factory(inc.slot.id.clone())))
        });
        let actor = match built {
            Ok(actor) => actor,
            Err(payload) => {
                let reason = ExitReason::Panicked(panic_message(payload.as_ref()));
                inc.record_exit(reason.clone());
                exited.do_send(WorkerExited {
                    index,
                    generation,
                    slot: inc.slot.clone(),
                    reason,
                });
                return;
            }
        };
        let mut context = Context::with_receiver(rx);
        context.spawn(inbox);
        let run = Tagged {
            id,
            inner: context.into_future(actor),
        };
        online.do_send(WorkerOnline { index, generation });
        actix_rt::spawn(async move {
            let mut run = AssertUnwindSafe(run).catch_unwind();
            let mut kill_rx = kill_rx;
            let reason = tokio::select! {
                ended = &mut run => match ended {
                    Ok(()) => ExitReason::Stopped,
                    Err(payload) => ExitReason::Panicked(panic_message(payload.as_ref())),
                },
                reason = &mut kill_rx => reason.unwrap_or(ExitReason::Killed),
            };
            // Record first, then close the mailbox: a caller whose reply channel closes
            // finds the reason already there.
            inc.record_exit(reason.clone());
            drop(run);
            exited.do_send(WorkerExited {
                index,
                generation,
                slot: inc.slot.clone(),
                reason,
            });
        });
    });
    if !spawned {
        let reason = ExitReason::Panicked("its arbiter thread is gone".into());
        incarnation.alive.store(false, Ordering::Release);
        args.exited.do_send(WorkerExited {
            index,
            generation,
            slot: args.slot.clone(),
            reason: reason.clone(),
        });
        incarnation.record_exit(reason);
    }
    (incarnation, KillSwitch(kill_tx))
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Marks the thread as running worker `id` while the inner future is polled.
struct Tagged<F> {
    id: Arc<WorkerId>,
    inner: F,
}

impl<F: Future + Unpin> Future for Tagged<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        with_current_worker(&this.id, || Pin::new(&mut this.inner).poll(cx))
    }
}

/// The mailboxes of an `A` worker.
pub(crate) fn mailboxes<A: Actor<Context = Context<A>>>(
    mailbox: &Mailbox,
) -> Option<&Mailboxes<A>> {
    mailbox.downcast_ref::<Mailboxes<A>>()
}
