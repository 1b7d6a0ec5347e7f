//! Spawned nodes never outlive the master that spawned them: SIGTERM to the
//! master stops both children (each exit logged by the master, code 0) before
//! it exits 0 itself; SIGKILL to the master leaves the kernel's parent-death
//! signal (SIGTERM) to the children, which drain, log their stop and exit on
//! their own.

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A master spawning worker-a and worker-b (one math worker each); returns the
/// master, once all three nodes run, and the children's pids.
fn start(dir: &std::path::Path) -> (NodeProcess, [u32; 2]) {
    let config = spawning_cluster(
        dir,
        "{ math: { workers: 1 } }",
        &[
            ("worker-a", "", "{ math: { workers: 1 } }"),
            ("worker-b", "", "{ math: { workers: 1 } }"),
        ],
    );
    let node = NodeProcess::start(&config, &[]);
    wait_nodes_running(&node, 3);
    let status = node.status();
    let pids = ["worker-a", "worker-b"].map(|name| {
        let pid = node_of(&status, name)["pid"].as_u64().unwrap_or(0);
        assert!(pid > 0, "node {name} has no pid in {status}");
        pid as u32
    });
    assert!(
        pids.iter().all(|&pid| process_alive(pid)),
        "{pids:?} in {status}"
    );
    (node, pids)
}

/// Polls the master's status until it lists `count` nodes, each `running`;
/// panics with the states last seen and the stderr after 20 s.
fn wait_nodes_running(node: &NodeProcess, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = node.nodes();
        if nodes.len() == count && nodes.iter().all(|(_, state)| state == "running") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 20s waiting until {count} nodes run; last seen {nodes:?}; stderr:\n{}",
            node.log()
        );
        thread::sleep(POLL);
    }
}

/// Polls `cond` every 20 ms; panics with the node's stderr after `limit`.
fn wait_until(node: &NodeProcess, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}; stderr:\n{}",
            node.log()
        );
        thread::sleep(POLL);
    }
}

/// Whether a line from `tag` ends with `message`.
fn logged_line(node: &NodeProcess, tag: &str, message: &str) -> bool {
    node.logged(|l| l.contains(tag) && l.ends_with(message))
}

#[test]
fn sigterm_to_the_master_stops_its_children_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, pids) = start(dir.path());
    let sent = Command::new("kill")
        .args(["-TERM", &node.pid()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = node.child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the master did not exit within 20s of SIGTERM; stderr:\n{}",
            node.log()
        );
        thread::sleep(POLL);
    };
    assert_eq!(
        status.code(),
        Some(0),
        "the master exited with {status}; stderr:\n{}",
        node.log()
    );
    // The master waits for its children before it exits, so they are gone now.
    for pid in pids {
        assert!(
            !process_alive(pid),
            "child {pid} outlived the master; stderr:\n{}",
            node.log()
        );
    }
    wait_until(
        &node,
        "the master logged its stop",
        Duration::from_secs(10),
        || logged_line(&node, "[master] colony::node:", "node master: stopped"),
    );
    for (name, pid) in ["worker-a", "worker-b"].into_iter().zip(pids) {
        let exit = format!("node {name}: exit (pid {pid}, code 0)");
        assert!(
            logged_line(&node, "[master] colony::messages:", &exit),
            "no `{exit}` (without a restart) from the master; stderr:\n{}",
            node.log()
        );
        assert!(
            logged_line(
                &node,
                &format!("[{name}] colony::node:"),
                &format!("node {name}: stopped")
            ),
            "{name} did not log its stop; stderr:\n{}",
            node.log()
        );
        assert_eq!(
            node.log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(&format!("node {name}: fork (pid")))
                .count(),
            1,
            "{name} was started again; stderr:\n{}",
            node.log()
        );
    }
}

#[test]
fn sigkill_to_the_master_leaves_children_that_stop_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, pids) = start(dir.path());
    node.kill9();

    wait_until(
        &node,
        "both children are gone after the master's SIGKILL",
        Duration::from_secs(20),
        || pids.iter().all(|&pid| !process_alive(pid)),
    );
    // They stopped on their own, gracefully: each logged its signal and its stop.
    for name in ["worker-a", "worker-b"] {
        let tag = format!("[{name}] colony::node:");
        let stop = format!("node {name}: stopped");
        wait_until(
            &node,
            &format!("{name} logged its stop"),
            Duration::from_secs(10),
            || logged_line(&node, &tag, &stop),
        );
        assert!(
            node.logged(|l| l.contains(&format!("[{name}] colony::cli: signal received"))),
            "{name} did not get a signal; stderr:\n{}",
            node.log()
        );
    }
    assert!(
        !node.logged(|l| l.contains("[master]") && l.contains("shutting down")),
        "the master shut down instead of dying; stderr:\n{}",
        node.log()
    );
}
