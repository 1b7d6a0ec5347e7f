//! A trace follows what a request starts: a job pushed within a trace is
//! worked within it (`colony::trace::current()` in the handler), on another
//! node, and a publication made within a trace reaches subscribers of another
//! node with it (`Published::trace`). Untraced ones stay untraced. On the
//! bridge and on NATS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::trace::{self, TraceContext};
use colony::Node;
use common::tracer::*;
use common::*;
use parking_lot::Mutex;

/// Node `a`, the master, runs nothing; `b` runs `tracer`, which takes the jobs.
async fn two_nodes(net: &Net) -> (Node, Node) {
    let queues = format!("queues: {{ {TRACE_JOBS}: {{}} }}\n");
    let a = start_tracer_node(&format!(
        "node: {{ name: a, role: master, threads: 2 }}\n{}services: {{}}\n{queues}",
        net.yaml(None)
    ))
    .await;
    let b = start_tracer_node(&format!(
        "node: {{ name: b, role: worker, threads: 2 }}\n{}services: {{ tracer: {{ workers: 1 }} }}\n{queues}",
        net.yaml(Some(&a))
    ))
    .await;
    cluster_of(&a, 2).await;
    cluster_of(&b, 2).await;
    (a, b)
}

/// The trace job `n` was worked in, once it was.
async fn worked(n: u64) -> Option<TraceContext> {
    let mut found = None;
    wait_until(
        &format!("job {n} is worked"),
        Duration::from_secs(10),
        || {
            found = JOBS_WORKED
                .lock()
                .iter()
                .find(|(m, _)| *m == n)
                .map(|(_, t)| *t);
            let done = found.is_some();
            async move { done }
        },
    )
    .await;
    found.flatten()
}

async fn jobs_keep_their_trace(net: Net, base: u64) {
    let (a, b) = two_nodes(&net).await;
    let sent = TraceContext::new();
    trace::scope(Some(sent), a.push(TRACE_JOBS, &TracedJob { n: base + 1 }))
        .await
        .unwrap();
    a.push(TRACE_JOBS, &TracedJob { n: base + 2 })
        .await
        .unwrap();
    // Pushed from b too, where the queue is not held (on the bridge).
    trace::scope(Some(sent), b.push(TRACE_JOBS, &TracedJob { n: base + 3 }))
        .await
        .unwrap();

    for n in [base + 1, base + 3] {
        let got = worked(n).await.expect("worked within a trace");
        assert_eq!(got.trace_id(), sent.trace_id(), "job {n}");
        assert_ne!(
            got.span_id(),
            sent.span_id(),
            "job {n}: worked in a span of its own"
        );
    }
    assert_eq!(worked(base + 2).await, None);
    b.shutdown(Duration::from_millis(200)).await;
    a.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_job_pushed_within_a_trace_is_worked_within_it_over_the_bridge() {
    jobs_keep_their_trace(Net::bridge(), 100).await;
}

#[actix_rt::test]
async fn a_job_pushed_within_a_trace_is_worked_within_it_over_nats() {
    jobs_keep_their_trace(Net::nats(), 200).await;
}

async fn publications_keep_their_trace(net: Net) {
    let (a, b) = two_nodes(&net).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let _subscriber = TraceSubscriber {
        node: b.clone(),
        prefix: "traced.".into(),
        got: got.clone(),
        subscription: None,
    }
    .start();
    wait_until(
        "a knows b's subscriber",
        Duration::from_secs(10),
        || async { a.publish("traced.warmup", 0u8).unwrap_or(0) > 0 },
    )
    .await;

    let sent = TraceContext::new();
    trace::scope_sync(Some(sent), || a.publish("traced.yes", 1u8)).unwrap();
    a.publish("traced.no", 2u8).unwrap();
    wait_until("both publications arrive", Duration::from_secs(10), || {
        let topics: Vec<String> = got.lock().iter().map(|(t, _)| t.clone()).collect();
        let done =
            topics.iter().any(|t| t == "traced.yes") && topics.iter().any(|t| t == "traced.no");
        async move { done }
    })
    .await;
    let got = got.lock().clone();
    let trace_of = |topic: &str| got.iter().find(|(t, _)| t == topic).and_then(|(_, t)| *t);
    assert_eq!(trace_of("traced.yes"), Some(sent));
    assert_eq!(trace_of("traced.no"), None);
    b.shutdown(Duration::from_millis(200)).await;
    a.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_publication_made_within_a_trace_reaches_subscribers_with_it_over_the_bridge() {
    publications_keep_their_trace(Net::bridge()).await;
}

#[actix_rt::test]
async fn a_publication_made_within_a_trace_reaches_subscribers_with_it_over_nats() {
    publications_keep_their_trace(Net::nats()).await;
}
