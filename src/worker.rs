//! Workers: one instance of a service's actor, running on one of the node's arbiter
//! threads, and the bookkeeping that outlives each instance.
//!
//! actix lets a panic in a handler unwind out of the actor's context future, which
//! closes the mailbox and nothing more. colony runs every worker's context future
//! inside `catch_unwind`, so the panic becomes an [`ExitReason::Panicked`] that the
//! supervisor acts on and that callers caught mid-request read back as
//! `HandlerPanicked` with the panic's message.
//!
//! A worker index (`master/math/0`) keeps one [`WorkerSlot`] for the node's life:
//! counters and state. Each start of the actor is an [`Incarnation`] with its own
//! mailbox and generation number, so a reply or an exit from an earlier incarnation
//! can never be mistaken for the current one.

use std::any::Any;
use std::cell::RefCell;
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

use crate::app::WorkerContext;
use crate::message::WorkerId;
use crate::supervisor::{Supervisor, WorkerExited, WorkerOnline};

/// Why a worker's actor ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "message", rename_all = "snake_case")]
pub enum ExitReason {
    /// The actor stopped itself (or was stopped by a graceful shutdown).
    Stopped,
    /// A handler (or the factory) panicked; the panic's message.
    Panicked(String),
    /// The worker was killed: by `colony kill`, or by its supervisor's strategy.
    Killed,
}

impl ExitReason {
    /// Whether the exit was a failure, which restarts a `transient` worker.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Stopped)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::Panicked(msg) => write!(f, "panicked: {msg}"),
            ExitReason::Killed => f.write_str("killed"),
        }
    }
}

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

/// A worker's mailbox with its actor type erased: an `AddressSender<A>`.
pub(crate) type Mailbox = Box<dyn Any + Send + Sync>;

/// One start of a worker's actor.
pub(crate) struct Incarnation {
    pub(crate) slot: Arc<WorkerSlot>,
    pub(crate) generation: u64,
    pub(crate) mailbox: Mailbox,
    /// The arbiter the actor runs on; it outlives every request the actor holds.
    pub(crate) arbiter: ArbiterHandle,
    alive: AtomicBool,
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

/// Builds a worker of actor type `A` for a service definition.
pub(crate) type Factory<A> = Arc<dyn Fn(WorkerContext) -> A + Send + Sync>;

/// Everything needed to start one incarnation.
pub(crate) struct SpawnArgs {
    pub(crate) arbiter: ArbiterHandle,
    pub(crate) context: WorkerContext,
    pub(crate) slot: Arc<WorkerSlot>,
    pub(crate) generation: u64,
    pub(crate) supervisor: Addr<Supervisor>,
}

/// Starts one incarnation of an `A` worker on `args.arbiter`. The supervisor hears
/// `WorkerOnline` once the actor is built and `WorkerExited` when it ends, however
/// it ends; if the arbiter is gone, the exit comes at once.
pub(crate) fn spawn<A>(factory: Factory<A>, args: SpawnArgs) -> (Arc<Incarnation>, KillSwitch)
where
    A: Actor<Context = Context<A>>,
{
    // Buffer 0: actix never parks the sender; the dealer's credits bound the mailbox.
    let (tx, rx) = channel::channel::<A>(0);
    let (kill_tx, kill_rx) = oneshot::channel::<ExitReason>();
    let incarnation = Arc::new(Incarnation {
        slot: args.slot.clone(),
        generation: args.generation,
        mailbox: Box::new(tx) as Mailbox,
        arbiter: args.arbiter.clone(),
        alive: AtomicBool::new(true),
        exit: watch::Sender::new(None),
    });
    let index = args.slot.id.index;
    let generation = args.generation;
    let supervisor = args.supervisor.clone();
    let inc = incarnation.clone();
    let context = args.context;
    let spawned = args.arbiter.spawn_fn(move || {
        let id = Arc::new(inc.slot.id.clone());
        let built = with_current_worker(&id, || {
            std::panic::catch_unwind(AssertUnwindSafe(|| factory(context)))
        });
        let actor = match built {
            Ok(actor) => actor,
            Err(payload) => {
                let reason = ExitReason::Panicked(panic_message(payload.as_ref()));
                inc.record_exit(reason.clone());
                supervisor.do_send(WorkerExited {
                    index,
                    generation,
                    reason,
                });
                return;
            }
        };
        let run = Tagged {
            id,
            inner: Context::with_receiver(rx).into_future(actor),
        };
        supervisor.do_send(WorkerOnline { index, generation });
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
            supervisor.do_send(WorkerExited {
                index,
                generation,
                reason,
            });
        });
    });
    if !spawned {
        let reason = ExitReason::Panicked("its arbiter thread is gone".into());
        incarnation.alive.store(false, Ordering::Release);
        args.supervisor.do_send(WorkerExited {
            index,
            generation,
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

thread_local! {
    static CURRENT_WORKER: RefCell<Option<Arc<WorkerId>>> = const { RefCell::new(None) };
}

/// The worker whose code runs on this thread right now, if any (used by the log format).
pub fn current_worker() -> Option<Arc<WorkerId>> {
    CURRENT_WORKER.with(|w| w.borrow().clone())
}

/// Restores the previous current worker when dropped, also while unwinding.
struct CurrentWorkerGuard(Option<Arc<WorkerId>>);

impl CurrentWorkerGuard {
    fn enter(id: &Arc<WorkerId>) -> Self {
        CurrentWorkerGuard(CURRENT_WORKER.with(|w| w.replace(Some(id.clone()))))
    }
}

impl Drop for CurrentWorkerGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT_WORKER.with(|w| *w.borrow_mut() = previous);
    }
}

fn with_current_worker<R>(id: &Arc<WorkerId>, f: impl FnOnce() -> R) -> R {
    let _guard = CurrentWorkerGuard::enter(id);
    f()
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
        let _guard = CurrentWorkerGuard::enter(&this.id);
        Pin::new(&mut this.inner).poll(cx)
    }
}

/// The mailbox of an `A` worker.
pub(crate) fn address<A: Actor>(mailbox: &Mailbox) -> Option<&AddressSender<A>> {
    mailbox.downcast_ref::<AddressSender<A>>()
}
