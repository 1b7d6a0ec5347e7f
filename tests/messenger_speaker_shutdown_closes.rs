//! A node that shuts down closes its connections to the Node listeners it
//! calls, including one to a listener that stopped reading (colony's write
//! queue for it full).

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;
use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Debug, Clone, actix::Message, serde::Serialize, serde::Deserialize)]
#[rtype(result = "Result<Added, colony::ServiceError>")]
struct Big {
    pad: String,
}
impl colony::Request for Big {
    const SUBJECT: &'static str = "big";
}

/// The state (`/proc/net/tcp`, hex) of the socket from local port `local` to
/// remote port `remote`, if it exists.
fn socket_state(local: u16, remote: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |address: &str| {
        u16::from_str_radix(address.rsplit(':').next().unwrap_or(""), 16).unwrap_or(0)
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 3 && port(fields[1]) == local && port(fields[2]) == remote)
            .then(|| fields[3].to_string())
    })
}

#[actix_rt::test]
async fn shutdown_closes_the_connection_to_a_listener_that_stopped_reading() {
    // A Node listener that never reads; it keeps its end open and reports the
    // port colony dialled from.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, mut accepts) = mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, from)) = listener.accept().await {
            let _ = accepted.send(from.port());
            held.push(stream);
        }
    });
    let node = start_node(&format!(
        "node: {{ name: m, threads: 1 }}
state: {{ mode: memory }}
services:
  calc: {{ workers: 1 }}
  legacy: {{ messenger: [\"{addr}\"], timeout: 30s }}
"
    ))
    .await;
    let colony_port = tokio::time::timeout(Duration::from_secs(10), accepts.recv())
        .await
        .expect("colony dials the listener")
        .expect("a port");

    // Calls whose frames the listener never reads, until colony's queue for it
    // is full (each caller gives up at once: only the frames matter).
    let pad = "x".repeat(512 * 1024);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never filled"
        );
        let call = node
            .request_timeout("legacy", Big { pad: pad.clone() }, Duration::from_secs(30))
            .now_or_never();
        match call {
            None => {}
            Some(Err(e)) if e.kind == ErrorKind::NodeDown => {}
            Some(Err(e)) if e.kind == ErrorKind::Overloaded => break,
            Some(other) => panic!("{other:?}"),
        }
        // The writer moves what it can to the socket.
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        socket_state(colony_port, addr.port()).as_deref(),
        Some("01"),
        "connected while the node runs"
    );

    node.shutdown(Duration::from_secs(1)).await;
    let waited = tokio::time::Instant::now() + Duration::from_secs(10);
    while socket_state(colony_port, addr.port()).as_deref() == Some("01")
        && tokio::time::Instant::now() < waited
    {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(
        socket_state(colony_port, addr.port()).as_deref(),
        Some("01"),
        "the node shut down; its connection to the Node listener is still established"
    );
}
