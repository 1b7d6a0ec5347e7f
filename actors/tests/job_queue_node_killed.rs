//! Three node processes bridged on loopback: the master holds the job queue
//! `chaos.jobs`, two worker nodes consume it. A worker node killed with SIGKILL
//! while it holds jobs loses none of them: the master delivers its leased jobs
//! again to the survivor, and every job pushed completes, none dead.

mod common;

use serde_json::Value;

use common::*;

const QUEUE: &str = "chaos.jobs";
const JOBS: u64 = 40;
const JOB: &str = r#"{"ms":300}"#;

/// The queue `chaos.jobs` as the master's `colony queues` shows it.
fn chaos_jobs(master: &NodeProcess) -> Value {
    let out = master.cli(&["queues"]);
    assert_eq!(out.code(), 0, "queues: {out:?}");
    let all: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    all["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|q| q["name"] == QUEUE)
        .cloned()
        .unwrap_or_else(|| panic!("no queue {QUEUE} in {all}"))
}

/// Whether a chaos worker of `node` holds a job now.
fn holds_a_job(master: &NodeProcess, node: &str) -> bool {
    let status = master.status();
    (0..2).any(|i| {
        worker(&status, &format!("{node}/chaos/{i}"))["in_flight"]
            .as_u64()
            .is_some_and(|n| n > 0)
    })
}

#[test]
fn jobs_held_by_a_killed_node_are_delivered_again_and_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    // The master runs no chaos: every job runs on a worker node.
    let master_cfg = write_config(
        dir.path(),
        "master.yaml",
        &(cluster_config(
            "master",
            "master",
            &secret,
            None,
            "{ math: { workers: 1 } }",
        ) + "queues: { chaos.jobs: {} }\n"),
    );
    let master = NodeProcess::start_bridged(&master_cfg, &[]);
    let join = master.bridge_addr().to_string();
    let node_config = |name: &str| {
        let services = "{ chaos: { workers: 2, concurrency: 1 } }";
        let cfg = cluster_config(name, "worker", &secret, Some(&join), services);
        write_config(dir.path(), &format!("{name}.yaml"), &cfg)
    };
    let mut a = NodeProcess::start_bridged(&node_config("worker-a"), &[]);
    let _b = NodeProcess::start_bridged(&node_config("worker-b"), &[]);
    poll("three nodes run", || {
        let nodes = master.nodes();
        nodes.len() == 3 && nodes.iter().all(|(_, state)| state == "running")
    });

    for i in 0..JOBS {
        let out = master.cli(&["push", QUEUE, JOB]);
        assert_eq!(out.code(), 0, "push {i}: {out:?}");
        let reply: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert!(reply["job"].as_u64().is_some(), "{out:?}");
    }
    // Four workers at 300 ms a job: most of the jobs still wait.
    poll("worker-a holds a job", || holds_a_job(&master, "worker-a"));
    a.kill9();

    poll("every job completes", || {
        chaos_jobs(&master)["completed"] == JOBS
    });
    let q = chaos_jobs(&master);
    assert_eq!(q["pushed"], JOBS, "{q}");
    assert_eq!(q["completed"], JOBS, "{q}");
    assert_eq!(
        (q["queued"].as_u64(), q["leased"].as_u64()),
        (Some(0), Some(0)),
        "{q}"
    );
    assert_eq!(q["dead"], Value::Array(vec![]), "{q}");
    // worker-a's two workers held at most two jobs, at least one: each failed once.
    let failures = q["failures"].as_u64().unwrap_or_default();
    assert!((1..=2).contains(&failures), "{q}");
    assert!(
        master.logged(|l| l.contains("on node worker-a, which is down; delivering it again")),
        "{}",
        master.log()
    );
}
