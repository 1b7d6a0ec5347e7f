//! A Speaker that floods requests and never reads its replies: the listener
//! gives up on it once its reply queue is past its bounds (the connection's
//! slot under `messenger.max_connections` is freed), and the connection must
//! then be closed, not left open.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An unrouted request: answered at once on the connection's thread with an
/// error about four times its size.
const NOPE: &[u8] = b"{\"id\":1,\"subject\":\"nope\"}\0";

/// Connects and is answered once (the connection holds the only slot);
/// refused connections are retried until `deadline`.
async fn accepted(addr: std::net::SocketAddr, deadline: tokio::time::Instant) -> TcpStream {
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never freed its slot"
        );
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if stream.write_all(NOPE).await.is_ok() {
            let mut read = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        read.extend_from_slice(&buf[..n]);
                        if read.contains(&0) {
                            return stream;
                        }
                    }
                    // Refused: closed at once.
                    _ => break,
                }
            }
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The state (`/proc/net/tcp`, hex) of the server side of the connection from
/// local port `client` to `server`, if the socket exists.
fn server_side_state(server: u16, client: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |address: &str| {
        u16::from_str_radix(address.rsplit(':').next().unwrap_or(""), 16).unwrap_or(0)
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 3 && port(fields[1]) == server && port(fields[2]) == client)
            .then(|| fields[3].to_string())
    })
}

#[actix_rt::test]
async fn a_speaker_given_up_on_for_not_reading_is_disconnected() {
    let node = start_node(
        "node: { name: m, threads: 1 }
state: { mode: memory }
services: { calc: { workers: 1 } }
messenger:
  listen: 127.0.0.1:0
  max_connections: 1
",
    )
    .await;
    let addr = node.messenger_addr().expect("a messenger listener");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

    const FLOODERS: usize = 4;
    let mut held = Vec::new();
    for _ in 0..FLOODERS {
        // Holds the only slot once answered.
        let stream = accepted(addr, deadline).await;
        let port = stream.local_addr().unwrap().port();
        let (read, mut write) = stream.into_split();
        // Requests for ever (each with a 16 KiB id, echoed in its answer),
        // replies never read.
        let flood = actix_rt::spawn(async move {
            let big = format!(
                "{{\"id\":\"{}\",\"subject\":\"nope\"}}\0",
                "i".repeat(16 * 1024)
            )
            .repeat(16);
            while write.write_all(big.as_bytes()).await.is_ok() {}
        });
        held.push((port, read, flood));
    }
    // The last flooder was given up on too: someone else is served.
    drop(accepted(addr, deadline).await);

    // Every flooder was given up on (its slot went to the next): none of their
    // connections may still be open on the server's side.
    let open = || {
        held.iter()
            .filter(|(port, ..)| server_side_state(addr.port(), *port).as_deref() == Some("01"))
            .count()
    };
    let waited = tokio::time::Instant::now() + Duration::from_secs(10);
    while open() > 0 && tokio::time::Instant::now() < waited {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open(),
        0,
        "of {FLOODERS} Speakers the listener gave up on (max_connections: 1), \
         this many are still connected on the server's side"
    );
    node.shutdown(Duration::from_secs(1)).await;
}
