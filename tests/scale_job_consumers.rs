//! Scaling a service that consumes a job queue: the workers a scale-up adds
//! take jobs too, those a scale-down removes take none after it, and every
//! job runs exactly once, none counted as a failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::{App, Node, NodeConfig, Request, ServiceError, WorkerContext};
use common::wait_until;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<u64, ServiceError>")]
struct Job {
    n: u64,
}
impl Request for Job {
    const SUBJECT: &'static str = "job";
}

/// Each job run: its number and the worker that ran it.
type Runs = Arc<Mutex<Vec<(u64, String)>>>;

struct Consumer {
    id: String,
    runs: Runs,
}

impl Actor for Consumer {
    type Context = Context<Self>;
}

impl Handler<Job> for Consumer {
    type Result = ResponseActFuture<Self, Result<u64, ServiceError>>;
    fn handle(&mut self, job: Job, _: &mut Context<Self>) -> Self::Result {
        // Long enough that the other workers' take loops get the next jobs.
        let nap = actix_rt::time::sleep(Duration::from_millis(2));
        Box::pin(
            actix::fut::wrap_future::<_, Self>(nap).map(move |(), act, _| {
                act.runs.lock().push((job.n, act.id.clone()));
                Ok(job.n)
            }),
        )
    }
}

async fn start(runs: &Runs) -> Node {
    let runs = runs.clone();
    let app: App = App::new()
        .service("consumer", move |ctx: WorkerContext| Consumer {
            id: ctx.id.to_string(),
            runs: runs.clone(),
        })
        .consumes::<Job>("jobs")
        .into();
    let yaml = "node: { name: jobs, role: master, threads: 2 }\n\
                services: { consumer: { workers: 1, concurrency: 1 } }\n\
                queues: { jobs: { max_attempts: 1 } }\n";
    let mut config = NodeConfig::parse(Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(app, config).await.expect("node starts")
}

/// Pushes jobs `from..to` and waits until each has run; the workers that ran
/// them, with how many each.
async fn run_jobs(node: &Node, runs: &Runs, from: u64, to: u64) -> BTreeMap<String, usize> {
    for n in from..to {
        node.push("jobs", &Job { n }).await.expect("push");
    }
    wait_until("every job ran", DEADLINE, || async {
        runs.lock()
            .iter()
            .filter(|(n, _)| (from..to).contains(n))
            .count()
            == (to - from) as usize
    })
    .await;
    let mut by = BTreeMap::new();
    for (_, worker) in runs.lock().iter().filter(|(n, _)| (from..to).contains(n)) {
        *by.entry(worker.clone()).or_default() += 1;
    }
    by
}

#[actix_rt::test]
async fn added_workers_take_jobs_and_removed_ones_take_none() {
    let runs = Runs::default();
    let node = start(&runs).await;

    let by = run_jobs(&node, &runs, 0, 20).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["jobs/consumer/0"]);

    node.scale("consumer", 3, None).await.expect("scale up");
    let by = run_jobs(&node, &runs, 20, 120).await;
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ["jobs/consumer/0", "jobs/consumer/1", "jobs/consumer/2"],
        "the new workers take jobs: {by:?}"
    );

    node.scale("consumer", 1, None).await.expect("scale down");
    let by = run_jobs(&node, &runs, 120, 160).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["jobs/consumer/0"], "{by:?}");

    // Each job ran once; none failed, none is dead (one attempt each).
    let mut all: Vec<u64> = runs.lock().iter().map(|(n, _)| *n).collect();
    all.sort_unstable();
    assert_eq!(all, (0..160).collect::<Vec<_>>());
    let queues = node.queues().await.expect("queues");
    let jobs = queues.iter().find(|q| q.name == "jobs").expect("the queue");
    assert_eq!((jobs.completed, jobs.failures), (160, 0), "{jobs:?}");
    assert!(jobs.dead.is_empty(), "{jobs:?}");
    node.shutdown(Duration::from_millis(200)).await;
}
