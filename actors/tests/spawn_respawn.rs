//! The master keeps the node processes it spawned running, pm2-style:
//! - a child killed with SIGKILL is started again after 100 ms, then (killed
//!   again) after 150 ms: a new process each time, counted in `restarts`, that
//!   serves the requests routed to it through the master;
//! - a child that exits at once, again and again, is left `errored` after
//!   `max_restarts` exits in a row (backoffs 100 ms, 150 ms, then no restart),
//!   is not forked again, and comes back only with `colony reload NODE`;
//! - `colony kill NODE --code 7` makes the child exit with code 7, and it is
//!   restarted.
//!
//! Every check reads the master's `[master] colony::events` lines and its
//! `status --json`; the other child is never touched.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Waits until the master's events about `name` satisfy `cond`; returns them.
fn wait_events(
    master: &NodeProcess,
    name: &str,
    what: &str,
    cond: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = master_events(master, name);
        if cond(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the master's lines about {name}: {events:#?}\nstderr:\n{}",
            master.log()
        );
        thread::sleep(POLL);
    }
}

/// The pid in an event like `fork (pid 123)` or `exit (pid 123, code 3)`.
fn pid_in(event: &str) -> u32 {
    event
        .split_once("(pid ")
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok())
        })
        .unwrap_or_else(|| panic!("no pid in {event:?}"))
}

/// A master (math) that spawns worker-a (with `a_extra` spawn keys and
/// `a_services`) and worker-b (math); returns once both children serve.
fn start(dir: &std::path::Path, a_extra: &str, a_services: &str, b_extra: &str) -> NodeProcess {
    let config = spawning_cluster(
        dir,
        "{ math: { workers: 1 } }",
        &[
            ("worker-a", a_extra, a_services),
            ("worker-b", b_extra, "{ math: { workers: 1 } }"),
        ],
    );
    NodeProcess::start(&config, &[])
}

/// `chaos/echo` through the master's API: only worker-a runs `chaos`, so the
/// master must route it there.
fn echo_through_master(master: &NodeProcess, round: u32) {
    let body = json!({ "round": round }).to_string();
    let (code, reply) = http(&master.api, "POST", "/v1/request/chaos/echo", &body)
        .unwrap_or_else(|e| panic!("echo #{round}: {e}; stderr:\n{}", master.log()));
    assert_eq!(
        (code, serde_json::from_str::<Value>(&reply).ok()),
        (200, Some(json!({ "reply": { "round": round } }))),
        "echo #{round}: {reply}; stderr:\n{}",
        master.log()
    );
}

/// The new process of `name` after the exit described by `exit`: the master's
/// lines after index `before` are exactly that exit, then fork, listening and
/// online of one new pid, which is returned.
fn wait_respawned(master: &NodeProcess, name: &str, before: usize, exit: &str) -> u32 {
    let events = wait_events(master, name, &format!("{name} online again"), |e| {
        e.iter().skip(before).any(|e| event_kind(e) == "online")
    });
    let new = &events[before..];
    let kinds: Vec<&str> = new.iter().map(|e| event_kind(e)).collect();
    assert_eq!(
        kinds,
        ["exit", "fork", "listening", "online"],
        "{new:#?}\nstderr:\n{}",
        master.log()
    );
    assert_eq!(new[0], exit, "{new:#?}");
    let pid = pid_in(&new[1]);
    assert_eq!(new[3], format!("online (pid {pid})"), "{new:#?}");
    pid
}

#[test]
fn a_sigkilled_child_is_restarted_with_a_growing_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let master = start(
        dir.path(),
        "",
        "{ math: { workers: 1 }, chaos: { workers: 1 } }",
        "",
    );
    let status = wait_status(&master, "both children serve", |s| {
        serving(s, "worker-a") && serving(s, "worker-b")
    });
    let b_pid = pid_of(&status, "worker-b");
    let mut pid = pid_of(&status, "worker-a");
    echo_through_master(&master, 0);

    for (round, delay) in [(1u32, 100), (2, 150)] {
        let before = master_events(&master, "worker-a").len();
        send_signal(pid, "KILL");
        let exit = format!("exit (pid {pid}, signal 9); restart in {delay}ms");
        let new = wait_respawned(&master, "worker-a", before, &exit);
        assert_ne!(new, pid, "the same pid came back");
        let status = wait_status(
            &master,
            &format!("worker-a runs again (pid {new}, restarts {round})"),
            |s| {
                serving(s, "worker-a")
                    && find_node(s, "worker-a")
                        .is_some_and(|n| n["pid"] == new && n["restarts"] == round)
            },
        );
        assert!(process_alive(new), "worker-a's new pid {new} is not alive");
        assert!(!process_alive(pid), "worker-a's old pid {pid} is alive");
        let listed: Vec<u32> = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["pid"].as_u64().map(|p| p as u32))
            .collect();
        assert!(
            !listed.contains(&pid),
            "the old pid {pid} is still listed: {status}"
        );
        // The other child was not touched.
        let b = find_node(&status, "worker-b").unwrap();
        assert_eq!(
            (b["pid"].clone(), b["restarts"].clone()),
            (json!(b_pid), json!(0)),
            "{status}"
        );

        // The master routes `chaos` to the new process, whose count starts at 0.
        echo_through_master(&master, round);
        wait_status(&master, "the new worker-a/chaos/0 handled the echo", |s| {
            all_workers(s)
                .iter()
                .any(|w| w["id"] == "worker-a/chaos/0" && w["handled"] == 1)
        });
        pid = new;
    }
    // Two SIGKILLs, two restarts, nothing more.
    let forks = master_events(&master, "worker-a")
        .iter()
        .filter(|e| event_kind(e) == "fork")
        .count();
    assert_eq!(forks, 3, "stderr:\n{}", master.log());
}

#[test]
fn a_crash_looping_child_is_errored_until_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    // Exits 3 at once until the flag file exists; then it is the real node.
    let flag = dir.path().join("healthy");
    let script = dir.path().join("crashing-node.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then exec '{COLONY}' \"$@\"; fi\nexit 3\n",
            flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A long min_uptime: every exit counts as a crash even on a slow machine.
    let b_extra = format!(
        "command: {}\nmax_restarts: 3\nmin_uptime: 30s",
        script.display()
    );
    let master = start(dir.path(), "", "{ math: { workers: 1 } }", &b_extra);

    let events = wait_events(&master, "worker-b", "worker-b errored", |e| {
        e.iter().any(|e| event_kind(e) == "errored")
    });
    let forks: Vec<u32> = events
        .iter()
        .filter(|e| event_kind(e) == "fork")
        .map(|e| pid_in(e))
        .collect();
    assert_eq!(forks.len(), 3, "{events:#?}\nstderr:\n{}", master.log());
    let [p1, p2, p3] = [forks[0], forks[1], forks[2]];
    assert!(p1 != p2 && p2 != p3 && p1 != p3, "{events:#?}");
    // Three starts are the first one and two restarts: the guard trips at the
    // third exit in a row, before a third restart is counted.
    assert_eq!(
        events,
        [
            format!("fork (pid {p1})"),
            format!("exit (pid {p1}, code 3); restart in 100ms"),
            format!("fork (pid {p2})"),
            format!("exit (pid {p2}, code 3); restart in 150ms"),
            format!("fork (pid {p3})"),
            format!("exit (pid {p3}, code 3)"),
            "errored after 2 restarts; not restarted until a reload".to_string(),
        ],
        "stderr:\n{}",
        master.log()
    );
    let status = wait_status(&master, "worker-b errored", |s| {
        find_node(s, "worker-b").is_some_and(|n| n["state"] == "errored")
    });
    assert_eq!(node_of(&status, "worker-b")["restarts"], 2, "{status}");
    assert!(!process_alive(p3), "the errored child's pid {p3} is alive");

    // Nothing forks it again: the next backoff would have been 225 ms.
    let window = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < window {
        let status = master.status();
        assert_eq!(
            node_of(&status, "worker-b")["state"],
            "errored",
            "{status}\nstderr:\n{}",
            master.log()
        );
        let forks = master_events(&master, "worker-b")
            .iter()
            .filter(|e| event_kind(e) == "fork")
            .count();
        assert_eq!(forks, 3, "forked after errored; stderr:\n{}", master.log());
        thread::sleep(POLL);
    }
    // The other child runs on, untouched.
    let status = wait_status(&master, "worker-a serves", |s| serving(s, "worker-a"));
    assert_eq!(node_of(&status, "worker-a")["restarts"], 0, "{status}");

    // Healthy now: a reload brings it back.
    std::fs::write(&flag, "").unwrap();
    let before = master_events(&master, "worker-b").len();
    let out = master.cli(&["reload", "worker-b"]);
    assert_eq!(out.code(), 0, "{out:?}\nstderr:\n{}", master.log());
    assert_eq!(out.stdout, "reloaded worker-b\n", "{out:?}");
    // Its `online` line was written before the answer, but the pipe may lag.
    let events = wait_events(&master, "worker-b", "worker-b online again", |e| {
        e.iter().skip(before).any(|e| event_kind(e) == "online")
    });
    let new = &events[before..];
    let kinds: Vec<&str> = new.iter().map(|e| event_kind(e)).collect();
    assert_eq!(
        kinds,
        ["fork", "listening", "online"],
        "{new:#?}\nstderr:\n{}",
        master.log()
    );
    let p4 = pid_in(&new[0]);
    assert_eq!(new[2], format!("online (pid {p4})"), "{new:#?}");
    assert!(![p1, p2, p3].contains(&p4), "{events:#?}");
    let status = wait_status(&master, "worker-b serves after the reload", |s| {
        serving(s, "worker-b")
    });
    let b = node_of(&status, "worker-b");
    assert_eq!(b["pid"], p4, "{status}");
    // Two restarts in the crash loop, one by the reload.
    assert_eq!(b["restarts"], 3, "{status}");
    assert!(process_alive(p4), "worker-b's pid {p4} is not alive");
}

#[test]
fn a_node_killed_with_a_code_exits_with_it_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let master = start(dir.path(), "", "{ math: { workers: 1 } }", "");
    let status = wait_status(&master, "both children serve", |s| {
        serving(s, "worker-a") && serving(s, "worker-b")
    });
    let pid = pid_of(&status, "worker-a");
    let b_pid = pid_of(&status, "worker-b");
    let before = master_events(&master, "worker-a").len();

    let out = master.cli(&["kill", "worker-a", "--code", "7"]);
    assert_eq!(out.code(), 0, "{out:?}\nstderr:\n{}", master.log());
    assert_eq!(out.stdout, "killed worker-a\n", "{out:?}");

    let exit = format!("exit (pid {pid}, code 7); restart in 100ms");
    let new = wait_respawned(&master, "worker-a", before, &exit);
    assert_ne!(new, pid, "the same pid came back");
    // The child said why it exits (its stderr is the master's).
    assert!(
        master.logged(|l| l.contains("[worker-a]")
            && l.ends_with("node worker-a: killed; exiting with code 7")),
        "stderr:\n{}",
        master.log()
    );
    let status = wait_status(&master, "worker-a runs again", |s| {
        serving(s, "worker-a")
            && find_node(s, "worker-a").is_some_and(|n| n["pid"] == new && n["restarts"] == 1)
    });
    assert!(!process_alive(pid), "worker-a's old pid {pid} is alive");
    let b = node_of(&status, "worker-b");
    assert_eq!(
        (b["pid"].clone(), b["restarts"].clone()),
        (json!(b_pid), json!(0)),
        "{status}"
    );
}
