//! A node's log: the lines of its ring (`logging::ring`) as `Admin::Logs`
//! answers them, to itself or to any other node of the cluster; `GET /v1/logs`
//! reads every node's this way.
//!
//! One answer carries at most [`MAX_ANSWER_LINES`] lines and about
//! [`MAX_ANSWER_BYTES`] of JSON, less on a bridge whose `max_frame` is small
//! (half a frame), so that it always fits in one frame.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::Admin;
use super::handle::Node;
use crate::config::NodeConfig;
use crate::error::ServiceError;
use crate::logging::ring::{LogLevel, LogLine, Read, Start};

/// The most log lines one answer carries.
pub(crate) const MAX_ANSWER_LINES: usize = 10_000;
/// The most bytes of log lines one answer carries.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// One node's log lines, as `Admin::Logs` answers them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct LogBatch {
    /// The node.
    pub(crate) node: String,
    /// Its ring's epoch: a new one when the node restarted.
    pub(crate) epoch: u64,
    /// Where the next read starts (after this line).
    pub(crate) next: u64,
    /// Lines after `next` are waiting: the answer stopped at its bound.
    pub(crate) more: bool,
    /// Lines that left the ring before they were read.
    pub(crate) dropped: u64,
    /// The lines, oldest first.
    pub(crate) lines: Vec<LogLine>,
}

/// A [`LogBatch`] as it is written, its lines borrowed from the ring.
#[derive(Serialize)]
struct Answer<'a> {
    node: &'a str,
    epoch: u64,
    next: u64,
    more: bool,
    dropped: u64,
    lines: Vec<&'a LogLine>,
}

/// The bytes of lines one answer of a node with `config` carries.
pub(super) fn answer_bytes(config: &NodeConfig) -> usize {
    config.bridge.as_ref().map_or(MAX_ANSWER_BYTES, |bridge| {
        (bridge.max_frame / 2).min(MAX_ANSWER_BYTES)
    })
}

impl Node {
    /// This node's lines after line `after` (the newest when `None`), at `level`
    /// or more severe, within `max` lines and `max_bytes` (and this node's own
    /// bounds), as JSON.
    pub(super) fn log_answer(
        &self,
        after: Option<u64>,
        level: LogLevel,
        max: usize,
        max_bytes: usize,
    ) -> Result<Value, ServiceError> {
        let read = self.read_log(after, level, max, max_bytes);
        serde_json::to_value(Answer {
            node: self.name(),
            epoch: read.epoch,
            next: read.next,
            more: read.more,
            dropped: read.dropped,
            lines: read.lines.iter().map(|line| &**line).collect(),
        })
        .map_err(|e| ServiceError::service_failed(format!("log lines are not JSON: {e}")))
    }

    fn read_log(&self, after: Option<u64>, level: LogLevel, max: usize, max_bytes: usize) -> Read {
        let start = after.map_or(Start::Tail, Start::After);
        self.inner.log.read(
            start,
            level,
            max.min(MAX_ANSWER_LINES),
            max_bytes.min(self.inner.log_answer_bytes),
        )
    }

    /// The log lines of node `node`, this one or one linked to it, after line
    /// `after` (the newest when `None`), at `level` or more severe, at most `max`
    /// lines and about `max_bytes` (within [`log_budget`](Self::log_budget)).
    pub(crate) async fn logs_of(
        &self,
        node: &str,
        after: Option<u64>,
        level: LogLevel,
        max: usize,
        max_bytes: usize,
    ) -> Result<LogBatch, ServiceError> {
        let max_bytes = max_bytes.min(self.log_budget());
        if node == self.name() {
            let read = self.read_log(after, level, max, max_bytes);
            return Ok(LogBatch {
                node: node.to_string(),
                epoch: read.epoch,
                next: read.next,
                more: read.more,
                dropped: read.dropped,
                lines: read.lines.iter().map(|line| (**line).clone()).collect(),
            });
        }
        let op = Admin::Logs {
            after,
            level,
            max,
            max_bytes,
        };
        let answer = self.admin_on(node, op).await?;
        let mut batch: LogBatch = serde_json::from_value(answer).map_err(|e| {
            ServiceError::bad_request(format!(
                "node {node} answered log lines this node cannot read: {}",
                crate::logging::untrusted(&e.to_string())
            ))
        })?;
        // Whatever it says, the lines are its own and no more than asked for.
        batch.node = node.to_string();
        batch.lines.truncate(max.min(MAX_ANSWER_LINES));
        Ok(batch)
    }

    /// The bytes of log lines this node asks another for at once.
    pub(crate) fn log_budget(&self) -> usize {
        self.inner.log_answer_bytes
    }

    /// The nodes whose log lines this node reads: itself first, then every node
    /// linked to it, by name.
    pub(crate) fn log_nodes(&self) -> Vec<String> {
        let mut others: Vec<String> = self
            .transport()
            .map(|t| t.links().iter().map(|l| l.node().to_string()).collect())
            .unwrap_or_default();
        others.sort();
        others.dedup();
        let mut nodes = vec![self.name().to_string()];
        nodes.extend(others.into_iter().filter(|n| n != self.name()));
        nodes
    }
}
