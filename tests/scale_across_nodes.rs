//! Scaling a service on another node of the cluster through any node's API:
//! without a node name it goes to the node that runs the service (several
//! are refused, by name); with one, to that node. The other nodes learn the
//! new worker count, and route by it: on the bridge, on NATS and on the
//! in-memory backbone.

mod common;

use std::path::Path;
use std::time::Duration;

use colony::memory::MemoryNetwork;
use colony::{ErrorKind, Node, NodeConfig};
use common::*;
use serde_json::json;

/// How long a nap holds its worker: far longer than the test needs it to.
const NAP_MS: u64 = 10_000;
/// How long one request that should go to another node may wait.
const PROBE: Duration = Duration::from_millis(300);

/// The workers of `service` on `node`, as `from`'s cluster status shows them.
async fn workers_seen(from: &Node, node: &str, service: &str) -> Vec<String> {
    from.cluster_status()
        .await
        .nodes
        .iter()
        .filter(|n| n.name == node)
        .flat_map(|n| n.services.iter().filter(|s| s.name == service))
        .flat_map(|s| s.workers.iter().map(|w| w.id.clone()))
        .collect()
}

fn ids(node: &str, service: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{node}/{service}/{i}")).collect()
}

#[actix_rt::test]
async fn the_api_scales_the_node_that_runs_the_service() {
    let secret = secret_file("a-cluster-secret-for-tests-only");
    let hub = start_node(&format!(
        "node: {{ name: hub, role: master, threads: 2 }}\napi: {{ listen: 127.0.0.1:0 }}\n{}\
         services:\n  guarded: {{ workers: 1 }}\n",
        bridge_yaml(&secret, None)
    ))
    .await;
    let worker = |name: &str, services: &str| {
        format!(
            "node: {{ name: {name}, role: worker, threads: 2 }}\n{}services:\n{services}",
            bridge_yaml(&secret, hub.bridge_addr())
        )
    };
    let w1 = start_node(&worker(
        "w1",
        "  calc: { workers: 1 }\n  chaos: { workers: 1 }\n",
    ))
    .await;
    let w2 = start_node(&worker("w2", "  calc: { workers: 1 }\n")).await;
    for node in [&hub, &w1, &w2] {
        cluster_of(node, 3).await;
    }
    let api = hub.api_addr().expect("the hub's API");

    // Only w1 runs chaos: it is scaled there, and the hub sees it at once.
    let answer = http_post(api, "/v1/scale/chaos", r#"{"workers":3}"#).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(
        answer.1,
        json!({"service": "chaos", "node": "w1", "workers": 3, "was": 1})
    );
    assert_eq!(
        workers_seen(&hub, "w1", "chaos").await,
        ids("w1", "chaos", 3)
    );

    // Both workers run calc, the hub does not: it names them.
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":2}"#).await;
    assert_refused(&answer, 400, "BadRequest", &["w1, w2", "node"]);
    assert_eq!(workers_seen(&hub, "w1", "calc").await, ids("w1", "calc", 1));
    assert_eq!(workers_seen(&hub, "w2", "calc").await, ids("w2", "calc", 1));

    // Named, the node is scaled, and only it.
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":2,"node":"w2"}"#).await;
    assert_eq!(
        answer.1,
        json!({"service": "calc", "node": "w2", "workers": 2, "was": 1})
    );
    assert_eq!(workers_seen(&hub, "w2", "calc").await, ids("w2", "calc", 2));
    assert_eq!(workers_seen(&hub, "w1", "calc").await, ids("w1", "calc", 1));

    // Down again on w1, named; the hub's own service without a name.
    let answer = http_post(api, "/v1/scale/chaos", r#"{"workers":1,"node":"w1"}"#).await;
    assert_eq!(
        (answer.1["workers"].as_u64(), answer.1["was"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(
        workers_seen(&hub, "w1", "chaos").await,
        ids("w1", "chaos", 1)
    );
    let answer = http_post(api, "/v1/scale/guarded", r#"{"workers":2}"#).await;
    assert_eq!(answer.1["node"], "hub", "{}", answer.1);
    assert_eq!(
        workers_seen(&hub, "hub", "guarded").await,
        ids("hub", "guarded", 2)
    );

    // What no node runs, a node that is not there, a service the named node
    // does not run, a bound only the other node can check.
    let answer = http_post(api, "/v1/scale/nope", r#"{"workers":2}"#).await;
    assert_refused(&answer, 404, "NoSuchService", &["nope"]);
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":2,"node":"ghost"}"#).await;
    assert_refused(&answer, 404, "NoSuchService", &["ghost"]);
    let answer = http_post(api, "/v1/scale/chaos", r#"{"workers":2,"node":"w2"}"#).await;
    assert_refused(&answer, 404, "NoSuchService", &["chaos"]);
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":10001,"node":"w1"}"#).await;
    assert_refused(
        &answer,
        400,
        "BadRequest",
        &["10000", "services.calc.workers"],
    );
    assert_eq!(workers_seen(&hub, "w1", "calc").await, ids("w1", "calc", 1));

    for node in [w2, w1, hub] {
        node.shutdown(Duration::from_millis(200)).await;
    }
}

/// `m` and `w` each run `chaos` with one worker of concurrency 1, and `m`
/// routes it `local_first`. With both workers busy, `m` holds a new request
/// for its own worker (w is full, by what `m` knows of it); once `scale` has
/// given `w` a second worker, `m` knows w has room and sends it there.
async fn routing_follows_the_scale(
    m: &Node,
    w: &Node,
    scale: impl std::future::Future<Output = ()>,
) {
    all_running(m).await;
    all_running(w).await;
    let nap = |node: &Node| {
        let node = node.clone();
        actix_rt::spawn(async move { node.request("chaos", Nap { ms: NAP_MS }).await })
    };
    let _here = nap(m);
    wait_until("m's worker naps", Duration::from_secs(10), || async {
        worker_status(m, "m/chaos/0").in_flight == 1
    })
    .await;
    let _there = nap(m);
    wait_until("w's worker naps", Duration::from_secs(10), || async {
        worker_status(w, "w/chaos/0").in_flight == 1
    })
    .await;
    let held = m.request_timeout("chaos", WhoAmI {}, PROBE).await;
    assert!(
        matches!(&held, Err(e) if e.kind == ErrorKind::Timeout),
        "with w full, m keeps the request: {held:?}"
    );

    scale.await;
    wait_until(
        "m sends a request to w's new worker",
        Duration::from_secs(NAP_MS / 1000 - 2),
        || async {
            m.request_timeout("chaos", WhoAmI {}, PROBE)
                .await
                .as_deref()
                == Ok("w/chaos/1")
        },
    )
    .await;
}

const CHAOS: &str = "services:\n  chaos: { workers: 1, concurrency: 1, timeout: 20s }\n";

async fn routing_follows_the_scale_on(net: Net) {
    let nodes = nodes_on(&net, &["m", "w"], CHAOS, |yaml| async move {
        start_node(&yaml).await
    })
    .await;
    let (m, w) = (&nodes[0], &nodes[1]);
    routing_follows_the_scale(m, w, async {
        let scaled = m.scale("chaos", 2, Some("w")).await.expect("scale w");
        assert_eq!((scaled.node.as_str(), scaled.workers), ("w", 2));
    })
    .await;
    for node in nodes.iter().rev() {
        node.shutdown(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn routing_follows_the_scale_on_the_bridge() {
    routing_follows_the_scale_on(Net::bridge()).await;
}

#[actix_rt::test]
async fn routing_follows_the_scale_on_nats() {
    routing_follows_the_scale_on(Net::nats()).await;
}

async fn memory_node(net: &MemoryNetwork, yaml: &str) -> Node {
    let mut config = NodeConfig::parse(Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start_with_transport(test_app(), config, net.backbone())
        .await
        .expect("node starts")
}

#[actix_rt::test]
async fn the_memory_backbone_scales_through_the_api_too() {
    let net = MemoryNetwork::new();
    let m = memory_node(
        &net,
        &format!("node: {{ name: m, role: master, threads: 2 }}\napi: {{ listen: 127.0.0.1:0 }}\n{CHAOS}"),
    )
    .await;
    let w = memory_node(
        &net,
        &format!("node: {{ name: w, role: worker, threads: 2 }}\n{CHAOS}"),
    )
    .await;
    let api = m.api_addr().expect("m's API");
    routing_follows_the_scale(&m, &w, async {
        let answer = http_post(api, "/v1/scale/chaos", r#"{"workers":2,"node":"w"}"#).await;
        assert_eq!(
            answer.1,
            json!({"service": "chaos", "node": "w", "workers": 2, "was": 1})
        );
    })
    .await;
    assert_eq!(workers_seen(&m, "w", "chaos").await, ids("w", "chaos", 2));
    w.shutdown(Duration::from_millis(100)).await;
    m.shutdown(Duration::from_millis(100)).await;
}
