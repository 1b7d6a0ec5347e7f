//! A node's recent log lines, kept in a ring bounded in lines (`log.keep`) and
//! in bytes (`log.max_bytes`), for `GET /v1/logs`.
//!
//! Each line gets the next of the ring's sequence numbers (from 1), so that a
//! reader that saw up to `N` asks for the lines after `N` ([`LogRing::read`]); if
//! some of those have left the ring meanwhile, the answer says how many
//! (`dropped`). A ring also has a random `epoch`: a reader that sees it change is
//! reading a new ring (the node restarted) whose numbers start again.
//!
//! A push takes the ring's lock for a slot's worth of work: the line is made
//! before, and lines are kept behind an `Arc`, so that a reader copies pointers,
//! not text, while it holds the lock.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Lines a node keeps unless `log.keep` says otherwise.
pub const DEFAULT_KEEP: usize = 10_000;
/// Bytes of lines a node keeps unless `log.max_bytes` says otherwise: 8 MiB.
pub const DEFAULT_MAX_BYTES: usize = 8 * 1024 * 1024;
/// The most bytes of a line's message kept; a longer one is cut, ending with `…`.
pub const MAX_MSG: usize = 4096;
/// The most bytes of a line's target kept.
pub const MAX_TARGET: usize = 256;
/// What a kept line costs besides its text: the line, its `Arc` and its slot
/// in memory; as a line of `GET /v1/logs`, its keys, time, number, level and
/// node name (at most 32 bytes), so that the cost bounds the line shown.
const OVERHEAD: usize = 192;

/// How severe a line is, as `log` has it; `error` is the most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `error`
    Error,
    /// `warn`
    Warn,
    /// `info`
    Info,
    /// `debug`
    Debug,
    /// `trace`
    Trace,
}

impl LogLevel {
    /// The names, most severe first.
    pub const NAMES: &'static str = "error, warn, info, debug, trace";

    /// Whether a line at this level is shown to a reader asking for `min` and
    /// more severe.
    pub fn at_least(self, min: LogLevel) -> bool {
        self <= min
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl From<log::Level> for LogLevel {
    fn from(level: log::Level) -> Self {
        match level {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = ();

    /// One of [`LogLevel::NAMES`], in any case.
    fn from_str(s: &str) -> Result<Self, ()> {
        [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]
        .into_iter()
        .find(|level| level.as_str().eq_ignore_ascii_case(s))
        .ok_or(())
    }
}

/// One log line as a ring keeps it and as it crosses to other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number in its node's ring, from 1.
    pub seq: u64,
    /// When it was logged: microseconds since the Unix epoch, by its node's clock.
    pub ts: u64,
    /// Its level.
    pub level: LogLevel,
    /// Its target (the module that logged it, or the target it named).
    pub target: String,
    /// The worker whose code logged it, `NODE/SERVICE/INDEX`, if any.
    pub worker: Option<String>,
    /// The trace id (32 hex digits) of the request it was logged within, if any.
    pub trace: Option<String>,
    /// The message, cut after [`MAX_MSG`] bytes.
    pub msg: String,
}

impl LogLine {
    /// A line to push (its `seq` is given by the ring): `target` and `msg` are cut
    /// to their maximum.
    pub fn new(
        ts: u64,
        level: LogLevel,
        target: &str,
        worker: Option<String>,
        trace: Option<String>,
        msg: String,
    ) -> LogLine {
        let mut msg = msg;
        cut(&mut msg, MAX_MSG);
        let mut target = target.to_string();
        cut(&mut target, MAX_TARGET);
        LogLine {
            seq: 0,
            ts,
            level,
            target,
            worker,
            trace,
            msg,
        }
    }

    /// The most bytes its JSON takes.
    fn cost(&self) -> usize {
        self.cost_besides_msg() + json_len(&self.msg)
    }

    fn cost_besides_msg(&self) -> usize {
        OVERHEAD
            + json_len(&self.target)
            + self.worker.as_deref().map_or(0, json_len)
            + self.trace.as_deref().map_or(0, json_len)
    }
}

/// The most bytes `text` takes in JSON: every byte that JSON escapes counted as
/// the six of `\u00XX`.
fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| {
            if b < 0x20 || b == b'"' || b == b'\\' {
                6
            } else {
                1
            }
        })
        .sum()
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut
/// with `…` (within the `max`).
pub fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mark = '…';
    let mut end = max.saturating_sub(mark.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if max >= mark.len_utf8() {
        text.push(mark);
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After the line numbered `N` (0: from the first line kept).
    After(u64),
    /// The newest lines, as `tail` shows them.
    Tail,
}

/// What a read gives.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// The ring's epoch.
    pub epoch: u64,
    /// The lines, oldest first.
    pub lines: Vec<Arc<LogLine>>,
    /// Where the next read starts: `Start::After(next)`.
    pub next: u64,
    /// The read stopped at its bound: lines after `next` are waiting (after a
    /// [`Start::Tail`]: older lines were left out).
    pub more: bool,
    /// Lines (of any level) after the `Start::After` that had left the ring.
    pub dropped: u64,
}

struct Slot {
    line: Arc<LogLine>,
    cost: usize,
}

struct State {
    slots: VecDeque<Slot>,
    bytes: usize,
    /// The number of the newest line (0 before the first).
    last: u64,
    keep: usize,
    max_bytes: usize,
}

impl State {
    fn trim(&mut self) {
        while self.slots.len() > self.keep
            || (self.bytes > self.max_bytes && !self.slots.is_empty())
        {
            if let Some(slot) = self.slots.pop_front() {
                self.bytes = self.bytes.saturating_sub(slot.cost);
            }
        }
    }

    /// The number of the oldest line kept (`last + 1` when none is).
    fn first(&self) -> u64 {
        self.slots
            .front()
            .map_or(self.last.saturating_add(1), |s| s.line.seq)
    }
}

/// A node's recent log lines; see the [module](self) docs.
pub struct LogRing {
    state: Mutex<State>,
    epoch: u64,
}

impl std::fmt::Debug for LogRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("LogRing")
            .field("lines", &state.slots.len())
            .field("bytes", &state.bytes)
            .field("last", &state.last)
            .finish()
    }
}

impl LogRing {
    /// An empty ring keeping at most `keep` lines and `max_bytes` bytes of them.
    pub fn new(keep: usize, max_bytes: usize) -> LogRing {
        let mut epoch = [0u8; 8];
        // Without randomness the clock tells rings apart as well.
        if getrandom::fill(&mut epoch).is_err() {
            epoch = now_micros().to_le_bytes();
        }
        LogRing {
            state: Mutex::new(State {
                slots: VecDeque::new(),
                bytes: 0,
                last: 0,
                keep,
                max_bytes,
            }),
            epoch: u64::from_le_bytes(epoch) >> 1,
        }
    }

    /// Sets the bounds, dropping the oldest lines past them.
    pub fn set_bounds(&self, keep: usize, max_bytes: usize) {
        let mut state = self.state.lock();
        state.keep = keep;
        state.max_bytes = max_bytes;
        state.trim();
    }

    /// The ring's epoch: another ring's is another number.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Keeps `line`, numbered next, dropping the oldest lines past the bounds;
    /// returns its number.
    pub fn push(&self, line: LogLine) -> u64 {
        let cost = line.cost();
        let mut line = line;
        let mut state = self.state.lock();
        state.last = state.last.saturating_add(1);
        line.seq = state.last;
        let seq = line.seq;
        if state.keep > 0 {
            state.bytes = state.bytes.saturating_add(cost);
            state.slots.push_back(Slot {
                line: Arc::new(line),
                cost,
            });
            state.trim();
        }
        seq
    }

    /// Lines kept now.
    pub fn len(&self) -> usize {
        self.state.lock().slots.len()
    }

    /// Whether no line is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the lines kept now, as the bound counts them.
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// The lines from `start` at `level` or more severe: at most `max_lines`, and
    /// at most `max_bytes` of JSON (but always one, its message cut to fit, if
    /// there is one).
    pub fn read(&self, start: Start, level: LogLevel, max_lines: usize, max_bytes: usize) -> Read {
        let state = self.state.lock();
        let mut read = Read {
            epoch: self.epoch,
            next: state.last,
            ..Read::default()
        };
        if max_lines == 0 {
            return read;
        }
        let first = state.first();
        let mut bytes = 0usize;
        let mut take = |slot: &Slot, lines: &mut Vec<Arc<LogLine>>| -> bool {
            if lines.len() >= max_lines {
                return false;
            }
            if bytes.saturating_add(slot.cost) > max_bytes {
                if lines.is_empty() {
                    lines.push(fitted(&slot.line, max_bytes));
                    bytes = max_bytes;
                }
                return false;
            }
            bytes += slot.cost;
            lines.push(slot.line.clone());
            true
        };
        match start {
            Start::Tail => {
                for slot in state.slots.iter().rev() {
                    if slot.line.level.at_least(level) && !take(slot, &mut read.lines) {
                        read.more = true;
                        break;
                    }
                }
                read.lines.reverse();
            }
            Start::After(after) => {
                let from = after.saturating_add(1);
                if from < first {
                    read.dropped = first - from;
                }
                let skip = usize::try_from(from.saturating_sub(first))
                    .unwrap_or(usize::MAX)
                    .min(state.slots.len());
                for slot in state.slots.range(skip..) {
                    if !slot.line.level.at_least(level) {
                        continue;
                    }
                    if !take(slot, &mut read.lines) {
                        read.more = true;
                        break;
                    }
                }
                if read.more {
                    read.next = read.lines.last().map_or(after, |l| l.seq);
                }
            }
        }
        read
    }
}

/// `line` with its message cut so that its JSON takes at most about `max_bytes`.
fn fitted(line: &LogLine, max_bytes: usize) -> Arc<LogLine> {
    let mut fitted = line.clone();
    // At worst every byte of the message is escaped.
    let room = max_bytes.saturating_sub(line.cost_besides_msg()) / 6;
    cut(&mut fitted.msg, room);
    Arc::new(fitted)
}

/// Microseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `ts` (microseconds since the Unix epoch) as RFC 3339 in UTC with
/// microseconds, e.g. `2026-12-02T06:14:49.123456Z`.
pub fn rfc3339(ts: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(ts);
    humantime::format_rfc3339_micros(at).to_string()
}

#[cfg(test)]
mod tests;
