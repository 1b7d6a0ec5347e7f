//! Graceful shutdown: requests in flight finish, new ones are refused, and a request
//! whose caller gave up does not keep the node draining after its worker finished.

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;

const CONFIG: &str = "
node: { name: bye, threads: 1 }
api: { listen: 127.0.0.1:0 }
services:
  chaos: { workers: 1, concurrency: 2 }
";

/// A drain far longer than the bound the test waits: a shutdown that sat out its
/// drain would fail the test instead of passing slowly.
const LONG_DRAIN: Duration = Duration::from_secs(120);
const BOUND: Duration = Duration::from_secs(20);

#[actix_rt::test]
async fn in_flight_requests_finish_and_new_ones_are_refused() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    let in_flight = actix_rt::spawn({
        let node = node.clone();
        async move { node.request("chaos", Sleep { ms: 300 }).await }
    });
    wait_until(
        "the request is in flight",
        Duration::from_secs(5),
        || async { worker_status(&node, "bye/chaos/0").in_flight == 1 },
    )
    .await;
    let stopping = actix_rt::spawn({
        let node = node.clone();
        async move { node.shutdown(LONG_DRAIN).await }
    });
    wait_until("the node is stopping", Duration::from_secs(5), || async {
        node.status().state == "stopping"
    })
    .await;
    let refused = node.request("chaos", WhoAmI {}).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::ServiceFailed);
    assert!(
        refused.message.contains("shutting down"),
        "{}",
        refused.message
    );

    assert_eq!(in_flight.await.unwrap().unwrap(), "bye/chaos/0");
    tokio::time::timeout(BOUND, stopping)
        .await
        .expect("shutdown ends once the work is done")
        .unwrap();
    let worker = worker_status(&node, "bye/chaos/0");
    assert_eq!(
        (worker.handled, worker.in_flight, worker.state.as_str()),
        (1, 0, "stopped")
    );
}

#[actix_rt::test]
async fn an_abandoned_http_request_does_not_hold_the_drain() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    let url = format!(
        "http://{}/v1/request/chaos/sleep?timeout=50ms",
        node.api_addr().unwrap()
    );
    let status = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .post(&url)
            .content_type("application/json")
            .send(&br#"{"ms":400}"#[..])
            .map(|r| r.status().as_u16())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 504);
    // The worker still sleeps; the HTTP caller is gone. Shutdown stops the API first,
    // then waits for the worker, which finishes in about 350 ms.
    assert_eq!(worker_status(&node, "bye/chaos/0").in_flight, 1);
    tokio::time::timeout(BOUND, node.shutdown(LONG_DRAIN))
        .await
        .expect("shutdown ends once the abandoned request is done");
    let worker = worker_status(&node, "bye/chaos/0");
    assert_eq!((worker.handled, worker.in_flight), (1, 0));
}
