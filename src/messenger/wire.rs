//! The JSON inside messenger's frames.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codec::frame;
use crate::error::ServiceError;

/// A message from a Speaker: a request when it has an id, else a send or shout.
#[derive(Debug, Deserialize)]
pub(crate) struct Incoming {
    /// Echoed exactly in the reply; absent (or null) for a send or shout.
    #[serde(default)]
    pub(crate) id: Option<Box<RawValue>>,
    pub(crate) subject: String,
    /// Absent when the Speaker sent none.
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

impl Incoming {
    /// About how many bytes the message holds.
    pub(crate) fn size(&self) -> usize {
        let id = self.id.as_ref().map_or(0, |id| id.get().len());
        let data = self.data.as_ref().map_or(0, |d| d.get().len());
        id + data + self.subject.len()
    }

    /// The data as a JSON body (empty when there is none).
    pub(crate) fn body(&self) -> Bytes {
        match &self.data {
            Some(data) => Bytes::copy_from_slice(data.get().as_bytes()),
            None => Bytes::new(),
        }
    }
}

/// A reply from a Node listener.
#[derive(Debug, Deserialize)]
pub(crate) struct Answer {
    pub(crate) id: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct Reply<'a> {
    id: &'a RawValue,
    data: &'a RawValue,
}

#[derive(Serialize)]
struct Failed<'a> {
    error: &'a ServiceError,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    subject: &'a str,
    data: &'a RawValue,
}

/// The frame answering request `id` with `answer`: the reply's JSON, or
/// `{"error":{"kind","message"}}` as the HTTP API has it.
pub(crate) fn reply(id: &RawValue, answer: Result<Box<RawValue>, ServiceError>) -> Bytes {
    let data = match answer {
        Ok(json) => json,
        Err(e) => error_json(&e),
    };
    frame(serde_json::to_vec(&Reply { id, data: &data }).unwrap_or_default())
}

/// `{"error":{…}}` for `error`.
pub(crate) fn error_json(error: &ServiceError) -> Box<RawValue> {
    serde_json::value::to_raw_value(&Failed { error }).unwrap_or_else(|_| null())
}

/// A request (with `id`) or a send (without) of `data` on `subject`.
pub(crate) fn request(id: Option<&str>, subject: &str, data: &RawValue) -> Bytes {
    frame(serde_json::to_vec(&Outgoing { id, subject, data }).unwrap_or_default())
}

/// JSON `null`.
pub(crate) fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}
