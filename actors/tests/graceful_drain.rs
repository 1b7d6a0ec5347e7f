//! SIGTERM drains: a spawned node told to stop by a signal while it holds a
//! request made through the master finishes that request (the client gets its
//! reply), logs its stop and exits 0; the master, which did not ask for the
//! stop, logs the exit and starts the node again. SIGTERM to the master itself
//! while a child holds a request: the request completes, the child is stopped
//! and gone, and the master exits 0.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SLEEP: &str = r#"{"ms":1500}"#;

/// A master running only math, spawning worker-a with one chaos worker; returns
/// once both nodes run with every worker.
fn start(dir: &std::path::Path) -> NodeProcess {
    let config = spawning_cluster(
        dir,
        "{ math: { workers: 1 } }",
        &[("worker-a", "", "{ chaos: { workers: 1 } }")],
    );
    let node = NodeProcess::start(&config, &[]);
    wait_nodes_running(&node, 2);
    node.wait_all_running();
    node
}

/// Starts `request chaos sleep` through the master and waits until worker-a's
/// chaos worker holds it.
fn sleep_on_worker_a(node: &NodeProcess) -> Background {
    let request = node.cli_background(&["request", "chaos", "sleep", SLEEP]);
    wait_until(
        node,
        "worker-a's chaos worker holds the sleep",
        Duration::from_secs(10),
        || worker(&node.status(), "worker-a/chaos/0")["in_flight"] == 1,
    );
    request
}

/// Waits for the background request, which must succeed with the sleep's reply.
fn expect_slept(node: &NodeProcess, mut request: Background) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        if let Some(out) = request.try_finish() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the request did not finish within 20s; stderr:\n{}",
            node.log()
        );
        thread::sleep(POLL);
    };
    assert_eq!(
        (out.code(), out.stdout.trim()),
        (0, r#"{"slept":1500}"#),
        "the request held during the drain: {out:?}; stderr:\n{}",
        node.log()
    );
}

#[test]
fn sigterm_to_a_spawned_node_drains_its_request_and_the_master_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let old = pid_of(&node.status(), "worker-a");

    let request = sleep_on_worker_a(&node);
    send_signal(old, "TERM");
    expect_slept(&node, request);

    let stop = "node worker-a: stopped";
    wait_until(
        &node,
        "worker-a logs its stop",
        Duration::from_secs(10),
        || line_of(&node, "[worker-a] colony::node:", stop).is_some(),
    );
    wait_until(
        &node,
        "worker-a's old process is gone",
        Duration::from_secs(10),
        || !process_alive(old),
    );
    // The master did not ask for this stop: the clean exit is restarted like
    // any other, after the first backoff.
    let exit = format!("node worker-a: exit (pid {old}, code 0); restart in 100ms");
    wait_until(
        &node,
        "the master logs the exit",
        Duration::from_secs(10),
        || line_of(&node, "[master] colony::events:", &exit).is_some(),
    );
    let mut status = serde_json::Value::Null;
    wait_until(
        &node,
        "worker-a runs again",
        Duration::from_secs(20),
        || {
            status = node.status();
            let entry = node_of(&status, "worker-a");
            entry["state"] == "running" && entry["pid"] != old
        },
    );
    let new = pid_of(&status, "worker-a");
    assert_eq!(node_of(&status, "worker-a")["restarts"], 1, "{status}");
    assert!(process_alive(new));

    let at = |tag: &str, message: &str| {
        line_of(&node, tag, message)
            .unwrap_or_else(|| panic!("no line `{message}`; stderr:\n{}", node.log()))
    };
    let leaving = at(
        "[master] colony::bridge::peer:",
        "node worker-a is leaving; no new requests go to it",
    );
    let stopped = at("[worker-a] colony::node:", stop);
    let exited = at("[master] colony::events:", &exit);
    let fork = at(
        "[master] colony::events:",
        &format!("node worker-a: fork (pid {new})"),
    );
    let online = at(
        "[master] colony::events:",
        &format!("node worker-a: online (pid {new})"),
    );
    assert!(
        leaving < stopped && stopped < exited && exited < fork && fork < online,
        "leaving {leaving}, stopped {stopped}, exit {exited}, fork {fork}, online {online}; \
         stderr:\n{}",
        node.log()
    );
    assert!(
        !node.logged(|l| l.contains(&format!("node worker-a: exit (pid {new}"))),
        "the new process exited; stderr:\n{}",
        node.log()
    );
}

#[test]
fn sigterm_to_the_master_drains_a_request_its_child_holds_and_stops_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let child = pid_of(&node.status(), "worker-a");
    let master = node.child.0.id();

    let request = sleep_on_worker_a(&node);
    send_signal(master, "TERM");
    expect_slept(&node, request);

    node.wait_clean_exit(Duration::from_secs(20));
    wait_until(
        &node,
        "worker-a's process is gone",
        Duration::from_secs(10),
        || !process_alive(child),
    );
    wait_until(
        &node,
        "both nodes logged their stop",
        Duration::from_secs(10),
        || {
            line_of(&node, "[master] colony::node:", "node master: stopped").is_some()
                && line_of(&node, "[worker-a] colony::node:", "node worker-a: stopped").is_some()
        },
    );
    let exit = format!("node worker-a: exit (pid {child}, code 0)");
    assert!(
        line_of(&node, "[master] colony::events:", &exit).is_some(),
        "no `{exit}` (without a restart) from the master; stderr:\n{}",
        node.log()
    );
    let forks = node.count_logged(|l| l.contains("node worker-a: fork (pid"));
    assert_eq!(
        forks,
        1,
        "the master started worker-a again while stopping; stderr:\n{}",
        node.log()
    );
}
