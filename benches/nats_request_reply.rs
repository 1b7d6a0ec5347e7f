//! Request/reply across two colony nodes over NATS, against raw `async-nats`
//! request/reply of the same bytes (the floor) and against the same two nodes over
//! the bridge, all measured in one process and one run: sequential latency (p50,
//! p99) and pipelined throughput with 64 round trips in flight; then the job queue
//! over both backbones. Prints the best and the median of each figure over the
//! rounds, the ratios, and whether the target holds (colony over NATS at 0.8× or
//! more of raw async-nats pipelined throughput). It never fails on timing.
//!
//! The bench starts its own nats-server (`bash scripts/nats-server.sh` finds or
//! installs it) with JetStream on a free port and its store in a temporary
//! directory, and kills it at the end.
//!
//! - **raw-nats** (the floor): a responder client on its own arbiter thread
//!   subscribes to `bench.echo` and publishes each message back to its reply
//!   subject; a requester client on the System thread calls `client.request`. The
//!   payload is as long as colony's request payload for the same `Ping` (its binary
//!   head and the JSON).
//! - **colony-nats**: node `a` (master, started on its own arbiter thread, where its
//!   NATS client and tasks run) runs the `bench` service; node `b` (worker, on the
//!   System thread) runs none, so `b.request("bench", Ping { n })` goes to
//!   `colony.node.a.req` with a reply to `b`'s inbox: `b`'s outbox task, the
//!   server, `a`'s request task, the dealer, `a`'s worker thread, and the answer
//!   back through the server to `b`'s answer task.
//! - **colony-bridge**: the same two nodes over the bridge (a shared secret file),
//!   as in `bridge_request_reply`.
//! - **job queue**: `a` holds `bench.jobs` (on the bridge it keeps the queue in
//!   memory; on NATS the queue is a JetStream work-queue stream that every node
//!   declares); the `consumer` service on `b` (2 workers × concurrency 16) runs
//!   [`JOBS`] jobs pushed by `a`, 64 pushes in flight. The figure is jobs run per
//!   second, first push to last run. Should a push over NATS fail, the bench prints
//!   "over NATS: not measured" with the error instead of a figure.
//!
//! Run: `cargo bench --bench nats_request_reply`.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use colony::{App, Node, NodeConfig, Request, ServiceError};
use common::*;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Workers of the `bench` service on node `a`.
const WORKERS: usize = 1;
/// Rounds here: an odd number, so the median is one round's figure.
const RUNS: usize = 5;
/// Jobs pushed per job-queue round.
const JOBS: u64 = 20_000;
/// Target: colony over NATS at least this share of raw async-nats, pipelined.
const TARGET: f64 = 0.8;
/// The raw responder's subject.
const ECHO_SUBJECT: &str = "bench.echo";

/// The length of colony's NATS request payload for `Ping { n }` to `bench` from
/// node `b`: version (1), timeout (4), worker (4), then service, subject and
/// sender as `u16`-prefixed strings, then the JSON (see `src/nats/wire.rs`).
fn colony_payload_len(n: u64) -> usize {
    let json = serde_json::to_vec(&Ping { n }).expect("ping is JSON");
    1 + 4 + 4 + (2 + "bench".len()) + (2 + Ping::SUBJECT.len()) + (2 + "b".len()) + json.len()
}

// ---------------------------------------------------------------------------
// The nats-server.

/// A nats-server with JetStream on a free port, killed when dropped.
struct NatsServer {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> NatsServer {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/nats-server.sh"))
            .current_dir(&root)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/nats-server.sh");
        assert!(out.status.success(), "scripts/nats-server.sh failed");
        let bin = String::from_utf8(out.stdout).expect("a path");
        let bin = bin.trim();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store = tempfile::tempdir().expect("a store directory");
        let child = Command::new(bin)
            .args(["-js", "-p", &port.to_string(), "-a", "127.0.0.1", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        let server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The floor: raw async-nats request/reply.

/// Starts the echoing responder on `arbiter`; returns once it is subscribed.
async fn start_responder(arbiter: &actix_rt::ArbiterHandle, url: String) {
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        let client = async_nats::connect(url).await.expect("responder connects");
        let mut echo = client
            .subscribe(ECHO_SUBJECT)
            .await
            .expect("responder subscribes");
        client.flush().await.expect("responder flushes");
        let _ = ready.send(());
        while let Some(message) = echo.next().await {
            if let Some(reply) = message.reply {
                if client.publish(reply, message.payload).await.is_err() {
                    return;
                }
            }
        }
    });
    subscribed.await.expect("responder starts");
}

/// One raw round trip.
async fn raw_call(client: &async_nats::Client, payload: &Bytes) {
    let reply = client
        .request(ECHO_SUBJECT, payload.clone())
        .await
        .expect("raw round trip");
    assert_eq!(reply.payload.len(), payload.len());
}

async fn raw_measure(client: &async_nats::Client, payload: &Bytes) -> Figures {
    for _ in 0..2_000 {
        raw_call(client, payload).await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let start = Instant::now();
        raw_call(client, payload).await;
        samples.push(start.elapsed());
    }
    let (p50, p99) = percentiles(samples);
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut done) = (0, 0);
    while done < PIPELINED {
        while in_flight.len() < IN_FLIGHT && sent < PIPELINED {
            in_flight.push(raw_call(client, payload));
            sent += 1;
        }
        if in_flight.next().await.is_some() {
            done += 1;
        }
    }
    let per_sec = PIPELINED as f64 / start.elapsed().as_secs_f64();
    Figures { p50, p99, per_sec }
}

// ---------------------------------------------------------------------------
// colony: `b.request("bench", Ping)` to node `a`.

async fn call(node: &Node, n: u64) -> u64 {
    match node.request("bench", Ping { n }).await {
        Ok(pong) => pong.n,
        Err(e) => panic!("colony round trip failed: {e}"),
    }
}

async fn colony_measure(node: &Node) -> Figures {
    for n in 0..2_000 {
        call(node, n).await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for n in 0..SEQUENTIAL as u64 {
        let start = Instant::now();
        assert_eq!(call(node, n).await, n);
        samples.push(start.elapsed());
    }
    let (p50, p99) = percentiles(samples);
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut done) = (0u64, 0usize);
    while done < PIPELINED {
        while in_flight.len() < IN_FLIGHT && (sent as usize) < PIPELINED {
            let n = sent;
            in_flight.push(async move { (n, call(node, n).await) });
            sent += 1;
        }
        if let Some((n, back)) = in_flight.next().await {
            assert_eq!(n, back);
            done += 1;
        }
    }
    let per_sec = PIPELINED as f64 / start.elapsed().as_secs_f64();
    Figures { p50, p99, per_sec }
}

// ---------------------------------------------------------------------------
// The job queue.

/// A job.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
struct Job {
    n: u64,
}

impl Request for Job {
    const SUBJECT: &'static str = "job";
}

/// Runs jobs and counts them.
struct Consumer {
    done: Arc<AtomicU64>,
}

impl Actor for Consumer {
    type Context = Context<Self>;
}

impl Handler<Job> for Consumer {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, _: Job, _: &mut Context<Self>) -> Self::Result {
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Jobs completed per second: [`JOBS`] pushed by `a`, 64 in flight, until the
/// consumers on `b` have run them all; an error says why not.
async fn job_queue(a: &Node, done: &AtomicU64, round: u64) -> Result<f64, String> {
    let before = done.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut pushing = FuturesUnordered::new();
    let mut next = 0;
    while next < JOBS || !pushing.is_empty() {
        while pushing.len() < IN_FLIGHT && next < JOBS {
            let job = Job {
                n: round * JOBS + next,
            };
            pushing.push(async move { a.push("bench.jobs", &job).await });
            next += 1;
        }
        if let Some(pushed) = pushing.next().await {
            pushed.map_err(|e| format!("a push failed: {e}"))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.load(Ordering::Relaxed) < before + JOBS {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {JOBS} jobs ran within 120 s",
                done.load(Ordering::Relaxed) - before
            ));
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(JOBS as f64 / start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------
// The nodes.

fn start_config(yaml: &str) -> NodeConfig {
    let mut config = NodeConfig::parse(Path::new("bench.yaml"), yaml).expect("bench config");
    config.state.mode = colony::config::StateMode::Memory;
    config
}

/// What node `a`'s thread is asked to do.
enum ToMaster {
    /// A job-queue round: push from `a` into consumers counting into `done`.
    Jobs {
        round: u64,
        done: Arc<AtomicU64>,
        answer: oneshot::Sender<Result<f64, String>>,
    },
    /// Shut down, then say so.
    Stop(oneshot::Sender<()>),
}

/// Node `a`, started on `arbiter` and driven there, so that its backbone's tasks
/// run on a thread of their own, as in a process of its own. Returns once it has
/// started, with its bridge address if it has one.
async fn start_master(
    arbiter: &actix_rt::ArbiterHandle,
    yaml: String,
) -> (Option<SocketAddr>, mpsc::UnboundedSender<ToMaster>) {
    let (started_tx, started) = oneshot::channel();
    let (to_master, mut asked) = mpsc::unbounded_channel();
    arbiter.spawn(async move {
        let app = App::new().service("bench", Echo::default).handles::<Ping>();
        let a = Node::start(app, start_config(&yaml))
            .await
            .expect("node a starts");
        let _ = started_tx.send(a.bridge_addr());
        while let Some(ask) = asked.recv().await {
            match ask {
                ToMaster::Jobs {
                    round,
                    done,
                    answer,
                } => {
                    let _ = answer.send(job_queue(&a, &done, round).await);
                }
                ToMaster::Stop(stopped) => {
                    a.shutdown(Duration::from_secs(1)).await;
                    let _ = stopped.send(());
                    return;
                }
            }
        }
    });
    let addr = started.await.expect("node a starts");
    (addr, to_master)
}

/// Node `b`, which consumes `bench.jobs` into `done`; returns once it reaches a's
/// `bench` service.
async fn start_worker(yaml: &str, done: Arc<AtomicU64>) -> Node {
    let app = App::new()
        .service("consumer", move || Consumer { done: done.clone() })
        .consumes::<Job>("bench.jobs");
    let b = Node::start(app, start_config(yaml))
        .await
        .expect("node b starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.request("bench", Ping { n: 0 }).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "b never reached a's bench service"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    b
}

/// Nodes `a` and `b` on one backbone.
struct Pair {
    b: Node,
    done: Arc<AtomicU64>,
    a: mpsc::UnboundedSender<ToMaster>,
    _thread: actix_rt::Arbiter,
}

/// The job queue's config: room for one round's jobs.
fn queues() -> String {
    format!("queues:\n  bench.jobs: {{ capacity: {JOBS} }}\n")
}

/// `b`'s consumer service; `b` runs no `bench`.
const CONSUMER: &str = "  consumer: { workers: 2, concurrency: 16 }";

impl Pair {
    /// `a` and `b` with `backbone`, the config section that links them (`b`'s
    /// made from `a`'s bridge address, if any). On NATS every node that takes
    /// from a queue declares it (`every_node_declares`); on the bridge the master
    /// holds it.
    async fn start(
        backbone: impl Fn(Option<SocketAddr>) -> String,
        every_node_declares: bool,
    ) -> Pair {
        let thread = actix_rt::Arbiter::new();
        let (addr, a) = start_master(
            &thread.handle(),
            format!(
                "node: {{ name: a, role: master, threads: 1 }}
{}
services:
  bench: {{ workers: {WORKERS}, concurrency: 64, queue: 1024, timeout: 10s }}
{}",
                backbone(None),
                queues()
            ),
        )
        .await;
        let done = Arc::new(AtomicU64::new(0));
        let b = start_worker(
            &format!(
                "node: {{ name: b, role: worker, threads: 1 }}
{}
services:
{CONSUMER}
{}",
                backbone(addr),
                if every_node_declares {
                    queues()
                } else {
                    String::new()
                }
            ),
            done.clone(),
        )
        .await;
        Pair {
            b,
            done,
            a,
            _thread: thread,
        }
    }

    async fn jobs(&self, round: u64) -> Result<f64, String> {
        let (answer, answered) = oneshot::channel();
        self.a
            .send(ToMaster::Jobs {
                round,
                done: self.done.clone(),
                answer,
            })
            .map_err(|_| "node a has stopped".to_string())?;
        answered
            .await
            .map_err(|_| "node a has stopped".to_string())?
    }

    async fn shutdown(self) {
        self.b.shutdown(Duration::from_secs(1)).await;
        let (stopped, done) = oneshot::channel();
        if self.a.send(ToMaster::Stop(stopped)).is_ok() {
            let _ = done.await;
        }
    }
}

// ---------------------------------------------------------------------------
// Figures.

/// The median of each figure over the rounds.
fn median(runs: &[Figures]) -> Figures {
    fn mid<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
        v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
        v[v.len() / 2]
    }
    Figures {
        p50: mid(runs.iter().map(|f| f.p50).collect()),
        p99: mid(runs.iter().map(|f| f.p99).collect()),
        per_sec: mid(runs.iter().map(|f| f.per_sec).collect()),
    }
}

/// Best and median of a rate.
fn best_median(rates: &[f64]) -> (f64, f64) {
    let mut v = rates.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() - 1], v[v.len() / 2])
}

/// The sides measured, in the order of round 1; each round starts one later.
#[derive(Clone, Copy)]
enum Side {
    Raw,
    Nats,
    Bridge,
}

fn main() {
    let server = NatsServer::start();
    let mut secret = tempfile::NamedTempFile::new().expect("secret file");
    secret
        .write_all(b"a-cluster-secret-for-the-nats-bench")
        .expect("write secret");
    let secret = secret.path().display().to_string();

    let system = actix_rt::System::new();
    system.block_on(async {
        let payload_len = colony_payload_len(PIPELINED as u64);
        let payload = Bytes::from(vec![b'x'; payload_len]);
        let responder_thread = actix_rt::Arbiter::new();
        start_responder(&responder_thread.handle(), server.url.clone()).await;
        let raw = async_nats::connect(server.url.as_str())
            .await
            .expect("requester connects");

        let url = server.url.clone();
        let nats = Pair::start(
            |_| format!("nats: {{ url: \"{url}\", heartbeat: 100ms }}"),
            true,
        )
        .await;
        let bridge = Pair::start(
            |a| {
                let join = a.map(|a| format!("join: [{a}], ")).unwrap_or_default();
                format!("bridge: {{ listen: 127.0.0.1:0, {join}secret_file: {secret} }}")
            },
            false,
        )
        .await;

        let sides = [Side::Raw, Side::Nats, Side::Bridge];
        let (mut raw_runs, mut nats_runs, mut bridge_runs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut nats_jobs, mut bridge_jobs) = (Vec::new(), Vec::new());
        let mut nats_jobs_failed: Option<String> = None;
        for round in 0..RUNS {
            // Rotate who goes first, so no side always gets the warmer machine.
            for i in 0..sides.len() {
                match sides[(round + i) % sides.len()] {
                    Side::Raw => raw_runs.push(raw_measure(&raw, &payload).await),
                    Side::Nats => nats_runs.push(colony_measure(&nats.b).await),
                    Side::Bridge => bridge_runs.push(colony_measure(&bridge.b).await),
                }
            }
            for i in 0..2 {
                if (round + i) % 2 == 0 {
                    bridge_jobs.push(bridge.jobs(round as u64).await.expect("bridge jobs"));
                } else if nats_jobs_failed.is_none() {
                    match nats.jobs(round as u64).await {
                        Ok(rate) => nats_jobs.push(rate),
                        Err(e) => nats_jobs_failed = Some(e),
                    }
                }
            }
            eprintln!("round {}/{RUNS} done", round + 1);
        }

        println!(
            "request/reply across two nodes, best (median) of {RUNS} rounds \
             ({payload_len}-byte request payload, {WORKERS} bench worker(s), {IN_FLIGHT} in flight \
             when pipelined)"
        );
        println!(
            "{:<32} {:>20} {:>20} {:>22}",
            "", "p50 µs", "p99 µs", "pipelined/s"
        );
        let rows = [
            ("raw async-nats (floor)", &raw_runs),
            ("colony b.request → NATS → a", &nats_runs),
            ("colony b.request → bridge → a", &bridge_runs),
        ];
        for (name, runs) in rows {
            let (b, m) = (best(runs), median(runs));
            let micros = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "{:<32} {:>20} {:>20} {:>22}",
                name,
                format!("{:.1} ({:.1})", micros(b.p50), micros(m.p50)),
                format!("{:.1} ({:.1})", micros(b.p99), micros(m.p99)),
                format!("{:.0} ({:.0})", b.per_sec, m.per_sec),
            );
        }
        let (raw_b, raw_m) = (best(&raw_runs), median(&raw_runs));
        let (nats_b, nats_m) = (best(&nats_runs), median(&nats_runs));
        let (bridge_b, bridge_m) = (best(&bridge_runs), median(&bridge_runs));
        let p50 = |x: &Figures, y: &Figures| x.p50.as_secs_f64() / y.p50.as_secs_f64();
        let rate = |x: &Figures, y: &Figures| x.per_sec / y.per_sec;
        let (through, through_m) = (rate(&nats_b, &raw_b), rate(&nats_m, &raw_m));
        println!();
        println!(
            "sequential p50: colony-nats/raw-nats = {:.2}x (medians {:.2}x)",
            p50(&nats_b, &raw_b),
            p50(&nats_m, &raw_m)
        );
        println!(
            "pipelined ({IN_FLIGHT} in flight): colony-nats/raw-nats = {through:.2}x \
             (medians {through_m:.2}x; target >= {TARGET:.2}x: {})",
            if through >= TARGET { "met" } else { "MISSED" }
        );
        println!(
            "sequential p50: colony-nats/colony-bridge = {:.2}x (medians {:.2}x)",
            p50(&nats_b, &bridge_b),
            p50(&nats_m, &bridge_m)
        );
        println!(
            "pipelined ({IN_FLIGHT} in flight): colony-nats/colony-bridge = {:.2}x (medians {:.2}x)",
            rate(&nats_b, &bridge_b),
            rate(&nats_m, &bridge_m)
        );
        let (bridge_best, bridge_median) = best_median(&bridge_jobs);
        match nats_jobs_failed {
            None => {
                let (nats_best, nats_median) = best_median(&nats_jobs);
                println!(
                    "job queue ({JOBS} jobs, 64 pushes in flight, 2x16 consumers): colony-nats \
                     {nats_best:.0} ({nats_median:.0}) jobs/s, colony-bridge {bridge_best:.0} \
                     ({bridge_median:.0}) jobs/s: colony-nats/colony-bridge = {:.2}x (medians {:.2}x)",
                    nats_best / bridge_best,
                    nats_median / bridge_median
                );
            }
            Some(why) => println!(
                "job queue ({JOBS} jobs, 64 pushes in flight, 2x16 consumers): colony-bridge \
                 {bridge_best:.0} ({bridge_median:.0}) jobs/s; over NATS: not measured ({why})"
            ),
        }

        nats.shutdown().await;
        bridge.shutdown().await;
        responder_thread.stop();
    });
    drop(server);
}
