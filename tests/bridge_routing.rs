//! Which node serves a request, by the calling node's `routing` for the service:
//! local_first keeps work local while a local worker is free, round_robin takes
//! each node in turn, least_loaded sends work away from a busy node; the same on
//! the bridge and on NATS, where colony, not a queue group, picks the node.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use colony::Node;
use common::*;

/// A master `m` whose `chaos` service is routed by `routing`, and a worker node
/// `w`; each runs one chaos worker.
async fn pair(net: &Net, routing: &str) -> (Node, Node) {
    let m = start_node(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1, routing: {routing} }} }}\n",
        net.yaml(None)
    ))
    .await;
    let w = start_node(&format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1 }} }}\n",
        net.yaml(Some(&m))
    ))
    .await;
    cluster_of(&m, 2).await;
    all_running(&m).await;
    (m, w)
}

/// Who served each of `n` sequential requests made on `node`.
async fn served_by(node: &Node, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for _ in 0..n {
        let who = node.request("chaos", WhoAmI {}).await.unwrap();
        *by.entry(who).or_default() += 1;
    }
    by
}

#[actix_rt::test]
async fn local_first_keeps_work_local_while_a_local_worker_is_free() {
    local_first_keeps_work_local_while_a_local_worker_is_free_on(Net::bridge()).await;
}

#[actix_rt::test]
async fn local_first_keeps_work_local_while_a_local_worker_is_free_over_nats() {
    local_first_keeps_work_local_while_a_local_worker_is_free_on(Net::nats()).await;
}

async fn local_first_keeps_work_local_while_a_local_worker_is_free_on(net: Net) {
    let (m, w) = pair(&net, "local_first").await;
    let by = served_by(&m, 10).await;
    assert_eq!(by, BTreeMap::from([("m/chaos/0".to_string(), 10)]));
    // With the local worker busy, the next request goes to the other node.
    let busy = keep_busy(&m, "m/chaos/0", 500).await;
    assert_eq!(m.request("chaos", WhoAmI {}).await.unwrap(), "w/chaos/0");
    busy.await.unwrap().unwrap();
    w.shutdown(Duration::from_secs(1)).await;
    m.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn round_robin_takes_each_node_in_turn() {
    round_robin_takes_each_node_in_turn_on(Net::bridge()).await;
}

#[actix_rt::test]
async fn round_robin_takes_each_node_in_turn_over_nats() {
    round_robin_takes_each_node_in_turn_on(Net::nats()).await;
}

async fn round_robin_takes_each_node_in_turn_on(net: Net) {
    let (m, w) = pair(&net, "round_robin").await;
    let by = served_by(&m, 10).await;
    assert_eq!(
        by,
        BTreeMap::from([("m/chaos/0".to_string(), 5), ("w/chaos/0".to_string(), 5)])
    );
    w.shutdown(Duration::from_secs(1)).await;
    m.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn least_loaded_sends_work_away_from_a_busy_node() {
    least_loaded_sends_work_away_from_a_busy_node_on(Net::bridge()).await;
}

#[actix_rt::test]
async fn least_loaded_sends_work_away_from_a_busy_node_over_nats() {
    least_loaded_sends_work_away_from_a_busy_node_on(Net::nats()).await;
}

async fn least_loaded_sends_work_away_from_a_busy_node_on(net: Net) {
    let (m, w) = pair(&net, "least_loaded").await;
    // Both idle: a tie stays local.
    assert_eq!(m.request("chaos", WhoAmI {}).await.unwrap(), "m/chaos/0");
    let busy = keep_busy(&m, "m/chaos/0", 500).await;
    assert_eq!(
        served_by(&m, 3).await,
        BTreeMap::from([("w/chaos/0".to_string(), 3)])
    );
    busy.await.unwrap().unwrap();
    w.shutdown(Duration::from_secs(1)).await;
    m.shutdown(Duration::from_secs(1)).await;
}
