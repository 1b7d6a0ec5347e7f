//! The queue of JSON lines behind one `GET /v1/subscribe` stream, bounded in
//! lines and in bytes.
//!
//! A line that does not fit is dropped and counted, as at any subscriber's
//! high-water mark. The reader learns it at the place in the stream where the
//! lines were lost: a line `{"dropped":N}` comes before the next message, so a
//! client that stalled and reads again knows how many it missed. A line always
//! fits a queue that holds none, whatever its size.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

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

/// A queue of at most `max_lines` lines and `max_bytes` bytes.
pub(crate) fn line_queue(max_lines: usize, max_bytes: usize) -> (LineSender, LineReceiver) {
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
        if state.fits(len, &self.0) {
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
        if !state.fits(line.len(), &self.0) {
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
    /// The next line: a message, or `{"dropped":N}` where N messages were lost.
    /// `None` once the subscription ended and every line was read.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        loop {
            {
                let mut state = self.0.state.lock();
                match state.items.pop_front() {
                    Some(Item::Line(line)) => {
                        state.lines -= 1;
                        state.bytes -= line.len();
                        return Some(line);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn drops_past_the_byte_bound_are_reported_before_the_next_line() {
        let (tx, mut rx) = line_queue(100, 9);
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
        let (tx, mut rx) = line_queue(100, 4);
        assert!(matches!(
            tx.push(Bytes::from_static(b"0123456789\n")),
            Pushed::Taken
        ));
        assert!(matches!(tx.push(Bytes::from_static(b"x\n")), Pushed::Full));
        assert_eq!(rx.recv().await.unwrap().len(), 11);
        drop(rx);
        assert!(matches!(tx.push(Bytes::from_static(b"x\n")), Pushed::Gone));
    }
}
