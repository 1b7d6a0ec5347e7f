//! What colony nodes put in NATS messages to each other.
//!
//! A request (on `P.node.NODE.req`) is a short binary head and the message's
//! JSON; its reply (to the caller's inbox) is one status byte and the reply's
//! JSON or the error's. A publication is a head naming the topic, the node and
//! the worker, and the JSON. Presence beats, subscription changes and control
//! requests are JSON. Everything read is checked: a malformed message is an
//! error naming what is wrong, never a panic.
//!
//! A traced request or publication carries its trace as the W3C header
//! `traceparent` in the message's NATS headers, not in the binary head: the
//! head (and its version) stays as it was, an untraced message carries no
//! headers at all, and anything that reads NATS (the `nats` tool, the server's
//! own message tracing) sees the standard header. A malformed one is ignored:
//! the message is served untraced.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::trace::TraceContext;
use crate::transport::{Call, Member};

/// The NATS header that carries a message's trace.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// The headers of a message within `trace`: none for an untraced one.
pub(crate) fn trace_headers(trace: Option<TraceContext>) -> Option<async_nats::HeaderMap> {
    let trace = trace?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TRACEPARENT, trace.to_string().as_str());
    Some(headers)
}

/// The trace a message's headers carry, if they carry a valid one.
pub(crate) fn read_trace(headers: Option<&async_nats::HeaderMap>) -> Option<TraceContext> {
    let value = headers?.get(TRACEPARENT)?;
    TraceContext::parse(value.as_str()).ok()
}

/// The version of the head of requests and publications.
const VERSION: u8 = 1;
/// A reply that is the reply's JSON.
const OK: u8 = 0;
/// A reply that is a [`ServiceError`]'s JSON.
const FAILED: u8 = 1;

/// A request as the serving node reads it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) service: String,
    pub(crate) subject: String,
    pub(crate) from: String,
    pub(crate) timeout_ms: u32,
    pub(crate) worker: Option<u32>,
    pub(crate) payload: Bytes,
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let len = s.len().min(u16::MAX as usize);
    buf.put_u16(len as u16);
    buf.put_slice(&s.as_bytes()[..len]);
}

/// Reads strings and numbers off the front of a message.
struct Reader(Bytes);

impl Reader {
    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, String> {
        if self.0.len() < n {
            return Err(format!("cut short in its {what}"));
        }
        Ok(self.0.split_to(n))
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self, what: &str) -> Result<String, String> {
        let len = self.u16(what)? as usize;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("its {what} is not UTF-8"))
    }
}

/// Encodes a request of node `from` for `call` with `payload`.
pub(crate) fn request(from: &str, call: &Call<'_>, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(
        16 + call.service.len() + call.subject.len() + from.len() + payload.len(),
    );
    buf.put_u8(VERSION);
    buf.put_u32(call.timeout_ms());
    buf.put_u32(call.worker.map_or(0, |w| w.saturating_add(1)));
    put_str(&mut buf, call.service);
    put_str(&mut buf, call.subject);
    put_str(&mut buf, from);
    buf.put_slice(payload);
    buf.freeze()
}

/// Decodes a request.
pub(crate) fn read_request(bytes: Bytes) -> Result<Request, String> {
    let mut r = Reader(bytes);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(format!(
            "has head version {version}; this node reads {VERSION}"
        ));
    }
    let timeout_ms = r.u32("timeout")?;
    let worker = r.u32("worker")?.checked_sub(1);
    let service = r.str("service")?;
    let subject = r.str("subject")?;
    let from = r.str("sender")?;
    Ok(Request {
        service,
        subject,
        from,
        timeout_ms,
        worker,
        payload: r.0,
    })
}

/// Encodes an answer: the reply's JSON, or the error.
pub(crate) fn reply(answer: &Result<Vec<u8>, ServiceError>) -> Bytes {
    match answer {
        Ok(json) => {
            let mut buf = BytesMut::with_capacity(1 + json.len());
            buf.put_u8(OK);
            buf.put_slice(json);
            buf.freeze()
        }
        Err(e) => {
            let mut buf = BytesMut::new();
            buf.put_u8(FAILED);
            buf.put_slice(&serde_json::to_vec(e).unwrap_or_default());
            buf.freeze()
        }
    }
}

/// Decodes an answer from node `node`.
pub(crate) fn read_reply(mut bytes: Bytes, node: &str) -> Result<Bytes, ServiceError> {
    if bytes.is_empty() {
        return Err(ServiceError::bad_request(format!(
            "an empty answer came from node {node}"
        )));
    }
    match bytes.split_to(1)[0] {
        OK => Ok(bytes),
        FAILED => Err(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            ServiceError::bad_request(format!("an unreadable error came from node {node}: {e}"))
        })),
        other => Err(ServiceError::bad_request(format!(
            "an answer of unknown kind {other} came from node {node}"
        ))),
    }
}

/// A publication as a node reads it.
#[derive(Debug)]
pub(crate) struct Publication {
    pub(crate) topic: String,
    pub(crate) node: String,
    pub(crate) worker: String,
    pub(crate) payload: Bytes,
}

/// Encodes a publication on `topic` by `node` (and its worker `worker`, empty if
/// none).
pub(crate) fn publication(topic: &str, node: &str, worker: &str, payload: &[u8]) -> Bytes {
    let mut buf =
        BytesMut::with_capacity(7 + topic.len() + node.len() + worker.len() + payload.len());
    buf.put_u8(VERSION);
    put_str(&mut buf, topic);
    put_str(&mut buf, node);
    put_str(&mut buf, worker);
    buf.put_slice(payload);
    buf.freeze()
}

/// Decodes a publication.
pub(crate) fn read_publication(bytes: Bytes) -> Result<Publication, String> {
    let mut r = Reader(bytes);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(format!(
            "has head version {version}; this node reads {VERSION}"
        ));
    }
    Ok(Publication {
        topic: r.str("topic")?,
        node: r.str("node")?,
        worker: r.str("worker")?,
        payload: r.0,
    })
}

/// A node's presence beat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Beat {
    /// Which run of the node this is: a node that restarts has a new one.
    pub(crate) instance: String,
    pub(crate) member: Member,
    /// It is draining: no new requests for any of its workers.
    #[serde(default)]
    pub(crate) leaving: bool,
    /// It has left the cluster.
    #[serde(default)]
    pub(crate) gone: bool,
    /// The version of its subscription table.
    #[serde(default)]
    pub(crate) subs: u64,
}

/// A change to a node's subscriptions, or its whole table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SubsChange {
    /// The table's version after the change.
    pub(crate) v: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) add: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) remove: Option<String>,
}

/// A node's whole subscription table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SubsTable {
    pub(crate) v: u64,
    pub(crate) table: std::collections::BTreeMap<String, u32>,
}

/// A control request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Control {
    Status,
    Kill { worker: String },
    Exit { code: i32 },
    Subs,
    Admin { admin: serde_json::Value },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn requests_round_trip_and_bad_ones_are_errors() {
        let call = Call {
            service: "math",
            subject: "sum",
            timeout: Duration::from_millis(1500),
            worker: Some(2),
            trace: None,
        };
        let bytes = request("worker-a", &call, br#"{"a":1}"#);
        let r = read_request(bytes.clone()).expect("reads");
        assert_eq!(
            (r.service.as_str(), r.subject.as_str(), r.from.as_str()),
            ("math", "sum", "worker-a")
        );
        assert_eq!((r.timeout_ms, r.worker), (1500, Some(2)));
        assert_eq!(&r.payload[..], br#"{"a":1}"#);
        for cut in 0..bytes.len() - 7 {
            assert!(read_request(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(read_request(Bytes::from_static(&[9, 0, 0])).is_err());
        let e = ServiceError::timeout("late");
        let back = read_reply(reply(&Err(e.clone())), "n").expect_err("an error");
        assert_eq!(back.kind, e.kind);
        assert!(read_reply(Bytes::new(), "n").is_err());
        assert!(read_reply(Bytes::from_static(&[7]), "n").is_err());
        assert_eq!(
            &read_reply(reply(&Ok(b"1".to_vec())), "n").expect("ok")[..],
            b"1"
        );
    }

    #[test]
    fn traces_travel_in_a_traceparent_header_and_bad_ones_are_ignored() {
        assert!(trace_headers(None).is_none());
        let trace = TraceContext::new();
        let headers = trace_headers(Some(trace));
        assert_eq!(read_trace(headers.as_ref()), Some(trace));
        assert_eq!(read_trace(None), None);
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(TRACEPARENT, "00-garbage");
        assert_eq!(read_trace(Some(&bad)), None);
    }

    #[test]
    fn publications_round_trip() {
        let bytes = publication("a b.c", "n1", "n1/svc/0", b"[1]");
        let p = read_publication(bytes.clone()).expect("reads");
        assert_eq!((p.topic.as_str(), p.node.as_str()), ("a b.c", "n1"));
        assert_eq!(
            (p.worker.as_str(), &p.payload[..]),
            ("n1/svc/0", &b"[1]"[..])
        );
        for cut in 0..bytes.len() - 3 {
            assert!(
                read_publication(bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
    }
}
