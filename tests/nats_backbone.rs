//! What only the NATS backbone does, against a real nats-server: topics NATS
//! cannot carry as subjects (spaces, wildcards, empty parts) still arrive, and
//! only where they are wanted; every node's services answer the NATS services
//! API (`$SRV.PING`, `$SRV.INFO`) and serve NATS clients on
//! `colony.svc.SERVICE.SUBJECT`; a node whose beats stop is down and its calls
//! fail with `NodeDown`; a server restart mid-load leaves no call unanswered;
//! and a config joins by `bridge:` or `nats:`, never both.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::{ErrorKind, Node, NodeConfig, Published};
use common::*;
use futures::StreamExt;
use parking_lot::Mutex;

const DEADLINE: Duration = Duration::from_secs(10);

/// Collects the topics of what it is sent.
struct Collector(Arc<Mutex<Vec<String>>>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<Published> for Collector {
    type Result = ();
    fn handle(&mut self, msg: Published, _: &mut Context<Self>) {
        self.0.lock().push(msg.topic().to_string());
    }
}

fn collector() -> (Recipient<Published>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = Collector(seen.clone()).start();
    (addr.recipient(), seen)
}

#[actix_rt::test]
async fn topics_nats_cannot_carry_arrive_only_where_wanted() {
    let net = Net::nats();
    let nodes = nodes_on(&net, &["m", "w"], "", |yaml| async move {
        start_node(&yaml).await
    })
    .await;
    let (m, w) = (&nodes[0], &nodes[1]);
    let (odd, odd_seen) = collector();
    let (star, star_seen) = collector();
    let (none, none_seen) = collector();
    let _subs = [
        w.subscribe("a b.", odd).unwrap(),
        w.subscribe("x.*", star).unwrap(),
        w.subscribe("zz", none).unwrap(),
    ];
    wait_until("m knows w's subscriptions", DEADLINE, || async {
        m.subscribers("a b.c") == 1 && m.subscribers("x.*>") == 1
    })
    .await;
    let topics = [
        "a b.c d", "a b.", "a b..", "x.*>", "x.*", "x.>", "a b", "x", "",
    ];
    let mut reached = 0;
    for topic in topics {
        reached += m.publish(topic, 1).unwrap();
    }
    assert_eq!(reached, 5, "a b.c d, a b., a b.., x.*>, x.*");
    wait_until("w has all five", DEADLINE, || async {
        odd_seen.lock().len() + star_seen.lock().len() == 5
    })
    .await;
    assert_eq!(*odd_seen.lock(), ["a b.c d", "a b.", "a b.."]);
    assert_eq!(*star_seen.lock(), ["x.*>", "x.*"]);
    assert!(none_seen.lock().is_empty());
}

#[actix_rt::test]
async fn services_answer_the_nats_services_api_and_nats_clients() {
    let net = Net::nats();
    let services = "services: { calc: { workers: 2 } }\n";
    let nodes = nodes_on(&net, &["m", "w"], services, |yaml| async move {
        start_node(&yaml).await
    })
    .await;
    let Net::Nats(server) = &net else {
        unreachable!()
    };
    let client = async_nats::connect(server.url()).await.unwrap();

    // $SRV.PING.calc: one answer per node, io.nats.micro.v1 ping responses.
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.PING.calc", inbox.clone(), "".into())
        .await
        .unwrap();
    let mut nodes_seen = Vec::new();
    while nodes_seen.len() < 2 {
        let message = tokio::time::timeout(DEADLINE, answers.next())
            .await
            .expect("two ping answers")
            .unwrap();
        let ping: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response", "{ping}");
        assert_eq!(ping["name"], "calc");
        nodes_seen.push(ping["metadata"]["node"].as_str().unwrap().to_string());
    }
    nodes_seen.sort();
    assert_eq!(nodes_seen, ["m", "w"]);

    let info = client.request("$SRV.INFO.calc", "".into()).await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
    assert_eq!(info["endpoints"][0]["subject"], "colony.svc.calc.>");
    assert_eq!(info["endpoints"][0]["queue_group"], "colony.svc.calc");

    // A NATS client is served, through the queue group, by one node.
    let reply = client
        .request("colony.svc.calc.add", r#"{"a":20,"b":22}"#.into())
        .await
        .unwrap();
    let added: Added = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(added.sum, 42);
    // An unknown subject is colony's BadRequest, in the NATS service error headers.
    let reply = client
        .request("colony.svc.calc.nope", "{}".into())
        .await
        .unwrap();
    let headers = reply.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );
    let error = headers.get("Nats-Service-Error").unwrap().as_str();
    assert!(error.starts_with("BadRequest: "), "{error}");
    drop(nodes);
}

#[actix_rt::test]
async fn a_node_whose_beats_stop_is_down_and_its_calls_fail_node_down() {
    let net = Net::nats();
    let m = start_node(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}",
        net.yaml(None)
    ))
    .await;
    // w runs in a System of its own, on its own thread, so that it can die
    // without a word: its runtime ends, with its connection, and no goodbye.
    let w_yaml = format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1 }} }}\n",
        net.yaml(Some(&m))
    );
    let (w_tx, w_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let w_thread = std::thread::spawn(move || {
        let system = actix_rt::System::new();
        system.block_on(async move {
            let w = start_node(&w_yaml).await;
            w_tx.send(w.clone()).unwrap();
            let _ = die_rx.await;
            std::mem::forget(w);
        });
    });
    let w = w_rx.recv_timeout(DEADLINE).expect("w starts");
    cluster_of(&m, 2).await;
    // A call w holds for a long time; then w is gone without a word (its
    // runtime stops: no goodbye, no more beats).
    let held = {
        let m = m.clone();
        actix_rt::spawn(async move {
            m.request_timeout("chaos", Sleep { ms: 30_000 }, Duration::from_secs(60))
                .await
        })
    };
    wait_until("w holds the call", DEADLINE, || async {
        worker_status(&w, "w/chaos/0").in_flight == 1
    })
    .await;
    let asked = std::time::Instant::now();
    die_tx.send(()).unwrap();
    w_thread.join().unwrap();
    let err = held.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::NodeDown, "{err}");
    assert!(asked.elapsed() < Duration::from_secs(30), "not its timeout");
    let status = m.cluster_status().await;
    let w_status = status.nodes.iter().find(|n| n.name == "w").unwrap();
    assert_eq!(w_status.state, "down");
}

#[actix_rt::test]
async fn a_server_restart_mid_load_leaves_no_call_unanswered() {
    let mut net = Net::nats();
    let services = "services: { calc: { workers: 2 } }\n";
    let nodes = nodes_on(&net, &["m", "w"], services, |yaml| async move {
        start_node(&yaml).await
    })
    .await;
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (w, served, failed) = (nodes[1].clone(), served.clone(), failed.clone());
            actix_rt::spawn(async move {
                for i in 0..400 {
                    match w
                        .request_timeout("calc", Add { a: i, b: 1 }, Duration::from_secs(5))
                        .await
                    {
                        Ok(added) => {
                            assert_eq!(added.sum, i + 1);
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert!(
                                matches!(e.kind, ErrorKind::NodeDown | ErrorKind::Timeout),
                                "{e}"
                            );
                            failed.fetch_add(1, Ordering::Relaxed);
                            actix_rt::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("some calls served", DEADLINE, || async {
        served.load(Ordering::Relaxed) > 50
    })
    .await;
    net.server().unwrap().restart();
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        served.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed),
        1600,
        "every call answered"
    );
    // And served again once the server is back.
    cluster_of(&nodes[1], 2).await;
    let added = nodes[1].request("calc", Add { a: 1, b: 2 }).await.unwrap();
    assert_eq!(added.sum, 3);
}

#[test]
fn bridge_and_nats_together_are_a_config_error() {
    let both = "node: { name: n, role: master }\n\
                bridge: { listen: 127.0.0.1:0, secret_file: /dev/null }\n\
                nats: { url: nats://127.0.0.1:4222 }\n";
    let err = NodeConfig::parse(std::path::Path::new("n.yaml"), both).unwrap_err();
    assert!(err.to_string().contains("nats"), "{err}");
    assert!(err.to_string().contains("bridge"), "{err}");
    let no_role = "node: { name: n }\nnats: { url: nats://127.0.0.1:4222 }\n";
    let err = NodeConfig::parse(std::path::Path::new("n.yaml"), no_role).unwrap_err();
    assert!(err.to_string().contains("node.role"), "{err}");
    for (yaml, key) in [
        ("nats: { url: [] }", "nats.url"),
        ("nats: { url: \"http://x\" }", "nats.url"),
        ("nats: { url: nats://x, prefix: \"a.b\" }", "nats.prefix"),
        ("nats: { url: nats://x, prefix: \"*\" }", "nats.prefix"),
        ("nats: { url: nats://x, replicas: 9 }", "nats.replicas"),
        ("nats: { url: nats://x, heartbeat: 1ms }", "nats.heartbeat"),
    ] {
        let text = format!("node: {{ name: n, role: master }}\n{yaml}\n");
        let err = NodeConfig::parse(std::path::Path::new("n.yaml"), &text).unwrap_err();
        assert!(err.to_string().contains(key), "{yaml}: {err}");
    }
}

#[actix_rt::test]
async fn an_unreachable_server_is_a_start_error_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "node: {{ name: n, role: master }}\nnats: {{ url: \"nats://127.0.0.1:{port}\" }}\n"
    );
    let config = NodeConfig::parse(std::path::Path::new("n.yaml"), &yaml).unwrap();
    let err = Node::start(test_app(), config).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "cannot reach the NATS server at nats://127.0.0.1:{port}"
        )),
        "{err}"
    );
}

#[actix_rt::test]
async fn missing_or_shared_credential_files_are_start_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("token");
    std::fs::write(&shared, "t0ken\n").unwrap();
    let readable: std::fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    std::fs::set_permissions(&shared, readable).unwrap();
    for (section, key) in [
        ("token_file: /nonexistent/token", "nats.token_file"),
        (
            "credentials_file: /nonexistent/x.creds",
            "nats.credentials_file",
        ),
        (
            &*format!("token_file: {}", shared.display()),
            "nats.token_file",
        ),
        ("tls: { ca: /nonexistent/ca.pem }", "nats.tls.ca"),
    ] {
        let yaml = format!(
            "node: {{ name: n, role: master }}\nnats: {{ url: \"nats://127.0.0.1:1\", {section} }}\n"
        );
        let config = NodeConfig::parse(std::path::Path::new("n.yaml"), &yaml).unwrap();
        let err = Node::start(test_app(), config).await.unwrap_err();
        assert!(err.to_string().contains(key), "{section}: {err}");
    }
}
