//! The Node `messenger` library's protocol, so that a system built on it can
//! move to colony one service at a time.
//!
//! On the wire a message is JSON followed by a `\0` byte:
//!
//! ```text
//! request   {"id":"id-7","subject":"get me some popular users","data":{…}}\0
//! reply     {"id":"id-7","data":{…}}\0          the id echoed exactly
//! send      {"subject":"user deleted","data":42}\0   no id: no reply
//! ```
//!
//! - `codec`: the `\0`-terminated frames, at most `messenger.max_message` bytes,
//!   one buffer per connection.
//! - `wire`: the JSON of requests, replies and errors.
//! - `listener`: colony as a messenger listener: Speakers' requests routed to
//!   colony services, their shouts published as colony topics.
//! - `speaker`: colony as a Speaker: Node listeners called in turn, with
//!   timeouts, reconnection and `NodeDown` when none is connected.
//!
//! Unlike the Node library, every connection keeps its own buffer, bad JSON
//! closes only its own connection, a call never waits past its timeout, and
//! messages are bounded in size.

pub(crate) mod codec;
pub(crate) mod listener;
pub(crate) mod speaker;
pub(crate) mod wire;

pub(crate) use listener::{serve, Host};
pub(crate) use speaker::Speaker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What a node runs of messenger: the services Node listeners back, where
/// Speakers connect, and the speakers that shout.
#[derive(Default)]
pub(crate) struct Running {
    /// Services backed by Node listeners, with their timeouts.
    pub(crate) services: HashMap<String, (Arc<Speaker>, Duration)>,
    /// Where Speakers connect, once bound.
    pub(crate) listen: Option<SocketAddr>,
    /// The `shout_to` speakers, kept alive with the node.
    pub(crate) shouters: Vec<Arc<Speaker>>,
    /// Stops the listener, the speakers and the shouts.
    pub(crate) stop: CancellationToken,
}

impl Running {
    /// The speaker of `service` and its timeout, if Node listeners back it.
    pub(crate) fn service(&self, service: &str) -> Option<(Arc<Speaker>, Duration)> {
        self.services.get(service).cloned()
    }

    /// The node is stopping: no new Speaker connections, no more dials.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        for (speaker, _) in self.services.values() {
            speaker.stop();
        }
        for speaker in &self.shouters {
            speaker.stop();
        }
    }
}
