//! Every error kind of SPEC §3 that a single node can produce, reached on purpose
//! through the typed API, with the HTTP status each maps to.

mod common;

use std::time::Duration;

use colony::{ErrorKind, ServiceError};
use common::*;

const CONFIG: &str = "
node: { name: errs, threads: 2 }
services:
  calc: { workers: 1 }
  guarded: { workers: 1 }
  chaos:
    workers: 1
    queue: 0
    restart: { max_restarts: 0, within: 10s }
";

fn kind<T: std::fmt::Debug>(result: Result<T, ServiceError>) -> ErrorKind {
    result.expect_err("the call should fail").kind
}

#[actix_rt::test]
async fn each_kind_is_reached_on_purpose() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;

    assert_eq!(
        kind(node.request("nowhere", Add { a: 1, b: 1 }).await),
        ErrorKind::NoSuchService
    );
    // `calc` does not handle `secret`.
    let err = node
        .request("calc", Secret { user: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(
        err.message.contains("does not handle subject `secret`"),
        "{}",
        err.message
    );
    assert_eq!(
        kind(node.request("guarded", Secret { user: None }).await),
        ErrorKind::Rejected
    );

    let err = node.request("calc", Fail { code: 7 }).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Application);
    assert_eq!(err.data, Some(serde_json::json!({ "code": 7 })));

    // With queue 0, a second request while the only worker is busy is turned away.
    let busy = actix_rt::spawn({
        let node = node.clone();
        async move {
            node.request_timeout("chaos", Sleep { ms: 400 }, Duration::from_millis(100))
                .await
        }
    });
    wait_until("the worker is busy", Duration::from_secs(5), || async {
        worker_status(&node, "errs/chaos/0").in_flight == 1
    })
    .await;
    assert_eq!(
        kind(node.request("chaos", WhoAmI {}).await),
        ErrorKind::Overloaded
    );
    assert_eq!(kind(busy.await.unwrap()), ErrorKind::Timeout);

    // The sleeper has to finish before the worker takes the panic.
    wait_until("the sleeper finishes", Duration::from_secs(5), || async {
        worker_status(&node, "errs/chaos/0").in_flight == 0
    })
    .await;
    let panic = Panic {
        message: "boom".into(),
    };
    assert_eq!(
        kind(node.request("chaos", panic).await),
        ErrorKind::HandlerPanicked
    );
    // max_restarts 0: that one failure fails the service, as soon as the
    // supervisor has heard of the exit.
    wait_until("the service has failed", Duration::from_secs(5), || async {
        node.status()
            .services
            .iter()
            .any(|s| s.name == "chaos" && s.state.starts_with("failed"))
    })
    .await;
    assert_eq!(
        kind(node.request("chaos", WhoAmI {}).await),
        ErrorKind::ServiceFailed
    );

    // The rest of the node keeps serving.
    assert_eq!(
        node.request("calc", Add { a: 2, b: 3 }).await.unwrap().sum,
        5
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn kinds_map_to_the_statuses_of_the_contract() {
    let statuses: Vec<(&str, u16)> = ErrorKind::ALL
        .iter()
        .map(|k| (k.as_str(), k.http_status()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("NoSuchService", 404),
            ("BadRequest", 400),
            ("Rejected", 403),
            ("Timeout", 504),
            ("Overloaded", 503),
            ("HandlerPanicked", 500),
            ("ServiceFailed", 503),
            ("NodeDown", 502),
            ("Application", 422),
        ]
    );
    let body = ServiceError::rejected("no").to_body();
    assert_eq!(
        body,
        serde_json::json!({ "error": { "kind": "Rejected", "message": "no" } })
    );
}
