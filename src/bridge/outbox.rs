//! The bytes a link has accepted and not yet written, and who writes them.
//!
//! Frames are appended to one buffer, in the order they are sent, whatever the
//! thread. Whoever flushes takes the whole buffer and writes it in one go, so
//! frames sent in the same tick share a write:
//!
//! - On plain TCP the socket's write half is shared, and a sender may flush on
//!   its own thread: at once ([`Flush::Now`], a caller alone on the link), or in
//!   a task spawned on its runtime, which runs once the frames of the same tick
//!   are in ([`Flush::Soon`]). Neither wakes the link's thread.
//! - Otherwise (TLS, no runtime, or [`Flush::Writer`] for heartbeats) the link's
//!   writer task is woken and writes.
//!
//! One party writes at a time. A direct flush that meets a full socket hands the
//! rest to the writer task, which waits for the socket; the writer also writes
//! what a spawned flush left behind (its thread busy or gone) at the next
//! heartbeat at the latest.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{oneshot, Notify};

use super::counters::Counters;

/// How long a closing link may take to say goodbye.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Who writes a frame just accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// The sender, at once (plain TCP), or else the writer task.
    Now,
    /// The sender's thread, once its current tick is done (plain TCP), or else
    /// the writer task.
    Soon,
    /// The link's writer task.
    Writer,
}

/// Why a frame was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The link is closing.
    Closed,
    /// `frames` frames wait to be written, the bound.
    Frames(usize),
    /// `bytes` bytes wait to be written; the frame would pass the bound.
    Bytes(u64),
}

/// A link's unwritten bytes.
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Plain TCP's write half, which any flushing thread may write; `None` under
    /// TLS, where only the writer task writes.
    direct: Option<Arc<OwnedWriteHalf>>,
    /// Wakes the writer task.
    wake: Notify,
    max_frames: usize,
    max_bytes: u64,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct State {
    /// Accepted, not yet taken by a writer.
    buf: BytesMut,
    /// Frames in `buf`.
    frames: usize,
    /// Bytes taken by the write under way (one writer at a time).
    writing: usize,
    /// A flush task is spawned and has not run yet.
    scheduled: bool,
    /// The link is closing: only the writer task writes, what is left.
    closed: bool,
}

impl State {
    fn unsent(&self) -> u64 {
        (self.buf.len() + self.writing) as u64
    }

    /// Takes the buffer to write, unless someone else writes or it is empty.
    fn take(&mut self) -> Option<Bytes> {
        if self.writing > 0 || self.buf.is_empty() {
            return None;
        }
        self.writing = self.buf.len();
        self.frames = 0;
        Some(self.buf.split().freeze())
    }

    /// The write under way is over.
    fn written(&mut self) {
        self.writing = 0;
    }
}

impl Outbox {
    /// An outbox of at most `max_frames` frames and `max_bytes` bytes (a frame
    /// always fits an empty one, whatever its size).
    pub(crate) fn new(
        direct: Option<Arc<OwnedWriteHalf>>,
        max_frames: usize,
        max_bytes: usize,
        counters: Arc<Counters>,
    ) -> Outbox {
        Outbox {
            state: Mutex::default(),
            direct,
            wake: Notify::new(),
            max_frames,
            max_bytes: max_bytes as u64,
            counters,
        }
    }

    /// Bytes accepted and not yet written.
    pub(crate) fn unsent(&self) -> u64 {
        self.state.lock().unsent()
    }

    /// Accepts `frame` and sees that it is written as `flush` says.
    pub(crate) fn push(self: &Arc<Self>, frame: &[u8], flush: Flush) -> Result<(), Refused> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        let unsent = state.unsent();
        if unsent > 0 {
            if state.frames >= self.max_frames {
                return Err(Refused::Frames(state.frames));
            }
            if unsent.saturating_add(frame.len() as u64) > self.max_bytes {
                return Err(Refused::Bytes(unsent));
            }
        }
        state.buf.extend_from_slice(frame);
        state.frames += 1;
        if state.writing > 0 {
            // The write under way takes this frame next.
            return Ok(());
        }
        let here = self.direct.is_some() && flush != Flush::Writer;
        if here && flush == Flush::Now {
            let taken = state.take();
            drop(state);
            if let Some(taken) = taken {
                self.write_direct(taken);
            }
            return Ok(());
        }
        if here {
            if state.scheduled {
                return Ok(());
            }
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                state.scheduled = true;
                drop(state);
                let outbox = self.clone();
                runtime.spawn(async move { outbox.flush_scheduled() });
                return Ok(());
            }
        }
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// The spawned flush: writes what the tick's senders left.
    fn flush_scheduled(&self) {
        let taken = {
            let mut state = self.state.lock();
            state.scheduled = false;
            if state.closed {
                None
            } else {
                state.take()
            }
        };
        if let Some(taken) = taken {
            self.write_direct(taken);
        }
    }

    /// Writes `taken` to the shared socket without waiting, then what was
    /// appended meanwhile; what the socket does not take now goes to the writer.
    fn write_direct(&self, mut taken: Bytes) {
        let Some(write) = &self.direct else {
            self.give_back(taken);
            return;
        };
        // A few rounds, then the writer takes over: a sender does not write for
        // others for ever.
        for _ in 0..4 {
            while !taken.is_empty() {
                match write.try_write(&taken) {
                    Ok(n) => {
                        self.counters
                            .bytes_out
                            .fetch_add(n as u64, Ordering::Relaxed);
                        let _ = taken.split_to(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.give_back(taken);
                        return;
                    }
                    // The reader meets the broken connection too and ends the
                    // link; the bytes are lost with it.
                    Err(_) => {
                        self.give_back(Bytes::new());
                        return;
                    }
                }
            }
            let mut state = self.state.lock();
            state.written();
            if state.closed {
                drop(state);
                self.wake.notify_one();
                return;
            }
            match state.take() {
                Some(more) => taken = more,
                None => return,
            }
        }
        self.give_back(taken);
    }

    /// The write under way ends with `rest` unwritten: it goes back to the
    /// front, for the writer task.
    fn give_back(&self, rest: Bytes) {
        let mut state = self.state.lock();
        if !rest.is_empty() {
            let mut buf = BytesMut::with_capacity(rest.len() + state.buf.len());
            buf.extend_from_slice(&rest);
            buf.extend_from_slice(&state.buf);
            state.buf = buf;
            // Counted as one: its frames were counted when taken.
            state.frames += 1;
        }
        state.written();
        drop(state);
        self.wake.notify_one();
    }

    /// The link's writer task: writes what it is woken for until `stop`, then
    /// what is left, and closes the stream (TLS close_notify).
    pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(
        self: Arc<Self>,
        mut write: W,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            let stopping = tokio::select! {
                biased;
                _ = &mut stop => true,
                _ = self.wake.notified() => false,
            };
            if stopping {
                break;
            }
            // Let the tasks that are ready add their frames too, so that one
            // write carries many.
            tokio::task::yield_now().await;
            // A peer that reads nothing leaves a write waiting for ever: the
            // stop does not wait for it.
            let written = tokio::select! {
                biased;
                _ = &mut stop => None,
                written = self.write_all(&mut write) => Some(written),
            };
            match written {
                Some(Ok(())) => {}
                Some(Err(_)) => {
                    self.close();
                    return;
                }
                None => {
                    // The write abandoned was this task's; its bytes go with
                    // the link.
                    self.state.lock().written();
                    break;
                }
            }
        }
        self.state.lock().closed = true;
        // A direct flush under way finishes first.
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        while self.state.lock().writing > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let _ = tokio::time::timeout_at(deadline, self.write_all(&mut write)).await;
        let _ = tokio::time::timeout_at(deadline, write.shutdown()).await;
    }

    /// Writes everything accepted, unless another party is writing (it takes
    /// what follows, or wakes this task again).
    async fn write_all<W: AsyncWrite + Unpin>(&self, write: &mut W) -> io::Result<()> {
        loop {
            let taken = {
                let mut state = self.state.lock();
                // What a spawned flush would have written is written here.
                state.scheduled = false;
                match state.take() {
                    Some(taken) => taken,
                    None => return Ok(()),
                }
            };
            let written = async {
                write.write_all(&taken).await?;
                write.flush().await
            }
            .await;
            self.state.lock().written();
            written?;
            self.counters
                .bytes_out
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// The link is closing: nothing more is accepted.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.buf.clear();
        state.frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A frame: sender, sequence number, and padding of a size that varies.
    fn frame(sender: u8, seq: u32) -> Vec<u8> {
        let pad = (seq % 97) as usize * 13;
        let mut frame = Vec::with_capacity(9 + pad);
        frame.extend_from_slice(&(5 + pad as u32).to_be_bytes());
        frame.push(sender);
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.resize(9 + pad, sender);
        frame
    }

    #[actix_rt::test]
    async fn frames_from_many_threads_and_every_flush_arrive_whole_and_in_each_senders_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_read, write) = client.unwrap().into_split();
        let mut server = accepted.unwrap().0;
        let write = Arc::new(write);
        let outbox = Arc::new(Outbox::new(
            Some(write.clone()),
            1_000_000,
            1 << 30,
            Arc::default(),
        ));
        let (stop, stopped) = oneshot::channel();
        let writer = actix_rt::spawn(
            outbox
                .clone()
                .run_writer(super::super::conn::SharedWrite(write), stopped),
        );

        const SENDERS: u8 = 4;
        const FRAMES: u32 = 5_000;
        // Each sender on a thread of its own.
        let threads: Vec<_> = (0..SENDERS).map(|_| actix_rt::Arbiter::new()).collect();
        let senders: Vec<_> = threads
            .iter()
            .zip(0..SENDERS)
            .map(|(thread, sender)| {
                let outbox = outbox.clone();
                let (done, sent) = oneshot::channel();
                thread.spawn(async move {
                    for seq in 0..FRAMES {
                        let flush = [Flush::Now, Flush::Soon, Flush::Writer][(seq % 3) as usize];
                        outbox.push(&frame(sender, seq), flush).unwrap();
                        if seq % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    let _ = done.send(());
                });
                sent
            })
            .collect();
        // Read everything while the senders run: the socket's buffer is small.
        let reading = actix_rt::spawn(async move {
            let mut next = [0u32; SENDERS as usize];
            let mut len = [0u8; 4];
            while next.iter().any(|&n| n < FRAMES) {
                server.read_exact(&mut len).await.unwrap();
                let mut body = vec![0; u32::from_be_bytes(len) as usize];
                server.read_exact(&mut body).await.unwrap();
                let sender = body[0];
                let seq = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
                assert_eq!(seq, next[sender as usize], "sender {sender} out of order");
                assert_eq!(
                    &frame(sender, seq)[4..],
                    &body[..],
                    "frame {sender}/{seq} whole"
                );
                next[sender as usize] += 1;
            }
            server
        });
        for sender in senders {
            sender.await.unwrap();
        }
        for thread in threads {
            thread.stop();
        }
        let mut server = tokio::time::timeout(Duration::from_secs(30), reading)
            .await
            .expect("every frame arrives")
            .unwrap();
        assert_eq!(outbox.unsent(), 0);
        // The writer closes the stream when stopped: nothing more arrives.
        stop.send(()).unwrap();
        writer.await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_outbox_is_bounded_in_frames_and_bytes_but_takes_any_frame_when_empty() {
        // No writer: what is pushed stays.
        let outbox = Arc::new(Outbox::new(None, 3, 100, Arc::default()));
        let big = vec![7u8; 1_000];
        outbox.push(&big, Flush::Writer).unwrap();
        assert_eq!(outbox.push(b"x", Flush::Writer), Err(Refused::Bytes(1_000)));

        let outbox = Arc::new(Outbox::new(None, 3, 100, Arc::default()));
        for _ in 0..3 {
            outbox.push(b"0123456789", Flush::Soon).unwrap();
        }
        assert_eq!(outbox.push(b"x", Flush::Now), Err(Refused::Frames(3)));
        assert_eq!(outbox.unsent(), 30);
        outbox.close();
        assert_eq!(outbox.push(b"x", Flush::Now), Err(Refused::Closed));
    }
}
