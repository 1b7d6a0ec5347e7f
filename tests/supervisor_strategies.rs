//! Restart strategies (who restarts with a failed worker) and policies (which
//! exits restart a worker at all).

mod common;

use std::time::Duration;

use colony::{ErrorKind, ExitReason, LifecycleEvent, Node, WorkerId};
use common::*;

const WAIT: Duration = Duration::from_secs(5);

fn config(node: &str, chaos: &str) -> String {
    format!("node: {{ name: {node}, role: worker, threads: 2 }}\nservices:\n  chaos: {chaos}\n")
}

fn id(node: &str, index: usize) -> String {
    format!("{node}/chaos/{index}")
}

fn service_failures(events: &Events) -> usize {
    events.count(|e| matches!(e, LifecycleEvent::ServiceFailed { .. }))
}

fn service_state(node: &Node) -> String {
    node.status()
        .services
        .iter()
        .find(|s| s.name == "chaos")
        .expect("chaos in status")
        .state
        .clone()
}

/// Waits until each worker `i` has been online `onlines[i]` times and all run.
async fn wait_onlines(node: &Node, events: &Events, name: &str, onlines: &[usize]) {
    wait_until(
        &format!("{name} workers online {onlines:?} times"),
        WAIT,
        || async {
            onlines.iter().enumerate().all(|(i, n)| {
                let w = id(name, i);
                events.onlines_of(&w) == *n && worker_status(node, &w).state == "running"
            })
        },
    )
    .await;
}

async fn panic_worker(node: &Node, name: &str, index: usize, message: &str) {
    let err = node
        .request_worker(
            &WorkerId::new(name, "chaos", index),
            Panic {
                message: message.into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::HandlerPanicked, "{err}");
    assert!(err.message.contains(message), "{err}");
    assert!(err.message.contains(&id(name, index)), "{err}");
}

/// Every worker answers a request addressed to it.
async fn all_answer(node: &Node, name: &str, workers: usize) {
    for i in 0..workers {
        let w = WorkerId::new(name, "chaos", i);
        assert_eq!(
            node.request_worker(&w, WhoAmI {}).await.unwrap(),
            w.to_string()
        );
    }
}

#[actix_rt::test]
async fn one_for_all_restarts_every_worker_once() {
    let n = "st-all";
    // max_restarts 2: had the siblings' exits counted as failures, 3 > 2 would
    // fail the service.
    let node = start_node(&config(
        n,
        "{ workers: 3, restart: { strategy: one_for_all, max_restarts: 2, backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    wait_onlines(&node, &events, n, &[1, 1, 1]).await;

    panic_worker(&node, n, 1, "all-boom").await;
    wait_onlines(&node, &events, n, &[2, 2, 2]).await;
    all_answer(&node, n, 3).await;

    for i in 0..3 {
        let w = id(n, i);
        assert_eq!(events.restarts_of(&w), 1, "{w}");
        assert_eq!(events.restart_events(&w), vec![(1, 10)], "{w}");
        assert_eq!(events.onlines_of(&w), 2, "{w}");
        let status = worker_status(&node, &w);
        assert_eq!(status.restarts, 1, "{w}");
        assert_eq!(status.state, "running", "{w}");
    }
    // The failed one exited with its panic, its siblings were stopped by the strategy.
    assert_eq!(
        events.exits_of(&id(n, 1)),
        vec![ExitReason::Panicked("all-boom".into())]
    );
    assert_eq!(events.exits_of(&id(n, 0)), vec![ExitReason::Killed]);
    assert_eq!(events.exits_of(&id(n, 2)), vec![ExitReason::Killed]);
    assert_eq!(service_failures(&events), 0);
    assert_eq!(service_state(&node), "running");
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn rest_for_one_restarts_the_failed_worker_and_those_started_after_it() {
    let n = "st-rest";
    let node = start_node(&config(
        n,
        "{ workers: 3, restart: { strategy: rest_for_one, backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    wait_onlines(&node, &events, n, &[1, 1, 1]).await;

    panic_worker(&node, n, 1, "rest-boom").await;
    wait_onlines(&node, &events, n, &[1, 2, 2]).await;
    all_answer(&node, n, 3).await;

    let w0 = id(n, 0);
    assert_eq!(events.restarts_of(&w0), 0);
    assert_eq!(
        events.onlines_of(&w0),
        1,
        "worker 0 is still its first incarnation"
    );
    assert!(events.exits_of(&w0).is_empty());
    assert_eq!(worker_status(&node, &w0).restarts, 0);
    for i in [1, 2] {
        let w = id(n, i);
        assert_eq!(events.restarts_of(&w), 1, "{w}");
        assert_eq!(worker_status(&node, &w).restarts, 1, "{w}");
    }
    assert_eq!(
        events.exits_of(&id(n, 1)),
        vec![ExitReason::Panicked("rest-boom".into())]
    );
    assert_eq!(events.exits_of(&id(n, 2)), vec![ExitReason::Killed]);

    // The first worker failing takes all three with it (second failure: 20ms backoff).
    panic_worker(&node, n, 0, "rest-boom-0").await;
    wait_onlines(&node, &events, n, &[2, 3, 3]).await;
    all_answer(&node, n, 3).await;
    assert_eq!(events.restart_events(&w0), vec![(1, 20)]);
    assert_eq!(events.restart_events(&id(n, 1)), vec![(1, 10), (2, 20)]);
    assert_eq!(events.restart_events(&id(n, 2)), vec![(1, 10), (2, 20)]);
    assert_eq!(service_failures(&events), 0);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn one_for_one_restarts_only_the_failed_worker() {
    let n = "st-one";
    let node = start_node(&config(
        n,
        "{ workers: 3, restart: { strategy: one_for_one, backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    wait_onlines(&node, &events, n, &[1, 1, 1]).await;

    panic_worker(&node, n, 1, "one-boom").await;
    wait_onlines(&node, &events, n, &[1, 2, 1]).await;
    all_answer(&node, n, 3).await;

    for i in [0, 2] {
        let w = id(n, i);
        assert_eq!(events.restarts_of(&w), 0, "{w}");
        assert_eq!(events.onlines_of(&w), 1, "{w}");
        assert!(events.exits_of(&w).is_empty(), "{w}");
        assert_eq!(worker_status(&node, &w).restarts, 0, "{w}");
    }
    let w1 = id(n, 1);
    assert_eq!(events.restart_events(&w1), vec![(1, 10)]);
    assert_eq!(worker_status(&node, &w1).restarts, 1);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_temporary_worker_is_not_restarted_and_its_service_answers_with_errors() {
    let n = "st-temp";
    let node = start_node(&config(
        n,
        "{ workers: 1, concurrency: 1, restart: { policy: temporary, backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    let w = id(n, 0);
    wait_onlines(&node, &events, n, &[1]).await;

    // The only worker is busy; the panic and an add wait behind the sleep.
    let sleeper = keep_busy(&node, &w, 100).await;
    let panic = Panic {
        message: "temp-boom".into(),
    };
    let panicker = line_up(&node, panic, 1).await;
    let waiter = {
        let node = node.clone();
        actix_rt::spawn(async move {
            node.request_timeout("chaos", Add { a: 1, b: 2 }, Duration::from_secs(3))
                .await
        })
    };
    wait_until("two requests wait at the dealer", WAIT, || async {
        queued(&node, "chaos") == 2
    })
    .await;
    assert_eq!(sleeper.await.unwrap().unwrap(), w);
    let err = panicker.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::HandlerPanicked, "{err}");
    // The request that waited for the worker is told there is none, at once rather
    // than after its 3s timeout.
    let err = actix_rt::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("a request waiting for a worker that is not coming back is answered")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService, "{err}");

    wait_until("the exit event", WAIT, || async {
        !events.exits_of(&w).is_empty()
    })
    .await;
    assert_eq!(
        events.exits_of(&w),
        vec![ExitReason::Panicked("temp-boom".into())]
    );
    // A request made now is told at once that the service has no worker, rather
    // than waiting for one until its timeout.
    let err = actix_rt::time::timeout(
        Duration::from_secs(2),
        node.request_timeout("chaos", Add { a: 1, b: 2 }, Duration::from_secs(3)),
    )
    .await
    .expect("a request to a service without workers is answered")
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService, "{err}");
    assert!(err.message.to_lowercase().contains("temporary"), "{err}");
    assert_eq!(service_state(&node), "stopped");
    let err = node
        .request_worker(&WorkerId::new(n, "chaos", 0), WhoAmI {})
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService, "{err}");

    let status = worker_status(&node, &w);
    assert_eq!(status.state, "stopped");
    assert_eq!(status.restarts, 0);
    assert_eq!(events.restarts_of(&w), 0);
    assert_eq!(events.onlines_of(&w), 1);
    assert_eq!(service_failures(&events), 0);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_temporary_worker_stays_down_and_its_siblings_keep_serving() {
    let n = "st-temp2";
    let node = start_node(&config(
        n,
        "{ workers: 2, restart: { policy: temporary, backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    wait_onlines(&node, &events, n, &[1, 1]).await;

    node.kill(&WorkerId::new(n, "chaos", 0)).await.unwrap();
    let w0 = id(n, 0);
    wait_until("worker 0 stopped", WAIT, || async {
        events.exits_of(&w0) == vec![ExitReason::Killed]
            && worker_status(&node, &w0).state == "stopped"
    })
    .await;
    // Every request now goes to worker 1.
    for i in 0..5 {
        let reply = node.request("chaos", Add { a: i, b: i }).await.unwrap();
        assert_eq!(reply.sum, 2 * i);
        assert_eq!(reply.by, id(n, 1));
    }
    assert_eq!(events.restarts_of(&w0), 0);
    assert_eq!(events.onlines_of(&w0), 1);
    assert_eq!(worker_status(&node, &w0).restarts, 0);
    assert_eq!(events.restarts_of(&id(n, 1)), 0);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_transient_worker_is_restarted_after_a_panic_and_after_a_kill() {
    let n = "st-trans";
    let node = start_node(&config(
        n,
        "{ workers: 1, restart: { policy: transient, backoff: { min: 10ms, max: 50ms } } }",
    ))
    .await;
    let events = Events::subscribe(&node).await;
    let w = id(n, 0);
    wait_onlines(&node, &events, n, &[1]).await;

    panic_worker(&node, n, 0, "transient-boom").await;
    wait_onlines(&node, &events, n, &[2]).await;
    assert_eq!(events.restarts_of(&w), 1);
    assert_eq!(worker_status(&node, &w).restarts, 1);
    assert_eq!(node.request("chaos", WhoAmI {}).await.unwrap(), w);

    node.kill(&WorkerId::new(n, "chaos", 0)).await.unwrap();
    wait_onlines(&node, &events, n, &[3]).await;
    assert_eq!(node.request("chaos", WhoAmI {}).await.unwrap(), w);

    assert_eq!(
        events.exits_of(&w),
        vec![
            ExitReason::Panicked("transient-boom".into()),
            ExitReason::Killed
        ]
    );
    assert_eq!(events.restart_events(&w), vec![(1, 10), (2, 20)]);
    assert_eq!(worker_status(&node, &w).restarts, 2);
    node.shutdown(Duration::from_secs(1)).await;
}
