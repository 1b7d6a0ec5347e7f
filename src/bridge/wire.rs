//! The messages nodes exchange, in frames (see `frame`).
//!
//! | kind | body |
//! |---|---|
//! | 1 `CONTROL` | JSON [`Control`]: handshake, membership, status (rare, self-describing) |
//! | 2 `REQUEST` | binary [`RequestFrame`]; the message itself as JSON at the end |
//! | 3 `REPLY` | binary [`ReplyFrame`]; the reply or the error as JSON at the end |
//! | 4 `HEARTBEAT` | empty |
//! | 5 `PUBLISH` | binary [`PublishFrame`]: a pub/sub message for the receiver's subscribers |
//! | 6 `CLUSTER` | binary [`ClusterFrame`]: an operation on the cluster's queues, locks or confirmations, for the node that holds them |
//!
//! Request body (all integers big-endian):
//!
//! ```text
//! id u64 | timeout_ms u32 | flags u8 | worker u32 | [trace 25 bytes] |
//! service_len u16 | service | subject_len u16 | subject |
//! payload (JSON, to the end of the frame)
//! ```
//!
//! `flags` bit 0: one-way (no reply is sent); bit 1: `worker` names the worker
//! index to use instead of the dealer's choice; bit 2 ([`TRACED`]): the trace
//! follows `worker` (trace id 16 bytes, the caller's span id 8, trace flags 1; see
//! [`TraceContext::to_bytes`]); without it, nothing. An untraced request is
//! byte for byte what protocol version 4 sent. Other bits, and a trace with an
//! all-zero id, make the frame malformed. Reply body: `id u64 | ok u8 |
//! payload`, where the payload is the reply's JSON when `ok` is 1 and a
//! [`ServiceError`]'s JSON when it is 0.
//!
//! Publish body: `topic_len u16 | topic | node_len u16 | node | worker_len u16 |
//! worker (empty when no worker published) | traced u8 | [trace 25 bytes] |
//! payload (JSON, to the end)`, `traced` 0 (no trace follows) or 1.
//!
//! Cluster body: `id u64 | flags u8 | operation (JSON, to the end)`, `flags` bit 0
//! one-way; its answer is a `REPLY` with the same id.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::frame::{encode_with, Frame, FrameError};
use crate::error::ServiceError;
use crate::trace::{TraceContext, WIRE_LEN};

/// The protocol version both ends must speak, agreed in the handshake. Version 2
/// sends subscription changes ([`Control::Subscribed`], [`Control::Unsubscribed`])
/// instead of whole tables; version 3 carries cluster operations in their own
/// frames ([`CLUSTER`]); version 4 adds a delivery's lease token to job answers and
/// lock renewals; version 5 carries trace contexts in requests ([`TRACED`]) and
/// publications.
pub const PROTOCOL_VERSION: u16 = 5;

/// Frame kinds.
pub const CONTROL: u8 = 1;
/// A request frame.
pub const REQUEST: u8 = 2;
/// A reply frame.
pub const REPLY: u8 = 3;
/// A heartbeat frame.
pub const HEARTBEAT: u8 = 4;
/// A pub/sub message.
pub const PUBLISH: u8 = 5;
/// An operation on the cluster's queues, locks or confirmations.
pub const CLUSTER: u8 = 6;

pub use super::control_frame::Control;
pub use crate::transport::{Member, Offer};

/// `flags` bit: no reply is sent.
pub const ONE_WAY: u8 = 1;
/// `flags` bit: `worker` names the worker index.
pub const TO_WORKER: u8 = 2;
/// `flags` bit: a trace context follows `worker`. Set by the encoder when the
/// request has a trace; never kept in [`RequestFrame::flags`].
pub const TRACED: u8 = 4;

/// A request carried to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    /// Matches the reply, unique per connection direction.
    pub id: u64,
    /// What is left of the caller's timeout.
    pub timeout_ms: u32,
    /// [`ONE_WAY`], [`TO_WORKER`].
    pub flags: u8,
    /// The worker index when [`TO_WORKER`] is set.
    pub worker: u32,
    /// The trace the request is part of, if any.
    pub trace: Option<TraceContext>,
    /// The service addressed.
    pub service: String,
    /// The subject addressed.
    pub subject: String,
    /// The message as JSON.
    pub payload: Bytes,
}

/// The answer to a [`RequestFrame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    /// The request's id.
    pub id: u64,
    /// Whether `payload` is a reply (true) or a [`ServiceError`] (false).
    pub ok: bool,
    /// JSON.
    pub payload: Bytes,
}

/// A frame whose body does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} frame: {problem}")]
pub struct WireError {
    what: &'static str,
    problem: String,
}

fn malformed(what: &'static str, problem: impl Into<String>) -> WireError {
    WireError {
        what,
        problem: problem.into(),
    }
}

impl Control {
    /// Appends this message as a frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut, max: usize) -> Result<(), FrameError> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        encode_with(dst, CONTROL, max, |b| b.extend_from_slice(&json))
    }

    /// Parses a `CONTROL` frame's body.
    pub fn decode(body: &[u8]) -> Result<Control, WireError> {
        serde_json::from_slice(body).map_err(|e| malformed("control", e.to_string()))
    }
}

impl RequestFrame {
    /// Appends this request as a frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut, max: usize) -> Result<(), FrameError> {
        encode_request(
            dst,
            max,
            RequestHead {
                id: self.id,
                timeout_ms: self.timeout_ms,
                flags: self.flags,
                worker: self.worker,
                trace: self.trace,
                service: &self.service,
                subject: &self.subject,
            },
            &self.payload,
        )
    }

    /// Parses a `REQUEST` frame's body.
    pub fn decode(mut body: Bytes) -> Result<RequestFrame, WireError> {
        let err = |p: &str| malformed("request", p);
        if body.remaining() < 8 + 4 + 1 + 4 + 2 {
            return Err(err("shorter than its fixed header"));
        }
        let id = body.get_u64();
        let timeout_ms = body.get_u32();
        let flags = body.get_u8();
        let worker = body.get_u32();
        if flags & !(ONE_WAY | TO_WORKER | TRACED) != 0 {
            return Err(malformed("request", format!("flags {flags}")));
        }
        let trace = if flags & TRACED != 0 {
            Some(take_trace(&mut body).ok_or_else(|| err("bad trace"))?)
        } else {
            None
        };
        let service = take_str(&mut body).ok_or_else(|| err("bad service name"))?;
        let subject = take_str(&mut body).ok_or_else(|| err("bad subject"))?;
        Ok(RequestFrame {
            id,
            timeout_ms,
            flags: flags & !TRACED,
            worker,
            trace,
            service,
            subject,
            payload: body,
        })
    }
}

/// The fixed part of a request, borrowed, for encoding without copies.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// See [`RequestFrame::id`].
    pub id: u64,
    /// See [`RequestFrame::timeout_ms`].
    pub timeout_ms: u32,
    /// See [`RequestFrame::flags`].
    pub flags: u8,
    /// See [`RequestFrame::worker`].
    pub worker: u32,
    /// See [`RequestFrame::trace`].
    pub trace: Option<TraceContext>,
    /// See [`RequestFrame::service`].
    pub service: &'a str,
    /// See [`RequestFrame::subject`].
    pub subject: &'a str,
}

/// Appends a request frame with `payload` to `dst`.
pub fn encode_request(
    dst: &mut BytesMut,
    max: usize,
    head: RequestHead<'_>,
    payload: &[u8],
) -> Result<(), FrameError> {
    if head.service.len() > u16::MAX as usize || head.subject.len() > u16::MAX as usize {
        return Err(FrameError::TooLong {
            len: head.service.len().max(head.subject.len()),
            max: u16::MAX as usize,
        });
    }
    encode_with(dst, REQUEST, max, |b| {
        b.put_u64(head.id);
        b.put_u32(head.timeout_ms);
        match &head.trace {
            None => {
                b.put_u8(head.flags & !TRACED);
                b.put_u32(head.worker);
            }
            Some(trace) => {
                b.put_u8(head.flags | TRACED);
                b.put_u32(head.worker);
                b.extend_from_slice(&trace.to_bytes());
            }
        }
        b.put_u16(head.service.len() as u16);
        b.extend_from_slice(head.service.as_bytes());
        b.put_u16(head.subject.len() as u16);
        b.extend_from_slice(head.subject.as_bytes());
        b.extend_from_slice(payload);
    })
}

/// A trace context in its binary form; `None` if cut short or an id is zero.
fn take_trace(body: &mut Bytes) -> Option<TraceContext> {
    if body.remaining() < WIRE_LEN {
        return None;
    }
    TraceContext::from_bytes(&body.split_to(WIRE_LEN))
}

fn take_str(body: &mut Bytes) -> Option<String> {
    if body.remaining() < 2 {
        return None;
    }
    let len = body.get_u16() as usize;
    if body.remaining() < len {
        return None;
    }
    let bytes = body.split_to(len);
    String::from_utf8(bytes.to_vec()).ok()
}

impl ReplyFrame {
    /// Appends this reply as a frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut, max: usize) -> Result<(), FrameError> {
        encode_reply(dst, max, self.id, self.ok, &self.payload)
    }

    /// Parses a `REPLY` frame's body.
    pub fn decode(mut body: Bytes) -> Result<ReplyFrame, WireError> {
        if body.remaining() < 9 {
            return Err(malformed("reply", "shorter than its fixed header"));
        }
        let id = body.get_u64();
        let ok = match body.get_u8() {
            0 => false,
            1 => true,
            other => return Err(malformed("reply", format!("status byte {other}"))),
        };
        Ok(ReplyFrame {
            id,
            ok,
            payload: body,
        })
    }

    /// The reply's JSON, or the error it carries.
    pub fn into_result(self) -> Result<Bytes, ServiceError> {
        if self.ok {
            return Ok(self.payload);
        }
        Err(serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            ServiceError::bad_request(format!("a peer sent an unreadable error: {e}"))
        }))
    }
}

/// Appends a reply frame to `dst`.
pub fn encode_reply(
    dst: &mut BytesMut,
    max: usize,
    id: u64,
    ok: bool,
    payload: &[u8],
) -> Result<(), FrameError> {
    encode_with(dst, REPLY, max, |b| {
        b.put_u64(id);
        b.put_u8(u8::from(ok));
        b.extend_from_slice(payload);
    })
}

/// Appends a heartbeat frame to `dst`.
pub fn encode_heartbeat(dst: &mut BytesMut) {
    dst.put_u32(1);
    dst.put_u8(HEARTBEAT);
}

/// A pub/sub message carried to a node with a matching subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFrame {
    /// The topic.
    pub topic: String,
    /// The publishing node.
    pub node: String,
    /// The publishing worker's id, empty when no worker published.
    pub worker: String,
    /// The trace the publication was made in, if any.
    pub trace: Option<TraceContext>,
    /// The message as JSON.
    pub payload: Bytes,
}

impl PublishFrame {
    /// Parses a `PUBLISH` frame's body.
    pub fn decode(mut body: Bytes) -> Result<PublishFrame, WireError> {
        let err = |p: &str| malformed("publish", p);
        let topic = take_str(&mut body).ok_or_else(|| err("bad topic"))?;
        let node = take_str(&mut body).ok_or_else(|| err("bad node name"))?;
        let worker = take_str(&mut body).ok_or_else(|| err("bad worker id"))?;
        if body.remaining() < 1 {
            return Err(err("no trace byte"));
        }
        let trace = match body.get_u8() {
            0 => None,
            1 => Some(take_trace(&mut body).ok_or_else(|| err("bad trace"))?),
            _ => return Err(err("bad trace byte")),
        };
        Ok(PublishFrame {
            topic,
            node,
            worker,
            trace,
            payload: body,
        })
    }
}

/// Appends a publish frame to `dst`.
pub fn encode_publish(
    dst: &mut BytesMut,
    max: usize,
    topic: &str,
    node: &str,
    worker: &str,
    trace: Option<TraceContext>,
    payload: &[u8],
) -> Result<(), FrameError> {
    let longest = topic.len().max(node.len()).max(worker.len());
    if longest > u16::MAX as usize {
        return Err(FrameError::TooLong {
            len: longest,
            max: u16::MAX as usize,
        });
    }
    encode_with(dst, PUBLISH, max, |b| {
        for part in [topic, node, worker] {
            b.put_u16(part.len() as u16);
            b.extend_from_slice(part.as_bytes());
        }
        match &trace {
            None => b.put_u8(0),
            Some(trace) => {
                b.put_u8(1);
                b.extend_from_slice(&trace.to_bytes());
            }
        }
        b.extend_from_slice(payload);
    })
}

/// An operation on the cluster's queues, locks or confirmations (see `state`),
/// for the node that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFrame {
    /// Matches the reply; unused when one-way.
    pub id: u64,
    /// Whether no reply is sent.
    pub one_way: bool,
    /// The operation's JSON.
    pub op: Bytes,
}

impl ClusterFrame {
    /// Parses a `CLUSTER` frame's body.
    pub fn decode(mut body: Bytes) -> Result<ClusterFrame, WireError> {
        if body.remaining() < 8 + 1 {
            return Err(malformed("cluster", "shorter than its fixed header"));
        }
        let id = body.get_u64();
        let flags = body.get_u8();
        if flags & !ONE_WAY != 0 {
            return Err(malformed("cluster", format!("flags {flags}")));
        }
        Ok(ClusterFrame {
            id,
            one_way: flags & ONE_WAY != 0,
            op: body,
        })
    }
}

/// Appends a cluster frame carrying `op` to `dst`.
pub fn encode_cluster(
    dst: &mut BytesMut,
    max: usize,
    id: u64,
    one_way: bool,
    op: &[u8],
) -> Result<(), FrameError> {
    encode_with(dst, CLUSTER, max, |b| {
        b.put_u64(id);
        b.put_u8(if one_way { ONE_WAY } else { 0 });
        b.extend_from_slice(op);
    })
}

/// A decoded frame.
#[derive(Debug)]
pub enum Message {
    /// A control message.
    Control(Control),
    /// A request.
    Request(RequestFrame),
    /// A reply.
    Reply(ReplyFrame),
    /// A heartbeat.
    Heartbeat,
    /// A pub/sub message.
    Publish(PublishFrame),
    /// A cluster operation.
    Cluster(ClusterFrame),
}

impl Message {
    /// Parses a frame.
    pub fn decode(frame: Frame) -> Result<Message, WireError> {
        match frame.kind {
            CONTROL => Control::decode(&frame.body).map(Message::Control),
            REQUEST => RequestFrame::decode(frame.body).map(Message::Request),
            REPLY => ReplyFrame::decode(frame.body).map(Message::Reply),
            HEARTBEAT => Ok(Message::Heartbeat),
            PUBLISH => PublishFrame::decode(frame.body).map(Message::Publish),
            CLUSTER => ClusterFrame::decode(frame.body).map(Message::Cluster),
            other => Err(malformed("unknown", format!("kind {other}"))),
        }
    }
}

#[cfg(test)]
mod tests;
