//! `colony reload` of a master's spawned nodes while four threads keep sending
//! `math sum` requests through the master: not one request fails, each child is
//! replaced by a new process (old one drained with exit code 0 and gone, new one
//! online and serving), and the children are reloaded one at a time. A reload
//! with a broken config, or of a node the master does not spawn, is refused and
//! leaves the running process alone.

mod common;

use std::time::Duration;

use common::*;

const CHILD_SERVICES: &str = "{ math: { workers: 1 }, chaos: { workers: 1 } }";
/// The tag of the master's spawner lines.
const MESSAGES: &str = "[master] colony::events:";

/// A master (one math worker, round robin) spawning worker-a and worker-b, each
/// with a math and a chaos worker; returns once all three nodes run.
fn start(dir: &std::path::Path) -> NodeProcess {
    let config = spawning_cluster(
        dir,
        "{ math: { workers: 1, routing: round_robin } }",
        &[
            ("worker-a", "", CHILD_SERVICES),
            ("worker-b", "", CHILD_SERVICES),
        ],
    );
    let node = NodeProcess::start(&config, &[]);
    wait_nodes_running(&node, 3);
    node.wait_all_running();
    node
}

#[test]
fn reload_under_load_fails_no_request_and_replaces_each_child_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let before = node.status();
    let old_a = pid_of(&before, "worker-a");
    let old_b = pid_of(&before, "worker-b");

    let load = Load::start(&node.api, 4, Duration::from_millis(2));
    wait_until(
        &node,
        "50 requests succeeded",
        Duration::from_secs(20),
        || load.ok() >= 50,
    );
    let at_reload = load.ok();
    let reload = node.cli(&["reload"]);
    assert_eq!(
        reload.code(),
        0,
        "reload: {reload:?}; stderr:\n{}",
        node.log()
    );
    assert_eq!(
        reload.stdout.trim(),
        "reloaded worker-a, worker-b",
        "{reload:?}"
    );
    let after_reload = load.ok();
    eprintln!("requests ok: {at_reload} when the reload started, {after_reload} when it returned");
    wait_until(
        &node,
        "50 more requests succeeded after the reload",
        Duration::from_secs(20),
        || load.ok() >= after_reload + 50,
    );
    // Still under load: the new processes take their share of it.
    wait_until(
        &node,
        "the new processes' math workers served requests",
        Duration::from_secs(10),
        || {
            let status = node.status();
            ["worker-a", "worker-b"].iter().all(|n| {
                worker(&status, &format!("{n}/math/0"))["handled"]
                    .as_u64()
                    .is_some_and(|h| h > 0)
            })
        },
    );
    let ok = load.ok();
    let (failed, failures) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} requests failed around the reload ({ok} succeeded); first failures:\n{}\nstderr:\n{}",
        failures.join("\n"),
        node.log()
    );

    let status = node.status();
    let new_a = pid_of(&status, "worker-a");
    let new_b = pid_of(&status, "worker-b");
    assert_ne!(new_a, old_a, "worker-a kept its pid: {status}");
    assert_ne!(new_b, old_b, "worker-b kept its pid: {status}");
    for name in ["worker-a", "worker-b"] {
        let entry = node_of(&status, name);
        assert_eq!(entry["restarts"], 1, "{name}: {entry}");
        assert_eq!(entry["state"], "running", "{name}: {entry}");
    }
    wait_until(
        &node,
        "the old processes are gone",
        Duration::from_secs(10),
        || !process_alive(old_a) && !process_alive(old_b),
    );
    assert!(process_alive(new_a) && process_alive(new_b));

    // The master's account: each old process exited 0 with no restart
    // scheduled, then the replacement forked and came online; worker-a was
    // online again before worker-b's old process was stopped.
    let lines = node.log.lock().unwrap().clone();
    let log = lines.join("\n");
    let mut online_a = 0;
    for (name, old, new) in [("worker-a", old_a, new_a), ("worker-b", old_b, new_b)] {
        let exit = find_line(
            &lines,
            MESSAGES,
            &format!("node {name}: exit (pid {old}, code 0)"),
        )
        .unwrap_or_else(|| panic!("no exit line for {name}'s pid {old}:\n{log}"));
        assert!(
            !log.contains(&format!(
                "node {name}: exit (pid {old}, code 0); restart in"
            )),
            "{name}'s reload went through the crash restart:\n{log}"
        );
        let fork = find_line(&lines, MESSAGES, &format!("node {name}: fork (pid {new})"))
            .unwrap_or_else(|| panic!("no fork line for {name}'s pid {new}:\n{log}"));
        let online = find_line(
            &lines,
            MESSAGES,
            &format!("node {name}: online (pid {new})"),
        )
        .unwrap_or_else(|| panic!("no online line for {name}'s pid {new}:\n{log}"));
        assert!(
            exit < fork && fork < online,
            "{name}: exit at line {exit}, fork at {fork}, online at {online}:\n{log}"
        );
        if name == "worker-a" {
            online_a = online;
        } else {
            assert!(
                online_a < exit,
                "worker-b's old process exited (line {exit}) before worker-a was online \
                 again (line {online_a}): not one at a time:\n{log}"
            );
        }
    }
}

#[test]
fn reload_with_a_broken_config_or_an_unknown_node_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let before = node.status();
    let pid_b = pid_of(&before, "worker-b");

    let config = dir.path().join("worker-b.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}bogus_key: 1\n")).unwrap();
    let out = node.cli(&["reload", "worker-b"]);
    assert_eq!(out.code(), 1, "reload with a broken config: {out:?}");
    assert!(
        out.stderr.contains("error: BadRequest:") && out.stderr.contains("bogus_key"),
        "{out:?}"
    );
    assert!(out.stdout.trim().is_empty(), "{out:?}");

    let out = node.cli(&["reload", "nosuch"]);
    assert_eq!(out.code(), 1, "reload of an unknown node: {out:?}");
    assert!(
        out.stderr.contains("error: BadRequest:")
            && out.stderr.contains("nosuch")
            && out.stderr.contains("worker-a, worker-b"),
        "{out:?}"
    );

    let status = node.status();
    let entry = node_of(&status, "worker-b");
    assert_eq!(entry["pid"], pid_b, "worker-b was replaced: {status}");
    assert_eq!(entry["restarts"], 0, "{status}");
    assert_eq!(entry["state"], "running", "{status}");
    assert!(process_alive(pid_b), "worker-b's process is gone");
    assert_eq!(
        pid_of(&status, "worker-a"),
        pid_of(&before, "worker-a"),
        "worker-a was replaced: {status}"
    );
    assert!(
        !node.logged(|l| l.contains("node worker-b: exit") || l.contains("node worker-a: exit")),
        "a child exited:\n{}",
        node.log()
    );
    // Still serving.
    request_sum(&node.api).unwrap_or_else(|e| {
        panic!(
            "request after the refused reloads: {e}; stderr:\n{}",
            node.log()
        )
    });
}
