//! A node that leaves gracefully (a restart in a reload) takes its services with
//! it only for a moment: a request for a service that no other node runs waits
//! for a node with it to come back, instead of failing at once with
//! `NoSuchService`; and when none comes, it fails within its own timeout.

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;

const SECRET: &str = "a-cluster-secret-for-tests-only";

fn worker_yaml(name: &str, secret: &tempfile::NamedTempFile, join: std::net::SocketAddr) -> String {
    format!(
        "node: {{ name: {name}, role: worker, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1 }} }}\n",
        bridge_yaml(secret, Some(join))
    )
}

/// A master running `calc` and a worker `w` running `chaos` that joined it; and
/// the master's bridge address.
async fn master_and_worker(
    secret: &tempfile::NamedTempFile,
) -> (colony::Node, colony::Node, std::net::SocketAddr) {
    let master = start_node(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ calc: {{ workers: 1 }} }}\n",
        bridge_yaml(secret, None)
    ))
    .await;
    let join = master.bridge_addr().expect("bridge");
    let worker = start_node(&worker_yaml("w", secret, join)).await;
    cluster_of(&master, 2).await;
    (master, worker, join)
}

#[actix_rt::test]
async fn a_request_waits_for_the_leaving_node_to_come_back() {
    let secret = secret_file(SECRET);
    let (master, old, join) = master_and_worker(&secret).await;
    assert_eq!(
        master.request("chaos", WhoAmI {}).await.unwrap(),
        "w/chaos/0"
    );

    // `w` leaves (it tells the master first) and is gone.
    old.shutdown(Duration::from_secs(1)).await;
    cluster_of(&master, 1).await;

    // A request now waits instead of failing: it is answered by the node that
    // comes back under the same name.
    let asking = {
        let master = master.clone();
        actix_rt::spawn(async move {
            master
                .request_timeout("chaos", WhoAmI {}, Duration::from_secs(10))
                .await
        })
    };
    let new = start_node(&worker_yaml("w", &secret, join)).await;
    let answer = asking.await.expect("the request task");
    assert_eq!(
        answer.expect("answered by the node that came back"),
        "w/chaos/0"
    );

    // A service that no node ever ran gets no such grace: it fails at once.
    let unknown = new
        .request_timeout("nosuch", WhoAmI {}, Duration::from_secs(5))
        .await;
    assert_eq!(unknown.unwrap_err().kind, ErrorKind::NoSuchService);

    new.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn with_no_node_coming_back_the_request_fails_within_its_timeout() {
    let secret = secret_file(SECRET);
    let (master, old, _) = master_and_worker(&secret).await;
    old.shutdown(Duration::from_secs(1)).await;
    cluster_of(&master, 1).await;

    // Bounded by the test's deadline, not timed: the answer is NoSuchService.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        master.request_timeout("chaos", WhoAmI {}, Duration::from_millis(200)),
    )
    .await
    .expect("the request answers within its timeout, not the hold");
    assert_eq!(answer.unwrap_err().kind, ErrorKind::NoSuchService);
    master.shutdown(Duration::from_secs(1)).await;
}
