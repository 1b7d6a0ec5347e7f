//! Cluster messaging between two colony nodes bridged over loopback TCP, with the
//! pipelined request/reply figure of the same run beside it:
//!
//! - **raw TCP streaming** (the floor of pub/sub): the bytes of colony's publish
//!   frames for the same `Tick`s, written over loopback TCP by one task and read
//!   by another on its own thread, as fast as they go: messages per second.
//! - **pub/sub fan-out**: node `a` publishes on `bench.tick`; 1, 4 or 16 subscriber
//!   actors on node `b` (on their own thread) receive every message. Two figures:
//!   messages published per second, and deliveries per second (messages ×
//!   subscribers / time). The publisher
//!   keeps at most [`WINDOW`] messages ahead of the slowest delivery, as a producer
//!   that respects the subscribers' high-water mark would.
//! - **job queue**: node `a` holds the queue `bench.jobs` and pushes [`JOBS`] jobs,
//!   [`IN_FLIGHT`] pushes at a time; the `consumer` service on node `b` (2 workers ×
//!   concurrency 16) takes each job from `a`, runs it and acknowledges it to `a`.
//!   The figure is jobs completed per second. `a` and `b` keep the cluster state in
//!   memory; a second pair, `da` and `db`, runs the same rounds with the state
//!   durable (`state.mode: durable`, in a temporary directory), so every push and
//!   every ack is on disk before it is answered.
//! - **request/reply**: `b.request("bench", Ping)` to `a`'s `bench` service, 64 in
//!   flight.
//!
//! Run: `cargo bench --bench messaging`.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use colony::config::{StateMode, StateSection};
use colony::{App, Node, NodeConfig, Published, ServiceError, Subscription};
use common::*;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

/// Messages published per fan-out case.
const MESSAGES: u64 = 50_000;
/// How far the publisher may run ahead of delivery.
const WINDOW: u64 = 2_000;
/// Jobs per job queue round.
const JOBS: u64 = 20_000;
/// Pipelined round trips.
const ROUND_TRIPS: usize = 100_000;

/// What is published.
#[derive(Clone, Serialize, Deserialize)]
struct Tick {
    n: u64,
}

/// Counts what it receives.
struct Subscriber {
    received: Arc<AtomicU64>,
    _subscription: Option<Subscription>,
}

impl Actor for Subscriber {
    type Context = Context<Self>;
}

impl Handler<Published> for Subscriber {
    type Result = ();
    fn handle(&mut self, msg: Published, _: &mut Context<Self>) {
        if msg.decode::<Tick>().is_ok() {
            self.received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Stores its subscription, so that it ends with the actor.
#[derive(Message)]
#[rtype(result = "()")]
struct Keep(Subscription);

impl Handler<Keep> for Subscriber {
    type Result = ();
    fn handle(&mut self, msg: Keep, _: &mut Context<Self>) {
        self._subscription = Some(msg.0);
    }
}

/// A job.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
struct Job {
    n: u64,
}

impl colony::Request for Job {
    const SUBJECT: &'static str = "job";
}

/// Runs jobs.
#[derive(Default)]
struct Consumer;

impl Actor for Consumer {
    type Context = Context<Self>;
}

impl Handler<Job> for Consumer {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, _: Job, _: &mut Context<Self>) -> Self::Result {
        Ok(())
    }
}

fn config(yaml: &str) -> NodeConfig {
    let mut config = NodeConfig::parse(Path::new("bench.yaml"), yaml).expect("bench config");
    config.state.mode = colony::config::StateMode::Memory;
    config
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Delivered messages per second to `count` subscribers on `b`.
async fn fan_out(a: &Node, b: &Node, arbiter: &ArbiterHandle, count: u64) -> f64 {
    let received = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::new();
    for _ in 0..count {
        let counter = received.clone();
        let addr = Subscriber::start_in_arbiter(arbiter, move |_| Subscriber {
            received: counter,
            _subscription: None,
        });
        let subscription = b
            .subscribe("bench.", addr.clone().recipient())
            .expect("subscribe");
        addr.send(Keep(subscription)).await.expect("keep");
        subscribers.push(addr);
    }
    let topic = "bench.tick";
    wait_for("a knows b's subscribers", || {
        a.subscribers(topic) == count as usize
    })
    .await;

    let start = Instant::now();
    let mut handed = 0u64;
    for n in 0..MESSAGES {
        handed += a.publish(topic, Tick { n }).expect("publish") as u64;
        if n % 500 == 499 {
            let behind = (n + 1).saturating_sub(WINDOW) * count;
            wait_for("deliveries catch up", || {
                received.load(Ordering::Relaxed) >= behind
            })
            .await;
        }
    }
    let all = MESSAGES * count;
    wait_for("every message is delivered", || {
        received.load(Ordering::Relaxed) >= all
    })
    .await;
    let elapsed = start.elapsed();
    assert_eq!(
        handed, all,
        "publish handed every message to every subscriber"
    );
    assert_eq!(received.load(Ordering::Relaxed), all, "nothing was lost");
    for addr in subscribers {
        addr.do_send(StopSubscriber);
    }
    wait_for("the subscribers are gone", || a.subscribers(topic) == 0).await;
    all as f64 / elapsed.as_secs_f64()
}

#[derive(Message)]
#[rtype(result = "()")]
struct StopSubscriber;

impl Handler<StopSubscriber> for Subscriber {
    type Result = ();
    fn handle(&mut self, _: StopSubscriber, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Jobs completed per second.
async fn job_queue(a: &Node, round: u64) -> f64 {
    let before = completed(a).await;
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
            pushed.expect("push");
        }
    }
    let target = before + JOBS;
    let deadline = Instant::now() + Duration::from_secs(120);
    while completed(a).await < target {
        assert!(Instant::now() < deadline, "jobs did not complete");
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    let queues = a.queues().await.expect("queues");
    let queue = &queues[0];
    assert_eq!(queue.completed, target);
    assert!(queue.dead.is_empty(), "no job died");
    JOBS as f64 / elapsed.as_secs_f64()
}

async fn completed(a: &Node) -> u64 {
    a.queues()
        .await
        .expect("queues")
        .iter()
        .map(|q| q.completed)
        .sum()
}

async fn call(node: &Node, n: u64) -> u64 {
    match node.request("bench", Ping { n }).await {
        Ok(pong) => pong.n,
        Err(e) => panic!("round trip failed: {e}"),
    }
}

async fn pipelined(b: &Node) -> f64 {
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut done = 0usize;
    while done < ROUND_TRIPS {
        while in_flight.len() < IN_FLIGHT && (sent as usize) < ROUND_TRIPS {
            let n = sent;
            in_flight.push(async move { (n, call(b, n).await) });
            sent += 1;
        }
        if let Some((n, back)) = in_flight.next().await {
            assert_eq!(n, back);
            done += 1;
        }
    }
    ROUND_TRIPS as f64 / start.elapsed().as_secs_f64()
}

/// Node `master` (with the `bench` service and the queue `bench.jobs`, its state
/// in memory or durable in `state`) and node `worker`, which consumes the queue,
/// bridged; returns once `worker` reaches `master`.
async fn pair(master: &str, worker: &str, secret: &str, state: Option<&Path>) -> (Node, Node) {
    let mut a_config = config(&format!(
        "node: {{ name: {master}, role: master, threads: 1 }}
bridge: {{ listen: 127.0.0.1:0, secret_file: {secret} }}
services:
  bench: {{ workers: 1, concurrency: 64, timeout: 10s }}
queues:
  bench.jobs: {{ capacity: {JOBS} }}
"
    ));
    a_config.state = match state {
        Some(dir) => StateSection {
            dir: Some(dir.to_path_buf()),
            mode: StateMode::Durable,
        },
        None => StateSection {
            dir: None,
            mode: StateMode::Memory,
        },
    };
    let a = Node::start(
        App::new().service("bench", Echo::default).handles::<Ping>(),
        a_config,
    )
    .await
    .expect("the master starts");
    let a_addr = a.bridge_addr().expect("the master has a bridge");
    let b = Node::start(
        App::new()
            .service("consumer", Consumer::default)
            .consumes::<Job>("bench.jobs"),
        config(&format!(
            "node: {{ name: {worker}, role: worker, threads: 1 }}
bridge: {{ listen: 127.0.0.1:0, join: [{a_addr}], secret_file: {secret} }}
services:
  consumer: {{ workers: 2, concurrency: 16 }}
"
        )),
    )
    .await
    .expect("the worker starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.request("bench", Ping { n: 0 }).await.is_err() {
        assert!(Instant::now() < deadline, "{worker} never reached {master}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    (a, b)
}

/// The length of colony's publish frame for `Tick { n }` on `bench.tick` from `a`.
fn publish_frame_len(n: u64) -> usize {
    let payload = serde_json::to_vec(&Tick { n }).expect("a tick is JSON");
    let mut frame = bytes::BytesMut::new();
    colony::bridge::wire::encode_publish(
        &mut frame,
        colony::bridge::frame::DEFAULT_MAX_FRAME,
        "bench.tick",
        "a",
        "",
        None,
        &payload,
    )
    .expect("a publish frame encodes");
    frame.len()
}

/// Messages streamed by [`raw_stream`]: more than pub/sub sends, so that the
/// floor is measured over more than a few milliseconds.
const STREAMED: u64 = 20 * MESSAGES;

/// Streams [`STREAMED`] messages of `len` bytes over loopback TCP to a reader on
/// `arbiter`'s thread; messages per second, first byte written to last read.
async fn raw_stream(arbiter: &ArbiterHandle, len: usize) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    listener.set_nonblocking(true).expect("nonblocking");
    let total = STREAMED as usize * len;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0;
        while read < total {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        let _ = done_tx.send(Instant::now());
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    // Written as a publisher with many messages ready would: 64 KiB at a time.
    let chunk = vec![7u8; (64 * 1024 / len) * len];
    let start = Instant::now();
    let mut written = 0;
    while written < total {
        let n = chunk.len().min(total - written);
        stream.write_all(&chunk[..n]).await.expect("write");
        written += n;
    }
    let end = done_rx.await.expect("the reader ends");
    STREAMED as f64 / end.duration_since(start).as_secs_f64()
}

fn main() {
    let mut secret = tempfile::NamedTempFile::new().expect("secret file");
    secret
        .write_all(b"a-cluster-secret-for-the-messaging-bench")
        .expect("write secret");
    let secret = secret.path().display().to_string();

    let state = tempfile::tempdir().expect("state directory");
    let system = actix_rt::System::new();
    system.block_on(async {
        let (a, b) = pair("a", "b", &secret, None).await;
        let (da, db) = pair("da", "db", &secret, Some(state.path())).await;
        let subscriber_thread = Arbiter::new();

        let frame_len = publish_frame_len(MESSAGES / 2);
        let mut streams = Vec::new();
        let mut fan_outs = [Vec::new(), Vec::new(), Vec::new()];
        let mut jobs = Vec::new();
        let mut durable_jobs = Vec::new();
        let mut round_trips = Vec::new();
        for round in 0..ROUNDS as u64 {
            streams.push(raw_stream(&subscriber_thread.handle(), frame_len).await);
            for (i, count) in [1, 4, 16].into_iter().enumerate() {
                fan_outs[i].push(fan_out(&a, &b, &subscriber_thread.handle(), count).await);
            }
            jobs.push(job_queue(&a, round).await);
            durable_jobs.push(job_queue(&da, round).await);
            round_trips.push(pipelined(&b).await);
            eprintln!("round {}/{ROUNDS} done", round + 1);
        }
        let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);

        println!("cluster messaging across two nodes on loopback, best of {ROUNDS} rounds");
        println!("{:<58} {:>14}", "", "per second");
        println!(
            "{:<58} {:>14.0}",
            format!("raw TCP streaming of {frame_len}-byte publish frames (floor)"),
            best(&streams)
        );
        for (i, count) in [1u64, 4, 16].into_iter().enumerate() {
            let deliveries = best(&fan_outs[i]);
            println!(
                "{:<58} {:>14.0}",
                format!("pub/sub a → b, {count} subscriber(s): messages published"),
                deliveries / count as f64
            );
            println!(
                "{:<58} {:>14.0}",
                format!("pub/sub a → b, {count} subscriber(s): deliveries"),
                deliveries
            );
        }
        println!(
            "pub/sub, 1 subscriber: colony/raw TCP streaming = {:.2}x",
            best(&fan_outs[0]) / best(&streams)
        );
        println!(
            "{:<58} {:>14.0}",
            "job queue on a, consumed on b (2×16): jobs acknowledged",
            best(&jobs)
        );
        println!(
            "{:<58} {:>14.0}",
            "the same, durable state (each push and ack on disk)",
            best(&durable_jobs)
        );
        println!(
            "{:<58} {:>14.0}",
            format!("request/reply b → a, {IN_FLIGHT} in flight: round trips"),
            best(&round_trips)
        );
        println!(
            "dropped at a subscriber's high-water mark: {}",
            b.publish_dropped()
        );
        let ratio = best(&durable_jobs) / best(&jobs);
        let verdict = if ratio >= 0.3 { "met" } else { "MISSED" };
        println!("job queue: durable/memory = {ratio:.2}x (bar >= 0.30x): {verdict}");
        for node in [b, a, db, da] {
            node.shutdown(Duration::from_secs(1)).await;
        }
        subscriber_thread.stop();
    });
}
