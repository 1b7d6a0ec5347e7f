//! Operations benchmark: a master that spawns two worker nodes, on loopback.
//!
//! 1. SIGKILL of a worker node to it serving again (every worker running, linked
//!    to the master), p50 over 10 kills alternating between the two nodes. The
//!    master waits out pm2's backoff (100 ms, ×1.5 per restart of the same node)
//!    before it starts the replacement, so the figure is shown with and without it.
//! 2. A reload of both worker nodes under a steady load of `math sum` requests
//!    through the master's API: how long the reload takes, the p99 latency while it
//!    runs against the p99 of the same load without it, and failed requests (0).
//!
//! Run with `cargo bench -p actors --bench operations` (part of `make bench`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{
    master_events, node_of, pid_of, send_signal, serving, spawning_cluster, Load, NodeProcess,
};

const KILLS: usize = 10;
const LOAD_THREADS: usize = 4;
const BASELINE: Duration = Duration::from_secs(3);

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = spawning_cluster(
        dir.path(),
        "{ math: { workers: 1, routing: round_robin } }",
        &[
            ("worker-a", "", "{ math: { workers: 1 } }"),
            ("worker-b", "", "{ math: { workers: 1 } }"),
        ],
    );
    let master = NodeProcess::start(&config, &[]);
    wait_serving(&master, &["worker-a", "worker-b"], &[0, 0]);

    // 1. SIGKILL → serving again.
    let mut total = Vec::new();
    let mut beyond_backoff = Vec::new();
    for kill in 0..KILLS {
        let name = if kill % 2 == 0 {
            "worker-a"
        } else {
            "worker-b"
        };
        let pid = pid_of(&master.status(), name);
        let started = Instant::now();
        send_signal(pid, "KILL");
        wait_new_pid(&master, name, pid);
        let took = started.elapsed();
        let backoff = backoff_for(&master, name, pid);
        total.push(took);
        beyond_backoff.push(took.saturating_sub(backoff));
    }
    println!(
        "sigkill to serving again, {KILLS} kills: p50 {:.1} ms (of which pm2 backoff waited; beyond the backoff p50 {:.1} ms, max {:.1} ms)",
        ms(percentile(&mut total, 0.5)),
        ms(percentile(&mut beyond_backoff, 0.5)),
        ms(*beyond_backoff.iter().max().expect("kills")),
    );

    // 2. Reload under load.
    let load = Load::start(&master.api, LOAD_THREADS, Duration::ZERO);
    thread::sleep(BASELINE);
    let mut without = load.take_latencies();
    let started = Instant::now();
    let out = master.cli(&["reload"]);
    let reload = started.elapsed();
    assert_eq!(out.code(), 0, "reload: {out:?}");
    let mut during = load.take_latencies();
    let (failed, failures) = load.finish();
    for failure in &failures {
        eprintln!("failed request: {failure}");
    }
    let p99_without = percentile(&mut without, 0.99);
    let p99_during = percentile(&mut during, 0.99);
    println!(
        "reload of 2 worker nodes under load ({LOAD_THREADS} clients): {:.0} ms; p99 {:.2} ms during vs {:.2} ms without ({:.2}x); {} requests during, {} without, {failed} failed",
        ms(reload),
        ms(p99_during),
        ms(p99_without),
        p99_during.as_secs_f64() / p99_without.as_secs_f64(),
        during.len(),
        without.len(),
    );
    assert_eq!(failed, 0, "requests failed during the reload");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

/// Polls until every named node runs every worker and has restarted `restarts` times.
fn wait_serving(master: &NodeProcess, names: &[&str], restarts: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = master.status();
        let ready = names.iter().zip(restarts).all(|(name, restarts)| {
            serving(&status, name) && node_of(&status, name)["restarts"].as_u64() == Some(*restarts)
        });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "cluster not serving: {status}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls until `name` serves from a process other than `old`.
fn wait_new_pid(master: &NodeProcess, name: &str, old: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = master.status();
        let node = node_of(&status, name);
        let new_pid = node["pid"]
            .as_u64()
            .is_some_and(|p| p != u64::from(old) && p != 0);
        if new_pid && serving(&status, name) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} not back: {node}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// The backoff the master logged for the exit of `name`'s process `pid`.
fn backoff_for(master: &NodeProcess, name: &str, pid: u32) -> Duration {
    let exit = format!("exit (pid {pid},");
    let event = master_events(master, name)
        .into_iter()
        .find(|e| e.starts_with(&exit))
        .unwrap_or_else(|| {
            panic!(
                "no exit line for {name} pid {pid}; stderr:\n{}",
                master.log()
            )
        });
    let ms = event
        .rsplit_once("restart in ")
        .and_then(|(_, rest)| rest.trim_end_matches("ms").parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}
