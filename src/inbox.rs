//! A worker's second mailbox, for the messages of traced requests.
//!
//! actix hands a message from its mailbox to the handler with nothing of
//! colony's in between, so the handler could not see the request's trace. A
//! traced request's message comes this way instead: an item spawned in the
//! worker's context when it starts takes each one and runs the handler, as the
//! mailbox would (the same envelope, the same reply channel), with the trace
//! current ([`trace::current`](crate::trace::current)) and named in the log.
//! Untraced requests keep to actix's mailbox and pay nothing for this one.
//!
//! The dealer's credits bound this mailbox as they bound actix's. A traced
//! message and an untraced one sent at the same time may be handled in either
//! order, as two callers' requests may.
//!
//! The inbox is polled whenever the worker's context is, so an idle one must
//! cost next to nothing: it reads one flag, and registers the context's waker
//! only when a sender has used the one it registered before (the waker wakes
//! the worker's own task, which the context never leaves).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use actix::dev::{Envelope as ActixEnvelope, EnvelopeProxy};
use actix::prelude::*;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::trace::TraceContext;

/// Messages one poll of the inbox handles before it lets the worker's other
/// work (its mailbox, its own futures) have a turn.
const BATCH: usize = 32;

/// A traced message for an `A` worker, with its reply channel.
pub(crate) trait Envelope<A: Actor<Context = Context<A>>>: Send {
    /// Runs the handler with the trace current; the reply goes to the caller.
    fn handle(self: Box<Self>, act: &mut A, ctx: &mut Context<A>);
}

struct Traced<M: Message> {
    msg: M,
    reply: oneshot::Sender<M::Result>,
    trace: TraceContext,
}

impl<A, M> Envelope<A> for Traced<M>
where
    A: Actor<Context = Context<A>> + Handler<M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    fn handle(self: Box<Self>, act: &mut A, ctx: &mut Context<A>) {
        let Traced { msg, reply, trace } = *self;
        crate::trace::scope_sync(Some(trace), || {
            // actix's own envelope: it skips a message whose caller stopped
            // waiting, and answers as the mailbox would.
            let mut envelope = ActixEnvelope::new(msg, Some(reply));
            EnvelopeProxy::handle(&mut envelope, act, ctx);
        });
    }
}

/// What the sender and the inbox share.
struct Shared<A: Actor<Context = Context<A>>> {
    queue: Mutex<Queue<A>>,
    /// Whether the queue may hold a message; read without the lock.
    pending: AtomicBool,
    /// Whether `waker` holds a waker no sender has used yet.
    armed: AtomicBool,
    waker: AtomicWaker,
}

struct Queue<A: Actor<Context = Context<A>>> {
    envelopes: VecDeque<Box<dyn Envelope<A>>>,
    /// The inbox is gone (its worker's context ended): sends fail.
    closed: bool,
    /// The sender is gone: once the queue is empty, the inbox ends.
    orphaned: bool,
}

/// Where traced messages for an `A` worker are sent. One per worker
/// incarnation; when it drops, the inbox ends once it has handled what came.
pub(crate) struct Sender<A: Actor<Context = Context<A>>>(Arc<Shared<A>>);

/// The receiving end, spawned in the worker's context.
pub(crate) struct Inbox<A: Actor<Context = Context<A>>>(Arc<Shared<A>>);

/// A new inbox and its sender.
pub(crate) fn open<A: Actor<Context = Context<A>>>() -> (Sender<A>, Inbox<A>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            envelopes: VecDeque::new(),
            closed: false,
            orphaned: false,
        }),
        pending: AtomicBool::new(false),
        armed: AtomicBool::new(false),
        waker: AtomicWaker::new(),
    });
    (Sender(shared.clone()), Inbox(shared))
}

impl<A: Actor<Context = Context<A>>> Shared<A> {
    /// Wakes the inbox if it waits for news.
    fn wake(&self) {
        if self.armed.swap(false, SeqCst) {
            self.waker.wake();
        }
    }
}

/// Sends `msg` to the worker behind `tx`, to be handled within `trace`; gives
/// it back if the worker is gone.
pub(crate) fn send<A, M>(
    tx: &Sender<A>,
    msg: M,
    trace: TraceContext,
) -> Result<oneshot::Receiver<M::Result>, M>
where
    A: Actor<Context = Context<A>> + Handler<M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    let shared = &tx.0;
    let (reply, rx) = oneshot::channel();
    {
        let mut queue = shared.queue.lock();
        if queue.closed {
            return Err(msg);
        }
        queue
            .envelopes
            .push_back(Box::new(Traced { msg, reply, trace }));
        shared.pending.store(true, SeqCst);
    }
    shared.wake();
    Ok(rx)
}

impl<A: Actor<Context = Context<A>>> Drop for Sender<A> {
    fn drop(&mut self) {
        self.0.queue.lock().orphaned = true;
        self.0.pending.store(true, SeqCst);
        self.0.wake();
    }
}

impl<A: Actor<Context = Context<A>>> Drop for Inbox<A> {
    fn drop(&mut self) {
        // Unhandled messages drop outside the lock: their callers learn that
        // the worker is gone as their reply channels close.
        let unhandled = {
            let mut queue = self.0.queue.lock();
            queue.closed = true;
            std::mem::take(&mut queue.envelopes)
        };
        drop(unhandled);
    }
}

/// What the inbox found next.
enum Next<A: Actor<Context = Context<A>>> {
    Envelope(Box<dyn Envelope<A>>),
    Empty,
    Orphaned,
}

impl<A: Actor<Context = Context<A>>> Inbox<A> {
    fn next(&self) -> Next<A> {
        let mut queue = self.0.queue.lock();
        let next = queue.envelopes.pop_front();
        if queue.envelopes.is_empty() {
            self.0.pending.store(false, SeqCst);
        }
        match next {
            Some(envelope) => Next::Envelope(envelope),
            None if queue.orphaned => Next::Orphaned,
            None => Next::Empty,
        }
    }
}

impl<A: Actor<Context = Context<A>>> ActorFuture<A> for Inbox<A> {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut Context<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let shared = &self.0;
        for _ in 0..BATCH {
            if !shared.pending.load(SeqCst) {
                if shared.armed.load(SeqCst) {
                    return Poll::Pending;
                }
                shared.waker.register(task.waker());
                shared.armed.store(true, SeqCst);
                // A message sent before the waker was in place.
                if !shared.pending.load(SeqCst) {
                    return Poll::Pending;
                }
            }
            match self.next() {
                Next::Envelope(envelope) => {
                    envelope.handle(act, ctx);
                    // A handler that made the actor wait, or stop: the context
                    // polls this again when it may go on.
                    if ctx.waiting() || !ctx.state().alive() {
                        return Poll::Pending;
                    }
                }
                Next::Empty => {}
                // The worker's incarnation is over.
                Next::Orphaned => return Poll::Ready(()),
            }
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix::dev::channel;

    use super::*;

    /// Answers the trace current in its handler; `wait_ms` makes the actor
    /// wait that long first (`ctx.wait`), holding back every other message.
    struct Probe {
        seen: Vec<u32>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    #[derive(Debug, Message)]
    #[rtype(result = "Seen")]
    struct Which {
        n: u32,
        wait_ms: u64,
    }

    /// The trace current in the handler, and every `n` handled so far.
    #[derive(Debug, PartialEq, MessageResponse)]
    struct Seen(Option<TraceContext>, Vec<u32>);

    impl Handler<Which> for Probe {
        type Result = Seen;
        fn handle(&mut self, m: Which, ctx: &mut Context<Self>) -> Self::Result {
            self.seen.push(m.n);
            if m.wait_ms > 0 {
                ctx.wait(actix::fut::wrap_future(actix_rt::time::sleep(
                    Duration::from_millis(m.wait_ms),
                )));
            }
            Seen(crate::trace::current(), self.seen.clone())
        }
    }

    /// A `Probe` running with an inbox; its address, the inbox's sender and its task.
    fn start() -> (
        channel::AddressSender<Probe>,
        Sender<Probe>,
        actix_rt::task::JoinHandle<()>,
    ) {
        let (address, rx) = channel::channel::<Probe>(16);
        let (sender, inbox) = open::<Probe>();
        let mut context = Context::with_receiver(rx);
        context.spawn(inbox);
        let run = context.into_future(Probe { seen: Vec::new() });
        (address, sender, actix_rt::spawn(run))
    }

    #[actix_rt::test]
    async fn traced_messages_are_handled_in_order_within_their_trace() {
        let (_address, sender, _run) = start();
        let (a, b) = (TraceContext::new(), TraceContext::new());
        let first = send(&sender, Which { n: 1, wait_ms: 20 }, a).expect("sent");
        let second = send(&sender, Which { n: 2, wait_ms: 0 }, b).expect("sent");
        assert_eq!(first.await.unwrap(), Seen(Some(a), vec![1]));
        // The second waited for the first one's `ctx.wait`, then ran within its own trace.
        assert_eq!(second.await.unwrap(), Seen(Some(b), vec![1, 2]));
        assert_eq!(crate::trace::current(), None);
    }

    #[actix_rt::test]
    async fn the_inbox_ends_with_its_sender_and_then_refuses() {
        let (address, sender, run) = start();
        let trace = TraceContext::new();
        let answered = send(&sender, Which { n: 1, wait_ms: 0 }, trace).expect("sent");
        assert_eq!(answered.await.unwrap().0, Some(trace));
        // With its address and its sender gone, the actor stops, as actix's own
        // mailbox alone would let it.
        drop(address);
        let spare = Sender(sender.0.clone());
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the actor stopped")
            .expect("the actor's task ended cleanly");
        let refused = send(&spare, Which { n: 2, wait_ms: 0 }, trace);
        assert!(matches!(refused, Err(Which { n: 2, .. })));
    }
}
