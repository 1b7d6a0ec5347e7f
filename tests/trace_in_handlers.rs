//! A handler reads the trace of the request it serves from
//! `colony::trace::current()`: on its own node, on another node over the bridge
//! or NATS (same trace id, that node's own span), under concurrency with an
//! async handler, and none for an untraced request. A traced handler that panics
//! is reported as any other.

mod common;

use std::time::Duration;

use colony::trace::{self, TraceContext};
use colony::ErrorKind;
use common::tracer::*;
use common::*;

const ONE_NODE: &str = "node: { name: solo, role: master, threads: 2 }\n\
                        services: { tracer: { workers: 2, concurrency: 64 } }\n";

#[actix_rt::test]
async fn a_handler_sees_the_trace_of_its_request_and_none_without_one() {
    let node = start_tracer_node(ONE_NODE).await;
    all_running(&node).await;

    let untraced = node.request("tracer", WhichTrace {}).await.unwrap();
    assert_eq!(untraced.trace, None);

    let sent = TraceContext::new();
    let traced = trace::scope(Some(sent), node.request("tracer", WhichTrace {}))
        .await
        .unwrap();
    assert_eq!(traced.trace, Some(sent), "served on the caller's node");

    // Each request on its own: the next untraced one sees none again.
    let after = node.request("tracer", WhichTrace {}).await.unwrap();
    assert_eq!(after.trace, None);
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn concurrent_requests_each_see_their_own_trace() {
    // Few credits: requests wait for a worker and are spread over both.
    let node = start_tracer_node(
        "node: { name: solo, role: master, threads: 2 }\n\
         services: { tracer: { workers: 2, concurrency: 4 } }\n",
    )
    .await;
    all_running(&node).await;
    let sent: Vec<Option<TraceContext>> = (0..60)
        .map(|i| (i % 3 != 0).then(TraceContext::new))
        .collect();
    let calls = sent.iter().enumerate().map(|(i, trace)| {
        let node = node.clone();
        let trace = *trace;
        async move {
            if i % 2 == 0 {
                trace::scope(trace, node.request("tracer", LaterTrace { ms: 20 })).await
            } else {
                trace::scope(trace, node.request("tracer", WhichTrace {})).await
            }
        }
    });
    let seen = futures::future::join_all(calls).await;
    for (i, (sent, seen)) in sent.iter().zip(&seen).enumerate() {
        let seen = seen.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(&seen.trace, sent, "request {i}");
    }
    // Both workers took part: traced and untraced messages reach either.
    let by: std::collections::BTreeSet<_> = seen.iter().flatten().map(|s| &s.by).collect();
    assert_eq!(by.len(), 2, "{by:?}");
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_panic_in_a_traced_handler_is_reported_and_the_worker_comes_back() {
    let node = start_tracer_node(ONE_NODE).await;
    all_running(&node).await;
    let events = Events::subscribe(&node).await;
    let sent = TraceContext::new();
    let failed = trace::scope(Some(sent), node.request("tracer", TracedPanic {}))
        .await
        .unwrap_err();
    assert_eq!(failed.kind, ErrorKind::HandlerPanicked, "{failed}");
    assert!(failed.message.contains("traced panic"), "{failed}");
    wait_until("the worker restarts", Duration::from_secs(5), || async {
        events.count(|e| matches!(e, colony::LifecycleEvent::Restart { .. })) == 1
    })
    .await;
    all_running(&node).await;
    let again = trace::scope(Some(sent), node.request("tracer", WhichTrace {}))
        .await
        .unwrap();
    assert_eq!(again.trace, Some(sent));
    node.shutdown(Duration::from_millis(200)).await;
}

/// `tracer` runs on node `b` only; `a` asks it within a trace, and without.
async fn across_nodes(net: Net) {
    let a = start_tracer_node(&format!(
        "node: {{ name: a, role: master, threads: 2 }}\n{}services: {{}}\n",
        net.yaml(None)
    ))
    .await;
    let b = start_tracer_node(&format!(
        "node: {{ name: b, role: worker, threads: 2 }}\n{}services: {{ tracer: {{ workers: 2 }} }}\n",
        net.yaml(Some(&a))
    ))
    .await;
    cluster_of(&a, 2).await;
    cluster_of(&b, 2).await;
    wait_until("a reaches b's tracer", Duration::from_secs(10), || async {
        a.request("tracer", WhichTrace {}).await.is_ok()
    })
    .await;

    let untraced = a.request("tracer", WhichTrace {}).await.unwrap();
    assert_eq!(untraced.trace, None);
    assert!(untraced.by.starts_with("b/tracer/"), "{untraced:?}");

    let sent = TraceContext::new();
    for _ in 0..5 {
        let seen = trace::scope(Some(sent), a.request("tracer", WhichTrace {}))
            .await
            .unwrap();
        let got = seen.trace.expect("the handler on b sees a trace");
        assert!(seen.by.starts_with("b/tracer/"), "{seen:?}");
        assert_eq!(got.trace_id(), sent.trace_id());
        assert_ne!(
            got.span_id(),
            sent.span_id(),
            "b serves in a span of its own"
        );
        assert_eq!(got.flags(), sent.flags());
    }
    // A request to one worker, by its id, keeps it too.
    let worker: colony::WorkerId = "b/tracer/1".parse().unwrap();
    let seen = trace::scope(Some(sent), a.request_worker(&worker, WhichTrace {}))
        .await
        .unwrap();
    assert_eq!(seen.trace.map(|t| t.trace_id()), Some(sent.trace_id()));
    assert_eq!(seen.by, "b/tracer/1");
    b.shutdown(Duration::from_millis(200)).await;
    a.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_request_served_on_another_node_keeps_its_trace_over_the_bridge() {
    across_nodes(Net::bridge()).await;
}

#[actix_rt::test]
async fn a_request_served_on_another_node_keeps_its_trace_over_nats() {
    across_nodes(Net::nats()).await;
}
