//! The trace of each HTTP request: a valid W3C `traceparent` header continues
//! the caller's trace in a new span of this node's; an absent or malformed one
//! (anything from outside may be) starts a new trace. Every response carries
//! the request's `traceparent` back, and its `tracestate` when the caller sent a
//! valid one with a valid `traceparent`.
//!
//! `tracestate` is checked (W3C's bounds: at most 512 characters of at most 32
//! list members, printable ASCII) and returned, not carried to other nodes:
//! colony adds no entry of its own, and its hops share the trace id, which is
//! what their log lines name.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::trace::TraceContext;

/// The request header and response header of the trace.
pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The vendors' state of the trace.
pub(super) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `tracestate` kept.
const MAX_TRACESTATE: usize = 512;
/// The most list members of a `tracestate` kept.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// One request's trace, as the API serves it.
#[derive(Debug, Clone)]
pub(super) struct RequestTrace {
    /// This node's span of the request's trace.
    pub(super) context: TraceContext,
    /// The caller's `tracestate`, if valid and its `traceparent` was.
    state: Option<HeaderValue>,
}

impl RequestTrace {
    /// The trace of a request with `headers`: the caller's, continued, or a new one.
    pub(super) fn of(headers: &HeaderMap) -> RequestTrace {
        let caller = single(headers, &TRACEPARENT)
            .and_then(|v| TraceContext::parse_bytes(v.as_bytes()).ok());
        match caller {
            Some(caller) => RequestTrace {
                context: caller.child(),
                state: single(headers, &TRACESTATE)
                    .filter(|v| valid_tracestate(v.as_bytes()))
                    .cloned(),
            },
            None => RequestTrace {
                context: TraceContext::new(),
                state: None,
            },
        }
    }

    /// Puts the trace's headers on a response.
    pub(super) fn stamp(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_str(&self.context.to_string()) {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(state) = &self.state {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

/// The one value of header `name`; `None` if absent or repeated (W3C: a
/// repeated `traceparent` is invalid).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name);
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// Whether `value` is a `tracestate` within W3C's bounds: printable ASCII,
/// at most 512 characters and 32 list members, each `key=value`.
fn valid_tracestate(value: &[u8]) -> bool {
    if value.is_empty() || value.len() > MAX_TRACESTATE {
        return false;
    }
    if !value.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return false;
    }
    let members: Vec<&[u8]> = value
        .split(|&b| b == b',')
        .map(|m| m.trim_ascii())
        .filter(|m| !m.is_empty())
        .collect();
    !members.is_empty()
        && members.len() <= MAX_TRACESTATE_MEMBERS
        && members.iter().all(|m| {
            m.iter()
                .position(|&b| b == b'=')
                .is_some_and(|at| at > 0 && at + 1 < m.len())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_valid_traceparent_is_continued_in_a_new_span() {
        let caller = TraceContext::parse(VALID).unwrap();
        let trace = RequestTrace::of(&headers(&[
            (&TRACEPARENT, VALID),
            (&TRACESTATE, "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"),
        ]));
        assert_eq!(trace.context.trace_id(), caller.trace_id());
        assert_ne!(trace.context.span_id(), caller.span_id());
        let mut out = HeaderMap::new();
        trace.stamp(&mut out);
        let back = out.get(&TRACEPARENT).unwrap().to_str().unwrap();
        assert_eq!(TraceContext::parse(back).unwrap(), trace.context);
        assert_eq!(
            out.get(&TRACESTATE).unwrap(),
            "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"
        );
    }

    #[test]
    fn a_missing_repeated_or_bad_traceparent_starts_a_new_trace() {
        let caller = TraceContext::parse(VALID).unwrap();
        for sent in [
            headers(&[]),
            headers(&[(&TRACEPARENT, "garbage")]),
            headers(&[(&TRACEPARENT, VALID), (&TRACEPARENT, VALID)]),
            headers(&[(&TRACEPARENT, &VALID.to_uppercase())]),
            headers(&[(&TRACESTATE, "a=b")]),
        ] {
            let trace = RequestTrace::of(&sent);
            assert_ne!(trace.context.trace_id(), caller.trace_id());
            assert!(trace.context.sampled());
            let mut out = HeaderMap::new();
            trace.stamp(&mut out);
            assert!(out.get(&TRACESTATE).is_none(), "{sent:?}");
        }
    }

    #[test]
    fn tracestate_is_kept_only_within_its_bounds() {
        assert!(valid_tracestate(b"a=b"));
        assert!(valid_tracestate(b"a=b,,c=d"));
        for bad in [
            &b""[..],
            b"=b",
            b"a=",
            b"ab",
            b"a=b\x01",
            &[b'a'; MAX_TRACESTATE + 1],
        ] {
            assert!(!valid_tracestate(bad), "{bad:?}");
        }
        let many = vec!["k=v"; MAX_TRACESTATE_MEMBERS + 1].join(",");
        assert!(!valid_tracestate(many.as_bytes()));
    }
}
