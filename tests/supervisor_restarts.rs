//! Supervision of one worker: a panicking handler or a kill ends the worker, its
//! caller gets `HandlerPanicked`, the supervisor restarts it exactly once as a new
//! actor, and requests waiting at the dealer are served by the restarted worker.

mod common;

use std::time::Duration;

use colony::{ErrorKind, ExitReason, LifecycleEvent, WorkerId};
use common::*;
use futures::future::join_all;

const WAIT: Duration = Duration::from_secs(5);

fn config(node: &str, chaos: &str) -> String {
    format!("node: {{ name: {node}, role: worker, threads: 1 }}\nservices:\n  chaos: {chaos}\n")
}

fn forks_of(events: &Events, worker: &str) -> usize {
    events.count(|e| matches!(e, LifecycleEvent::Fork { worker: w } if w.to_string() == worker))
}

#[actix_rt::test]
async fn a_panicking_handler_fails_its_request_and_the_worker_restarts_once() {
    let node = start_node(&config(
        "rs-panic",
        "{ workers: 1, restart: { backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    let w = "rs-panic/chaos/0";
    wait_online(&node, &events, w, 1).await;
    assert_eq!(worker_status(&node, w).restarts, 0);

    let err = node
        .request(
            "chaos",
            Panic {
                message: "kaboom-7731".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::HandlerPanicked, "{err}");
    assert!(err.message.contains("kaboom-7731"), "{err}");
    assert!(err.message.contains(w), "{err}");

    wait_online(&node, &events, w, 2).await;
    // The next request is served by the restarted worker.
    let reply = node.request("chaos", Add { a: 2, b: 3 }).await.unwrap();
    assert_eq!(reply.sum, 5);
    assert_eq!(reply.by, w);

    assert_eq!(
        events.exits_of(w),
        vec![ExitReason::Panicked("kaboom-7731".into())]
    );
    assert_eq!(events.restarts_of(w), 1);
    assert_eq!(events.restart_events(w), vec![(1, 10)]);
    assert_eq!(events.onlines_of(w), 2);
    let status = worker_status(&node, w);
    assert_eq!(status.restarts, 1);
    assert_eq!(status.state, "running");
    assert_eq!(status.in_flight, 0);
    // The panicked request is not counted as handled; the Add is.
    assert_eq!(status.handled, 1);
    assert_eq!(
        events.count(|e| matches!(e, LifecycleEvent::ServiceFailed { .. })),
        0
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn requests_waiting_at_the_dealer_survive_a_panic_and_go_to_the_restarted_worker() {
    let node = start_node(&config(
        "rs-queue",
        "{ workers: 1, concurrency: 1, restart: { backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    let w = "rs-queue/chaos/0";
    wait_online(&node, &events, w, 1).await;

    // The single worker is busy with the sleep...
    let sleeper = keep_busy(&node, w, 100).await;
    // ...while the panic and then 20 adds line up behind it, in that order.
    let panic = Panic {
        message: "queued-boom".into(),
    };
    let panicker = line_up(&node, panic, 1).await;
    let adds: Vec<_> = (0..20)
        .map(|i| {
            let node = node.clone();
            actix_rt::spawn(async move { node.request("chaos", Add { a: i, b: 1000 }).await })
        })
        .collect();
    wait_until("21 requests wait at the dealer", WAIT, || async {
        queued(&node, "chaos") == 21
    })
    .await;
    // All of them queued while the first incarnation was still busy with the sleep.
    assert_eq!(worker_status(&node, w).in_flight, 1);
    assert_eq!(events.onlines_of(w), 1);

    assert_eq!(sleeper.await.unwrap().unwrap(), w);
    let err = panicker.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::HandlerPanicked, "{err}");
    assert!(err.message.contains("queued-boom"), "{err}");
    let replies = join_all(adds).await;
    assert_eq!(replies.len(), 20);
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply
            .unwrap()
            .unwrap_or_else(|e| panic!("add {i} failed: {e}"));
        assert_eq!(reply.sum, i as i64 + 1000);
        assert_eq!(reply.by, w);
    }

    // Served by the second incarnation: exactly one restart in between.
    assert_eq!(events.onlines_of(w), 2);
    assert_eq!(events.restarts_of(w), 1);
    assert_eq!(
        events.exits_of(w),
        vec![ExitReason::Panicked("queued-boom".into())]
    );
    let status = worker_status(&node, w);
    assert_eq!(status.restarts, 1);
    assert_eq!(status.handled, 21, "the sleep and the 20 adds");
    assert_eq!(status.in_flight, 0);
    assert_eq!(queued(&node, "chaos"), 0);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_killed_worker_exits_killed_and_is_restarted_once() {
    let node = start_node(&config(
        "rs-kill",
        "{ workers: 1, restart: { backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    let w = "rs-kill/chaos/0";
    wait_online(&node, &events, w, 1).await;

    node.kill(&WorkerId::new("rs-kill", "chaos", 0))
        .await
        .unwrap();
    wait_online(&node, &events, w, 2).await;

    assert_eq!(node.request("chaos", WhoAmI {}).await.unwrap(), w);
    assert_eq!(events.exits_of(w), vec![ExitReason::Killed]);
    assert_eq!(events.restarts_of(w), 1);
    assert_eq!(events.restart_events(w), vec![(1, 10)]);
    assert_eq!(worker_status(&node, w).restarts, 1);

    // Killing a worker that does not exist is an error, and restarts nothing.
    for missing in [
        WorkerId::new("rs-kill", "chaos", 5),
        WorkerId::new("rs-kill", "nope", 0),
        WorkerId::new("other-node", "chaos", 0),
    ] {
        let err = node.kill(&missing).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NoSuchService, "kill {missing}: {err}");
    }
    assert_eq!(node.request("chaos", WhoAmI {}).await.unwrap(), w);
    assert_eq!(events.restarts_of(w), 1);
    assert_eq!(worker_status(&node, w).restarts, 1);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn the_restarted_worker_is_a_new_actor_with_its_full_capacity() {
    let node = start_node(&config(
        "rs-fresh",
        "{ workers: 1, concurrency: 2, restart: { backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    let w = "rs-fresh/chaos/0";
    wait_online(&node, &events, w, 1).await;
    assert_eq!(forks_of(&events, w), 1);
    assert_eq!(
        node.request("chaos", Add { a: 1, b: 1 }).await.unwrap().sum,
        2
    );

    node.kill(&WorkerId::new("rs-fresh", "chaos", 0))
        .await
        .unwrap();
    wait_online(&node, &events, w, 2).await;

    // A second Fork and Online: the factory built a new actor (Online is only
    // published once the factory has returned for that incarnation).
    assert_eq!(forks_of(&events, w), 2);
    assert_eq!(events.onlines_of(w), 2);
    let status = worker_status(&node, w);
    assert_eq!(status.in_flight, 0);
    assert_eq!(status.restarts, 1);
    // The new actor has all its credits: two sleeps are in its hands at once.
    let sleeps: Vec<_> = (0..2)
        .map(|_| {
            let node = node.clone();
            actix_rt::spawn(async move { node.request("chaos", Sleep { ms: 100 }).await })
        })
        .collect();
    wait_until("two sleeps in flight on the new actor", WAIT, || async {
        worker_status(&node, w).in_flight == 2
    })
    .await;
    for sleep in join_all(sleeps).await {
        assert_eq!(sleep.unwrap().unwrap(), w);
    }
    assert_eq!(events.restarts_of(w), 1);
    assert_eq!(events.exits_of(w), vec![ExitReason::Killed]);
    node.shutdown(Duration::from_secs(1)).await;
}
