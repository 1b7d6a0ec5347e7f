//! Who published a message, as subscribers and subscribe streams see it.

use serde::{Deserialize, Serialize};

/// Who published a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishMeta {
    /// The node it was published on.
    pub node: String,
    /// The worker that published it, if a worker did (`NODE/SERVICE/INDEX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The publishing worker's service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl PublishMeta {
    /// The meta of a message published on `node` by the code running now: a
    /// worker's handler, or any other task.
    pub(crate) fn here(node: &str) -> PublishMeta {
        let worker = crate::logging::current_worker();
        PublishMeta {
            node: node.to_string(),
            service: worker.as_ref().map(|w| w.service.clone()),
            worker: worker.map(|w| w.to_string()),
        }
    }
}
