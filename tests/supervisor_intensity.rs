//! Restart intensity and backoff: more than `max_restarts` failures within `within`
//! fail the service for good, and the delay before each restart doubles from
//! `backoff.min` up to `backoff.max`.

mod common;

use std::time::{Duration, Instant};

use colony::{ErrorKind, ExitReason, LifecycleEvent, Node};
use common::*;
use futures::future::join_all;

const WAIT: Duration = Duration::from_secs(5);

fn service_status(node: &Node, service: &str) -> colony::status::ServiceStatus {
    node.status()
        .services
        .into_iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no service {service} in status"))
}

/// The ServiceFailed events: `(node, service, reason)`.
fn failures(events: &Events) -> Vec<(String, String, String)> {
    events
        .seen
        .lock()
        .iter()
        .filter_map(|e| match e {
            LifecycleEvent::ServiceFailed {
                node,
                service,
                reason,
            } => Some((node.clone(), service.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

async fn panic_once(node: &Node, message: &str) {
    let err = node
        .request(
            "chaos",
            Panic {
                message: message.into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::HandlerPanicked, "{err}");
    assert!(err.message.contains(message), "{err}");
}

#[actix_rt::test]
async fn exceeding_max_restarts_fails_the_service_and_every_request_after() {
    let node = start_node(
        "node: { name: in-fail, role: worker, threads: 1 }
services:
  chaos:
    workers: 1
    concurrency: 1
    restart: { max_restarts: 2, within: 10s, backoff: { min: 10ms, max: 20ms } }
",
    )
    .await;
    let events = Events::subscribe(&node).await;
    let w = "in-fail/chaos/0";
    wait_online(&node, &events, w, 1).await;

    // Two failures are within the intensity: each is restarted.
    for round in 1..=2 {
        panic_once(&node, &format!("failure-{round}")).await;
        wait_online(&node, &events, w, round + 1).await;
        assert_eq!(worker_status(&node, w).restarts, round as u64);
        assert!(failures(&events).is_empty(), "failed after {round} panics");
        assert_eq!(service_status(&node, "chaos").state, "running");
    }
    assert_eq!(events.restart_events(w), vec![(1, 10), (2, 20)]);

    // The third: the worker is busy with a sleep, the panic waits behind it and
    // 10 adds wait behind the panic when the third failure fails the service.
    let sleeper = keep_busy(&node, w, 100).await;
    let panic = Panic {
        message: "failure-3".into(),
    };
    let panicker = line_up(&node, panic, 1).await;
    let adds: Vec<_> = (0..10)
        .map(|i| {
            let node = node.clone();
            actix_rt::spawn(async move { node.request("chaos", Add { a: i, b: 1 }).await })
        })
        .collect();
    wait_until("11 requests wait at the dealer", WAIT, || async {
        queued(&node, "chaos") == 11
    })
    .await;
    assert_eq!(worker_status(&node, w).in_flight, 1);

    assert_eq!(sleeper.await.unwrap().unwrap(), w);
    let err = panicker.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::HandlerPanicked, "{err}");
    assert!(err.message.contains("failure-3"), "{err}");
    // The queued requests are answered with ServiceFailed, not left to time out
    // (the service's timeout is 5s; the whole wait is bounded well below it).
    let answers = actix_rt::time::timeout(Duration::from_secs(2), join_all(adds))
        .await
        .expect("requests queued when the service failed are answered");
    for reply in answers {
        let err = reply.unwrap().unwrap_err();
        assert_eq!(err.kind, ErrorKind::ServiceFailed, "{err}");
        assert!(err.message.contains("chaos"), "{err}");
    }

    wait_until("the service failed event", WAIT, || async {
        !failures(&events).is_empty()
    })
    .await;
    // Later requests fail at once, of every kind of call.
    let err = node.request("chaos", Add { a: 1, b: 1 }).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceFailed, "{err}");
    let err = node
        .request_timeout("chaos", WhoAmI {}, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceFailed, "{err}");
    let err = node.tell("chaos", Add { a: 1, b: 1 }).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceFailed, "{err}");

    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "in-fail");
    assert_eq!(failed[0].1, "chaos");
    assert!(failed[0].2.contains("max_restarts 2"), "{failed:?}");
    let service = service_status(&node, "chaos");
    assert!(service.state.starts_with("failed"), "{}", service.state);
    assert_eq!(service.queued, 0);
    let status = worker_status(&node, w);
    assert_eq!(status.state, "stopped");
    // The third failure was not restarted.
    assert_eq!(status.restarts, 2);
    assert_eq!(events.restarts_of(w), 2);
    assert_eq!(events.onlines_of(w), 3);
    assert_eq!(
        events.exits_of(w),
        ["failure-1", "failure-2", "failure-3"]
            .map(|m| ExitReason::Panicked(m.into()))
            .to_vec()
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn the_backoff_doubles_from_min_up_to_max() {
    let node = start_node(
        "node: { name: in-backoff, role: worker, threads: 1 }
services:
  chaos:
    workers: 1
    restart: { max_restarts: 10, within: 10s, backoff: { min: 20ms, max: 80ms } }
",
    )
    .await;
    let events = Events::subscribe(&node).await;
    let w = "in-backoff/chaos/0";
    wait_online(&node, &events, w, 1).await;

    let expected = [20u64, 40, 80, 80];
    for (round, delay) in expected.iter().enumerate() {
        let sent = Instant::now();
        panic_once(&node, &format!("backoff-{round}")).await;
        wait_online(&node, &events, w, round + 2).await;
        // The restart really waited its backoff after the failure.
        assert!(
            sent.elapsed() >= Duration::from_millis(*delay),
            "restart {} came after {:?}, before its {delay}ms backoff",
            round + 1,
            sent.elapsed()
        );
    }
    assert_eq!(node.request("chaos", WhoAmI {}).await.unwrap(), w);
    assert_eq!(
        events.restart_events(w),
        vec![(1, 20), (2, 40), (3, 80), (4, 80)]
    );
    assert_eq!(worker_status(&node, w).restarts, 4);
    assert!(failures(&events).is_empty());
    assert_eq!(service_status(&node, "chaos").state, "running");
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn failures_older_than_the_window_are_forgotten() {
    let node = start_node(
        "node: { name: in-window, role: worker, threads: 1 }
services:
  chaos:
    workers: 1
    restart: { max_restarts: 1, within: 1s, backoff: { min: 10ms, max: 40ms } }
",
    )
    .await;
    let events = Events::subscribe(&node).await;
    let w = "in-window/chaos/0";
    wait_online(&node, &events, w, 1).await;

    panic_once(&node, "window-1").await;
    wait_online(&node, &events, w, 2).await;
    // The failure was recorded before the restart we just saw: once the window has
    // passed since now, it has passed since the failure.
    let restarted = Instant::now();
    wait_until("the first failure leaves the window", WAIT, || async {
        restarted.elapsed() > Duration::from_millis(1_050)
    })
    .await;
    // Alone in the window again: restarted, and with the first backoff again.
    panic_once(&node, "window-2").await;
    wait_online(&node, &events, w, 3).await;
    assert!(failures(&events).is_empty());
    assert_eq!(events.restart_events(w), vec![(1, 10), (2, 10)]);

    // A second failure inside the window exceeds max_restarts 1.
    panic_once(&node, "window-3").await;
    wait_until("the service failed event", WAIT, || async {
        !failures(&events).is_empty()
    })
    .await;
    assert_eq!(failures(&events).len(), 1);
    assert_eq!(events.restarts_of(w), 2);
    assert_eq!(worker_status(&node, w).state, "stopped");
    let err = node.request("chaos", WhoAmI {}).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceFailed, "{err}");
    node.shutdown(Duration::from_secs(1)).await;
}
