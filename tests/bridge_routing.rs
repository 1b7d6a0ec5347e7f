//! Which node serves a request, by the calling node's `routing` for the service:
//! local_first keeps work local while a local worker is free, round_robin takes
//! each node in turn, least_loaded sends work away from a busy node.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use colony::Node;
use common::*;

const SECRET: &str = "a-cluster-secret-for-tests-only";

/// A master `m` whose `chaos` service is routed by `routing`, and a worker node
/// `w`; each runs one chaos worker.
async fn pair(routing: &str) -> (Node, Node, tempfile::NamedTempFile) {
    let secret = secret_file(SECRET);
    let m = start_node(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1, routing: {routing} }} }}\n",
        bridge_yaml(&secret, None)
    ))
    .await;
    let w = start_node(&format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1 }} }}\n",
        bridge_yaml(&secret, m.bridge_addr())
    ))
    .await;
    cluster_of(&m, 2).await;
    all_running(&m).await;
    (m, w, secret)
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
    let (m, w, _secret) = pair("local_first").await;
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
    let (m, w, _secret) = pair("round_robin").await;
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
    let (m, w, _secret) = pair("least_loaded").await;
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
