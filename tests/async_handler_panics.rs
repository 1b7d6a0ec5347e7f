//! A panic inside a handler's detached future (`ResponseFuture`) leaves the actor
//! alive: its caller gets `HandlerPanicked` within a short grace, not at its own
//! timeout, and the worker keeps serving without a restart.

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;

#[actix_rt::test]
async fn the_caller_hears_at_once_and_the_worker_keeps_serving() {
    let node =
        start_node("node: { name: ap, threads: 1 }\nservices: { chaos: { workers: 1 } }").await;
    let events = Events::subscribe(&node).await;
    all_running(&node).await;
    // A minute-long timeout that the test bounds at 10 s: waiting for it would fail.
    let call = node.request_timeout("chaos", AsyncPanic {}, Duration::from_secs(60));
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the caller hears before its timeout")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::HandlerPanicked);
    assert!(err.message.contains("ap/chaos/0"), "{}", err.message);

    assert_eq!(
        node.request("chaos", WhoAmI {}).await.unwrap(),
        "ap/chaos/0"
    );
    let worker = worker_status(&node, "ap/chaos/0");
    assert_eq!(
        (worker.restarts, worker.in_flight, worker.handled),
        (0, 0, 1)
    );
    assert_eq!(events.restarts_of("ap/chaos/0"), 0);
    node.shutdown(Duration::from_secs(1)).await;
}
