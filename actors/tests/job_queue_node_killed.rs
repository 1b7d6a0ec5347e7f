//! Three node processes, on the bridge or on NATS: the queue `chaos.jobs` (held
//! by the master on the bridge, by JetStream on NATS), two worker nodes consume
//! it. A worker node killed with SIGKILL while it holds jobs loses none of them:
//! its leased jobs are delivered again to the survivor (on the bridge at once,
//! when the master sees the node down; on NATS when their lease ends), and every
//! job pushed completes, none dead.

mod common;

use std::time::Duration;

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

/// The queue's lease on NATS, where a job held by a dead node comes back only
/// when its lease ends (JetStream's `ack_wait`): short, so the test is.
const NATS_LEASE: &str = "2s";

fn jobs_held_by_a_killed_node_are_delivered_again_and_all_complete(backbone: Backbone) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(backbone, dir.path());
    // On NATS each node serves the queues its own config declares, so every node
    // declares it, with the short lease.
    let (master_queues, worker_queues, all_complete_within) = match backbone {
        Backbone::Bridge => (
            "queues: { chaos.jobs: {} }\n".to_string(),
            String::new(),
            // poll's bound.
            Duration::from_secs(10),
        ),
        Backbone::Nats => {
            let queues = format!("queues: {{ chaos.jobs: {{ lease: {NATS_LEASE} }} }}\n");
            // About 6 s of jobs for the survivor's two workers, the jobs of the
            // dead node back after 2 s: 30 s is long past both.
            (queues.clone(), queues, Duration::from_secs(30))
        }
    };
    // The master runs no chaos: every job runs on a worker node.
    let master_cfg = net.config(
        "master",
        "master",
        "{ math: { workers: 1 } }",
        &master_queues,
    );
    let master = net.start(&master_cfg);
    let services = "{ chaos: { workers: 2, concurrency: 1 } }";
    let mut a = net.start(&net.config("worker-a", "worker", services, &worker_queues));
    let _b = net.start(&net.config("worker-b", "worker", services, &worker_queues));
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

    wait_until(&master, "every job completes", all_complete_within, || {
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
    match backbone {
        Backbone::Bridge => {
            // worker-a's two workers held at most two jobs, at least one: each failed once.
            let failures = q["failures"].as_u64().unwrap_or_default();
            assert!((1..=2).contains(&failures), "{q}");
            assert!(
                master
                    .logged(|l| l.contains("on node worker-a, which is down; delivering it again")),
                "{}",
                master.log()
            );
        }
        Backbone::Nats => {
            // No node sees another's jobs go: JetStream delivers them again
            // when their lease ends, without a failure answer. At most the two
            // jobs worker-a held could count as failed.
            let failures = q["failures"].as_u64().unwrap_or_default();
            assert!(failures <= 2, "{q}");
        }
    }
}

#[test]
fn jobs_held_by_a_killed_node_are_delivered_again_and_all_complete_on_the_bridge() {
    jobs_held_by_a_killed_node_are_delivered_again_and_all_complete(Backbone::Bridge);
}

#[test]
fn jobs_held_by_a_killed_node_are_delivered_again_and_all_complete_on_nats() {
    jobs_held_by_a_killed_node_are_delivered_again_and_all_complete(Backbone::Nats);
}
