//! Who may hold a link once past the cluster secret: a second connection claiming a
//! live node's name is refused and the live link keeps serving; a node refused
//! that way joins once the old link is gone; a member table from a node that is
//! not the master changes nothing; a second master is refused by both sides; with
//! TLS, a certificate must name the node its Hello names.
//!
//! The attacks speak raw frames after a real handshake (`handshake::dial` and
//! `accept`), as a peer holding the secret would. Log lines are captured to check
//! that both sides say why; node names differ per test, since tests share the log.
//! Each test checks the refusal, that memory stays bounded (VmRSS of this process)
//! and that the cluster keeps serving with exact counts.

mod common;
#[path = "bridge_identity/support.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use colony::bridge::frame::FrameCodec;
use colony::bridge::handshake::{self, Secret as ClusterSecret};
use colony::bridge::wire::{Control, Member};
use colony::{ErrorKind, LifecycleEvent, Node};
use common::*;
use futures::SinkExt;
use parking_lot::Mutex;
use support::*;
use tempfile::TempDir;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::codec::Framed;

// ---- helpers ----

fn node_yaml(name: &str, role: &str, services: &str, bridge: &str) -> String {
    format!(
        "node: {{ name: {name}, role: {role}, threads: 1 }}\n{bridge}services: {{ {services} }}\n"
    )
}

/// `count` requests from `from` to `calc`, each answered by `by`'s worker.
async fn serves(from: &Node, by: &str, count: i64, what: &str) {
    for i in 0..count {
        let added = from
            .request("calc", Add { a: i, b: 1 })
            .await
            .unwrap_or_else(|e| panic!("{what}: request {i} failed: {e}"));
        assert_eq!(added.sum, i + 1, "{what}");
        assert_eq!(added.by, format!("{by}/calc/0"), "{what}");
    }
}

fn node_downs(events: &Events, node: &str) -> usize {
    events.count(|e| matches!(e, LifecycleEvent::NodeDown { node: n, .. } if n == node))
}

fn node_ups(events: &Events, node: &str) -> usize {
    events.count(|e| matches!(e, LifecycleEvent::NodeUp { node: n } if n == node))
}

/// A master `m` (calc) and a worker `w` (chaos) joined to it.
async fn pair(
    secret: &tempfile::NamedTempFile,
    m: &str,
    w: &str,
    tls: Option<(&Certs, &Certs)>,
) -> (Node, Node) {
    let bridge = |join, files: Option<&Certs>, name: &str| match files {
        Some(certs) => certs.bridge_yaml(secret, join, name),
        None => bridge_yaml(secret, join),
    };
    let master = start_node(&node_yaml(
        m,
        "master",
        "calc: { workers: 1 }",
        &bridge(None, tls.map(|t| t.0), m),
    ))
    .await;
    let worker = start_node(&node_yaml(
        w,
        "worker",
        "chaos: { workers: 1 }",
        &bridge(master.bridge_addr(), tls.map(|t| t.1), w),
    ))
    .await;
    cluster_of(&master, 2).await;
    cluster_of(&worker, 2).await;
    (master, worker)
}

// ---- a name held by a live link ----

#[actix_rt::test]
async fn a_second_connection_claiming_a_live_name_is_refused_and_the_link_keeps_serving() {
    capture_logs();
    let secret = secret_file(SECRET);
    let (master, worker) = pair(&secret, "m1", "w1", None).await;
    let events = Events::subscribe(&master).await;
    let addr = master.bridge_addr().expect("bridge");
    serves(&worker, "m1", 10, "before").await;

    let before = vm_rss_kb();
    for attempt in 0..30 {
        let mut framed = dial_as(tcp(addr).await, "w1", "m1").await;
        // Frames a usurper would send at once: none may be acted on.
        framed
            .send(control_frame(&Control::Join {
                member: member("w1", "worker", addr, &["evil"]),
            }))
            .await
            .ok();
        let reason = refusal(&mut framed, "a second w1").await;
        assert!(
            reason.contains("node w1 is already linked with node m1 over a live link"),
            "attempt {attempt}: {reason}"
        );
    }
    assert_memory_bounded(before, "30 connections claiming w1");

    // Refused on the accepting side, with a log line each time.
    assert!(logged(&["refused a link: node w1 is already linked"]) >= 30);
    // The live link is untouched and keeps serving, both ways.
    serves(&worker, "m1", 50, "after").await;
    assert_eq!(
        master.request("chaos", WhoAmI {}).await.unwrap(),
        "w1/chaos/0"
    );
    let err = master
        .request("evil", WhoAmI {})
        .await
        .expect_err("no node runs evil");
    assert_eq!(err.kind, ErrorKind::NoSuchService);
    assert_eq!(node_downs(&events, "w1"), 0);
    let stats = master.bridge_stats().expect("stats");
    assert_eq!((stats.links_opened, stats.peers_up), (1, 1));

    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_node_refused_for_a_live_name_joins_once_the_old_link_is_gone() {
    capture_logs();
    let secret = secret_file(SECRET);
    let (master, first) = pair(&secret, "m2", "w2", None).await;
    let before = vm_rss_kb();

    // Another node named w2 (a restarted process, say) with its own `guarded`.
    let second = start_node(&node_yaml(
        "w2",
        "worker",
        "guarded: { workers: 1 }",
        &bridge_yaml(&secret, master.bridge_addr()),
    ))
    .await;
    wait_until(
        "the master refused the second w2 twice",
        Duration::from_secs(10),
        || async { logged(&["refused a link: node w2 is already linked with node m2"]) >= 2 },
    )
    .await;
    // The refused side says why too.
    wait_until(
        "the second w2 logged the refusal",
        Duration::from_secs(5),
        || async { logged(&["node m2 refused the link: node w2 is already linked"]) >= 1 },
    )
    .await;
    // Meanwhile the first keeps its link and serves.
    serves(&first, "m2", 20, "while refused").await;
    let err = master
        .request(
            "guarded",
            Secret {
                user: Some("u".into()),
            },
        )
        .await
        .expect_err("the second w2 is not linked");
    assert_eq!(err.kind, ErrorKind::NoSuchService);

    // The first goes; the second's retries get in.
    first.shutdown(Duration::ZERO).await;
    wait_until(
        "the second w2 serves guarded",
        Duration::from_secs(15),
        || async {
            master
                .request(
                    "guarded",
                    Secret {
                        user: Some("u".into()),
                    },
                )
                .await
                .is_ok()
        },
    )
    .await;
    assert_eq!(
        master
            .request(
                "guarded",
                Secret {
                    user: Some("u".into())
                }
            )
            .await
            .unwrap(),
        "secret for U"
    );
    second
        .request("calc", Add { a: 1, b: 2 })
        .await
        .expect("the second w2 reaches the master");
    assert_memory_bounded(before, "a refused node retrying");

    second.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

// ---- the member table ----

#[actix_rt::test]
async fn a_member_table_from_a_node_that_is_not_the_master_changes_nothing() {
    capture_logs();
    let secret = secret_file(SECRET);
    let (master, worker) = pair(&secret, "m3", "w3", None).await;
    let events = Events::subscribe(&worker).await;
    let addr = worker.bridge_addr().expect("bridge");
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    serves(&worker, "m3", 5, "before").await;

    let before = vm_rss_kb();
    for round in 0..20u64 {
        // A peer that holds the secret links to the worker as x3 and sends a table
        // that would drop the master (closing the worker's link to it), make x3
        // the master, and add 500 members to dial.
        let mut framed = dial_as(tcp(addr).await, "x3", "w3").await;
        let mut members: Vec<Member> = (0..500)
            .map(|i| member(&format!("ghost-{i}"), "worker", nowhere, &["calc"]))
            .collect();
        members.push(member("x3", "master", nowhere, &["calc"]));
        framed
            .send(control_frame(&Control::Members { members }))
            .await
            .expect("send the table");
        // The node handles a link's frames in order: once it answers this, the
        // table has been dealt with.
        framed
            .send(control_frame(&Control::StatusRequest { id: round }))
            .await
            .expect("send a status request");
        loop {
            match next_control(&mut framed).await {
                Some(Control::StatusReply { id, .. }) if id == round => break,
                Some(_) => continue,
                None => panic!("round {round}: closed before the status reply"),
            }
        }
        let stats = worker.bridge_stats().expect("stats");
        assert_eq!(
            stats.peers_up, 2,
            "round {round}: the link to m3 was closed"
        );
        let master_worker = worker.request_master(WhoAmI {}).await;
        assert!(
            master_worker.as_deref().is_ok_and(|w| w.starts_with("m3/")),
            "round {round}: {master_worker:?}"
        );
        drop(framed);
    }
    assert_memory_bounded(before, "20 member tables from a non-master");
    assert!(logged(&["node x3 sent a member table, but it is not the master"]) >= 20);

    // A peer that says it is a master, on a worker that did not join it: refused.
    let mut framed = dial_as(tcp(addr).await, "x3", "w3").await;
    framed
        .send(control_frame(&Control::Join {
            member: member("x3", "master", nowhere, &["calc"]),
        }))
        .await
        .expect("send join");
    let reason = refusal(&mut framed, "a master the worker did not join").await;
    assert!(
        reason.contains("node x3 is a master; this cluster's master is m3"),
        "{reason}"
    );

    // Nothing changed: the master still serves calc for the worker, the table has
    // no ghost, and the worker never saw the master go down.
    serves(&worker, "m3", 50, "after").await;
    wait_until("x3 is gone", Duration::from_secs(5), || async {
        worker.bridge_stats().expect("stats").peers_up == 1
    })
    .await;
    let status = worker.cluster_status().await;
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["w3", "m3"]);
    assert_eq!(node_downs(&events, "m3"), 0);

    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

// ---- one master ----

#[actix_rt::test]
async fn a_second_master_is_refused_with_the_reason_on_both_sides() {
    capture_logs();
    let secret = secret_file(SECRET);
    let (master, worker) = pair(&secret, "m4", "w4", None).await;
    let events = Events::subscribe(&master).await;
    let addr = master.bridge_addr().expect("bridge");

    let before = vm_rss_kb();
    // A node configured as a master that joins m4.
    let second = start_node(&node_yaml(
        "n4",
        "master",
        "chaos: { workers: 1 }",
        &bridge_yaml(&secret, Some(addr)),
    ))
    .await;
    let message = "node n4 is a master; this cluster's master is m4";
    wait_until(
        "both masters refused the link twice",
        Duration::from_secs(15),
        || async {
            logged(&["refused the link with node n4", message]) >= 2
                && logged(&["refused the link with node m4", message]) >= 2
        },
    )
    .await;

    // A raw peer that says it is a master when it joins: refused with the reason.
    for _ in 0..20 {
        let mut framed = dial_as(tcp(addr).await, "r4", "m4").await;
        framed
            .send(control_frame(&Control::Join {
                member: member("r4", "master", addr, &["calc"]),
            }))
            .await
            .expect("send join");
        let reason = refusal(&mut framed, "a second master").await;
        assert_eq!(reason, "node r4 is a master; this cluster's master is m4");
    }
    assert_memory_bounded(before, "second masters");

    // Neither master became a member of the other's cluster.
    assert_eq!(node_ups(&events, "n4"), 0);
    assert_eq!(node_ups(&events, "r4"), 0);
    let status = worker.cluster_status().await;
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["w4", "m4"]);
    // The cluster keeps serving, and the second master only itself.
    serves(&worker, "m4", 50, "after").await;
    let master_worker = worker.request_master(WhoAmI {}).await.expect("master");
    assert!(master_worker.starts_with("m4/"), "{master_worker}");
    assert_eq!(
        second
            .request("calc", Add { a: 1, b: 1 })
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NoSuchService
    );
    assert_eq!(node_downs(&events, "w4"), 0);

    second.shutdown(Duration::from_secs(1)).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
// ---- TLS: the certificate names the node ----

#[actix_rt::test]
async fn with_tls_a_certificate_must_name_the_node_its_hello_names() {
    capture_logs();
    let root = TempDir::new().unwrap();
    let certs = Certs::new(&root, &["m5", "w5", "v5", "x5"]);
    let secret = secret_file(SECRET);
    // The right certificates join, and serve.
    let (master, worker) = pair(&secret, "m5", "w5", Some((&certs, &certs))).await;
    let addr = master.bridge_addr().expect("bridge");
    serves(&worker, "m5", 10, "joined with TLS").await;

    let before = vm_rss_kb();
    // A dialer with a good certificate, for x5, that says it is y5 (and then w5).
    for (round, claimed) in ["y5", "w5"].iter().cycle().take(20).enumerate() {
        let name = ServerName::try_from("m5").unwrap();
        let tls = certs
            .client("x5")
            .connect(name, tcp(addr).await)
            .await
            .expect("the chain is the cluster's: TLS passes");
        let mut framed = dial_as(tls, claimed, "m5").await;
        let reason = refusal(&mut framed, "a certificate for x5").await;
        assert_eq!(
            reason,
            format!(
                "the TLS certificate of node {claimed} is for another name \
                 (its subjectAltName must be DNS:{claimed})"
            ),
            "round {round}"
        );
    }
    // Refusals from one address are logged at most once per 10 s, with a count.
    assert!(logged(&["the TLS certificate of node", "is for another name"]) >= 1);

    // An acceptor with a good certificate, for x5, that says it is fake5: the node
    // v5 dialing it refuses, and tells it why.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = listener.local_addr().unwrap();
    let acceptor = certs.server("x5");
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = reasons.clone();
    let fake_task = actix_rt::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(stream).await else {
                continue;
            };
            let mut framed = Framed::new(tls, FrameCodec::default());
            let secret = ClusterSecret::new(SECRET.as_bytes()).unwrap();
            if handshake::accept(&mut framed, "fake5", &secret)
                .await
                .is_err()
            {
                continue;
            }
            while let Some(control) = next_control(&mut framed).await {
                if let Control::Refused { reason } = control {
                    seen.lock().push(reason);
                }
            }
        }
    });
    let dialer = start_node(&node_yaml(
        "v5",
        "worker",
        "chaos: { workers: 1 }",
        &certs.bridge_yaml(&secret, Some(fake), "v5"),
    ))
    .await;
    wait_until(
        "v5 refused the fake twice",
        Duration::from_secs(10),
        || async { reasons.lock().len() >= 2 },
    )
    .await;
    assert_eq!(
        reasons.lock()[0],
        "the TLS certificate of node fake5 is for another name \
         (its subjectAltName must be DNS:fake5)"
    );
    // v5 sends its refusal before it logs it: wait for the line.
    wait_until(
        "v5 logged both refusals",
        Duration::from_secs(5),
        || async {
            logged(&[
                "refused",
                "the TLS certificate of node fake5 is for another name",
            ]) >= 2
        },
    )
    .await;
    assert_eq!(dialer.bridge_stats().expect("stats").links_opened, 0);
    assert_memory_bounded(before, "certificates for another name");

    // The right link keeps serving.
    serves(&worker, "m5", 50, "after").await;
    assert_eq!(master.bridge_stats().expect("stats").peers_up, 1);

    fake_task.abort();
    dialer.shutdown(Duration::ZERO).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
