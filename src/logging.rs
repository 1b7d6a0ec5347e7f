//! Log lines through `env_logger`, `RUST_LOG` respected (default `info`), each line
//! naming the node and, inside a worker's code, the worker; a line written within
//! a traced request (see [`trace`](crate::trace)) ends with `trace=<32 hex>`.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use crate::message::WorkerId;
use crate::trace::LogSuffix;

static NODE: OnceLock<String> = OnceLock::new();

/// Installs the logger for a process that runs node `node`. Later calls do nothing.
pub fn init(node: &str) {
    let node = NODE.get_or_init(|| node.to_string()).clone();
    let _already_installed =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
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
            .try_init();
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
