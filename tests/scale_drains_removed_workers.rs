//! A scale-down drains the workers it removes: the requests they hold (here
//! naps, which die with their worker) are answered by them, new requests go
//! to the workers that stay, and only then do the removed ones stop, without
//! a restart. An index added back while its old worker drains gets a new
//! worker once the old one has stopped.

mod common;

use std::time::Duration;

use colony::{ErrorKind, ExitReason, LifecycleEvent, Node, WorkerId};
use common::*;

const CONFIG: &str = "
node: { name: drain, role: master, threads: 2 }
services:
  chaos: { workers: 2, concurrency: 2, timeout: 20s }
";

/// How long the naps in flight last: far longer than anything the test does
/// between starting them and the scale.
const NAP_MS: u64 = 1500;

fn chaos_workers(node: &Node) -> Vec<String> {
    node.status()
        .services
        .iter()
        .filter(|s| s.name == "chaos")
        .flat_map(|s| s.workers.iter().map(|w| w.id.clone()))
        .collect()
}

/// Four naps through the dealer: with 2 workers × concurrency 2, each worker
/// holds two of them.
async fn fill(
    node: &Node,
) -> Vec<actix_rt::task::JoinHandle<Result<String, colony::ServiceError>>> {
    let naps: Vec<_> = (0..4)
        .map(|_| {
            let node = node.clone();
            actix_rt::spawn(async move { node.request("chaos", Nap { ms: NAP_MS }).await })
        })
        .collect();
    wait_until(
        "each worker holds two naps",
        Duration::from_secs(10),
        || async {
            ["drain/chaos/0", "drain/chaos/1"]
                .iter()
                .all(|id| worker_status(node, id).in_flight == 2)
        },
    )
    .await;
    naps
}

#[actix_rt::test]
async fn a_removed_worker_answers_what_it_holds_then_stops() {
    let node = start_node(CONFIG).await;
    let events = Events::subscribe(&node).await;
    all_running(&node).await;
    let naps = fill(&node).await;

    let scaled = node.scale("chaos", 1, None).await.expect("scale down");
    assert_eq!((scaled.workers, scaled.was), (1, 2));
    assert_eq!(chaos_workers(&node), ["drain/chaos/0"], "status at once");
    assert!(
        events.exits_of("drain/chaos/1").is_empty(),
        "worker 1 stopped with two naps in its hands"
    );

    // The removed worker takes nothing new: asked by id, it is gone; asked
    // through the dealer, the worker that stays answers.
    let removed: WorkerId = "drain/chaos/1".parse().unwrap();
    let refused = node.request_worker(&removed, WhoAmI {}).await;
    assert!(
        matches!(&refused, Err(e) if e.kind == ErrorKind::NoSuchService),
        "{refused:?}"
    );
    for _ in 0..3 {
        let who = node.request("chaos", WhoAmI {}).await.expect("whoami");
        assert_eq!(who, "drain/chaos/0");
    }

    // Every nap is answered, two of them by the removed worker.
    let mut by = Vec::new();
    for nap in naps {
        by.push(nap.await.expect("task").expect("the nap is answered"));
    }
    by.sort();
    assert_eq!(
        by,
        [
            "drain/chaos/0",
            "drain/chaos/0",
            "drain/chaos/1",
            "drain/chaos/1"
        ]
    );
    wait_until("worker 1 stopped", Duration::from_secs(10), || async {
        !events.exits_of("drain/chaos/1").is_empty()
    })
    .await;
    assert_eq!(events.exits_of("drain/chaos/1"), [ExitReason::Stopped]);
    assert_eq!(events.restarts_of("drain/chaos/1"), 0);
    assert_eq!(chaos_workers(&node), ["drain/chaos/0"]);
    assert_eq!(worker_status(&node, "drain/chaos/0").restarts, 0);
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn an_index_added_back_while_draining_gets_a_new_worker_after() {
    let node = start_node(CONFIG).await;
    let events = Events::subscribe(&node).await;
    all_running(&node).await;
    let naps = fill(&node).await;

    node.scale("chaos", 1, None).await.expect("scale down");
    let scaled = node.scale("chaos", 2, None).await.expect("scale up");
    assert_eq!((scaled.workers, scaled.was), (2, 1));
    // The index is back at once, as a new worker that waits for the old one.
    assert_eq!(chaos_workers(&node), ["drain/chaos/0", "drain/chaos/1"]);
    let fresh = worker_status(&node, "drain/chaos/1");
    assert_eq!((fresh.state.as_str(), fresh.handled), ("starting", 0));

    for nap in naps {
        nap.await.expect("task").expect("the nap is answered");
    }
    wait_until("the new worker 1 runs", Duration::from_secs(10), || async {
        worker_status(&node, "drain/chaos/1").state == "running"
    })
    .await;
    let forks = |id: &'static str| {
        events.count(
            move |e| matches!(e, LifecycleEvent::Fork { worker } if worker.to_string() == id),
        )
    };
    assert_eq!(forks("drain/chaos/1"), 2, "booted, then started anew");
    assert_eq!(events.exits_of("drain/chaos/1"), [ExitReason::Stopped]);
    assert_eq!(events.restarts_of("drain/chaos/1"), 0);
    // The old worker's two naps count on its own slot, not on the new one's.
    assert_eq!(worker_status(&node, "drain/chaos/1").handled, 0);
    let id: WorkerId = "drain/chaos/1".parse().unwrap();
    let who = node.request_worker(&id, WhoAmI {}).await.expect("whoami");
    assert_eq!(who, "drain/chaos/1");
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn the_restarts_counter_keeps_the_removed_workers_restarts() {
    let node = start_node(CONFIG).await;
    let events = Events::subscribe(&node).await;
    all_running(&node).await;
    let restarts = |node: &Node| {
        node.metrics()
            .lines()
            .find(|l| {
                l.starts_with("colony_worker_restarts_total") && l.contains("service=\"chaos\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let id: WorkerId = "drain/chaos/1".parse().unwrap();
    node.kill(&id).await.expect("kill");
    wait_online(&node, &events, "drain/chaos/1", 2).await;
    assert_eq!(restarts(&node), Some(1.0));

    node.scale("chaos", 1, None).await.expect("scale down");
    assert_eq!(restarts(&node), Some(1.0), "a counter never goes down");
    node.scale("chaos", 2, None).await.expect("scale up");
    assert_eq!(
        worker_status(&node, "drain/chaos/1").restarts,
        0,
        "a new worker"
    );
    assert_eq!(restarts(&node), Some(1.0));
    node.shutdown(Duration::from_secs(1)).await;
}
