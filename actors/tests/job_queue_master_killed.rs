//! Three node processes bridged on loopback, the cluster state durable (the
//! default): the master holds the job queue `chaos.jobs`, two worker nodes
//! consume it, and 5,000 jobs are pushed through the worker nodes' APIs while
//! the master is SIGKILLed twice and started again on the same state directory.
//! Every job whose push was answered completes, `completed` equals the jobs the
//! master counts as pushed, no job is dead or left, and no job id repeats.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const QUEUE: &str = "chaos.jobs";
const JOBS: usize = 5_000;
/// The pushes answered when the master is killed the first and second time.
const KILLS: [usize; 2] = [1_500, 3_200];

/// A loopback port free now, for a bridge that must come back on the same address.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Pushes one job through `api`; its id when the push was answered 202.
fn push(agent: &ureq::Agent, api: &str, n: usize) -> Option<u64> {
    let mut response = agent
        .post(format!("{api}/v1/push/{QUEUE}"))
        .header("Content-Type", "application/json")
        .send(format!(r#"{{"ms":{}}}"#, 10 + n % 3 * 10))
        .ok()?;
    if response.status() != 202 {
        return None;
    }
    let body: Value = response.body_mut().read_json().ok()?;
    body["job"].as_u64()
}

/// The queue as the master's API shows it, if the master answers.
fn queue(agent: &ureq::Agent, api: &str) -> Option<Value> {
    let mut response = agent.get(format!("{api}/v1/queues")).call().ok()?;
    let all: Value = response.body_mut().read_json().ok()?;
    all["queues"]
        .as_array()?
        .iter()
        .find(|q| q["name"] == QUEUE)
        .cloned()
}

#[test]
fn every_answered_push_completes_once_across_two_master_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let bridge = format!("127.0.0.1:{}", free_port());
    let master_yaml = cluster_config(
        "master",
        "master",
        &secret,
        None,
        "{ math: { workers: 1 } }",
    )
    .replace(
        "bridge: { listen: 127.0.0.1:0",
        &format!("bridge: {{ listen: {bridge}"),
    ) + "queues: { chaos.jobs: {} }\n";
    let master_cfg = write_config(dir.path(), "master.yaml", &master_yaml);
    let mut master = NodeProcess::start_bridged(&master_cfg, &[]);
    assert_eq!(master.bridge_addr(), bridge);
    let workers: Vec<NodeProcess> = ["worker-a", "worker-b"]
        .iter()
        .map(|name| {
            let services = "{ chaos: { workers: 2, concurrency: 4 } }";
            let cfg = cluster_config(name, "worker", &secret, Some(&bridge), services);
            NodeProcess::start(
                &write_config(dir.path(), &format!("{name}.yaml"), &cfg),
                &[],
            )
        })
        .collect();
    wait_nodes_running(&master, 3);

    // One pusher per worker node, each through its own node's API.
    let answered = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let pushers: Vec<_> = workers
        .iter()
        .map(|w| {
            let (api, answered, ids, done) =
                (w.api.clone(), answered.clone(), ids.clone(), done.clone());
            thread::spawn(move || {
                let agent = agent();
                let mut n = 0;
                while !done.load(Ordering::SeqCst) {
                    n += 1;
                    match push(&agent, &api, n) {
                        Some(id) => {
                            ids.lock().unwrap().push(id);
                            if answered.fetch_add(1, Ordering::SeqCst) + 1 >= JOBS {
                                done.store(true, Ordering::SeqCst);
                            }
                        }
                        // The master is down: the push was not answered; try again.
                        None => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();

    let mut recovered = 0;
    for at in KILLS {
        let deadline = Instant::now() + Duration::from_secs(120);
        while answered.load(Ordering::SeqCst) < at {
            assert!(Instant::now() < deadline, "pushes stalled at {answered:?}");
            thread::sleep(Duration::from_millis(2));
        }
        master.kill9();
        master = NodeProcess::start_bridged(&master_cfg, &[]);
        if master.logged(|l| l.contains("jobs recovered from disk")) {
            recovered += 1;
        }
    }
    // Jobs take 10 to 30 ms on 16 workers while two pushers keep pushing: the
    // queue is never empty when the master dies.
    assert!(
        recovered > 0,
        "no restart recovered a job; stderr:\n{}",
        master.log()
    );
    for pusher in pushers {
        pusher.join().expect("pusher thread");
    }

    let agent = agent();
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(q) = queue(&agent, &master.api) {
            let settled = q["queued"] == 0 && q["leased"] == 0 && q["pushed"] == q["completed"];
            last = q;
            if settled {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the queue did not drain: {last}");
        thread::sleep(Duration::from_millis(50));
    }

    let ids = ids.lock().unwrap().clone();
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert!(ids.len() >= JOBS, "{} pushes answered", ids.len());
    assert_eq!(unique.len(), ids.len(), "a job id was handed out twice");
    let pushed = last["pushed"].as_u64().unwrap();
    // A push committed just before a kill counts as pushed though its answer was lost.
    assert!(pushed >= ids.len() as u64, "{last}");
    assert_eq!(last["completed"].as_u64(), Some(pushed), "{last}");
    assert_eq!(last["dead"], Value::Array(vec![]), "{last}");
}
