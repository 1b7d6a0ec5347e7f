//! A request waiting in the dealer's line whose caller drops it just after a
//! credit was handed to it gives that credit back: the worker keeps its whole
//! concurrency, and the next request is served instead of timing out.

mod common;

use std::time::Duration;

use common::*;

const CONFIG: &str = "
node: { name: line, role: master, threads: 2 }
services:
  chaos: { workers: 1, concurrency: 1, queue: 16, timeout: 10s }
";

#[actix_rt::test]
async fn a_credit_granted_to_a_dropped_waiter_goes_back_to_the_line() {
    let node = start_node(CONFIG).await;
    for round in 0..3 {
        // The only credit is held by a sleep.
        let holder = {
            let node = node.clone();
            actix_rt::spawn(async move { node.request("chaos", Sleep { ms: 200 }).await })
        };
        wait_until(
            "the sleep to hold the credit",
            Duration::from_secs(5),
            || {
                let node = node.clone();
                async move {
                    node.status()
                        .services
                        .iter()
                        .any(|s| s.name == "chaos" && s.workers[0].in_flight == 1)
                }
            },
        )
        .await;
        // A second request takes a place in line: one poll gets it there.
        let mut waiter = Box::pin(node.request("chaos", Sleep { ms: 1 }));
        assert!(
            futures::poll!(&mut waiter).is_pending(),
            "round {round}: the second request waits for the credit"
        );
        // The sleep ends and its credit is handed to the waiter, which is never
        // polled again: its caller drops it.
        holder
            .await
            .expect("the sleep's task")
            .expect("the sleep is answered");
        drop(waiter);
        // With the credit lost, this would wait in line until its timeout.
        let answer = node
            .request_timeout("chaos", Sleep { ms: 1 }, Duration::from_secs(3))
            .await;
        assert!(
            answer.is_ok(),
            "round {round}: the credit came back, so the next request is served: {answer:?}"
        );
    }
    node.shutdown(Duration::from_secs(1)).await;
}
