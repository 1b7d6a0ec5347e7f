//! W3C trace context: which request a piece of work belongs to, across nodes.
//!
//! A request that enters a node's HTTP API with a `traceparent` header
//! (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, see
//! <https://www.w3.org/TR/trace-context/>) keeps its trace id on every hop: the
//! bridge's request frames, NATS headers, jobs and publications carry it, each
//! node serves the request within it, and every log line written meanwhile ends
//! with `trace=<32 hex>`. A request without a valid header starts a new trace.
//!
//! While a handler for a traced request runs, [`current`] returns its context:
//!
//! ```
//! use colony::trace::{self, TraceContext};
//!
//! let incoming: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
//!     .parse()
//!     .unwrap();
//! assert_eq!(trace::current(), None);
//! let seen = trace::scope_sync(Some(incoming), trace::current);
//! assert_eq!(seen, Some(incoming));
//! assert_eq!(incoming.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! ```
//!
//! The context is current in a handler's synchronous part (the `handle` call)
//! and in whatever it calls there. A handler that answers with a future and calls
//! other services from it keeps the trace by wrapping that future:
//! `trace::scope(trace::current(), async move { … })`.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::str::FromStr;

/// The W3C `traceparent` of a request: its trace id, the id of the span (the
/// hop) that holds it, and the trace flags. Copied, never allocated.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// The length of a version-00 `traceparent` header.
pub const TRACEPARENT_LEN: usize = 55;

/// The length of a context in binary form ([`TraceContext::to_bytes`]).
pub const WIRE_LEN: usize = 25;

/// The trace flag `sampled`, set on every trace colony starts.
pub const SAMPLED: u8 = 0x01;

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// Not exactly 55 characters.
    #[error("a traceparent is 55 characters long")]
    Length,
    /// A version other than `00`.
    #[error("only traceparent version 00 is read")]
    Version,
    /// A field that is not lowercase hex, or a missing `-`.
    #[error("a traceparent is lowercase hex fields separated by `-`")]
    Format,
    /// An all-zero trace id or parent id.
    #[error("a traceparent's trace id and parent id must not be all zeros")]
    Zero,
}

impl TraceContext {
    /// A new trace: random trace and span ids, flags `01` (sampled).
    pub fn new() -> TraceContext {
        TraceContext {
            trace_id: random_nonzero(),
            span_id: random_nonzero(),
            flags: SAMPLED,
        }
    }

    /// The context of `trace_id`, `span_id` and `flags`; `None` if either id is
    /// all zeros, which W3C makes invalid.
    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<TraceContext> {
        let valid = trace_id != [0; 16] && span_id != [0; 8];
        valid.then_some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The same trace in a new span: this node's hop of a request whose
    /// caller's span is `self`.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: random_nonzero(),
            ..*self
        }
    }

    /// The trace id, shown as 32 lowercase hex digits.
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// The trace id's bytes.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The span id: the `parent-id` a hop called from here receives.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller asked for the trace to be recorded (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Parses a `traceparent` strictly: version `00`, exactly 55 characters,
    /// lowercase hex, neither id all zeros.
    pub fn parse(header: &str) -> Result<TraceContext, TraceError> {
        TraceContext::parse_bytes(header.as_bytes())
    }

    /// [`parse`](Self::parse) of a header's raw bytes.
    pub fn parse_bytes(header: &[u8]) -> Result<TraceContext, TraceError> {
        if header.len() != TRACEPARENT_LEN {
            return Err(TraceError::Length);
        }
        if header[2] != b'-' || header[35] != b'-' || header[52] != b'-' {
            return Err(TraceError::Format);
        }
        let mut version = [0u8; 1];
        hex_into(&header[0..2], &mut version)?;
        if version[0] != 0 {
            return Err(TraceError::Version);
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_into(&header[3..35], &mut trace_id)?;
        hex_into(&header[36..52], &mut span_id)?;
        hex_into(&header[53..55], &mut flags)?;
        TraceContext::from_parts(trace_id, span_id, flags[0]).ok_or(TraceError::Zero)
    }

    /// The binary form: trace id, span id, flags ([`WIRE_LEN`] bytes).
    pub fn to_bytes(&self) -> [u8; WIRE_LEN] {
        let mut out = [0u8; WIRE_LEN];
        out[..16].copy_from_slice(&self.trace_id);
        out[16..24].copy_from_slice(&self.span_id);
        out[24] = self.flags;
        out
    }

    /// Reads the binary form; `None` if it is not [`WIRE_LEN`] bytes or an id
    /// is all zeros.
    pub fn from_bytes(bytes: &[u8]) -> Option<TraceContext> {
        if bytes.len() != WIRE_LEN {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        trace_id.copy_from_slice(&bytes[..16]);
        span_id.copy_from_slice(&bytes[16..24]);
        TraceContext::from_parts(trace_id, span_id, bytes[24])
    }
}

impl Default for TraceContext {
    /// A new trace, as [`TraceContext::new`].
    fn default() -> Self {
        TraceContext::new()
    }
}

/// The `traceparent` header: `00-<trace id>-<span id>-<flags>`.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        write_hex(f, &self.trace_id)?;
        f.write_str("-")?;
        write_hex(f, &self.span_id)?;
        write!(f, "-{:02x}", self.flags)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

impl FromStr for TraceContext {
    type Err = TraceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceContext::parse(s)
    }
}

impl serde::Serialize for TraceContext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TraceContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TraceContext::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A trace id shown as 32 lowercase hex digits, as log lines name it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TraceId([u8; 16]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Lowercase hex digits into `out`, exactly two per byte.
fn hex_into(text: &[u8], out: &mut [u8]) -> Result<(), TraceError> {
    fn digit(c: u8) -> Result<u8, TraceError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(TraceError::Format),
        }
    }
    if text.len() != out.len() * 2 {
        return Err(TraceError::Format);
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(())
}

thread_local! {
    /// Where this thread's random ids come from: splitmix64, seeded once from the OS.
    static RANDOM: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    // No OS randomness: ids only need to differ, not to be secret.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let here = &bytes as *const [u8; 8] as usize as u64;
    nanos ^ here.rotate_left(32) ^ u64::from(std::process::id())
}

fn next_random() -> u64 {
    RANDOM.with(|state| {
        let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `N` random bytes, not all zeros.
fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    while out.iter().all(|&b| b == 0) {
        for chunk in out.chunks_mut(8) {
            let bytes = next_random().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    out
}

tokio::task_local! {
    static CURRENT: Option<TraceContext>;
}

/// The trace of the request whose code runs now on this thread: a handler of a
/// traced request, the routing and serving of one, a job pushed within one, or
/// code inside [`scope`]/[`scope_sync`]. `None` outside any trace.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|trace| *trace).ok().flatten()
}

/// Runs `fut` with `trace` current (as [`current`] and the log lines see it)
/// whenever it is polled; `None` runs it outside any trace.
pub fn scope<F: Future>(trace: Option<TraceContext>, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(trace, fut)
}

/// Runs `f` with `trace` current.
pub fn scope_sync<R>(trace: Option<TraceContext>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(trace, f)
}

/// `fut`, within `trace` when there is one; untraced work is not wrapped, and
/// pays nothing.
pub(crate) fn maybe_scope<F: Future>(
    trace: Option<TraceContext>,
    fut: F,
) -> futures::future::Either<impl Future<Output = F::Output>, F> {
    match trace {
        Some(trace) => futures::future::Either::Left(scope(Some(trace), fut)),
        None => futures::future::Either::Right(fut),
    }
}

/// ` trace=<32 hex>` for a log line written within a trace, nothing otherwise.
pub(crate) struct LogSuffix(pub(crate) Option<TraceContext>);

impl fmt::Display for LogSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(trace) => write!(f, " trace={}", trace.trace_id()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses_and_prints_back() {
        let trace = TraceContext::parse(VALID).expect("valid");
        assert_eq!(trace.to_string(), VALID);
        assert_eq!(
            trace.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            trace.span_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(trace.sampled());
        let unsampled = TraceContext::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
        assert_eq!(unsampled.to_string(), VALID.replace("-01", "-00"));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let cases: &[(&str, TraceError)] = &[
            ("", TraceError::Length),
            (&VALID[..54], TraceError::Length),
            (&format!("{VALID}-"), TraceError::Length),
            (&format!(" {}", &VALID[1..]), TraceError::Format),
            (&VALID.replacen("00-", "01-", 1), TraceError::Version),
            (&VALID.replacen("00-", "ff-", 1), TraceError::Version),
            (&VALID.to_uppercase(), TraceError::Format),
            (&VALID.replace("4bf9", "4BF9"), TraceError::Format),
            (&VALID.replace("4bf9", "4bg9"), TraceError::Format),
            (&VALID.replace("-00f0", "_00f0"), TraceError::Format),
            (&VALID.replace("-01", "+01"), TraceError::Format),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceError::Zero,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceError::Zero,
            ),
            // Multi-byte characters where hex belongs: refused, never sliced.
            (&VALID.replacen("4b", "é", 1), TraceError::Format),
        ];
        for (text, why) in cases {
            assert_eq!(TraceContext::parse(text), Err(*why), "{text:?}");
        }
    }

    #[test]
    fn new_traces_are_valid_and_distinct() {
        let a = TraceContext::new();
        let b = TraceContext::new();
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.sampled());
        assert_eq!(TraceContext::parse(&a.to_string()), Ok(a));
        let child = a.child();
        assert_eq!(child.trace_id(), a.trace_id());
        assert_ne!(child.span_id(), a.span_id());
        assert_eq!(child.flags(), a.flags());
    }

    #[test]
    fn the_binary_form_round_trips_and_refuses_zero_ids() {
        let trace = TraceContext::parse(VALID).unwrap();
        assert_eq!(TraceContext::from_bytes(&trace.to_bytes()), Some(trace));
        assert_eq!(TraceContext::from_bytes(&[0; WIRE_LEN]), None);
        assert_eq!(TraceContext::from_bytes(&trace.to_bytes()[..24]), None);
        let json = serde_json::to_string(&trace).unwrap();
        assert_eq!(json, format!("\"{VALID}\""));
        assert_eq!(serde_json::from_str::<TraceContext>(&json).unwrap(), trace);
        assert!(serde_json::from_str::<TraceContext>("\"00-zz\"").is_err());
    }

    #[test]
    fn the_current_trace_is_set_only_within_a_scope() {
        let trace = TraceContext::new();
        assert_eq!(current(), None);
        assert_eq!(scope_sync(Some(trace), current), Some(trace));
        assert_eq!(scope_sync(Some(trace), || scope_sync(None, current)), None);
        assert_eq!(current(), None);
        let polled = futures::executor::block_on(scope(Some(trace), async { current() }));
        assert_eq!(polled, Some(trace));
        assert_eq!(LogSuffix(None).to_string(), "");
        assert_eq!(
            LogSuffix(Some(trace)).to_string(),
            format!(" trace={}", trace.trace_id())
        );
    }
}
