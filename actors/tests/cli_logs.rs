//! `colony logs` against real node processes (a master and a worker on the
//! bridge): the kept lines of both nodes, printed as `pm2 logs` prints them
//! (`NODE | TIME LEVEL target: message`, no colour when stdout is not a
//! terminal); `--level` keeps the severe ones; `--follow --node` prints a line
//! the worker logs after the command started.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

/// Whether `line` reads `NODE | HH:MM:SS.mmm LEVEL …` for one of `nodes`.
fn pm2_form(line: &str, nodes: &[&str]) -> bool {
    let Some((node, rest)) = line.split_once(" | ") else {
        return false;
    };
    let time = rest.get(..12).unwrap_or("");
    let level = rest.get(13..18).unwrap_or("");
    nodes.contains(&node.trim_end())
        && time.len() == 12
        && time.as_bytes()[2] == b':'
        && time.as_bytes()[8] == b'.'
        && ["ERROR", "WARN ", "INFO ", "DEBUG", "TRACE"].contains(&level)
}

#[test]
fn logs_prints_the_lines_of_every_node_and_follows_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(Backbone::Bridge, dir.path());
    let master = net.start(&net.config("logs-m", "master", "{ chaos: { workers: 1 } }", ""));
    let worker = net.start(&net.config("logs-w", "worker", "{ chaos: { workers: 1 } }", ""));
    poll("both nodes run", || {
        let nodes = master.nodes();
        nodes.len() == 2 && nodes.iter().all(|(_, state)| state == "running")
    });
    worker.wait_all_running();
    let nodes = ["logs-m", "logs-w"];

    // The kept lines of both nodes, through the master's API.
    let out = master.cli(&["logs", "--lines", "1000"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stderr, "");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.iter().all(|l| pm2_form(l, &nodes)), "{}", out.stdout);
    assert!(!out.stdout.contains('\x1b'), "colour without a terminal");
    for node in nodes {
        let api_line = format!("INFO  colony::node: node {node}: HTTP API on http://127.0.0.1:");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{node} |")) && l.contains(&api_line)),
            "no API line of {node} in:\n{}",
            out.stdout
        );
    }
    // Merged in time order.
    let times: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split(" | ").nth(1)?.get(..12))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // Following the worker: its newest line first, then each new one.
    let mut follow = colony_command();
    follow
        .args([
            "--api",
            &master.api,
            "logs",
            "--follow",
            "--node",
            "logs-w",
            "--lines",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut follower = KillOnDrop(follow.spawn().expect("spawn colony logs --follow"));
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let printed = printed.clone();
        let stdout = follower.0.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                printed.lock().unwrap().push(line);
            }
        });
    }
    poll("the follower prints the worker's newest line", || {
        !printed.lock().unwrap().is_empty()
    });
    let out = master.cli(&["kill", "logs-w/chaos/0"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let exit = "WARN  colony::events: worker logs-w/chaos/0: exit (killed)";
    poll("the follower prints the kill", || {
        printed.lock().unwrap().iter().any(|l| l.contains(exit))
    });
    let printed = printed.lock().unwrap().clone();
    assert!(
        printed
            .iter()
            .all(|l| l.starts_with("logs-w | ") && pm2_form(l, &nodes)),
        "{printed:?}"
    );
    assert!(
        follower.0.try_wait().expect("try_wait").is_none(),
        "the follower ended"
    );
    drop(follower);

    // Only warnings and errors.
    let out = master.cli(&["logs", "--level", "warn", "--lines", "1000"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains(exit), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .all(|l| l.contains(" WARN  ") || l.contains(" ERROR ")),
        "{}",
        out.stdout
    );

    // A bad level is the node's 400, printed as an error.
    let out = master.cli(&["logs", "--level", "loud"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "error: BadRequest: level `loud` is not one of error, warn, info, debug, trace\n"
    );
}
