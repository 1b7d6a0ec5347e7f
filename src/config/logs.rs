//! `log:` — how many of its recent log lines a node keeps for `GET /v1/logs`.

use serde::{Deserialize, Serialize};

use super::input;
use crate::logging::ring::{DEFAULT_KEEP, DEFAULT_MAX_BYTES};

/// `log:` — the bounds of the node's ring of recent log lines; past either,
/// the oldest lines go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Lines kept (default 10,000); 0 keeps none.
    #[serde(default = "default_keep", deserialize_with = "input::integer")]
    pub keep: usize,
    /// Bytes of lines kept (default 8 MiB), each line counted as its JSON at most
    /// takes; a line's message is cut after 4 KiB.
    #[serde(default = "default_max_bytes", deserialize_with = "input::integer")]
    pub max_bytes: usize,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            keep: DEFAULT_KEEP,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

fn default_keep() -> usize {
    DEFAULT_KEEP
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_BYTES
}
