//! Operators' commands one node carries out for another (`Link::admin`): the
//! API of any node reaches every node of the cluster through its own.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::handle::{Node, STATUS_TIMEOUT};
use crate::error::ServiceError;
use crate::logging::LogLevel;

/// An operator's command, as it crosses to the node that carries it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Admin {
    /// Answers `{"node": NAME}`: whether commands reach the node.
    Ping,
    /// Answers the node's kept log lines after line `after` (its newest when
    /// `None`), at `level` or more severe, at most `max` lines and about
    /// `max_bytes` bytes of JSON (see `node::logs`).
    Logs {
        /// The last line the reader saw; `None` for the newest lines.
        after: Option<u64>,
        /// The least severe level wanted.
        level: LogLevel,
        /// The most lines wanted.
        max: usize,
        /// The most bytes of lines wanted.
        max_bytes: usize,
    },
}

impl Node {
    /// Carries out `op` on node `node`: here, or over this node's link to it.
    pub(crate) async fn admin_on(&self, node: &str, op: Admin) -> Result<Value, ServiceError> {
        if node == self.name() {
            return self.admin_here(op).await;
        }
        let link = self.transport().and_then(|t| t.link(node)).ok_or_else(|| {
            ServiceError::no_such_service(format!("node {node} is not connected to this node"))
        })?;
        let op = serde_json::to_value(&op)
            .map_err(|e| ServiceError::bad_request(format!("command is not JSON: {e}")))?;
        link.admin(op, tokio::time::Instant::now() + STATUS_TIMEOUT)
            .await
    }

    /// Carries out a command another node sent, as JSON.
    pub(super) async fn admin_json(&self, op: Value) -> Result<Value, ServiceError> {
        let op: Admin = serde_json::from_value(op).map_err(|e| {
            ServiceError::bad_request(format!(
                "node {}: not a command it knows: {}",
                self.name(),
                crate::logging::untrusted(&e.to_string())
            ))
        })?;
        self.admin_here(op).await
    }

    /// Carries out `op` on this node.
    async fn admin_here(&self, op: Admin) -> Result<Value, ServiceError> {
        match op {
            Admin::Ping => Ok(json!({ "node": self.name() })),
            Admin::Logs {
                after,
                level,
                max,
                max_bytes,
            } => self.log_answer(after, level, max, max_bytes),
        }
    }
}
