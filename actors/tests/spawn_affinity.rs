//! A master that spawns two child node processes: worker-a pinned to one CPU
//! (`cpu: 1`, or `cpu: 0` on a one-CPU machine), worker-b unpinned. The master
//! logs `fork`, `listening`, `online` for each child, in that order and once each;
//! `status --json` lists the master and both children running, each child a live
//! process of its own whose parent is the master; the kernel's
//! `Cpus_allowed_list` of worker-a is exactly the pinned CPU (and status says so,
//! in JSON and in the text table's CPU column), while worker-b may run where the
//! master may.

mod common;

use std::thread;

use common::*;

const CHILDREN: [&str; 2] = ["worker-a", "worker-b"];

/// The CPU worker-a is pinned to: 1 when there are two CPUs, so that the pin
/// differs from the inherited affinity, else the only one.
fn pinned_cpu() -> usize {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        1
    } else {
        0
    }
}

/// The kernel's view of where process `pid` may run, e.g. `0-1`.
fn cpus_allowed(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Field 4 of `/proc/PID/stat`: the parent's pid.
fn parent_pid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // After the parenthesised command name: state (field 3), ppid (field 4).
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ppid in {stat:?}"))
}

#[test]
fn spawned_children_are_forked_listening_online_and_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = pinned_cpu();
    let pin = format!("cpu: {cpu}");
    let config = spawning_cluster(
        dir.path(),
        "{ math: { workers: 1 } }",
        &[
            (
                "worker-a",
                pin.as_str(),
                "{ math: { workers: 1 }, chaos: { workers: 1 } }",
            ),
            ("worker-b", "", "{ math: { workers: 1 } }"),
        ],
    );
    let master = NodeProcess::start(&config, &[]);
    let master_pid: u32 = master.pid().parse().unwrap();

    let status = wait_status(&master, "the master and both children serve", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 3)
            && serving(s, "master")
            && CHILDREN.iter().all(|c| serving(s, c))
    });
    // The spawner shows a child running once it is online; the log line follows.
    for name in CHILDREN {
        master.wait_logged(&format!("the master's `node {name}: online` line"), |l| {
            l.contains(&format!(
                "[master] colony::events: node {name}: online (pid "
            ))
        });
    }

    // The master itself.
    let me = node_of(&status, "master");
    assert_eq!(me["role"], "master", "{status}");
    assert_eq!(me["pid"], master_pid, "{status}");
    assert_eq!(status["nodes"][0]["name"], "master", "{status}");

    let mut child_pids = Vec::new();
    for name in CHILDREN {
        let node = node_of(&status, name);
        assert_eq!(node["role"], "worker", "{status}");
        assert_eq!(node["restarts"], 0, "{status}");
        let pid = pid_of(&status, name);
        assert_ne!(
            pid, master_pid,
            "{name} runs in the master's process: {status}"
        );
        assert!(
            process_alive(pid),
            "{name}'s pid {pid} is not a live process"
        );
        assert_eq!(
            parent_pid(pid),
            master_pid,
            "{name} (pid {pid}) is not the master's child"
        );

        // fork → listening → online, once each, all about this pid.
        let events = master_events(&master, name);
        let kinds: Vec<&str> = events.iter().map(|e| event_kind(e)).collect();
        assert_eq!(
            kinds,
            ["fork", "listening", "online"],
            "the master's lines about {name}: {events:#?}\nstderr:\n{}",
            master.log()
        );
        assert_eq!(events[0], format!("fork (pid {pid})"), "{events:#?}");
        assert_eq!(events[2], format!("online (pid {pid})"), "{events:#?}");
        // `listening (api 127.0.0.1:X, bridge 127.0.0.1:Y)` on bound ports.
        let addrs: Vec<&str> = events[1]
            .trim_start_matches("listening (")
            .trim_end_matches(')')
            .split(", ")
            .collect();
        assert_eq!(addrs.len(), 2, "{events:#?}");
        for (addr, kind) in addrs.iter().zip(["api ", "bridge "]) {
            let addr = addr
                .strip_prefix(kind)
                .unwrap_or_else(|| panic!("{kind}in {:?}", events[1]));
            assert!(
                addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
                "{kind}address {addr:?} in {:?}",
                events[1]
            );
        }
        child_pids.push(pid);
    }
    assert_ne!(child_pids[0], child_pids[1], "{status}");
    let (a_pid, b_pid) = (child_pids[0], child_pids[1]);

    // worker-a is pinned: the kernel and status agree on the one CPU.
    assert_eq!(
        cpus_allowed(a_pid),
        cpu.to_string(),
        "worker-a (pid {a_pid}) is not pinned to CPU {cpu}"
    );
    let a = node_of(&status, "worker-a");
    assert_eq!(a["cpus"], serde_json::json!([cpu]), "{status}");

    // worker-b inherits the master's affinity.
    let master_cpus = cpus_allowed(master_pid);
    assert_eq!(
        cpus_allowed(b_pid),
        master_cpus,
        "worker-b (pid {b_pid}) may not run where the master may"
    );
    let b = node_of(&status, "worker-b");
    assert_eq!(b["cpus"], me["cpus"], "{status}");

    // The text table: `NODE ROLE PID CPU STATE RESTARTS UPTIME`.
    let out = master.cli(&["status"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["NODE", "ROLE", "PID", "CPU", "STATE", "RESTARTS", "UPTIME"],
        "{}",
        out.stdout
    );
    let rows: Vec<Vec<&str>> = lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.first() == Some(&name))
            .unwrap_or_else(|| panic!("no {name} row in\n{}", out.stdout))
            .clone()
    };
    let a_row = row("worker-a");
    assert_eq!(
        a_row,
        [
            "worker-a",
            "worker",
            a_pid.to_string().as_str(),
            cpu.to_string().as_str(),
            "running",
            "0",
            a_row[6],
        ],
        "{}",
        out.stdout
    );
    let b_row = row("worker-b");
    assert_eq!(b_row[2], b_pid.to_string(), "{}", out.stdout);
    assert_eq!(b_row[3], master_cpus, "{}", out.stdout);
    assert_eq!(row("master")[3], master_cpus, "{}", out.stdout);
}
