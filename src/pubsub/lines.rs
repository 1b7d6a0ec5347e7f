//! The queue of JSON lines behind one `GET /v1/subscribe` stream, bounded in
//! lines and in bytes.
//!
//! A line that does not fit is dropped and counted, as at any subscriber's
//! high-water mark. The reader learns it at the place in the stream where the
//! lines were lost: a line `{"dropped":N}` comes before the next message, so a
//! client that stalled and reads again knows how many it missed. A line always
//! fits a queue that holds none, whatever its size.
//!
//! All the streams of a node also share one [`Budget`] of bytes, so that many
//! stalled streams together hold no more than it: a line that would pass it is
//! dropped and counted in the same way. Bytes return to the budget as the client
//! takes its lines, or all at once when the stream ends. A line always fits a
//! budget that holds none.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The most of a line handed to the HTTP server at once. The server copies what
/// it takes into its write buffer, outside any budget, and takes more only while
/// that buffer is small: in pieces, a stalled client costs it a few of them, not
/// a whole line of any size.
const PIECE: usize = 16 * 1024;

/// What the queue holds: a message line, or how many were dropped at that place.
enum Item {
    Line(Bytes),
    Dropped(u64),
}

struct State {
    items: VecDeque<Item>,
    /// Message lines held (markers not included).
    lines: usize,
    /// Bytes of the message lines held.
    bytes: usize,
    sender_gone: bool,
    reader_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
    max_lines: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
}

/// Bytes held by all the streams of a node, and the most they may hold.
#[derive(Debug)]
pub(crate) struct Budget {
    held: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` bytes, none held.
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes held now by all the streams.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn fits(&self, held: usize, len: usize) -> bool {
        held == 0 || held.saturating_add(len) <= self.max
    }

    /// Whether `len` more bytes would fit now.
    fn has_room(&self, len: usize) -> bool {
        self.fits(self.held(), len)
    }

    /// Takes `len` bytes if they fit.
    fn take(&self, len: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                self.fits(held, len).then(|| held.saturating_add(len))
            })
            .is_ok()
    }

    fn give_back(&self, len: usize) {
        // Never below 0, even if a count were wrong.
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(len))
            });
    }
}

/// The publishing side: held by the subscription.
pub(crate) struct LineSender(Arc<Shared>);

/// The reading side: held by the HTTP stream.
pub(crate) struct LineReceiver(Arc<Shared>);

/// What became of a line offered to the queue.
pub(crate) enum Pushed {
    /// Queued.
    Taken,
    /// Dropped: the queue is at its bound.
    Full,
    /// The reader is gone.
    Gone,
}

/// A queue of at most `max_lines` lines and `max_bytes` bytes, whose bytes also
/// count against `budget`.
pub(crate) fn line_queue(
    max_lines: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
) -> (LineSender, LineReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            lines: 0,
            bytes: 0,
            sender_gone: false,
            reader_gone: false,
        }),
        ready: Notify::new(),
        max_lines: max_lines.max(1),
        max_bytes,
        budget,
    });
    (LineSender(shared.clone()), LineReceiver(shared))
}

impl State {
    fn fits(&self, len: usize, shared: &Shared) -> bool {
        self.lines == 0
            || (self.lines < shared.max_lines && self.bytes.saturating_add(len) <= shared.max_bytes)
    }

    fn drop_one(&mut self) {
        match self.items.back_mut() {
            Some(Item::Dropped(n)) => *n = n.saturating_add(1),
            _ => self.items.push_back(Item::Dropped(1)),
        }
    }
}

impl LineSender {
    /// Drops and counts a line of at least `len` bytes if it cannot fit, before it
    /// is made: a stalled reader costs no encoding. `None` when it may fit.
    pub(crate) fn drop_if_full(&self, len: usize) -> Option<Pushed> {
        let mut state = self.0.state.lock();
        if state.reader_gone {
            return Some(Pushed::Gone);
        }
        if state.fits(len, &self.0) && self.0.budget.has_room(len) {
            return None;
        }
        state.drop_one();
        Some(Pushed::Full)
    }

    /// Queues `line`, or drops and counts it when the queue is at its bound.
    pub(crate) fn push(&self, line: Bytes) -> Pushed {
        let mut state = self.0.state.lock();
        if state.reader_gone {
            return Pushed::Gone;
        }
        if !state.fits(line.len(), &self.0) || !self.0.budget.take(line.len()) {
            state.drop_one();
            return Pushed::Full;
        }
        state.lines += 1;
        state.bytes += line.len();
        state.items.push_back(Item::Line(line));
        drop(state);
        self.0.ready.notify_one();
        Pushed::Taken
    }
}

impl Drop for LineSender {
    fn drop(&mut self) {
        self.0.state.lock().sender_gone = true;
        self.0.ready.notify_one();
    }
}

impl LineReceiver {
    /// The next line, or the next [`PIECE`] bytes of it: a message, or
    /// `{"dropped":N}` where N messages were lost. `None` once the subscription
    /// ended and every line was read.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        loop {
            {
                let mut state = self.0.state.lock();
                match state.items.pop_front() {
                    Some(Item::Line(mut line)) => {
                        let piece = if line.len() > PIECE {
                            let piece = line.split_to(PIECE);
                            state.items.push_front(Item::Line(line));
                            piece
                        } else {
                            state.lines -= 1;
                            line
                        };
                        state.bytes -= piece.len();
                        self.0.budget.give_back(piece.len());
                        return Some(piece);
                    }
                    Some(Item::Dropped(n)) => {
                        return Some(Bytes::from(format!("{{\"dropped\":{n}}}\n")));
                    }
                    None if state.sender_gone => return None,
                    None => {}
                }
            }
            // A push between the unlock and this wait leaves a permit: no wake-up
            // is lost.
            self.0.ready.notified().await;
        }
    }
}

impl Drop for LineReceiver {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.reader_gone = true;
        state.items.clear();
        // Lines never read give their bytes back to the node's budget.
        self.0.budget.give_back(state.bytes);
        state.bytes = 0;
        state.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Arc<Budget> {
        Arc::new(Budget::new(usize::MAX))
    }

    #[actix_rt::test]
    async fn drops_past_the_byte_bound_are_reported_before_the_next_line() {
        let (tx, mut rx) = line_queue(100, 9, budget());
        assert!(matches!(
            tx.push(Bytes::from_static(b"aaaaaa\n")),
            Pushed::Taken
        ));
        assert!(matches!(
            tx.push(Bytes::from_static(b"bbbbbb\n")),
            Pushed::Full
        ));
        assert!(matches!(tx.push(Bytes::from_static(b"cc\n")), Pushed::Full));
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"aaaaaa\n"));
        assert!(matches!(
            tx.push(Bytes::from_static(b"dd\n")),
            Pushed::Taken
        ));
        assert_eq!(
            rx.recv().await.unwrap(),
            Bytes::from_static(b"{\"dropped\":2}\n")
        );
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"dd\n"));
        drop(tx);
        assert!(rx.recv().await.is_none());
    }

    #[actix_rt::test]
    async fn one_line_larger_than_the_bound_still_reaches_an_empty_queue() {
        let (tx, mut rx) = line_queue(100, 4, budget());
        assert!(matches!(
            tx.push(Bytes::from_static(b"0123456789\n")),
            Pushed::Taken
        ));
        assert!(matches!(tx.push(Bytes::from_static(b"x\n")), Pushed::Full));
        assert_eq!(rx.recv().await.unwrap().len(), 11);
        drop(rx);
        assert!(matches!(tx.push(Bytes::from_static(b"x\n")), Pushed::Gone));
    }

    #[actix_rt::test]
    async fn streams_share_the_budget_and_give_it_back_as_read_or_dropped() {
        let budget = Arc::new(Budget::new(11));
        let (a, mut a_rx) = line_queue(100, 100, budget.clone());
        let (b, b_rx) = line_queue(100, 100, budget.clone());
        assert!(matches!(
            a.push(Bytes::from_static(b"aaaaaa\n")),
            Pushed::Taken
        ));
        assert!(matches!(
            b.push(Bytes::from_static(b"bbb\n")),
            Pushed::Taken
        ));
        assert_eq!(budget.held(), 11);
        // The budget holds something: a line past it is dropped, even by an empty queue.
        let (c, mut c_rx) = line_queue(100, 100, budget.clone());
        assert!(c.drop_if_full(1).is_some());
        assert!(matches!(c.push(Bytes::from_static(b"c\n")), Pushed::Full));
        assert_eq!(a_rx.recv().await.unwrap().len(), 7);
        assert_eq!(budget.held(), 4);
        drop(b_rx);
        assert_eq!(
            budget.held(),
            0,
            "a stream that ends gives back what it held"
        );
        assert!(c.drop_if_full(2).is_none());
        assert!(matches!(c.push(Bytes::from_static(b"c\n")), Pushed::Taken));
        assert_eq!(
            c_rx.recv().await.unwrap(),
            Bytes::from_static(b"{\"dropped\":2}\n")
        );
        assert_eq!(c_rx.recv().await.unwrap(), Bytes::from_static(b"c\n"));
        assert_eq!(budget.held(), 0);
    }

    #[actix_rt::test]
    async fn a_long_line_is_read_in_pieces_that_give_back_their_bytes() {
        let budget = Arc::new(Budget::new(usize::MAX));
        let (tx, mut rx) = line_queue(100, usize::MAX, budget.clone());
        let long = Bytes::from(vec![b'x'; PIECE * 2 + 5]);
        assert!(matches!(tx.push(long.clone()), Pushed::Taken));
        assert!(matches!(tx.push(Bytes::from_static(b"y\n")), Pushed::Taken));
        let mut read = Vec::new();
        for left in [PIECE + 7, 7, 2, 0] {
            read.extend_from_slice(&rx.recv().await.unwrap());
            assert_eq!(budget.held(), left);
        }
        assert_eq!(read.len(), long.len() + 2);
        drop(tx);
        assert!(rx.recv().await.is_none());
    }
}
