//! Log lines through `env_logger`, `RUST_LOG` respected (default `info`), each line
//! naming the node and, inside a worker's code, the worker; a line written within
//! a traced request (see [`trace`](crate::trace)) ends with `trace=<32 hex>`.
//!
//! Every line the filter lets through is also kept, with its fields apart, in
//! the [`ring`] of the node it belongs to, for `GET /v1/logs`: the node of the
//! worker whose code logged it, else the node this process runs ([`init`]'s),
//! else the first node started in the process that still runs. Keeping a line
//! takes the ring's lock for a push; a line logged while one is being kept (by
//! a `Display` that logs) is printed but not kept, so keeping never recurses.

pub mod ring;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::RwLock;

use crate::message::WorkerId;
use crate::trace::LogSuffix;

pub use ring::{LogLevel, LogLine, LogRing};

static NODE: OnceLock<String> = OnceLock::new();

/// Installs the logger for a process that runs node `node`: lines to stderr and
/// into the nodes' rings. Later calls do nothing.
pub fn init(node: &str) {
    install(node, env_logger::Target::Stderr);
}

/// Installs the logger as [`init`] does, but prints nothing: lines only go into
/// the nodes' rings (for tests, and for apps that print their own way).
pub fn init_quiet(node: &str) {
    install(node, env_logger::Target::Pipe(Box::new(std::io::sink())));
}

fn install(node: &str, target: env_logger::Target) {
    let node = NODE.get_or_init(|| node.to_string()).clone();
    // Lines logged before the node boots are kept in its ring too.
    static PROCESS_RING: OnceLock<Arc<LogRing>> = OnceLock::new();
    PROCESS_RING.get_or_init(|| ring_for(&node, ring::DEFAULT_KEEP, ring::DEFAULT_MAX_BYTES));
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .target(target)
            .format(move |buf, record| {
                let worker = current_worker();
                let who = match &worker {
                    Some(id) => id.to_string(),
                    None => node.clone(),
                };
                writeln!(
                    buf,
                    "{} {:<5} [{who}] {}: {}{}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.target(),
                    record.args(),
                    LogSuffix(crate::trace::current()),
                )
            })
            .build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(Keeping(logger))).is_ok() {
        log::set_max_level(max_level);
    }
}

/// `env_logger`'s logger, each line it writes also kept in a ring.
struct Keeping(env_logger::Logger);

impl log::Log for Keeping {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.0.matches(record) {
            return;
        }
        keep(record);
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// The ring of each node started in this process, by node name.
static RINGS: RwLock<Vec<(String, Weak<LogRing>)>> = RwLock::new(Vec::new());

/// The ring of node `node` in this process, made if it has none, with these
/// bounds (`log.keep`, `log.max_bytes`). It lives while someone holds it.
pub fn ring_for(node: &str, keep: usize, max_bytes: usize) -> Arc<LogRing> {
    let mut rings = RINGS.write();
    rings.retain(|(_, ring)| ring.strong_count() > 0);
    if let Some(ring) = rings
        .iter()
        .find(|(name, _)| name == node)
        .and_then(|(_, ring)| ring.upgrade())
    {
        ring.set_bounds(keep, max_bytes);
        return ring;
    }
    let ring = Arc::new(LogRing::new(keep, max_bytes));
    rings.push((node.to_string(), Arc::downgrade(&ring)));
    ring
}

/// The ring a line belongs to (see the module docs).
fn ring_of(worker: Option<&WorkerId>) -> Option<Arc<LogRing>> {
    let rings = RINGS.read();
    let named = |node: &str| {
        rings
            .iter()
            .find(|(name, _)| name == node)
            .and_then(|(_, ring)| ring.upgrade())
    };
    worker
        .and_then(|w| named(&w.node))
        .or_else(|| NODE.get().and_then(|node| named(node)))
        .or_else(|| rings.iter().find_map(|(_, ring)| ring.upgrade()))
}

thread_local! {
    /// A line is being kept on this thread.
    static KEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps `record` in its node's ring.
fn keep(record: &log::Record<'_>) {
    // Already keeping one (or the thread is ending): print only.
    if KEEPING.try_with(|k| k.replace(true)).unwrap_or(true) {
        return;
    }
    let worker = current_worker();
    if let Some(ring) = ring_of(worker.as_deref()) {
        let mut msg = Bounded(String::new());
        // Past the bound the write fails, which only ends the formatting.
        let _cut = std::fmt::write(&mut msg, *record.args());
        ring.push(LogLine::new(
            ring::now_micros(),
            record.level().into(),
            record.target(),
            worker.map(|w| w.to_string()),
            crate::trace::current().map(|t| t.trace_id().to_string()),
            msg.0,
        ));
    }
    let _ending = KEEPING.try_with(|k| k.set(false));
}

/// A message as it is formatted, refused past a little more than a line keeps
/// (so that the line is cut, marked, by [`LogLine::new`]).
struct Bounded(String);

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = (ring::MAX_MSG + 4).saturating_sub(self.0.len());
        if s.len() <= room {
            self.0.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0.push_str(&s[..end]);
        Err(std::fmt::Error)
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

/// Runs `f` with `id` as the current worker of this thread.
pub(crate) fn with_current_worker<R>(id: &Arc<WorkerId>, f: impl FnOnce() -> R) -> R {
    let _guard = CurrentWorkerGuard::enter(id);
    f()
}

/// The most characters of outside text one log line carries (see [`untrusted`]).
pub const UNTRUSTED_MAX_CHARS: usize = 200;

/// Text from outside the process (a peer's node name, its error message, a
/// refusal's reason), fit for a log line: control characters, newlines and
/// quotes escaped as Rust's `escape_debug` does, so it cannot forge a line of
/// its own, and cut after [`UNTRUSTED_MAX_CHARS`] characters of output (marked
/// with `…`), so it cannot flood the log.
///
/// ```
/// let shown = colony::logging::untrusted("evil\nFORGED").to_string();
/// assert_eq!(shown, "evil\\nFORGED");
/// assert!(colony::logging::untrusted(&"x".repeat(5000)).to_string().chars().count() <= 201);
/// ```
pub fn untrusted(text: &str) -> Untrusted<'_> {
    Untrusted(text)
}

/// Outside text shown escaped and cut; made by [`untrusted`].
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(&'a str);

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let mut written = 0usize;
        for c in self.0.chars() {
            let escaped = c.escape_debug();
            let len = escaped.len();
            if written.saturating_add(len) > UNTRUSTED_MAX_CHARS {
                return f.write_char('…');
            }
            written = written.saturating_add(len);
            for e in escaped {
                f.write_char(e)?;
            }
        }
        Ok(())
    }
}

/// What to log for one event of a [`Throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log a line for this key, saying how many of its events went unlogged
    /// since its previous line.
    Line {
        /// Events of this key not logged since its last line.
        suppressed: u64,
    },
    /// The table of keys is full: log one overall line, saying how many events
    /// of keys not in the table went unlogged since the previous such line.
    Overflow {
        /// Events of new keys not logged one by one since the last overall line.
        suppressed: u64,
    },
    /// Log nothing; the event is counted.
    Quiet,
}

/// Rate-limits log lines about one kind of event per key (a remote address): at
/// most one line per key per `every`, the next one carrying the count of those
/// left out. The table of keys holds at most `capacity` of them, so that a
/// flood from many addresses costs bounded memory: past it the key whose last
/// line is oldest is forgotten, and events of new keys are summed in one overall
/// line per `every`.
#[derive(Debug)]
pub struct Throttle<K> {
    every: std::time::Duration,
    capacity: usize,
    keys: std::collections::HashMap<K, Quiet>,
    overflow_line: Option<std::time::Instant>,
    overflow_suppressed: u64,
}

#[derive(Debug)]
struct Quiet {
    last_line: std::time::Instant,
    suppressed: u64,
}

impl<K: std::hash::Hash + Eq + Clone> Throttle<K> {
    /// A throttle allowing one line per key per `every`, for at most `capacity` keys.
    pub fn new(every: std::time::Duration, capacity: usize) -> Self {
        Throttle {
            every,
            capacity: capacity.max(1),
            keys: std::collections::HashMap::new(),
            overflow_line: None,
            overflow_suppressed: 0,
        }
    }

    /// How many keys the table holds now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Counts one event of `key` at `now` and says what to log for it.
    pub fn note(&mut self, key: K, now: std::time::Instant) -> Verdict {
        let every = self.every;
        if let Some(quiet) = self.keys.get_mut(&key) {
            if now.saturating_duration_since(quiet.last_line) >= every {
                quiet.last_line = now;
                return Verdict::Line {
                    suppressed: std::mem::take(&mut quiet.suppressed),
                };
            }
            quiet.suppressed = quiet.suppressed.saturating_add(1);
            return Verdict::Quiet;
        }
        let fresh = Quiet {
            last_line: now,
            suppressed: 0,
        };
        if self.keys.len() < self.capacity {
            self.keys.insert(key, fresh);
            return Verdict::Line { suppressed: 0 };
        }
        let oldest = self
            .keys
            .iter()
            .min_by_key(|(_, quiet)| quiet.last_line)
            .map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            self.keys.remove(&oldest);
        }
        // This event is counted by the overall line, not the key's own.
        self.keys.insert(key, fresh);
        self.overflow_suppressed = self.overflow_suppressed.saturating_add(1);
        match self.overflow_line {
            Some(last) if now.saturating_duration_since(last) < every => Verdict::Quiet,
            _ => {
                self.overflow_line = Some(now);
                Verdict::Overflow {
                    suppressed: std::mem::take(&mut self.overflow_suppressed),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        assert_eq!(untrusted("w-1.a_b").to_string(), "w-1.a_b");
        assert_eq!(
            untrusted("evil\nFORGED\r\t\u{1b}[31m\"").to_string(),
            "evil\\nFORGED\\r\\t\\u{1b}[31m\\\""
        );
        let long = untrusted(&"é\n".repeat(1_000_000)).to_string();
        assert!(!long.contains('\n'));
        assert!(long.chars().count() <= UNTRUSTED_MAX_CHARS + 1, "{long}");
        assert!(long.ends_with('…'));
        // An escape is never split by the cut.
        let cut = untrusted(&format!("{}\n", "x".repeat(199))).to_string();
        assert_eq!(cut, format!("{}…", "x".repeat(199)));
    }

    #[test]
    fn one_line_per_key_per_period_then_the_count_of_the_rest() {
        let every = Duration::from_secs(10);
        let mut throttle = Throttle::new(every, 8);
        let t0 = Instant::now();
        assert_eq!(throttle.note("a", t0), Verdict::Line { suppressed: 0 });
        for i in 1..100 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(throttle.note("a", at), Verdict::Quiet);
        }
        // Another key has its own budget.
        assert_eq!(throttle.note("b", t0), Verdict::Line { suppressed: 0 });
        assert_eq!(
            throttle.note("a", t0 + every),
            Verdict::Line { suppressed: 99 }
        );
        assert_eq!(throttle.note("a", t0 + every), Verdict::Quiet);
    }

    #[test]
    fn a_full_table_forgets_the_oldest_key_and_logs_one_overall_line() {
        let every = Duration::from_secs(10);
        let mut throttle = Throttle::new(every, 3);
        let t0 = Instant::now();
        for (i, key) in [1, 2, 3].into_iter().enumerate() {
            let at = t0 + Duration::from_millis(i as u64);
            assert_eq!(throttle.note(key, at), Verdict::Line { suppressed: 0 });
        }
        let mut lines = 0;
        let mut quiet = 0;
        for key in 4..1_000 {
            match throttle.note(key, t0 + Duration::from_secs(1)) {
                Verdict::Overflow { suppressed: 1 } => lines += 1,
                Verdict::Quiet => quiet += 1,
                other => panic!("key {key}: {other:?}"),
            }
            assert_eq!(throttle.len(), 3);
        }
        assert_eq!((lines, quiet), (1, 995));
        // The next overall line, a period later, counts every one left out.
        assert_eq!(
            throttle.note(5_000, t0 + Duration::from_secs(11)),
            Verdict::Overflow { suppressed: 996 }
        );
        // Key 1 was the oldest and was forgotten: it is new again.
        assert!(matches!(
            throttle.note(1, t0 + Duration::from_secs(12)),
            Verdict::Overflow { .. } | Verdict::Quiet
        ));
    }
}
