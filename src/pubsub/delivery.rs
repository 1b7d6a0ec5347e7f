//! One publication as subscribers share it: the value itself while it stays on
//! its node, JSON made at most once when it must leave, and its size as JSON,
//! which subscribers' byte bounds count.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;

use super::meta::PublishMeta;
use crate::trace::TraceContext;

/// The message of a publication: the value itself while it stays on its node,
/// JSON once it has crossed a link.
pub(crate) enum Payload {
    Local(Arc<dyn Any + Send + Sync>, Codec),
    Json,
}

/// How a local value becomes JSON, and how long that JSON is without making it.
pub(crate) struct Codec {
    encode: fn(&(dyn Any + Send + Sync)) -> Vec<u8>,
    measure: fn(&(dyn Any + Send + Sync)) -> usize,
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One publication, shared by every subscriber it reaches.
pub(crate) struct Delivery {
    pub(crate) topic: String,
    pub(crate) meta: PublishMeta,
    /// The trace it was published in: the publisher's, or the one it came with.
    pub(crate) trace: Option<TraceContext>,
    pub(super) payload: Payload,
    json: OnceLock<Bytes>,
    /// The JSON's length, once measured.
    size: OnceLock<usize>,
}

impl Delivery {
    /// A publication of `msg` made on this node, within the current trace.
    pub(crate) fn local<T: Serialize + Send + Sync + 'static>(
        topic: &str,
        meta: PublishMeta,
        msg: T,
    ) -> Delivery {
        fn encode<T: Serialize + 'static>(value: &(dyn Any + Send + Sync)) -> Vec<u8> {
            value
                .downcast_ref::<T>()
                .and_then(|v| serde_json::to_vec(v).ok())
                .unwrap_or_else(|| b"null".to_vec())
        }
        fn measure<T: Serialize + 'static>(value: &(dyn Any + Send + Sync)) -> usize {
            let mut counter = Counter(0);
            match value.downcast_ref::<T>() {
                Some(v) if serde_json::to_writer(&mut counter, v).is_ok() => counter.0,
                _ => 4,
            }
        }
        let codec = Codec {
            encode: encode::<T>,
            measure: measure::<T>,
        };
        Delivery {
            topic: topic.to_string(),
            meta,
            trace: crate::trace::current(),
            payload: Payload::Local(Arc::new(msg), codec),
            json: OnceLock::new(),
            size: OnceLock::new(),
        }
    }

    /// A publication that arrived as JSON (from another node or the HTTP API),
    /// within the current trace.
    pub(crate) fn json(topic: String, meta: PublishMeta, json: Bytes) -> Delivery {
        Delivery {
            topic,
            meta,
            trace: crate::trace::current(),
            payload: Payload::Json,
            json: OnceLock::from(json),
            size: OnceLock::new(),
        }
    }

    /// The message as JSON, encoded at most once.
    pub(crate) fn json_bytes(&self) -> &Bytes {
        self.json.get_or_init(|| match &self.payload {
            Payload::Local(value, codec) => Bytes::from((codec.encode)(value.as_ref())),
            Payload::Json => Bytes::from_static(b"null"),
        })
    }

    /// The length of the message as JSON, which subscribers' byte bounds count.
    /// A local value is measured without being encoded.
    pub(crate) fn size(&self) -> usize {
        if let Some(json) = self.json.get() {
            return json.len();
        }
        *self.size.get_or_init(|| match &self.payload {
            Payload::Local(value, codec) => (codec.measure)(value.as_ref()),
            Payload::Json => 4,
        })
    }

    /// The line `GET /v1/subscribe` streams for this publication.
    pub(crate) fn json_line(&self) -> Bytes {
        let data: Box<serde_json::value::RawValue> =
            serde_json::from_slice(self.json_bytes()).unwrap_or_else(|_| null_raw());
        let mut line = serde_json::to_vec(&Line {
            topic: &self.topic,
            meta: &self.meta,
            trace: self.trace.as_ref(),
            data: &data,
        })
        .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn null_raw() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    meta: &'a PublishMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a TraceContext>,
    data: &'a serde_json::value::RawValue,
}
