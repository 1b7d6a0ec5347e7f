//! Typed service messages: a message is a Rust type with a stable subject, and its
//! handler is an ordinary actix [`Handler`](actix::Handler) returning
//! `Result<Reply, ServiceError>`.
//!
//! ```
//! use actix::prelude::*;
//! use colony::{Request, ServiceError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Message, Serialize, Deserialize)]
//! #[rtype(result = "Result<SumReply, ServiceError>")]
//! struct Sum { a: i64, b: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! struct SumReply { sum: i64 }
//!
//! impl Request for Sum { const SUBJECT: &'static str = "sum"; }
//! ```

use std::fmt;
use std::str::FromStr;

use actix::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;

/// A request a service handles: an actix message whose result is
/// `Result<Reply, ServiceError>`, addressed by a stable `SUBJECT`.
///
/// In-process calls hand the value itself to the worker; only the HTTP API (and,
/// across nodes, the bridge) turns it into JSON.
pub trait Request:
    Message<Result: Outcome> + Serialize + DeserializeOwned + Send + 'static
{
    /// The subject the message is addressed by, e.g. `"users.delete"`.
    const SUBJECT: &'static str;
}

/// The result type of a [`Request`]: `Result<Reply, ServiceError>`.
pub trait Outcome: Send + 'static {
    /// What a successful handler replies.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// The reply, or the handler's error.
    fn into_result(self) -> Result<Self::Reply, ServiceError>;
}

impl<R> Outcome for Result<R, ServiceError>
where
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Reply = R;

    fn into_result(self) -> Result<R, ServiceError> {
        self
    }
}

/// The reply type of request `M`.
pub type ReplyOf<M> = <<M as Message>::Result as Outcome>::Reply;

/// A worker's cluster-wide id, `NODE/SERVICE/INDEX`, e.g. `master/math/0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId {
    /// The node the worker runs on.
    pub node: String,
    /// The service the worker belongs to.
    pub service: String,
    /// The worker's index within its service on that node.
    pub index: usize,
}

impl WorkerId {
    /// The id of worker `index` of `service` on `node`.
    pub fn new(node: impl Into<String>, service: impl Into<String>, index: usize) -> Self {
        WorkerId {
            node: node.into(),
            service: service.into(),
            index,
        }
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.node, self.service, self.index)
    }
}

impl FromStr for WorkerId {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || ServiceError::bad_request(format!("`{s}` is not a worker id NODE/SERVICE/INDEX"));
        let mut parts = s.split('/');
        let (Some(node), Some(service), Some(index), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if node.is_empty() || service.is_empty() {
            return Err(bad());
        }
        let index = index.parse().map_err(|_| bad())?;
        Ok(WorkerId::new(node, service, index))
    }
}

impl Serialize for WorkerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WorkerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_round_trip_and_reject_garbage() {
        let id: WorkerId = "master/math/0".parse().unwrap();
        assert_eq!(id, WorkerId::new("master", "math", 0));
        assert_eq!(id.to_string(), "master/math/0");
        for bad in [
            "",
            "master",
            "master/math",
            "master/math/x",
            "a/b/1/2",
            "/math/1",
        ] {
            assert!(bad.parse::<WorkerId>().is_err(), "{bad} parsed");
        }
    }
}
