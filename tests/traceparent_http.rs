//! The HTTP API and W3C trace context: a valid `traceparent` is continued (the
//! response carries the same trace id, in this node's span, and a valid
//! `tracestate` back); an absent, malformed or hostile one is replaced by a new
//! trace; every response, a refusal or an unknown endpoint's too, carries one.
//!
//! The node runs on the test's own System thread, so every (blocking) HTTP call
//! goes through `spawn_blocking`.

mod common;

use std::time::Duration;

use colony::TraceContext;
use common::*;

const CONFIG: &str = "node: { name: web, role: master, threads: 2 }\n\
                      api: { listen: 127.0.0.1:0 }\n\
                      services: { calc: { workers: 1 } }\n";

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What came back: status, `traceparent` and `tracestate`.
struct Answer {
    status: u16,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

async fn post(url: String, headers: Vec<(&'static str, String)>) -> Answer {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut request = agent.post(&url).content_type("application/json");
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let response = request
            .send(r#"{"a":1,"b":2}"#)
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().expect("an ASCII header").to_string())
        };
        Answer {
            status: response.status().as_u16(),
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        }
    })
    .await
    .expect("HTTP thread")
}

#[actix_rt::test]
async fn a_valid_traceparent_comes_back_with_the_same_trace_id() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    let url = format!("http://{}/v1/request/calc/add", node.api_addr().unwrap());
    let sent = TraceContext::parse(VALID).unwrap();
    let answer = post(
        url,
        vec![
            ("traceparent", VALID.to_string()),
            ("tracestate", "congo=t61rcWkgMzE".to_string()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let back: TraceContext = answer.traceparent.expect("a traceparent").parse().unwrap();
    assert_eq!(back.trace_id(), sent.trace_id());
    assert_ne!(back.span_id(), sent.span_id(), "this node's own span");
    assert_eq!(back.flags(), sent.flags());
    assert_eq!(answer.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn no_or_garbage_traceparent_gets_a_fresh_valid_one() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    let api = node.api_addr().unwrap();
    let url = format!("http://{api}/v1/request/calc/add");
    let sent = TraceContext::parse(VALID).unwrap();
    let garbage = [
        None,
        Some("garbage".to_string()),
        Some(String::new()),
        Some(VALID.to_uppercase()),
        Some(VALID.replacen("00-", "01-", 1)),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string()),
        Some(format!("{VALID}-{}", "x".repeat(4000))),
        Some("00-é4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1".to_string()),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for header in garbage {
        let mut headers = vec![("tracestate", "congo=t61rcWkgMzE".to_string())];
        if let Some(value) = &header {
            headers.push(("traceparent", value.clone()));
        }
        let answer = post(url.clone(), headers).await;
        assert_eq!(answer.status, 200, "{header:?}");
        let back: TraceContext = answer
            .traceparent
            .unwrap_or_else(|| panic!("no traceparent for {header:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("{header:?} got an invalid traceparent back: {e}"));
        assert_ne!(back.trace_id(), sent.trace_id(), "{header:?}");
        assert!(back.sampled(), "{header:?}");
        assert!(
            seen.insert(back.trace_id()),
            "{header:?}: a trace id seen before"
        );
        // The caller's state belongs to the caller's trace, which was not taken.
        assert_eq!(answer.tracestate, None, "{header:?}");
    }

    // An error, a refusal and an unknown endpoint carry one too, and the node
    // serves on.
    let failed = post(format!("http://{api}/v1/request/nope/add"), vec![]).await;
    assert_eq!(failed.status, 404);
    assert!(failed
        .traceparent
        .is_some_and(|t| TraceContext::parse(&t).is_ok()));
    let foreign = vec![("origin", "http://elsewhere.example".to_string())];
    let refused = post(url.clone(), foreign).await;
    assert_eq!(refused.status, 403);
    assert!(refused
        .traceparent
        .is_some_and(|t| TraceContext::parse(&t).is_ok()));
    let unknown = post(format!("http://{api}/v1/nothing"), vec![]).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.traceparent.is_some());
    assert_eq!(post(url, vec![]).await.status, 200);
    node.shutdown(Duration::from_millis(200)).await;
}
