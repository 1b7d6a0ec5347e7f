//! HTTP/1.1 pipelining by clients that never read: 40 connections, each with a
//! 4 KiB receive buffer, writing pipelined `GET /metrics` for as long as the
//! node takes them and reading nothing, against a node in its own process (so
//! its VmRSS is its own). The node must read little of them, close each
//! connection once its writes have made no progress for api.read_timeout, hold
//! a bounded amount of memory meanwhile, and answer `/v1/health` throughout. A
//! client that pipelines and reads along is served in full on its kept-alive
//! connection.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::child::{self, open_fds};
use super::*;

const ATTACKERS: usize = 40;
/// Requests an attacker writes at once, again and again.
const REQUESTS: usize = 1000;
/// Before pacing, each such connection made the node hold 13 to 18 MB.
const MEMORY_BOUND_KB: u64 = 64 * 1024;

const PIPELINING_CONFIG: &str = "
node: { name: pipelined, role: master, threads: 1 }
api: { listen: 127.0.0.1:0, read_timeout: 1s }
services:
  calc: { workers: 4 }
  chaos: { workers: 4 }
";

/// A connection with a 4 KiB receive buffer, as a client that reads nothing.
async fn unread(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    socket.connect(addr).await
}

/// Writes `requests` again and again, and never reads, until the node closes
/// the connection: the error that ended it.
async fn attacker(addr: SocketAddr, requests: Vec<u8>, connected: Arc<AtomicUsize>) -> io::Error {
    let mut stream = match unread(addr).await {
        Ok(stream) => stream,
        Err(e) => return e,
    };
    connected.fetch_add(1, Ordering::Relaxed);
    loop {
        if let Err(e) = stream.write_all(&requests).await {
            return e;
        }
    }
}

/// Reads answers to pipelined requests until `n` have come or the stream ends.
async fn read_answers(stream: &mut TcpStream, n: usize) -> Vec<Answer> {
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    while answers.len() < n {
        let Ok(Ok(read)) = timeout(EXCHANGE, stream.read(&mut chunk)).await else {
            break;
        };
        if read == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..read]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                break;
            }
            answers.push(parse(&buf[..end + 4 + length], false));
            buf.drain(..end + 4 + length);
        }
    }
    answers
}

pub async fn pipelining_without_reading() {
    let node = child::start(PIPELINING_CONFIG, |_| {}).await;
    let (pid, addr) = (node.pid.clone(), node.addr);
    let health = || async move {
        timeout(EXCHANGE, Req::get(addr, "/v1/health").send(addr))
            .await
            .map_or(0, |a| a.status)
    };
    assert_eq!(health().await, 200);
    let metrics = Req::get(addr, "/metrics").send(addr).await;
    assert_eq!(metrics.status, 200, "{metrics:?}");

    let many = Req::get(addr, "/metrics")
        .header("Connection", "keep-alive")
        .bytes();
    let memory_before = proc_kb(&pid, "VmRSS");
    let requests = many.repeat(REQUESTS);
    let connected = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(attacker(addr, requests.clone(), connected.clone())))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pid, stop) = (pid.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut most_fds, mut most_rss) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                most_fds = most_fds.max(open_fds(&pid));
                most_rss = most_rss.max(proc_kb(&pid, "VmRSS"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (most_fds, most_rss)
        })
    };

    // While the attackers write, health answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected.load(Ordering::Relaxed) < ATTACKERS {
        assert!(
            Instant::now() < deadline,
            "{} of {ATTACKERS} attackers connected",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answered = health().await;

    // The node closes every connection whose client reads nothing: each
    // attacker's writing fails.
    let mut ends = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for attacker in attackers {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(end) = timeout(left, attacker).await else {
            panic!(
                "the node still holds connections that read nothing: {} fds, VmRSS {memory_before} kB before, {} kB now",
                open_fds(&pid),
                proc_kb(&pid, "VmRSS")
            );
        };
        ends.push(end.expect("attacker").kind());
    }
    stop.store(true, Ordering::Relaxed);
    let (most_fds, most_rss) = sampler.await.expect("sampler");
    let memory_after = proc_kb(&pid, "VmRSS");
    println!(
        "pipelining: metrics {} bytes; node fds at most {most_fds}; VmRSS {memory_before} kB before, at most {most_rss} kB during, {memory_after} kB after; {} of {ATTACKERS} attackers ended by a reset",
        metrics.body.len(),
        ends.iter()
            .filter(|k| **k == io::ErrorKind::ConnectionReset)
            .count(),
    );
    assert_eq!(answered, 200, "/v1/health during the attack");
    assert!(
        most_rss.max(memory_after) < memory_before + MEMORY_BOUND_KB,
        "VmRSS grew from {memory_before} kB to {most_rss} kB"
    );
    assert!(
        ends.iter().all(|kind| matches!(
            kind,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )),
        "{ends:?}"
    );

    // Afterwards it serves as before.
    assert_eq!(health().await, 200);
    // A client that pipelines and reads along gets every answer, and keeps its
    // connection.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let one = Req::get(addr, "/v1/health")
        .header("Connection", "keep-alive")
        .bytes();
    let mut pipelined = one.repeat(300);
    pipelined.extend(many.repeat(30));
    stream.write_all(&pipelined).await.expect("write");
    let answers = read_answers(&mut stream, 330).await;
    assert_eq!(answers.len(), 330, "pipelined answers");
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    stream.write_all(&one).await.expect("write again");
    let again = read_answers(&mut stream, 1).await;
    assert_eq!(again.first().map(|a| a.status), Some(200), "{again:?}");
    drop(stream);

    let add = Req::post(addr, "/v1/request/calc/add", r#"{"a":40,"b":2}"#)
        .send(addr)
        .await;
    assert_eq!(add.status, 200, "{add:?}");
    assert_eq!(add.json()["reply"]["sum"], 42);
}
