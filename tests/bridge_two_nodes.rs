//! Two nodes in one process, on each backbone (the bridge over loopback TCP, and
//! a real nats-server): a worker node joins the master, each reaches the
//! other's services with every call form, errors keep their kind, and status
//! shows both.

mod common;

use std::time::Duration;

use colony::{ErrorKind, WorkerId};
use common::*;

#[actix_rt::test]
async fn a_joined_node_serves_and_is_served_over_the_bridge() {
    two_nodes(Net::bridge()).await;
}

#[actix_rt::test]
async fn a_joined_node_serves_and_is_served_over_nats() {
    two_nodes(Net::nats()).await;
}

async fn two_nodes(net: Net) {
    let master = start_node(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ calc: {{ workers: 2 }} }}\n",
        net.yaml(None)
    ))
    .await;
    let worker = start_node(&format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1 }} }}\n",
        net.yaml(Some(&master))
    ))
    .await;
    cluster_of(&master, 2).await;
    cluster_of(&worker, 2).await;

    // Each node reaches the service only the other runs.
    let added = worker.request("calc", Add { a: 2, b: 3 }).await.unwrap();
    assert_eq!(added.sum, 5);
    assert!(added.by.starts_with("m/calc/"), "{}", added.by);
    assert_eq!(
        master.request("chaos", WhoAmI {}).await.unwrap(),
        "w/chaos/0"
    );

    // Addressed forms across the link.
    let id = WorkerId::new("m", "calc", 1);
    assert_eq!(
        worker.request_worker(&id, WhoAmI {}).await.unwrap(),
        "m/calc/1"
    );
    let all = worker.request_all("calc", WhoAmI {}).await.unwrap();
    let mut ids: Vec<String> = all
        .into_iter()
        .map(|(id, r)| {
            assert_eq!(r.unwrap(), id.to_string());
            id.to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["m/calc/0", "m/calc/1"]);
    assert_eq!(
        worker.request_master(WhoAmI {}).await.unwrap(),
        "m/@master/0"
    );
    assert_eq!(
        worker.broadcast("calc", Add { a: 0, b: 0 }).await.unwrap(),
        2
    );

    // Errors keep their kind across the link.
    let err = worker.request("calc", Fail { code: 9 }).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Application);
    assert_eq!(err.data, Some(serde_json::json!({ "code": 9 })));
    let err = master
        .request_timeout("chaos", Sleep { ms: 2_000 }, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);

    // A kill through either node reaches the worker where it runs.
    worker.kill(&WorkerId::new("m", "calc", 0)).await.unwrap();
    wait_until("m/calc/0 restarted", Duration::from_secs(5), || async {
        let w = worker_status(&master, "m/calc/0");
        w.restarts == 1 && w.state == "running"
    })
    .await;
    let err = worker
        .kill(&WorkerId::new("m", "calc", 9))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoSuchService);

    let status = master.cluster_status().await;
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["m", "w"]);
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
