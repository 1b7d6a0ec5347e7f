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

use std::any::Any;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::dev::{Envelope as ActixEnvelope, EnvelopeProxy};
use actix::prelude::*;
use futures::channel::mpsc;
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::trace::TraceContext;

/// Messages one poll of the inbox handles before it lets the worker's other
/// work (its mailbox, its own futures) have a turn.
const BATCH: usize = 32;

/// A traced message for an `A` worker, with its reply channel.
pub(crate) trait Envelope<A: Actor<Context = Context<A>>>: Send {
    /// Runs the handler with the trace current; the reply goes to the caller.
    fn handle(self: Box<Self>, act: &mut A, ctx: &mut Context<A>);
    /// Gives the message back when it could not be sent.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
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

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Where traced messages for an `A` worker are sent.
pub(crate) type Sender<A> = mpsc::UnboundedSender<Box<dyn Envelope<A>>>;

/// The receiving end, spawned in the worker's context.
pub(crate) struct Inbox<A: Actor<Context = Context<A>>> {
    rx: mpsc::UnboundedReceiver<Box<dyn Envelope<A>>>,
}

/// A new inbox and its sender.
pub(crate) fn open<A: Actor<Context = Context<A>>>() -> (Sender<A>, Inbox<A>) {
    let (tx, rx) = mpsc::unbounded();
    (tx, Inbox { rx })
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
    let (reply, rx) = oneshot::channel();
    let envelope: Box<dyn Envelope<A>> = Box::new(Traced { msg, reply, trace });
    match tx.unbounded_send(envelope) {
        Ok(()) => Ok(rx),
        Err(e) => match e.into_inner().into_any().downcast::<Traced<M>>() {
            Ok(traced) => Err(traced.msg),
            Err(_) => unreachable!("the envelope just made is a Traced<M>"),
        },
    }
}

impl<A: Actor<Context = Context<A>>> ActorFuture<A> for Inbox<A> {
    type Output = ();

    fn poll(
        mut self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut Context<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        for _ in 0..BATCH {
            match self.rx.poll_next_unpin(task) {
                Poll::Ready(Some(envelope)) => {
                    envelope.handle(act, ctx);
                    // A handler that made the actor wait, or stop: the context
                    // polls this again when it may go on.
                    if ctx.waiting() || !ctx.state().alive() {
                        return Poll::Pending;
                    }
                }
                // Every sender is gone: the worker's incarnation is over.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}
