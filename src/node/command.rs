//! The operators' commands one node sends another over `Link::admin`, as they
//! cross: carried out by `admin`, asked for by `admin` and `logs`.

use serde::{Deserialize, Serialize};

use crate::logging::LogLevel;

/// An operator's command, as it crosses to the node that carries it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Admin {
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
    /// Sets the number of workers of `service` on the node; answers [`Scaled`].
    Scale {
        /// The service.
        service: String,
        /// Its workers from now on.
        workers: usize,
    },
}
