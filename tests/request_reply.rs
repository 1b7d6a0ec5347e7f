//! Typed request/reply and every call form: request, tell, broadcast,
//! request_worker, request_all and request_master, in-process.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use colony::{ErrorKind, WorkerId};
use common::*;

const CONFIG: &str = "
node: { name: alpha, role: master, threads: 2 }
services:
  calc: { workers: 3 }
  chaos: { workers: 2, concurrency: 4 }
";

#[actix_rt::test]
async fn typed_request_gets_a_typed_reply() {
    let node = start_node(CONFIG).await;
    let reply = node.request("calc", Add { a: 40, b: 2 }).await.unwrap();
    assert_eq!(reply.sum, 42);
    assert!(reply.by.starts_with("alpha/calc/"), "{}", reply.by);

    // A per-call timeout overrides the service's.
    let err = node
        .request_timeout("chaos", Sleep { ms: 2_000 }, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn request_worker_reaches_exactly_that_worker() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    for index in 0..3 {
        let id = WorkerId::new("alpha", "calc", index);
        let who = node.request_worker(&id, WhoAmI {}).await.unwrap();
        assert_eq!(who, id.to_string());
    }
    let missing = WorkerId::new("alpha", "calc", 7);
    let err = node.request_worker(&missing, WhoAmI {}).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn request_all_answers_once_per_worker() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    let replies = node.request_all("calc", WhoAmI {}).await.unwrap();
    let ids: BTreeSet<String> = replies
        .into_iter()
        .map(|(id, reply)| {
            assert_eq!(reply.unwrap(), id.to_string());
            id.to_string()
        })
        .collect();
    let expected: BTreeSet<String> = (0..3).map(|i| format!("alpha/calc/{i}")).collect();
    assert_eq!(ids, expected);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn broadcast_and_tell_reach_workers_and_are_counted() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    let reached = node.broadcast("calc", Add { a: 1, b: 1 }).await.unwrap();
    assert_eq!(reached, 3);
    node.tell("calc", Add { a: 2, b: 2 }).await.unwrap();
    wait_until("4 handled", Duration::from_secs(5), || async {
        let handled: u64 = (0..3)
            .map(|i| worker_status(&node, &format!("alpha/calc/{i}")).handled)
            .sum();
        handled == 4
    })
    .await;
    for i in 0..3 {
        assert!(worker_status(&node, &format!("alpha/calc/{i}")).handled >= 1);
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn request_master_reaches_the_master_handlers() {
    let node = start_node(CONFIG).await;
    let who = node.request_master(WhoAmI {}).await.unwrap();
    assert_eq!(who, "alpha/@master/0");
    node.shutdown(Duration::from_secs(1)).await;

    let worker_node = start_node(
        "node: { name: beta, role: worker, threads: 1 }\nservices: { calc: { workers: 1 } }",
    )
    .await;
    let err = worker_node.request_master(WhoAmI {}).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService);
    worker_node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn guards_change_and_reject_messages() {
    let node =
        start_node("node: { name: g, threads: 1 }\nservices: { guarded: { workers: 1 } }").await;
    let err = node
        .request("guarded", Secret { user: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Rejected);
    assert_eq!(err.message, "You are not authenticated.");
    let reply = node
        .request(
            "guarded",
            Secret {
                user: Some("ada".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(reply, "secret for ADA");
    // A rejected request never reached a worker.
    assert_eq!(worker_status(&node, "g/guarded/0").handled, 1);
    node.shutdown(Duration::from_secs(1)).await;
}
