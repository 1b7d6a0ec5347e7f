//! 1,100 connections, each announcing a 1 GiB body that never arrives, against a
//! node process whose open-file limit is 1,024 (soft and hard, so the node cannot
//! raise it). The node must keep descriptors in reserve (its connection budget is
//! the limit minus a reserve, whatever api.max_connections says), never hold the
//! bodies, close each connection after api.read_timeout, and answer /v1/health.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use super::child::{self, open_fds};
use super::*;

const FD_LIMIT: u64 = 1024;
const ATTACKERS: usize = 1100;

/// api.max_connections far above the fd limit: only the node's own budget can
/// keep it from running out of descriptors.
const FLOOD_CONFIG: &str = "
node: { name: flooded, role: master, threads: 1 }
api: { listen: 127.0.0.1:0, read_timeout: 1s, max_body: 1073741824, max_connections: 5000 }
services:
  calc: { workers: 1 }
";

pub async fn health_answers_through_a_flood() {
    let node = child::start(FLOOD_CONFIG, |command| {
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: FD_LIMIT,
                    rlim_max: FD_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await;
    let (pid, addr) = (node.pid.clone(), node.addr);
    let health = || async move {
        timeout(
            Duration::from_secs(3),
            Req::get(addr, "/v1/health").send(addr),
        )
        .await
        .map_or(0, |a| a.status)
    };
    assert_eq!(health().await, 200);
    let memory_before = proc_kb(&pid, "VmRSS");

    // The flood: headers of a 1 GiB JSON body, then nothing.
    let head = Req::post(addr, "/v1/request/calc/add", "")
        .header("Content-Length", "1073741824")
        .header("Connection", "keep-alive")
        .bytes();
    let attackers = (0..ATTACKERS).map(|_| {
        let head = head.clone();
        async move {
            let mut stream = timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            stream.write_all(&head).await.ok()?;
            Some(stream)
        }
    });
    // Descriptors are counted every few milliseconds from before the flood until
    // it has drained.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (pid, stop) = (pid.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut most_fds, mut most_rss) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most_fds = most_fds.max(open_fds(&pid));
                most_rss = most_rss.max(proc_kb(&pid, "VmRSS"));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (most_fds, most_rss)
        })
    };
    let connecting = tokio::spawn(futures::future::join_all(attackers));

    // While the flood holds the node's connections, health answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(&pid) < 700 {
        assert!(
            Instant::now() < deadline,
            "the flood never took the node's connections: {} fds",
            open_fds(&pid)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        answered = health().await == 200;
    }
    // The flood is over when every attacker is in and the node has closed them.
    let streams = connecting.await.expect("attackers");
    let deadline = Instant::now() + Duration::from_secs(12);
    while open_fds(&pid) > 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (most_fds, most_rss) = sampler.await.expect("sampler");
    let connected = streams.iter().flatten().count();
    let memory_after = proc_kb(&pid, "VmRSS");
    println!(
        "flood: {connected} of {ATTACKERS} connected; node fds at most {most_fds}; VmRSS {memory_before} kB before, at most {most_rss} kB during, {memory_after} kB after"
    );
    assert!(answered, "/v1/health did not answer during the flood");
    assert!(
        most_fds <= (FD_LIMIT - 128) as usize,
        "the node used {most_fds} of its {FD_LIMIT} descriptors: none left for the bridge"
    );
    assert!(
        most_rss.max(memory_after) < memory_before + 200 * 1024,
        "VmRSS grew from {memory_before} kB to {most_rss} kB"
    );
    drop(streams);

    // Afterwards it serves requests as before.
    let add = Req::post(addr, "/v1/request/calc/add", r#"{"a":40,"b":2}"#)
        .send(addr)
        .await;
    assert_eq!(add.status, 200, "{add:?}");
    assert_eq!(add.json()["reply"]["sum"], 42);
}
