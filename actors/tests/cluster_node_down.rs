//! Three node processes on one backbone, bridged on loopback or joined through
//! a nats-server of the test's own. A worker node killed with SIGKILL while it
//! holds a request: that request fails with `NodeDown` long before its own
//! timeout, the master drops the node from the cluster (on NATS it stays listed,
//! `down`), later requests go to the survivor, and the node, started again,
//! rejoins and serves. Each test runs on both backbones.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Far beyond the bounds the test waits: a request that failed only at its own
/// timeout, or a sleep that ran out, would fail the test instead of passing.
const SLEEP: &str = r#"{"ms":60000}"#;

/// A master and two worker nodes, each worker node with two chaos workers.
struct Cluster {
    _dir: tempfile::TempDir,
    /// Keeps the nats-server, on NATS, running for the test.
    _net: Net,
    master: NodeProcess,
    a: NodeProcess,
    _b: NodeProcess,
    a_cfg: std::path::PathBuf,
}

fn start_cluster(backbone: Backbone) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(backbone, dir.path());
    let master_cfg = net.config("master", "master", "{ math: { workers: 1 } }", "");
    let master = net.start(&master_cfg);
    let node_config = |name: &str, chaos: usize| {
        let services = format!("{{ chaos: {{ workers: {chaos} }}, math: {{ workers: 1 }} }}");
        net.config(name, "worker", &services, "")
    };
    let (a_cfg, b_cfg) = (node_config("worker-a", 2), node_config("worker-b", 2));
    let a = net.start(&a_cfg);
    let b = net.start(&b_cfg);
    poll("three nodes run", || {
        let nodes = master.nodes();
        nodes.len() == 3 && nodes.iter().all(|(_, state)| state == "running")
    });
    Cluster {
        _dir: dir,
        _net: net,
        master,
        a,
        _b: b,
        a_cfg,
    }
}

/// Starts two long requests through the master, which runs no chaos: the least
/// loaded node takes each, so one lands on worker-a and one on worker-b. The
/// second starts once the first is in flight, so that its node counts as loaded.
fn hold_two_sleeps(master: &NodeProcess) -> Vec<Background> {
    let held = |status: &Value, node: &str| {
        (0..2).any(|i| worker(status, &format!("{node}/chaos/{i}"))["in_flight"] == 1)
    };
    let sleep =
        || master.cli_background(&["request", "chaos", "sleep", SLEEP, "--timeout", "120s"]);
    let mut sleepers = vec![sleep()];
    poll("the first sleep is in flight", || {
        let status = master.status();
        held(&status, "worker-a") || held(&status, "worker-b")
    });
    sleepers.push(sleep());
    poll("both sleeps are in flight", || {
        let status = master.status();
        held(&status, "worker-a") && held(&status, "worker-b")
    });
    sleepers
}

/// Waits until the sleeper held by worker-a fails with `NodeDown`; the other
/// one, held by worker-b, must still run.
fn expect_node_down(sleepers: &mut [Background]) {
    let started = Instant::now();
    let mut failed = None;
    poll("the request held by worker-a fails", || {
        failed = sleepers.iter_mut().find_map(Background::try_finish);
        failed.is_some()
    });
    let failed = failed.unwrap();
    assert_eq!(failed.code(), 1, "{failed:?}");
    assert!(failed.stderr.starts_with("error: NodeDown:"), "{failed:?}");
    assert!(failed.stderr.contains("worker-a"), "{failed:?}");
    // poll gives up after 10 s; the request's own timeout is 120 s.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        sleepers
            .iter_mut()
            .filter_map(Background::try_finish)
            .count(),
        0
    );
}

/// On the bridge the master forgets worker-a; on NATS it keeps it listed,
/// `down` (a node whose connection is gone shows down), having heard no beat of
/// it for three heartbeats. Either way the next request goes to worker-b.
fn expect_dropped_then_serving_elsewhere(master: &NodeProcess, backbone: Backbone) {
    match backbone {
        Backbone::Bridge => {
            poll("the master drops worker-a", || {
                let nodes = master.nodes();
                nodes.iter().all(|(name, _)| name != "worker-a") && nodes.len() == 2
            });
            assert!(
                master.log().contains("node worker-a: down"),
                "{}",
                master.log()
            );
        }
        Backbone::Nats => {
            let expected = [
                ("master", "running"),
                ("worker-a", "down"),
                ("worker-b", "running"),
            ]
            .map(|(name, state)| (name.to_string(), state.to_string()));
            poll("the master shows worker-a down", || {
                master.nodes() == expected
            });
            let why = "no presence beat for 300ms";
            for line in [
                format!(" nats: node worker-a is down: {why}"),
                format!("colony::events: node worker-a: down ({why})"),
            ] {
                assert!(
                    master.log().contains(&line),
                    "no {line:?} in\n{}",
                    master.log()
                );
            }
        }
    }
    let out = master.cli(&["request", "chaos", "echo", r#"{"after":"down"}"#]);
    assert_eq!(
        (out.code(), out.stdout.trim()),
        (0, r#"{"after":"down"}"#),
        "{out:?}"
    );
}

fn expect_rejoined_and_serving(master: &NodeProcess) {
    poll("worker-a rejoins", || {
        let nodes = master.nodes();
        nodes.len() == 3 && nodes.iter().all(|(_, state)| state == "running")
    });
    // worker-a is now the least loaded chaos node: it takes the next requests
    // (with a free worker: a node that was only silenced still runs the orphaned
    // sleep, whose caller has long had its NodeDown).
    poll("worker-a serves again", || {
        let out = master.cli(&["request", "chaos", "echo", "{}"]);
        assert_eq!(out.code(), 0, "{out:?}");
        let status = master.status();
        (0..2).any(|i| worker(&status, &format!("worker-a/chaos/{i}"))["handled"] == 1)
    });
}

fn a_killed_node_fails_its_requests_at_once_and_rejoins_when_restarted(backbone: Backbone) {
    let Cluster {
        _dir,
        _net,
        master,
        mut a,
        _b,
        a_cfg,
    } = start_cluster(backbone);
    let mut sleepers = hold_two_sleeps(&master);
    a.kill9();
    expect_node_down(&mut sleepers);
    expect_dropped_then_serving_elsewhere(&master, backbone);
    let _a = NodeProcess::start(&a_cfg, &[]);
    expect_rejoined_and_serving(&master);
}

#[test]
fn a_killed_node_fails_its_requests_at_once_and_rejoins_when_restarted_on_the_bridge() {
    a_killed_node_fails_its_requests_at_once_and_rejoins_when_restarted(Backbone::Bridge);
}

#[test]
fn a_killed_node_fails_its_requests_at_once_and_rejoins_when_restarted_on_nats() {
    a_killed_node_fails_its_requests_at_once_and_rejoins_when_restarted(Backbone::Nats);
}

/// SIGSTOP keeps the node's sockets open but silences it: only the missing
/// heartbeats (on NATS, presence beats) tell the others it is gone. SIGCONT
/// brings it back to rejoin.
fn a_silent_node_is_declared_down_by_its_heartbeats_and_rejoins(backbone: Backbone) {
    let Cluster {
        _dir,
        _net,
        master,
        a,
        _b,
        ..
    } = start_cluster(backbone);
    let mut sleepers = hold_two_sleeps(&master);
    signal(&a, "-STOP");
    expect_node_down(&mut sleepers);
    expect_dropped_then_serving_elsewhere(&master, backbone);
    signal(&a, "-CONT");
    expect_rejoined_and_serving(&master);
}

#[test]
fn a_silent_node_is_declared_down_by_its_heartbeats_and_rejoins_on_the_bridge() {
    a_silent_node_is_declared_down_by_its_heartbeats_and_rejoins(Backbone::Bridge);
}

#[test]
fn a_silent_node_is_declared_down_by_its_heartbeats_and_rejoins_on_nats() {
    a_silent_node_is_declared_down_by_its_heartbeats_and_rejoins(Backbone::Nats);
}

fn signal(node: &NodeProcess, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([sig, &node.pid()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill {sig} failed");
}
