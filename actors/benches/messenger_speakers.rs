//! The same Node messenger Speaker (npm `messenger` 0.0.9, `tests/messenger/speaker.js
//! bench`) against colony's messenger listener and against a Node messenger listener
//! (`tests/messenger/listener.js`), in the same run, alternating: sequential p50 over
//! 5,000 requests, then pipelined throughput with 64 in flight for 3 seconds, of
//! `add two numbers` (`{"a","b"}` → `{"sum"}`).
//!
//! colony: a `colony node` process of the example app, `math` (2 workers,
//! `threads: 2`), routed `add two numbers: math/sum`. Node: one `node listener.js`
//! process (Node listeners are single-threaded).
//!
//! Run with `cargo bench -p actors --bench messenger_speakers` (part of `make bench`,
//! which installs the npm package first).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{poll, run, write_config, KillOnDrop, NodeProcess};
use serde_json::Value;

const ROUNDS: usize = 3;
const SECONDS: &str = "3";

/// `node speaker.js ADDRESS bench SECONDS`: (p50 µs, requests per second).
fn speaker(scripts: &Path, address: &str) -> (f64, f64) {
    let out = run(Command::new("node")
        .arg(scripts.join("speaker.js"))
        .args([address, "bench", SECONDS]));
    assert_eq!(out.code(), 0, "speaker.js bench: {out:?}");
    let line: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON line");
    (
        line["p50_us"].as_f64().expect("p50"),
        line["per_sec"].as_f64().expect("per_sec"),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/messenger");
    assert!(
        scripts.join("node_modules/messenger").exists(),
        "run `bash scripts/messenger-npm.sh` first (make bench does)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _node_listener = KillOnDrop(
        Command::new("node")
            .arg(scripts.join("listener.js"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("node runs"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        "web.yaml",
        "node: { name: web, role: master, threads: 2 }
api: { listen: 127.0.0.1:0 }
state: { mode: memory }
services: { math: { workers: 2, concurrency: 64, queue: 4096 } }
messenger:
  listen: 127.0.0.1:0
  routes: { add two numbers: math/sum }
",
    );
    let colony = NodeProcess::start(&config, &[]);
    let mut colony_addr = String::new();
    poll("colony's messenger listener is up", || {
        colony_addr = colony
            .log
            .lock()
            .expect("log")
            .iter()
            .find_map(|l| {
                l.split_once("messenger listener on ")
                    .map(|(_, a)| a.trim().to_string())
            })
            .unwrap_or_default();
        !colony_addr.is_empty()
    });
    let node_addr = format!("127.0.0.1:{port}");

    let (mut colony_runs, mut node_runs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            colony_runs.push(speaker(&scripts, &colony_addr));
            node_runs.push(speaker(&scripts, &node_addr));
        } else {
            node_runs.push(speaker(&scripts, &node_addr));
            colony_runs.push(speaker(&scripts, &colony_addr));
        }
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }
    let best = |runs: &[(f64, f64)]| {
        (
            runs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min),
            runs.iter().map(|r| r.1).fold(0.0, f64::max),
        )
    };
    let mid = |runs: &[(f64, f64)]| {
        (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        )
    };
    let (colony_best, node_best) = (best(&colony_runs), best(&node_runs));
    let (colony_mid, node_mid) = (mid(&colony_runs), mid(&node_runs));
    println!("a Node messenger Speaker (npm messenger 0.0.9), best (median) of {ROUNDS} rounds");
    println!(
        "{:<34} {:>22} {:>26}",
        "listener", "p50", "pipelined (64 in flight)/s"
    );
    for (name, b, m) in [
        ("Node messenger listener", node_best, node_mid),
        ("colony messenger listener", colony_best, colony_mid),
    ] {
        println!(
            "{:<34} {:>22} {:>26}",
            name,
            format!("{:.1} µs ({:.1} µs)", b.0, m.0),
            format!("{:.0} ({:.0})", b.1, m.1)
        );
    }
    println!();
    println!(
        "p50: colony/node = {:.2}x (medians {:.2}x; aim <= 1.00x)",
        colony_best.0 / node_best.0,
        colony_mid.0 / node_mid.0
    );
    println!(
        "pipelined: colony/node = {:.2}x (medians {:.2}x; aim >= 1.00x)",
        colony_best.1 / node_best.1,
        colony_mid.1 / node_mid.1
    );
    colony.terminate_gracefully();
}
