//! The dealer's broker discipline: least-recently-used idle worker, a bounded FIFO
//! of waiting requests with `Overloaded` past it, and timeouts that never let a
//! busy worker be offered more than its concurrency.

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;
use futures::future::join_all;

#[actix_rt::test]
async fn a_slow_worker_gets_no_more_than_its_share() {
    let node = start_node(
        "node: { name: lru, threads: 2 }\nservices: { chaos: { workers: 2, concurrency: 1 } }",
    )
    .await;
    all_running(&node).await;
    // 8 callers in flight, 80 requests; worker 0 takes 100 ms each, worker 1 none.
    let calls = (0..8).map(|_| {
        let node = node.clone();
        async move {
            let mut by = Vec::new();
            for _ in 0..10 {
                by.push(
                    node.request("chaos", SlowIfFirst { ms: 100 })
                        .await
                        .unwrap(),
                );
            }
            by
        }
    });
    let served: Vec<String> = join_all(calls).await.into_iter().flatten().collect();
    assert_eq!(served.len(), 80);
    let slow = served.iter().filter(|w| *w == "lru/chaos/0").count();
    // Round robin would give the slow worker 40; the LRU broker gives it what it
    // can take while the fast one drains the rest.
    assert!(slow <= 8, "the slow worker got {slow} of 80 requests");
    assert_eq!(worker_status(&node, "lru/chaos/0").handled as usize, slow);
    assert_eq!(
        worker_status(&node, "lru/chaos/1").handled as usize,
        80 - slow
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn requests_past_the_high_water_mark_are_overloaded_and_queued_ones_are_served() {
    let node = start_node(
        "node: { name: hwm, threads: 1 }\nservices: { chaos: { workers: 1, concurrency: 1, queue: 3 } }",
    )
    .await;
    all_running(&node).await;
    let busy = actix_rt::spawn({
        let node = node.clone();
        async move { node.request("chaos", Sleep { ms: 300 }).await }
    });
    wait_until("the worker is busy", Duration::from_secs(5), || async {
        worker_status(&node, "hwm/chaos/0").in_flight == 1
    })
    .await;
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let node = node.clone();
            actix_rt::spawn(async move { node.request("chaos", WhoAmI {}).await })
        })
        .collect();
    wait_until("three requests wait", Duration::from_secs(5), || async {
        queued(&node, "chaos") == 3
    })
    .await;
    let err = node.request("chaos", WhoAmI {}).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded);
    assert!(err.message.contains("queue limit"), "{}", err.message);

    assert_eq!(busy.await.unwrap().unwrap(), "hwm/chaos/0");
    for waiting in waiting {
        assert_eq!(waiting.await.unwrap().unwrap(), "hwm/chaos/0");
    }
    assert_eq!(worker_status(&node, "hwm/chaos/0").handled, 4);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_timed_out_request_keeps_its_worker_busy_until_it_really_finishes() {
    let node = start_node(
        "node: { name: late, threads: 1 }\nservices: { chaos: { workers: 1, concurrency: 1, timeout: 5s } }",
    )
    .await;
    all_running(&node).await;
    let err = node
        .request_timeout("chaos", Sleep { ms: 300 }, Duration::from_millis(30))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    // The worker still holds the request: a new one must wait in line, not join it.
    assert_eq!(worker_status(&node, "late/chaos/0").in_flight, 1);
    let next = actix_rt::spawn({
        let node = node.clone();
        async move { node.request("chaos", WhoAmI {}).await }
    });
    wait_until("the next request waits", Duration::from_secs(5), || async {
        queued(&node, "chaos") == 1
    })
    .await;
    assert_eq!(worker_status(&node, "late/chaos/0").in_flight, 1);
    // The late reply is dropped safely; the credit comes back and the queued one runs.
    assert_eq!(next.await.unwrap().unwrap(), "late/chaos/0");
    let status = worker_status(&node, "late/chaos/0");
    assert_eq!((status.handled, status.in_flight), (2, 0));
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn waiting_requests_are_served_in_arrival_order() {
    let node = start_node(
        "node: { name: fifo, threads: 1 }\nservices: { chaos: { workers: 1, concurrency: 1 } }",
    )
    .await;
    all_running(&node).await;
    let busy = actix_rt::spawn({
        let node = node.clone();
        async move { node.request("chaos", Sleep { ms: 100 }).await }
    });
    wait_until("the worker is busy", Duration::from_secs(5), || async {
        worker_status(&node, "fifo/chaos/0").in_flight == 1
    })
    .await;
    let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut waiting = Vec::new();
    for i in 0..5i64 {
        let caller = node.clone();
        let order = order.clone();
        waiting.push(actix_rt::spawn(async move {
            caller.request("chaos", Add { a: i, b: 0 }).await.unwrap();
            order.lock().push(i);
        }));
        let expected = i as usize + 1;
        wait_until("the request waits", Duration::from_secs(5), || async {
            queued(&node, "chaos") == expected
        })
        .await;
    }
    busy.await.unwrap().unwrap();
    for w in waiting {
        w.await.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
    node.shutdown(Duration::from_secs(1)).await;
}
