//! Request/reply through colony's whole in-process path (router → dealer → worker →
//! reply) against raw actix `Addr::send` to one actor on another arbiter, measured
//! in the same run: sequential latency (p50, p99) and pipelined throughput with 64
//! requests in flight. Prints the ratios and whether the bars hold, for the best
//! round and the median one.
//!
//! The raw actor's mailbox holds at least the requests in flight (actix's default
//! of 16 would make the baseline's senders park).
//!
//! Run: `make bench` (or `cargo bench --bench request_reply`). For a profiler,
//! `COLONY_BENCH_ONLY=raw` or `=colony` makes only that side's pipelined round trips,
//! `COLONY_BENCH_N` of them (default 200,000) after 2,000 to warm up: the
//! difference of two runs' instruction counts over the difference of their N is
//! the instructions one request costs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use actix::prelude::*;
use colony::{App, Node, NodeConfig};
use common::*;
use futures::stream::{FuturesUnordered, StreamExt};

/// One way of making a round trip.
trait Target: Clone + 'static {
    async fn call(&self, n: u64) -> u64;
}

#[derive(Clone)]
struct RawActix(Addr<Echo>);

impl Target for RawActix {
    async fn call(&self, n: u64) -> u64 {
        match self.0.send(Ping { n }).await {
            Ok(Ok(pong)) => pong.n,
            _ => panic!("raw actix round trip failed"),
        }
    }
}

#[derive(Clone)]
struct Colony(Node);

impl Target for Colony {
    async fn call(&self, n: u64) -> u64 {
        match self.0.request("bench", Ping { n }).await {
            Ok(pong) => pong.n,
            Err(e) => panic!("colony round trip failed: {e}"),
        }
    }
}

async fn sequential<T: Target>(target: &T) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for n in 0..SEQUENTIAL as u64 {
        let start = Instant::now();
        assert_eq!(target.call(n).await, n);
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

async fn pipelined<T: Target>(target: &T) -> f64 {
    pipelined_n(target, PIPELINED).await
}

async fn pipelined_n<T: Target>(target: &T, count: usize) -> f64 {
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut done = 0usize;
    while done < count {
        while in_flight.len() < IN_FLIGHT && (sent as usize) < count {
            let target = target.clone();
            in_flight.push(async move { target.call(sent).await });
            sent += 1;
        }
        if in_flight.next().await.is_some() {
            done += 1;
        }
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// For a profiler: `count` pipelined round trips of one side, after a warm-up.
async fn only<T: Target>(target: &T, count: usize) {
    for n in 0..2_000 {
        target.call(n).await;
    }
    println!("pipelined: {:.0}/s", pipelined_n(target, count).await);
}

async fn measure<T: Target>(target: &T) -> Figures {
    // Warm up caches, allocator and the worker's thread.
    for n in 0..2_000 {
        target.call(n).await;
    }
    let (p50, p99) = sequential(target).await;
    let per_sec = pipelined(target).await;
    Figures { p50, p99, per_sec }
}

fn main() {
    let system = actix_rt::System::new();
    system.block_on(async {
        let arbiter = actix_rt::Arbiter::new();
        let raw = RawActix(Echo::start_in_arbiter(&arbiter.handle(), |ctx| {
            ctx.set_mailbox_capacity(IN_FLIGHT);
            Echo
        }));

        let yaml = "
node: { name: bench, threads: 1 }
services:
  bench: { workers: 1, concurrency: 64, queue: 1024, timeout: 10s }
";
        let mut config = NodeConfig::parse(Path::new("bench.yaml"), yaml).expect("bench config");
        config.state.mode = colony::config::StateMode::Memory;
        let app = App::new().service("bench", Echo::default).handles::<Ping>();
        let node = Node::start(app, config).await.expect("node starts");
        let colony = Colony(node.clone());

        if let Ok(side) = std::env::var("COLONY_BENCH_ONLY") {
            let count = std::env::var("COLONY_BENCH_N")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(PIPELINED);
            eprintln!(
                "future sizes: request {} bytes, bench call {} bytes",
                std::mem::size_of_val(&node.request("bench", Ping { n: 0 })),
                std::mem::size_of_val(&colony.call(0))
            );
            match side.as_str() {
                "raw" => only(&raw, count).await,
                _ => only(&colony, count).await,
            }
            node.shutdown(Duration::from_secs(1)).await;
            arbiter.stop();
            return;
        }
        let mut raw_runs = Vec::new();
        let mut colony_runs = Vec::new();
        for round in 1..=ROUNDS {
            // Alternate who goes first, so neither always gets the warmer machine.
            if round % 2 == 1 {
                raw_runs.push(measure(&raw).await);
                colony_runs.push(measure(&colony).await);
            } else {
                colony_runs.push(measure(&colony).await);
                raw_runs.push(measure(&raw).await);
            }
            eprintln!("round {round}/{ROUNDS} done");
        }
        let (raw, colony) = (best(&raw_runs), best(&colony_runs));
        let (raw_mid, colony_mid) = (median(&raw_runs), median(&colony_runs));

        println!("request/reply, in-process, best (median) of {ROUNDS} rounds");
        println!("{:<34} {:>22} {:>22} {:>22}", "", "p50", "p99", "pipelined/s");
        for (name, f, m) in [
            ("raw actix Addr::send (baseline)", &raw, &raw_mid),
            ("colony router→dealer→worker", &colony, &colony_mid),
        ] {
            println!(
                "{:<34} {:>22} {:>22} {:>22}",
                name,
                format!("{} ({})", us(f.p50), us(m.p50)),
                format!("{} ({})", us(f.p99), us(m.p99)),
                format!("{:.0} ({:.0})", f.per_sec, m.per_sec)
            );
        }
        let p50_ratio = colony.p50.as_secs_f64() / raw.p50.as_secs_f64();
        let throughput_ratio = colony.per_sec / raw.per_sec;
        let p50_mid = colony_mid.p50.as_secs_f64() / raw_mid.p50.as_secs_f64();
        let throughput_mid = colony_mid.per_sec / raw_mid.per_sec;
        println!();
        println!(
            "sequential p50: colony/raw = {p50_ratio:.2}x (medians {p50_mid:.2}x; bar <= 2.00x): {}",
            if p50_ratio <= 2.0 { "met" } else { "MISSED" }
        );
        println!(
            "pipelined ({IN_FLIGHT} in flight): colony/raw = {throughput_ratio:.2}x (medians {throughput_mid:.2}x; bar >= 0.75x): {}",
            if throughput_ratio >= 0.75 { "met" } else { "MISSED" }
        );
        node.shutdown(Duration::from_secs(1)).await;
        arbiter.stop();
    });
}
