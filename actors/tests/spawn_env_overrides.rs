//! `COLONY__…` overrides given to a spawning node are its own: its children read
//! their configs without them (an `COLONY__API__LISTEN` once made every child bind
//! the same port). The master runs with `COLONY__SERVICES__MATH__WORKERS=3`: it
//! has three math workers, its child keeps the one its config asks for. The child
//! is pinned with `cpu: auto`, which puts the first child on CPU 0 on any machine.

mod common;

use common::*;

/// The math workers of node `name` in a status.
fn math_workers(status: &serde_json::Value, name: &str) -> usize {
    node_of(status, name)["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "math")
        .and_then(|s| s["workers"].as_array())
        .map_or(0, Vec::len)
}

#[test]
fn a_parents_overrides_do_not_reach_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let config = spawning_cluster(
        dir.path(),
        "{ math: { workers: 1 } }",
        &[("worker-a", "cpu: auto", "{ math: { workers: 1 } }")],
    );
    let master = NodeProcess::start(&config, &[("COLONY__SERVICES__MATH__WORKERS", "3")]);
    let status = wait_status(&master, "the master and its child serve", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 2)
            && serving(s, "master")
            && serving(s, "worker-a")
    });
    assert_eq!(math_workers(&status, "master"), 3, "{status}");
    assert_eq!(math_workers(&status, "worker-a"), 1, "{status}");
    assert_eq!(
        node_of(&status, "worker-a")["cpus"],
        serde_json::json!([0]),
        "{status}"
    );
    assert_eq!(request_sum(&master.api), Ok(()));
    master.terminate_gracefully();
}
