//! Spawned nodes never outlive the master that spawned them: SIGTERM to the
//! master stops both children (each exit logged by the master, code 0) before
//! it exits 0 itself; SIGKILL to the master leaves the kernel's parent-death
//! signal (SIGTERM) to the children, which drain, log their stop and exit on
//! their own.

mod common;

use std::time::Duration;

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
    let pids = ["worker-a", "worker-b"].map(|name| pid_of(&status, name));
    assert!(
        pids.iter().all(|&pid| process_alive(pid)),
        "{pids:?} in {status}"
    );
    (node, pids)
}

#[test]
fn sigterm_to_the_master_stops_its_children_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, pids) = start(dir.path());
    send_signal(node.child.0.id(), "TERM");
    node.wait_clean_exit(Duration::from_secs(20));
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
        || line_of(&node, "[master] colony::node:", "node master: stopped").is_some(),
    );
    for (name, pid) in ["worker-a", "worker-b"].into_iter().zip(pids) {
        let exit = format!("node {name}: exit (pid {pid}, code 0)");
        assert!(
            line_of(&node, "[master] colony::events:", &exit).is_some(),
            "no `{exit}` (without a restart) from the master; stderr:\n{}",
            node.log()
        );
        assert!(
            line_of(
                &node,
                &format!("[{name}] colony::node:"),
                &format!("node {name}: stopped")
            )
            .is_some(),
            "{name} did not log its stop; stderr:\n{}",
            node.log()
        );
        assert_eq!(
            node.count_logged(|l| l.contains(&format!("node {name}: fork (pid"))),
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
            || line_of(&node, &tag, &stop).is_some(),
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
