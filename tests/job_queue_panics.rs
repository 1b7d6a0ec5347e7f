//! Job queues when handlers panic: a job whose handler panics is delivered again
//! and completes exactly once, a job that always panics goes to the dead letters
//! after `max_attempts` deliveries with a `JobDead` event, workers that are not
//! online take nothing (jobs pushed before the consuming node joins wait, then
//! every worker gets a share), and a push beyond the queue's capacity is
//! `Overloaded` — on a node alone and across a master + worker pair, on the
//! bridge and on NATS (where the queues are JetStream streams that only the
//! master's config declares, and the `JobDead` event is published by the node
//! whose worker failed the job the last time).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use colony::{
    App, ErrorKind, LifecycleEvent, Node, NodeConfig, QueueStatus, Request, ServiceError,
    WorkerContext,
};
use common::*;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

const QUEUE: &str = "jobs";
/// Normal jobs pushed per run; every third panics on its first delivery.
const JOBS: u64 = 30;
/// The number of the job that panics on every delivery.
const POISON: u64 = 999;
const MAX_ATTEMPTS: u32 = 3;

/// What the consumers saw, shared with the test through the factory closure.
#[derive(Default)]
struct Seen {
    /// Deliveries that reached a handler, per job number.
    attempts: Mutex<HashMap<u64, u32>>,
    /// Completions by a handler, per job number.
    completed: Mutex<HashMap<u64, u32>>,
    /// Completions per worker id.
    by_worker: Mutex<HashMap<String, usize>>,
    /// Workers that have started a job.
    started: Mutex<HashSet<String>>,
}

/// A job of queue `jobs`.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<u64, ServiceError>")]
struct Job {
    n: u64,
    /// Panics on every delivery.
    #[serde(default)]
    poison: bool,
    /// Waits (up to 5 s) until two distinct workers have started a job.
    #[serde(default)]
    gate: bool,
}

impl Request for Job {
    const SUBJECT: &'static str = "job";
}

struct Consumer {
    id: String,
    seen: Arc<Seen>,
}

impl Actor for Consumer {
    type Context = Context<Self>;
}

impl Handler<Job> for Consumer {
    type Result = ResponseFuture<Result<u64, ServiceError>>;

    fn handle(&mut self, job: Job, _: &mut Context<Self>) -> Self::Result {
        let attempt = {
            let mut attempts = self.seen.attempts.lock();
            let a = attempts.entry(job.n).or_default();
            *a += 1;
            *a
        };
        self.seen.started.lock().insert(self.id.clone());
        if job.poison {
            panic!("job {} is poison (delivery {attempt})", job.n);
        }
        if job.n.is_multiple_of(3) && attempt == 1 {
            panic!("job {} panics on its first delivery", job.n);
        }
        let seen = self.seen.clone();
        let id = self.id.clone();
        Box::pin(async move {
            if job.gate {
                // A worker that took every job ahead would leave the other idle:
                // the gate would never open and the job fails.
                let deadline = Instant::now() + Duration::from_secs(5);
                while seen.started.lock().len() < 2 {
                    if Instant::now() > deadline {
                        return Err(ServiceError::application(
                            "only one worker ever started a job",
                            serde_json::json!({ "job": job.n }),
                        ));
                    }
                    actix_rt::time::sleep(Duration::from_millis(2)).await;
                }
            }
            *seen.completed.lock().entry(job.n).or_default() += 1;
            *seen.by_worker.lock().entry(id).or_default() += 1;
            Ok(job.n)
        })
    }
}

fn app(seen: &Arc<Seen>) -> App {
    let seen = seen.clone();
    App::new()
        .service("consumer", move |ctx: WorkerContext| Consumer {
            id: ctx.id.to_string(),
            seen: seen.clone(),
        })
        .consumes::<Job>(QUEUE)
        .into()
}

async fn start(yaml: &str, seen: &Arc<Seen>) -> Node {
    let mut config = NodeConfig::parse(Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(app(seen), config).await.expect("node starts")
}

/// Two consumer workers that may panic often without failing the service.
const CONSUMERS: &str = "services: { consumer: { workers: 2, concurrency: 1, \
     restart: { max_restarts: 1000, within: 10s, backoff: { min: 1ms, max: 5ms } } } }\n";

fn queues_yaml() -> String {
    format!(
        "queues: {{ {QUEUE}: {{ max_attempts: {MAX_ATTEMPTS} }}, backlog: {{ capacity: 3 }} }}\n"
    )
}

async fn queue(node: &Node, name: &str) -> QueueStatus {
    node.queues()
        .await
        .expect("queues")
        .into_iter()
        .find(|q| q.name == name)
        .unwrap_or_else(|| panic!("no queue {name}"))
}

/// Waits until every pushed job is completed or dead.
async fn settled(node: &Node, pushed: u64) -> QueueStatus {
    wait_until(
        "every job is completed or dead",
        Duration::from_secs(20),
        || async {
            let q = queue(node, QUEUE).await;
            q.completed + q.dead.len() as u64 == pushed
        },
    )
    .await;
    queue(node, QUEUE).await
}

/// Pushes the poison job and the normal ones through `via`; returns the poison's id.
async fn push_all(via: &Node) -> u64 {
    let poison = via
        .push(
            QUEUE,
            &Job {
                n: POISON,
                poison: true,
                gate: false,
            },
        )
        .await
        .expect("push poison");
    for n in 1..=JOBS {
        via.push(
            QUEUE,
            &Job {
                n,
                poison: false,
                gate: false,
            },
        )
        .await
        .expect("push");
    }
    poison
}

/// The queue and the handlers' counts after every job settled.
async fn check_outcome(
    holder: &Node,
    status: QueueStatus,
    seen: &Seen,
    poison: u64,
    events: &Events,
) {
    assert_eq!(status.pushed, JOBS + 1, "{status:?}");
    assert_eq!(status.completed, JOBS, "{status:?}");
    assert_eq!((status.queued, status.leased), (0, 0), "{status:?}");
    // Ten jobs fail once, the poison three times; nothing else fails.
    assert_eq!(
        status.failures,
        JOBS / 3 + u64::from(MAX_ATTEMPTS),
        "{status:?}"
    );
    assert_eq!(status.dead.len(), 1, "{status:?}");
    let dead = &status.dead[0];
    assert_eq!(dead.id, poison);
    assert_eq!(dead.job["n"], POISON);
    assert_eq!(dead.job["poison"], true);
    assert_eq!(dead.attempts, MAX_ATTEMPTS);
    assert_eq!(
        dead.error.kind,
        ErrorKind::HandlerPanicked,
        "{:?}",
        dead.error
    );

    let completed = seen.completed.lock().clone();
    let expected: HashMap<u64, u32> = (1..=JOBS).map(|n| (n, 1)).collect();
    assert_eq!(completed, expected, "each job completes exactly once");
    let attempts = seen.attempts.lock().clone();
    for n in 1..=JOBS {
        let want = if n % 3 == 0 { 2 } else { 1 };
        assert_eq!(attempts.get(&n), Some(&want), "deliveries of job {n}");
    }
    assert_eq!(attempts.get(&POISON), Some(&MAX_ATTEMPTS));

    let is_dead = |e: &LifecycleEvent| {
        matches!(e, LifecycleEvent::JobDead { queue, job, attempts, .. }
            if queue == QUEUE && *job == poison && *attempts == MAX_ATTEMPTS)
    };
    wait_until(
        "the JobDead event arrives",
        Duration::from_secs(5),
        || async { events.count(is_dead) == 1 },
    )
    .await;
    assert_eq!(
        events.count(|e| matches!(e, LifecycleEvent::JobDead { .. })),
        1
    );
    // Nothing runs late: a second look shows the same counts.
    let again = queue(holder, QUEUE).await;
    assert_eq!(
        (again.completed, again.failures, again.dead.len()),
        (JOBS, status.failures, 1),
        "{again:?}"
    );
}

#[actix_rt::test]
async fn a_node_alone_retries_panicked_jobs_and_buries_the_poison() {
    let seen = Arc::new(Seen::default());
    let node = start(
        &format!(
            "node: {{ name: solo, threads: 2 }}\n{CONSUMERS}{}",
            queues_yaml()
        ),
        &seen,
    )
    .await;
    let events = Events::subscribe(&node).await;
    let poison = push_all(&node).await;
    let status = settled(&node, JOBS + 1).await;
    check_outcome(&node, status, &seen, poison, &events).await;
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_worker_node_consumes_the_masters_queue_through_panics() {
    consumes_through_panics(Net::bridge()).await;
}

#[actix_rt::test]
async fn a_worker_node_consumes_the_masters_queue_through_panics_over_nats() {
    consumes_through_panics(Net::nats()).await;
}

async fn consumes_through_panics(net: Net) {
    let seen = Arc::new(Seen::default());
    let master = start(
        &format!(
            "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{}}\n{}",
            net.yaml(None),
            queues_yaml()
        ),
        &seen,
    )
    .await;
    let master_events = Events::subscribe(&master).await;
    let worker = start(
        &format!(
            "node: {{ name: w, role: worker, threads: 2 }}\n{}{CONSUMERS}",
            net.yaml(Some(&master))
        ),
        &seen,
    )
    .await;
    // The master buries on the bridge; on NATS the node whose worker failed the
    // job's last delivery does.
    let events = match net {
        Net::Bridge(_) => master_events,
        Net::Nats(_) => Events::subscribe(&worker).await,
    };
    cluster_of(&master, 2).await;
    cluster_of(&worker, 2).await;

    // Pushed through the worker node, whose config declares no queue.
    let poison = push_all(&worker).await;
    let status = settled(&master, JOBS + 1).await;
    assert_eq!(queue(&worker, QUEUE).await.completed, JOBS);
    check_outcome(&master, status, &seen, poison, &events).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn jobs_wait_for_workers_and_every_worker_gets_a_share() {
    jobs_wait_for_workers(Net::bridge()).await;
}

#[actix_rt::test]
async fn jobs_wait_for_workers_and_every_worker_gets_a_share_over_nats() {
    jobs_wait_for_workers(Net::nats()).await;
}

async fn jobs_wait_for_workers(net: Net) {
    const GATED: u64 = 20;
    let seen = Arc::new(Seen::default());
    let master = start(
        &format!(
            "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{}}\n{}",
            net.yaml(None),
            queues_yaml()
        ),
        &seen,
    )
    .await;
    for n in 1..=GATED {
        // Numbers not divisible by 3: none of these panics.
        let n = n * 3 + 1;
        master
            .push(
                QUEUE,
                &Job {
                    n,
                    poison: false,
                    gate: true,
                },
            )
            .await
            .expect("push");
    }
    // No consumer anywhere: the jobs wait, none is leased.
    let before = queue(&master, QUEUE).await;
    assert_eq!(
        (
            before.queued,
            before.leased,
            before.ready_workers,
            before.completed
        ),
        (GATED as usize, 0, 0, 0),
        "{before:?}"
    );
    assert!(seen.attempts.lock().is_empty());

    let worker = start(
        &format!(
            "node: {{ name: w, role: worker, threads: 2 }}\n{}{CONSUMERS}",
            net.yaml(Some(&master))
        ),
        &seen,
    )
    .await;
    wait_until("every job completes", Duration::from_secs(20), || async {
        queue(&master, QUEUE).await.completed == GATED
    })
    .await;
    let after = queue(&master, QUEUE).await;
    assert_eq!(
        (after.queued, after.leased, after.failures, after.dead.len()),
        (0, 0, 0, 0),
        "{after:?}"
    );
    let completed = seen.completed.lock().clone();
    assert_eq!(completed.len(), GATED as usize);
    assert!(completed.values().all(|&c| c == 1), "{completed:?}");
    let by_worker = seen.by_worker.lock().clone();
    let mut workers: Vec<&String> = by_worker.keys().collect();
    workers.sort();
    assert_eq!(
        workers,
        vec!["w/consumer/0", "w/consumer/1"],
        "{by_worker:?}"
    );
    assert!(by_worker.values().all(|&c| c >= 1), "{by_worker:?}");
    assert_eq!(by_worker.values().sum::<usize>(), GATED as usize);
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_push_beyond_the_capacity_is_overloaded() {
    push_beyond_capacity(Net::bridge()).await;
}

#[actix_rt::test]
async fn a_push_beyond_the_capacity_is_overloaded_over_nats() {
    push_beyond_capacity(Net::nats()).await;
}

async fn push_beyond_capacity(net: Net) {
    let seen = Arc::new(Seen::default());
    let master = start(
        &format!(
            "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{}}\n{}",
            net.yaml(None),
            queues_yaml()
        ),
        &seen,
    )
    .await;
    let worker = start(
        &format!(
            "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{}}\n",
            net.yaml(Some(&master))
        ),
        &seen,
    )
    .await;
    cluster_of(&worker, 2).await;

    // `backlog` has no consumer and a capacity of 3.
    for i in 0..3 {
        master.push("backlog", &i).await.expect("within capacity");
    }
    let err = master.push("backlog", &3).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded, "{err:?}");
    // The same from the other node.
    let err = worker.push("backlog", &4).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded, "{err:?}");
    let backlog = queue(&worker, "backlog").await;
    assert_eq!(
        (backlog.queued, backlog.leased, backlog.pushed),
        (3, 0, 3),
        "{backlog:?}"
    );
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
