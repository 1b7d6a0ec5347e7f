//! `GET /v1/logs`: the log lines of every node of the cluster as JSON lines
//! (`application/x-ndjson`), merged in time order, as `pm2 logs` shows them.
//!
//! The query: `node=NAME` (that node's lines only), `level=warn` (that level
//! and the more severe: `error`, `warn`, `info`, `debug`, `trace`), `lines=N`
//! (first the newest N lines of the cluster, default 100, at most 10,000, each
//! node giving at most a quarter MiB of them), `follow=1` (then every new line,
//! until the client hangs up or the node stops). Anything else is a 400 naming it.
//!
//! A line: `{"ts","node","seq","level","target","worker","trace","msg"}`: `ts` in
//! RFC 3339, UTC, with microseconds (by the clock of the node that logged it),
//! `seq` the line's number on its node, `worker` and `trace` `null` outside a
//! worker or a trace. When lines of a node left its ring before a follower
//! read them (it fell `log.keep` lines behind), a line `{"node","dropped"}`
//! says how many.
//!
//! The stream is pulled: lines are read from the nodes (`Admin::Logs`) only
//! when the HTTP server asks for more, which it does as the client reads. A
//! client that stops reading costs one round's lines (about [`ROUND_BYTES`]),
//! besides the sockets' buffers, and no work at all; its connection is closed
//! once nothing could be written to it for `api.read_timeout` (see `paced`).
//! A follower asks every node each [`POLL`] for the lines after the last it
//! saw, at once again while a node had more than one answer carries. The lines
//! of a round are merged by time; a node's lines later than the last line of
//! a node that still has more waiting are held for the next round, so that a
//! busy node's backlog does not come out of order. A follower ends when its
//! client closes its side of the connection, or when the node stops. At most
//! [`MAX_STREAMS`] streams are open at once on a node; more are 503
//! `Overloaded`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::paced::Pace;
use crate::error::ServiceError;
use crate::logging::ring::{rfc3339, LogLevel, LogLine};
use crate::logging::untrusted;
use crate::node::{LogBatch, Node};

/// How often a follower asks every node for new lines.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Log streams open at once on one node.
pub(crate) const MAX_STREAMS: usize = 16;
/// Lines first shown unless `lines=` says otherwise (as `pm2 logs --lines`).
const DEFAULT_LINES: usize = 100;
/// The most `lines=` may ask for.
const MAX_LINES: usize = 10_000;
/// Lines a follower asks one node for at once.
const FOLLOW_LINES: usize = 1000;
/// Bytes of lines one round asks of all the nodes together, shared among them.
const ROUND_BYTES: usize = 512 * 1024;
/// Bytes of lines one round asks of each node at least.
const NODE_BYTES: usize = 16 * 1024;
/// The most bytes handed to the HTTP server at once.
const PIECE: usize = 16 * 1024;

/// The log streams open on a node's API.
#[derive(Debug, Default)]
pub(crate) struct LogStreams(AtomicUsize);

/// One open stream, counted until it drops.
struct Slot(Arc<LogStreams>);

impl Slot {
    fn take(streams: &Arc<LogStreams>) -> Result<Slot, ServiceError> {
        streams
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < MAX_STREAMS).then_some(open + 1)
            })
            .map(|_| Slot(streams.clone()))
            .map_err(|_| {
                ServiceError::overloaded(format!(
                    "{MAX_STREAMS} log streams are open on this node already; try again when one ends"
                ))
            })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    node: Option<String>,
    follow: Option<String>,
    level: Option<String>,
    lines: Option<String>,
}

/// Opens the stream `query` asks `node` for, on a connection paced by `pace`,
/// or says why not: a bad query (`BadRequest`), an unknown node
/// (`NoSuchService`), too many streams (`Overloaded`).
pub(crate) fn open(
    query: &str,
    node: &Node,
    streams: &Arc<LogStreams>,
    pace: Option<Arc<Pace>>,
) -> Result<impl Stream<Item = Result<Bytes, actix_web::Error>>, ServiceError> {
    let query = web::Query::<Query>::from_query(query)
        .map(web::Query::into_inner)
        .map_err(|e| ServiceError::bad_request(format!("bad query string: {e}")))?;
    let follow = match query.follow.as_deref() {
        None | Some("0" | "false") => false,
        Some("" | "1" | "true") => true,
        Some(other) => {
            return Err(ServiceError::bad_request(format!(
                "follow `{}` is not 1 or 0 (true or false)",
                untrusted(other)
            )))
        }
    };
    let level = match query.level.as_deref() {
        None => LogLevel::Trace,
        Some(text) => text.parse().map_err(|()| {
            ServiceError::bad_request(format!(
                "level `{}` is not one of {}",
                untrusted(text),
                LogLevel::NAMES
            ))
        })?,
    };
    let lines = match query.lines.as_deref() {
        None => DEFAULT_LINES,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_LINES)
            .ok_or_else(|| {
                ServiceError::bad_request(format!(
                    "lines `{}` is not a number from 0 to {MAX_LINES}",
                    untrusted(text)
                ))
            })?,
    };
    if let Some(only) = &query.node {
        if !node.log_nodes().contains(only) {
            return Err(ServiceError::no_such_service(format!(
                "no node `{}` in the cluster of node {}",
                untrusted(only),
                node.name()
            )));
        }
    }
    let reader = Reader {
        node: node.clone(),
        only: query.node,
        level,
        lines,
        follow,
        started: false,
        sources: BTreeMap::new(),
        out: Bytes::new(),
        pace,
        _slot: Slot::take(streams)?,
    };
    Ok(futures::stream::unfold(reader, |mut reader| async move {
        let chunk = reader.next().await?;
        Some((Ok(chunk), reader))
    }))
}

/// A node a follower reads.
struct Source {
    /// Its ring's epoch when last read.
    epoch: u64,
    /// The last line read from it.
    cursor: u64,
    /// Lines read and not yet written, held behind a slower node's.
    held: VecDeque<LogLine>,
    /// It has lines after `cursor` that its last answer did not carry.
    more: bool,
    /// Lines that left its ring unread, not yet told.
    dropped: u64,
}

/// One stream's reading of the nodes.
struct Reader {
    node: Node,
    only: Option<String>,
    level: LogLevel,
    lines: usize,
    follow: bool,
    started: bool,
    sources: BTreeMap<String, Source>,
    /// Lines written and not yet handed to the HTTP server.
    out: Bytes,
    /// The connection's pace: whether the client closed its side.
    pace: Option<Arc<Pace>>,
    _slot: Slot,
}

impl Reader {
    /// The next piece of the stream; `None` at its end.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if !self.out.is_empty() {
                let piece = self.out.len().min(PIECE);
                return Some(self.out.split_to(piece));
            }
            if !self.started {
                self.started = true;
                self.out = self.tail().await;
                continue;
            }
            if !self.follow || self.ended() {
                return None;
            }
            if !self.sources.values().any(|s| s.more) {
                tokio::time::sleep(POLL).await;
                if self.ended() {
                    return None;
                }
            }
            self.out = self.round().await;
        }
    }

    /// Whether a follower is done: the node stops, or the client hung up (a
    /// quiet follower writes nothing that would fail to tell it).
    fn ended(&self) -> bool {
        self.node.is_stopping() || self.pace.as_ref().is_some_and(|p| p.client_closed())
    }

    /// The nodes to read now.
    fn names(&self) -> Vec<String> {
        let mut names = self.node.log_nodes();
        if let Some(only) = &self.only {
            names.retain(|name| name == only);
        }
        names
    }

    /// Asks each node of `asks` (name, after, lines) for its lines.
    async fn fetch(
        &self,
        asks: Vec<(String, Option<u64>, usize)>,
        nodes: usize,
    ) -> Vec<(String, Result<LogBatch, ServiceError>)> {
        let max_bytes = (ROUND_BYTES / nodes.max(1)).max(NODE_BYTES);
        let answers = futures::future::join_all(asks.iter().map(|(name, after, max)| {
            self.node.logs_of(name, *after, self.level, *max, max_bytes)
        }))
        .await;
        asks.into_iter()
            .map(|(name, _, _)| name)
            .zip(answers)
            .collect()
    }

    /// The newest lines of the cluster, each node's cursor set at its newest.
    async fn tail(&mut self) -> Bytes {
        let names = self.names();
        let asks = names
            .iter()
            .map(|name| (name.clone(), None, self.lines))
            .collect();
        let mut lines = Vec::new();
        // Where the lines of a node that gave fewer than asked (its bytes were
        // spent) begin: the other nodes' older lines would stand there alone.
        let mut since = 0;
        for (name, answer) in self.fetch(asks, names.len()).await {
            // A node that does not answer now is read from its newest lines
            // once it does.
            let Ok(batch) = answer else { continue };
            self.sources.insert(name.clone(), Source::new(&batch));
            if batch.more {
                since = since.max(batch.lines.first().map_or(0, |line| line.ts));
            }
            lines.extend(batch.lines.into_iter().map(|line| (name.clone(), line)));
        }
        lines.retain(|(_, line)| line.ts >= since);
        by_time(&mut lines);
        let skip = lines.len().saturating_sub(self.lines);
        encode(&[], &lines[skip..])
    }

    /// A follower's round: the new lines of each node, merged.
    async fn round(&mut self) -> Bytes {
        let names = self.names();
        // A node gone from the cluster is forgotten once its lines are out.
        self.sources
            .retain(|name, source| names.contains(name) || !source.held.is_empty());
        let asks = names
            .iter()
            .filter_map(|name| match self.sources.get(name) {
                None => Some((name.clone(), None, self.lines)),
                Some(source) if source.held.is_empty() => {
                    Some((name.clone(), Some(source.cursor), FOLLOW_LINES))
                }
                Some(_) => None,
            })
            .collect();
        for (name, answer) in self.fetch(asks, names.len()).await {
            let source = self.sources.get_mut(&name);
            match (source, answer) {
                (None, Ok(batch)) => {
                    let mut source = Source::new(&batch);
                    source.held.extend(batch.lines);
                    self.sources.insert(name, source);
                }
                (None, Err(_)) => {}
                // Asked again after the next POLL.
                (Some(source), Err(_)) => source.more = false,
                (Some(source), Ok(batch)) if batch.epoch != source.epoch => {
                    // The node restarted: its new ring is read from its start.
                    source.epoch = batch.epoch;
                    source.cursor = 0;
                    source.more = true;
                }
                (Some(source), Ok(batch)) => {
                    source.cursor = batch.next;
                    // More to come is worth asking again at once only if some came.
                    source.more = batch.more && !batch.lines.is_empty();
                    source.dropped = source.dropped.saturating_add(batch.dropped);
                    source.held.extend(batch.lines);
                }
            }
        }
        // No line later than the last of a node with more waiting goes out yet.
        let until = self
            .sources
            .values()
            .filter(|s| s.more)
            .filter_map(|s| s.held.back().map(|line| line.ts))
            .min();
        let mut lines = Vec::new();
        let mut dropped = Vec::new();
        for (name, source) in &mut self.sources {
            if source.dropped > 0 {
                dropped.push((name.clone(), std::mem::take(&mut source.dropped)));
            }
            while let Some(line) = source.held.front() {
                if until.is_some_and(|until| line.ts > until) {
                    break;
                }
                if let Some(line) = source.held.pop_front() {
                    lines.push((name.clone(), line));
                }
            }
        }
        by_time(&mut lines);
        encode(&dropped, &lines)
    }
}

impl Source {
    /// A node first read with `batch`, which was a tail: what it had waiting is
    /// not this reader's, whatever `more` says.
    fn new(batch: &LogBatch) -> Source {
        Source {
            epoch: batch.epoch,
            cursor: batch.next,
            held: VecDeque::new(),
            more: false,
            dropped: 0,
        }
    }
}

/// Orders lines of several nodes by time, then node, then number.
fn by_time(lines: &mut [(String, LogLine)]) {
    lines.sort_by(|(a_node, a), (b_node, b)| (a.ts, a_node, a.seq).cmp(&(b.ts, b_node, b.seq)));
}

/// A line as the stream shows it.
#[derive(Serialize)]
struct Shown<'a> {
    ts: String,
    node: &'a str,
    seq: u64,
    level: LogLevel,
    target: &'a str,
    worker: Option<&'a str>,
    trace: Option<&'a str>,
    msg: &'a str,
}

/// Lines of a node that left its ring unread.
#[derive(Serialize)]
struct Dropped<'a> {
    node: &'a str,
    dropped: u64,
}

/// `dropped` and `lines` as JSON lines.
fn encode(dropped: &[(String, u64)], lines: &[(String, LogLine)]) -> Bytes {
    let mut out = Vec::new();
    for (node, dropped) in dropped {
        let dropped = *dropped;
        put(&mut out, &Dropped { node, dropped });
    }
    for (node, line) in lines {
        let shown = Shown {
            ts: rfc3339(line.ts),
            node,
            seq: line.seq,
            level: line.level,
            target: &line.target,
            worker: line.worker.as_deref(),
            trace: line.trace.as_deref(),
            msg: &line.msg,
        };
        put(&mut out, &shown);
    }
    Bytes::from(out)
}

/// Appends `value` as one JSON line (nothing if it cannot be written).
fn put(out: &mut Vec<u8>, value: &impl Serialize) {
    let start = out.len();
    match serde_json::to_writer(&mut *out, value) {
        Ok(()) => out.push(b'\n'),
        Err(_) => out.truncate(start),
    }
}
