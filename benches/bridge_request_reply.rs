//! Request/reply between two colony nodes bridged over loopback TCP, against a raw
//! tokio TCP echo of the same message size, measured in the same process and run:
//! sequential latency (p50, p99) and pipelined throughput with 64 round trips in
//! flight. Prints the figures, the ratios and whether the bars hold.
//!
//! - **baseline**: a length-prefixed echo server on its own arbiter thread (it
//!   echoes everything it has read in one write) and a client on the System thread.
//!   Each message is as long as colony's request frame for the same `Ping`.
//! - **colony**: node `a` (master) runs the `bench` service; node `b` (worker)
//!   joins it and runs none, so `b.request("bench", Ping { n })` crosses the
//!   bridge: serialize, `b`'s bridge thread, TCP, `a`'s bridge thread, router,
//!   dealer, worker thread, and the reply back the same way.
//!
//! - **colony over TLS**: the same pair again, `ta` and `tb`, with mutual TLS on
//!   the bridge (certificates made by `colony::certs` in a temporary directory).
//!
//! Run: `cargo bench --bench bridge_request_reply`. With
//! `COLONY_BENCH_PIPELINED_ONLY=N` it runs only N rounds of colony's pipelined
//! phase over plain TCP (`COLONY_BENCH_N` round trips each, default 200,000), for
//! a profiler.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use colony::bridge::frame::DEFAULT_MAX_FRAME;
use colony::bridge::wire::{encode_request, RequestHead};
use colony::{App, Node, NodeConfig, Request};
use common::*;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Workers of the `bench` service on node `a`.
const WORKERS: usize = 1;

/// Bars: colony's sequential p50 at most this many times the echo's...
const P50_BAR: f64 = 1.5;
/// ...and at least this many pipelined round trips per second.
const PIPELINED_BAR: f64 = 300_000.0;

/// The length of colony's request frame for `Ping { n }` to `bench`.
fn colony_request_len(n: u64) -> usize {
    let payload = serde_json::to_vec(&Ping { n }).expect("ping is JSON");
    let mut frame = BytesMut::new();
    let head = RequestHead {
        id: 1_000_000,
        timeout_ms: 10_000,
        flags: 0,
        worker: 0,
        trace: None,
        service: "bench",
        subject: Ping::SUBJECT,
    };
    encode_request(&mut frame, DEFAULT_MAX_FRAME, head, &payload).expect("request encodes");
    frame.len()
}

// ---------------------------------------------------------------------------
// Baseline: raw TCP echo of length-prefixed messages.

/// Splits whole `u32`-length-prefixed messages off the front of `buf`; returns how
/// many there were and copies them to `out` if given.
fn take_messages(buf: &mut BytesMut, mut out: Option<&mut BytesMut>) -> usize {
    let mut count = 0;
    while buf.len() >= 4 {
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            break;
        }
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(&buf[..4 + len]);
        }
        buf.advance(4 + len);
        count += 1;
    }
    count
}

/// Echoes every whole message it has read, all of one read in one write.
async fn echo_connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut output = BytesMut::with_capacity(64 * 1024);
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if take_messages(&mut input, Some(&mut output)) > 0 {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
    }
}

/// Starts the echo server on `arbiter`; returns its address.
fn start_echo(arbiter: &actix_rt::ArbiterHandle) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("echo binds");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("echo address");
    arbiter.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        while let Ok((stream, _)) = listener.accept().await {
            actix_rt::spawn(echo_connection(stream));
        }
    });
    addr
}

struct EchoClient {
    stream: TcpStream,
    message: Vec<u8>,
    input: BytesMut,
}

impl EchoClient {
    async fn connect(addr: SocketAddr, len: usize) -> EchoClient {
        let stream = TcpStream::connect(addr).await.expect("echo connects");
        stream.set_nodelay(true).expect("nodelay");
        let mut message = Vec::with_capacity(len);
        message.extend_from_slice(&(len as u32 - 4).to_be_bytes());
        message.resize(len, b'x');
        EchoClient {
            stream,
            message,
            input: BytesMut::with_capacity(64 * 1024),
        }
    }

    async fn round_trip(&mut self) {
        self.stream
            .write_all(&self.message)
            .await
            .expect("echo write");
        let mut reply = [0u8; 256];
        let reply = &mut reply[..self.message.len()];
        self.stream.read_exact(reply).await.expect("echo read");
        assert_eq!(reply, &self.message[..]);
    }

    async fn sequential(&mut self, count: usize) -> (Duration, Duration) {
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            self.round_trip().await;
            samples.push(start.elapsed());
        }
        percentiles(samples)
    }

    /// Keeps `IN_FLIGHT` messages outstanding: writes as many as came back, in one
    /// write, each time replies arrive.
    async fn pipelined(&mut self, count: usize) -> f64 {
        let start = Instant::now();
        let mut batch = Vec::with_capacity(self.message.len() * IN_FLIGHT);
        let mut sent = IN_FLIGHT.min(count);
        for _ in 0..sent {
            batch.extend_from_slice(&self.message);
        }
        self.stream.write_all(&batch).await.expect("echo write");
        let mut done = 0;
        while done < count {
            let read = self
                .stream
                .read_buf(&mut self.input)
                .await
                .expect("echo read");
            assert!(read > 0, "echo server closed");
            let back = take_messages(&mut self.input, None);
            done += back;
            let more = back.min(count - sent);
            if more > 0 {
                batch.clear();
                for _ in 0..more {
                    batch.extend_from_slice(&self.message);
                }
                self.stream.write_all(&batch).await.expect("echo write");
                sent += more;
            }
        }
        count as f64 / start.elapsed().as_secs_f64()
    }

    async fn measure(&mut self) -> Figures {
        for _ in 0..2_000 {
            self.round_trip().await;
        }
        let (p50, p99) = self.sequential(SEQUENTIAL).await;
        let per_sec = self.pipelined(PIPELINED).await;
        Figures { p50, p99, per_sec }
    }
}

// ---------------------------------------------------------------------------
// colony: two nodes bridged over loopback.

async fn call(node: &Node, n: u64) -> u64 {
    match node.request("bench", Ping { n }).await {
        Ok(pong) => pong.n,
        Err(e) => panic!("colony round trip failed: {e}"),
    }
}

async fn colony_sequential(node: &Node) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for n in 0..SEQUENTIAL as u64 {
        let start = Instant::now();
        assert_eq!(call(node, n).await, n);
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

async fn colony_pipelined(node: &Node, count: usize) -> f64 {
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut done = 0usize;
    while done < count {
        while in_flight.len() < IN_FLIGHT && (sent as usize) < count {
            let n = sent;
            in_flight.push(async move { (n, call(node, n).await) });
            sent += 1;
        }
        if let Some((n, back)) = in_flight.next().await {
            assert_eq!(n, back);
            done += 1;
        }
    }
    count as f64 / start.elapsed().as_secs_f64()
}

async fn colony_measure(node: &Node) -> Figures {
    for n in 0..2_000 {
        call(node, n).await;
    }
    let (p50, p99) = colony_sequential(node).await;
    let per_sec = colony_pipelined(node, PIPELINED).await;
    Figures { p50, p99, per_sec }
}

fn start_config(yaml: &str) -> NodeConfig {
    let mut config = NodeConfig::parse(Path::new("bench.yaml"), yaml).expect("bench config");
    config.state.mode = colony::config::StateMode::Memory;
    config
}

fn main() {
    let mut secret = tempfile::NamedTempFile::new().expect("secret file");
    secret
        .write_all(b"a-cluster-secret-for-the-bridge-bench")
        .expect("write secret");
    let secret = secret.path().display().to_string();

    let system = actix_rt::System::new();
    system.block_on(async {
        let message_len = colony_request_len(PIPELINED as u64);
        let echo_arbiter = actix_rt::Arbiter::new();
        let echo_addr = start_echo(&echo_arbiter.handle());
        let mut echo = EchoClient::connect(echo_addr, message_len).await;

        let app = || App::new().service("bench", Echo::default).handles::<Ping>();
        let a = Node::start(
            app(),
            start_config(&format!(
                "node: {{ name: a, role: master, threads: 1 }}
bridge: {{ listen: 127.0.0.1:0, secret_file: {secret} }}
services:
  bench: {{ workers: {WORKERS}, concurrency: 64, queue: 1024, timeout: 10s }}
"
            )),
        )
        .await
        .expect("node a starts");
        let a_addr = a.bridge_addr().expect("a has a bridge");
        let b = Node::start(
            app(),
            start_config(&format!(
                "node: {{ name: b, role: worker, threads: 1 }}
bridge: {{ listen: 127.0.0.1:0, join: [{a_addr}], secret_file: {secret} }}
"
            )),
        )
        .await
        .expect("node b starts");
        // The same pair over mutual TLS: `ta` and `tb`, certificates made here.
        let certs = tempfile::tempdir().expect("a directory for certificates");
        colony::certs::write(certs.path(), &["ta".to_string(), "tb".to_string()])
            .expect("certificates");
        let tls = |node: &str| {
            let dir = certs.path().display();
            format!("tls: {{ cert: {dir}/{node}.pem, key: {dir}/{node}.key, ca: {dir}/ca.pem }}")
        };
        let ta = Node::start(
            app(),
            start_config(&format!(
                "node: {{ name: ta, role: master, threads: 1 }}
bridge: {{ listen: 127.0.0.1:0, secret_file: {secret}, {} }}
services:
  bench: {{ workers: {WORKERS}, concurrency: 64, queue: 1024, timeout: 10s }}
",
                tls("ta")
            )),
        )
        .await
        .expect("node ta starts");
        let ta_addr = ta.bridge_addr().expect("ta has a bridge");
        let tb = Node::start(
            app(),
            start_config(&format!(
                "node: {{ name: tb, role: worker, threads: 1 }}
bridge: {{ listen: 127.0.0.1:0, join: [{ta_addr}], secret_file: {secret}, {} }}
",
                tls("tb")
            )),
        )
        .await
        .expect("node tb starts");
        // Wait until b and tb know their master's `bench` service.
        for (node, master) in [(&b, "a"), (&tb, "ta")] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while node.request("bench", Ping { n: 0 }).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "{} never reached {master}'s bench service",
                    node.name()
                );
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // For a profiler: only colony's pipelined phase, over plain TCP.
        if let Ok(rounds) = std::env::var("COLONY_BENCH_PIPELINED_ONLY") {
            let count = std::env::var("COLONY_BENCH_N")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(PIPELINED);
            for _ in 0..rounds.parse::<usize>().unwrap_or(5) {
                println!("pipelined: colony {:.0}/s", colony_pipelined(&b, count).await);
            }
            return;
        }
        let mut tls_runs = Vec::new();

        let mut echo_runs = Vec::new();
        let mut colony_runs = Vec::new();
        for round in 1..=ROUNDS {
            // Alternate who goes first, so neither always gets the warmer machine.
            if round % 2 == 1 {
                echo_runs.push(echo.measure().await);
                colony_runs.push(colony_measure(&b).await);
            } else {
                colony_runs.push(colony_measure(&b).await);
                echo_runs.push(echo.measure().await);
            }
            tls_runs.push(colony_measure(&tb).await);
            eprintln!("round {round}/{ROUNDS} done");
        }
        let (echo, colony) = (best(&echo_runs), best(&colony_runs));
        let (tls, tls_mid) = (best(&tls_runs), median(&tls_runs));
        let (echo_mid, colony_mid) = (median(&echo_runs), median(&colony_runs));

        println!(
            "request/reply across two nodes on loopback, best (median) of {ROUNDS} rounds \
             ({message_len}-byte echo messages, {WORKERS} bench worker(s))"
        );
        println!(
            "{:<36} {:>22} {:>22} {:>22}",
            "", "p50", "p99", "pipelined/s"
        );
        for (name, f, m) in [
            ("raw tokio TCP echo (baseline)", &echo, &echo_mid),
            ("colony b.request → bridge → a", &colony, &colony_mid),
            ("the same over mutual TLS (tb → ta)", &tls, &tls_mid),
        ] {
            println!(
                "{:<36} {:>22} {:>22} {:>22}",
                name,
                format!("{} ({})", us(f.p50), us(m.p50)),
                format!("{} ({})", us(f.p99), us(m.p99)),
                format!("{:.0} ({:.0})", f.per_sec, m.per_sec)
            );
        }
        let p50_ratio = colony.p50.as_secs_f64() / echo.p50.as_secs_f64();
        let throughput_ratio = colony.per_sec / echo.per_sec;
        let p50_mid = colony_mid.p50.as_secs_f64() / echo_mid.p50.as_secs_f64();
        println!();
        println!(
            "sequential p50: colony/echo = {p50_ratio:.2}x (medians {p50_mid:.2}x; bar <= {P50_BAR:.2}x): {}",
            if p50_ratio <= P50_BAR {
                "met"
            } else {
                "MISSED"
            }
        );
        println!(
            "pipelined ({IN_FLIGHT} in flight): colony {:.0}/s (median {:.0}/s; bar >= {PIPELINED_BAR:.0}/s): {} \
             ({:.2}x of the bar; colony/echo = {throughput_ratio:.2}x)",
            colony.per_sec,
            colony_mid.per_sec,
            if colony.per_sec >= PIPELINED_BAR {
                "met"
            } else {
                "MISSED"
            },
            colony.per_sec / PIPELINED_BAR,
        );
        println!(
            "over TLS: sequential p50: colony/echo = {:.2}x (medians {:.2}x); pipelined ({IN_FLIGHT} in flight): colony {:.0}/s (median {:.0}/s); TLS/plain = {:.2}x",
            tls.p50.as_secs_f64() / echo.p50.as_secs_f64(),
            tls_mid.p50.as_secs_f64() / echo_mid.p50.as_secs_f64(),
            tls.per_sec,
            tls_mid.per_sec,
            tls.per_sec / colony.per_sec,
        );
        tb.shutdown(Duration::from_secs(1)).await;
        ta.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
        a.shutdown(Duration::from_secs(1)).await;
        echo_arbiter.stop();
    });
}
