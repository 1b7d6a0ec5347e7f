//! Scaling a service up and down while four threads request from it without
//! pause: every request is answered, status shows the exact number of workers
//! at once after each step, each new worker joins the dealer and takes
//! requests, and each removed one stops (`stopped`) and is never restarted.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use colony::{LifecycleEvent, Node};
use common::*;
use parking_lot::Mutex;

const CONFIG: &str = "
node: { name: load, role: master, threads: 2 }
services:
  chaos: { workers: 2, concurrency: 2, timeout: 10s }
";

/// The ids of the `chaos` workers in the node's status, in order.
fn chaos_workers(node: &Node) -> Vec<String> {
    node.status()
        .services
        .iter()
        .filter(|s| s.name == "chaos")
        .flat_map(|s| s.workers.iter().map(|w| w.id.clone()))
        .collect()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("load/chaos/{i}")).collect()
}

/// What the four load threads counted.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    answered: AtomicUsize,
    failed: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Starts four threads, each with its own runtime, that request from `chaos`
/// until told to stop: a short nap (which a worker stopped too early would
/// drop) and an addition in turn.
fn start_load(node: &Node, load: &Arc<Load>) -> Vec<std::thread::JoinHandle<()>> {
    (0..4i64)
        .map(|t| {
            let (node, load) = (node.clone(), load.clone());
            std::thread::spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let mut i = 0i64;
                    while !load.stop.load(Ordering::Acquire) {
                        let answer = if i % 2 == 0 {
                            node.request("chaos", Nap { ms: 1 }).await.map(drop)
                        } else {
                            node.request("chaos", Add { a: t, b: i }).await.map(drop)
                        };
                        match answer {
                            Ok(()) => load.answered.fetch_add(1, Ordering::AcqRel),
                            Err(e) => {
                                load.failures.lock().push(e.to_string());
                                load.failed.fetch_add(1, Ordering::AcqRel)
                            }
                        };
                        i += 1;
                    }
                })
            })
        })
        .collect()
}

#[actix_rt::test]
async fn scaling_up_and_down_under_load_fails_no_request() {
    let node = start_node(CONFIG).await;
    let events = Events::subscribe(&node).await;
    all_running(&node).await;
    let load = Arc::new(Load::default());
    let threads = start_load(&node, &load);
    let answered = |n: usize| {
        let load = load.clone();
        async move { load.answered.load(Ordering::Acquire) >= n }
    };
    wait_until("the load runs", Duration::from_secs(10), || answered(200)).await;

    let mut was = 2;
    for workers in [5, 1, 3, 2] {
        let scaled = node
            .scale("chaos", workers, None)
            .await
            .unwrap_or_else(|e| panic!("scale to {workers}: {e}"));
        assert_eq!(
            (scaled.node.as_str(), scaled.workers, scaled.was),
            ("load", workers, was)
        );
        assert_eq!(chaos_workers(&node), ids(workers), "status at once");
        // Every worker it has now runs and takes requests: the new ones joined
        // the dealer.
        for id in ids(workers) {
            wait_until(
                &format!("{id} runs and has handled requests"),
                Duration::from_secs(10),
                || async {
                    worker_status(&node, &id).state == "running"
                        && worker_status(&node, &id).handled > 0
                },
            )
            .await;
        }
        // The load goes on after each step.
        let before = load.answered.load(Ordering::Acquire);
        wait_until("the load goes on", Duration::from_secs(10), || {
            answered(before + 100)
        })
        .await;
        assert_eq!(chaos_workers(&node), ids(workers), "status after the step");
        was = workers;
    }

    // Removed: 1 to 4 (5 to 1), then 2 (3 to 2); every removed worker stopped.
    let exits = || events.count(|e| matches!(e, LifecycleEvent::Exit { .. }));
    wait_until(
        "the removed workers stopped",
        Duration::from_secs(10),
        || async { exits() == 5 },
    )
    .await;
    load.stop.store(true, Ordering::Release);
    wait_until("the load threads end", Duration::from_secs(30), || async {
        threads.iter().all(|t| t.is_finished())
    })
    .await;
    for thread in threads {
        thread.join().expect("load thread");
    }

    let failures = load.failures.lock().clone();
    assert_eq!(load.failed.load(Ordering::Acquire), 0, "{failures:?}");
    assert!(load.answered.load(Ordering::Acquire) >= 600);
    for id in ["load/chaos/1", "load/chaos/3", "load/chaos/4"] {
        assert_eq!(events.exits_of(id), [colony::ExitReason::Stopped], "{id}");
    }
    assert_eq!(
        events.exits_of("load/chaos/2"),
        [colony::ExitReason::Stopped, colony::ExitReason::Stopped]
    );
    assert_eq!(exits(), 5);
    assert_eq!(
        events.count(|e| matches!(e, LifecycleEvent::Restart { .. })),
        0,
        "a removed worker was restarted"
    );
    // Started: 2 at boot, 3 (2 to 5), 2 (1 to 3).
    assert_eq!(
        events.count(|e| matches!(e, LifecycleEvent::Fork { worker } if worker.service == "chaos")),
        7
    );
    assert_eq!(chaos_workers(&node), ids(2));
    node.shutdown(Duration::from_secs(1)).await;
}
