//! `state:` — where the node that holds the cluster state (the master, or a node
//! without a bridge) keeps it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `state:` — where the cluster's queues, locks and confirmations are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// The directory of the state file; default `.colony/state/<node>`, relative to
    /// the directory the node starts in.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// `durable` (default): every push, ack and fail is on disk before it is
    /// answered; `memory`: nothing is written, and a restart forgets everything.
    #[serde(default)]
    pub mode: StateMode,
}

/// How the cluster state is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMode {
    /// On disk, in one transactional file.
    #[default]
    Durable,
    /// In memory only.
    Memory,
}

impl StateSection {
    /// The state directory of node `node`.
    pub fn dir_of(&self, node: &str) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| Path::new(".colony").join("state").join(node))
    }
}
