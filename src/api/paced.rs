//! Connections that must read their answers before they may ask again.
//!
//! actix-web's HTTP/1 dispatcher reads whatever a client sends, up to 128 KiB at
//! a time, and decodes every pipelined request in it at once, whatever its own
//! limit of 16 waiting requests says; each decoded request costs some 6 KB. A
//! client that wrote thousands of pipelined `GET /metrics` and never read an
//! answer made the node hold 13 to 18 MB per connection (60 such connections:
//! 800 MB).
//!
//! A [`Paced`] connection gives the dispatcher at most [`READ_AHEAD`] bytes
//! before the answers to them are written: more only once a write has taken
//! everything the dispatcher had with no request in progress, while a request's
//! body is being read (bodies have their own limit, `api.max_body`), or when
//! the bytes read so far did not make a whole request (a long head). It reads
//! nothing while a write waits for the client (the kernel's buffer toward it,
//! [`SEND_BUFFER`], is full).
//!
//! A connection whose writes make no progress at all for `api.read_timeout` is
//! closed, so a client that neither reads nor hangs up frees what it holds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::http::header;
use actix_web::HttpMessage as _;
use bytes::Bytes;
use futures::task::AtomicWaker;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Bytes a connection may read past its last answer written: a usual request
/// head, or a few, far less than the dispatcher's own 128 KiB. A longer head is
/// read in as many steps.
pub(crate) const READ_AHEAD: usize = 2 * 1024;

/// The kernel's send buffer of an API connection, asked for on the listening
/// socket (Linux doubles it): a client that does not read its answers stalls its
/// connection after some 128 KiB rather than the 4 MiB the kernel would let it
/// leave unread, so the connection stops reading early and holds little of the
/// kernel's memory. Larger answers are written as the client reads them.
pub(crate) const SEND_BUFFER: usize = 64 * 1024;

/// What a connection and the requests on it share: whether a write waits for
/// the client, and the requests in progress.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// The last write waits for the client to read.
    stalled: AtomicBool,
    /// Requests whose handler has started and not yet answered.
    in_flight: AtomicUsize,
    /// Requests whose body is still being read.
    bodies: AtomicUsize,
    /// Requests started on the connection so far.
    started: AtomicUsize,
    /// The connection's task while its reading waits for a body to be wanted.
    reader: AtomicWaker,
    /// The client closed its side: a read found the end of its bytes.
    closed: AtomicBool,
}

impl Pace {
    /// The pace of `req`'s connection (none on a connection that is not [`Paced`]).
    pub(crate) fn of(req: &actix_web::HttpRequest) -> Option<Arc<Pace>> {
        req.conn_data::<Arc<Pace>>().cloned()
    }

    /// Whether the client has closed its side of the connection. A stream that
    /// writes nothing for long (a quiet follower) learns this way that its
    /// client is gone; a write would tell only when there is one.
    pub(crate) fn client_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The client has not read what the node wrote to it so far.
    fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Counts `req` as in progress until the returned guard drops (when its
    /// answer is ready), and its body as being read until the body ends or is
    /// dropped; the connection reads freely meanwhile.
    pub(crate) fn start(self: &Arc<Self>, req: &mut ServiceRequest) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        if has_body {
            self.bodies.fetch_add(1, Ordering::Relaxed);
            let body = Body {
                payload: req.take_payload(),
                pace: Some(self.clone()),
            };
            req.set_payload(Payload::from(
                Box::pin(body) as Pin<Box<dyn Stream<Item = _>>>
            ));
            self.reader.wake();
        }
        InFlight(self.clone())
    }
}

/// A request in progress on its connection; see [`Pace::start`].
pub(crate) struct InFlight(Arc<Pace>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's body, counted in [`Pace::bodies`] until it ends or drops.
struct Body {
    payload: Payload,
    pace: Option<Arc<Pace>>,
}

impl Body {
    fn done(&mut self) {
        if let Some(pace) = self.pace.take() {
            pace.bodies.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.payload).poll_next(cx);
        if matches!(item, Poll::Ready(None | Some(Err(_)))) {
            self.done();
        }
        item
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.done();
    }
}

/// A TCP connection of the API, paced by its client's reading.
pub(crate) struct Paced {
    io: TcpStream,
    pace: Arc<Pace>,
    /// Bytes the connection may still read before an answer is written.
    budget: usize,
    /// A read returned `Pending` without asking the socket: the task must be
    /// woken when reading may go on.
    blocked: bool,
    /// When the budget ran out: the requests started by then. If none started
    /// since, the bytes read did not make a whole request and more are read.
    starved: Option<usize>,
    /// How long a write may wait with no progress before the connection closes.
    write_timeout: Duration,
    /// Running while a write waits.
    stall: Option<Pin<Box<Sleep>>>,
}

impl Paced {
    pub(crate) fn new(io: TcpStream, write_timeout: Duration) -> Paced {
        Paced {
            io,
            pace: Arc::default(),
            budget: READ_AHEAD,
            blocked: false,
            starved: None,
            write_timeout,
            stall: None,
        }
    }

    /// The pace shared with the requests of this connection.
    pub(crate) fn pace(&self) -> Arc<Pace> {
        self.pace.clone()
    }

    /// Whether the connection may read now, and how many bytes at most; else
    /// the task is woken when it may.
    fn may_read(&mut self, cx: &mut Context<'_>) -> Option<usize> {
        if self.pace.is_stalled() {
            // Woken when the socket takes the waiting write (see after_write).
            self.blocked = true;
            return None;
        }
        if self.pace.bodies.load(Ordering::Relaxed) > 0 {
            return Some(usize::MAX);
        }
        if self.budget > 0 {
            return Some(self.budget);
        }
        let started = self.pace.started.load(Ordering::Relaxed);
        match self.starved {
            // Nothing started since the budget ran out, and nothing is in
            // progress: the dispatcher waits for the rest of a request.
            Some(then) if then == started && self.pace.in_flight.load(Ordering::Relaxed) == 0 => {
                self.starved = None;
                self.budget = READ_AHEAD;
                Some(self.budget)
            }
            Some(_) => {
                self.blocked = true;
                self.pace.reader.register(cx.waker());
                None
            }
            None => {
                // Look again once the dispatcher has decoded what it read.
                self.starved = Some(started);
                self.blocked = true;
                self.pace.reader.register(cx.waker());
                cx.waker().wake_by_ref();
                None
            }
        }
    }

    /// Follows a write of `given` bytes. The dispatcher hands over everything it
    /// holds at once, so a write that takes all of it leaves nothing waiting: the
    /// connection may read again, and a new [`READ_AHEAD`] if no request is in
    /// progress. A write that takes part of it is progress for the timeout, but
    /// the client still has answers to read.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
        given: usize,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                self.stall = None;
                let all = n >= given;
                self.pace.stalled.store(!all, Ordering::Relaxed);
                if all && self.pace.in_flight.load(Ordering::Relaxed) == 0 {
                    self.budget = READ_AHEAD;
                    self.starved = None;
                }
                if all && std::mem::take(&mut self.blocked) {
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }

    /// The write is waiting: mark the connection stalled, and fail it once it has
    /// waited `write_timeout` without progress.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.pace.stalled.store(true, Ordering::Relaxed);
        let deadline = crate::deadline::tokio_after(self.write_timeout);
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for api.read_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Paced {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(limit) = this.may_read(cx) else {
            return Poll::Pending;
        };
        let wanted = buf.remaining().min(limit);
        let (read, n) = if limit >= buf.remaining() {
            let before = buf.filled().len();
            let read = Pin::new(&mut this.io).poll_read(cx, buf);
            (read, buf.filled().len() - before)
        } else {
            let mut chunk = [0; READ_AHEAD];
            let mut part = ReadBuf::new(&mut chunk[..limit]);
            let read = Pin::new(&mut this.io).poll_read(cx, &mut part);
            buf.put_slice(part.filled());
            (read, part.filled().len())
        };
        this.budget = this.budget.saturating_sub(n);
        if matches!(read, Poll::Ready(Ok(()))) && n == 0 && wanted > 0 {
            this.pace.closed.store(true, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for Paced {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after_write(cx, written, buf.len())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        let given = bufs.iter().map(|b| b.len()).sum();
        this.after_write(cx, written, given)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
