//! The example app end to end across three node processes: a master running
//! `data` and `stream`, worker-a running `math` and `chaos`, worker-b running
//! `stream` and `math`. A deletion made through worker-b's API runs on the
//! master's `data`, whose `user.deleted` reaches both `stream` workers and a
//! `colony subscribe user.` client on worker-a; `colony publish` counts the
//! subscribers of the cluster a topic reaches; requests cross the bridges.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;
use serde_json::{json, Value};

/// A `colony subscribe` client whose stdout lines are read as they come; killed
/// when dropped.
struct Subscriber {
    child: KillOnDrop,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Subscriber {
    fn start(node: &NodeProcess, prefix: &str) -> Subscriber {
        let mut child = KillOnDrop(
            colony_command()
                .args(["--api", node.api.as_str(), "subscribe", prefix])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn colony subscribe"),
        );
        let stdout = child.0.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.0.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let lines = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr_pipe.read_to_string(&mut text);
                *stderr.lock().unwrap() = text;
            });
        }
        Subscriber {
            child,
            lines,
            stderr,
        }
    }

    /// The lines so far, each parsed.
    fn messages(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    /// Whether the client still runs (its stream has not ended).
    fn running(&mut self) -> bool {
        self.child.0.try_wait().expect("try_wait").is_none()
    }

    fn of_topic(&self, topic: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["topic"] == topic)
            .collect()
    }
}

/// Runs a client command against `node`; it must succeed; its stdout as JSON.
fn ok_json(node: &NodeProcess, args: &[&str]) -> Value {
    let out = node.cli(args);
    assert_eq!(out.code(), 0, "{args:?}: {out:?}");
    assert_eq!(out.stderr, "", "{args:?}: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {args:?}: {out:?}"))
}

fn handled(node: &NodeProcess, id: &str) -> u64 {
    worker(&node.status(), id)["handled"]
        .as_u64()
        .unwrap_or_else(|| panic!("no handled count for {id}"))
}

#[test]
fn a_deletion_reaches_every_subscriber_of_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let config = |name: &str, role: &str, join: Option<&str>, services: &str| {
        let text = cluster_config(name, role, &secret, join, services);
        write_config(dir.path(), &format!("{name}.yaml"), &text)
    };
    let master = NodeProcess::start_bridged(
        &config(
            "master",
            "master",
            None,
            "{ data: { workers: 1 }, stream: { workers: 1, routing: local_first } }",
        ),
        &[],
    );
    let join = master.bridge_addr().to_string();
    let a = NodeProcess::start_bridged(
        &config(
            "worker-a",
            "worker",
            Some(&join),
            "{ math: { workers: 1 }, chaos: { workers: 1 } }",
        ),
        &[],
    );
    let b = NodeProcess::start_bridged(
        &config(
            "worker-b",
            "worker",
            Some(&join),
            "{ stream: { workers: 1, routing: local_first }, math: { workers: 1 } }",
        ),
        &[],
    );
    for node in [&master, &a, &b] {
        poll("every node sees all three running", || {
            let mut nodes = node.nodes();
            nodes.sort();
            nodes
                == [
                    ("master".to_string(), "running".to_string()),
                    ("worker-a".to_string(), "running".to_string()),
                    ("worker-b".to_string(), "running".to_string()),
                ]
        });
        node.wait_all_running();
    }

    let mut subscriber = Subscriber::start(&a, "user.");
    // Until the master knows every subscriber of `user.`: its own stream worker,
    // worker-b's and the client on worker-a. The probe's `{}` is no user event:
    // the stream workers ignore it.
    poll("the master knows the three subscribers of user.", || {
        let delivered = ok_json(&master, &["publish", "user.probe", "{}"]);
        assert!(delivered["delivered"].as_u64().unwrap() <= 3, "{delivered}");
        delivered == json!({ "delivered": 3 })
    });
    poll("the client on worker-a prints the probes", || {
        !subscriber.of_topic("user.probe").is_empty()
    });

    // The guard of `data` rejects a deletion without userId, across the bridge.
    let out = a.cli(&["request", "data", "users.delete", "{}"]);
    assert_eq!(
        (out.code(), out.stdout.as_str(), out.stderr.as_str()),
        (1, "", "error: Rejected: You are not authenticated.\n"),
        "{out:?}"
    );
    // worker-b runs no data: its API hands the deletion to the master.
    assert_eq!(
        ok_json(&b, &["request", "data", "users.delete", r#"{"userId":3}"#]),
        json!({ "deleted": 3 })
    );

    // Each node's own stream worker (local_first) heard of it, from the master.
    let deleted = json!({ "events": [{ "topic": "user.deleted", "userId": 3, "node": "master" }] });
    for (node, worker_id) in [(&b, "worker-b/stream/0"), (&master, "master/stream/0")] {
        let mut asked = 0;
        poll(&format!("{worker_id} lists the deletion"), || {
            asked += 1;
            let recent = ok_json(node, &["request", "stream", "recent"]);
            assert!(
                recent == json!({ "events": [] }) || recent == deleted,
                "{worker_id}: {recent}"
            );
            recent == deleted
        });
        assert_eq!(
            handled(node, worker_id),
            asked,
            "{worker_id} served them all"
        );
    }

    poll("the client on worker-a prints the deletion", || {
        !subscriber.of_topic("user.deleted").is_empty()
    });
    let printed = subscriber.of_topic("user.deleted");
    assert_eq!(printed.len(), 1, "{printed:?}");
    let printed = &printed[0];
    assert_eq!(printed["meta"]["node"], "master", "{printed}");
    assert_eq!(printed["meta"]["service"], "data", "{printed}");
    assert_eq!(printed["meta"]["worker"], "master/data/0", "{printed}");
    assert_eq!(printed["data"], json!({ "userId": 3 }), "{printed}");

    // Two stream workers and the client.
    assert_eq!(
        ok_json(&master, &["publish", "user.created", r#"{"userId":9}"#]),
        json!({ "delivered": 3 })
    );
    poll("the client on worker-a prints user.created", || {
        !subscriber.of_topic("user.created").is_empty()
    });
    let created = subscriber.of_topic("user.created");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["meta"]["node"], "master", "{created:?}");
    assert_eq!(created[0]["data"], json!({ "userId": 9 }), "{created:?}");
    assert_eq!(
        ok_json(&master, &["publish", "other.topic", "{}"]),
        json!({ "delivered": 0 })
    );

    assert_eq!(
        ok_json(&master, &["request", "math", "sum", r#"{"a":1,"b":2}"#]),
        json!({ "sum": 3 })
    );

    // The client is still streaming: nothing ended it. Dropped, it is killed.
    assert!(
        subscriber.running(),
        "the subscriber ended; stderr: {}",
        subscriber.stderr.lock().unwrap()
    );
    drop(subscriber);
}
