//! Calls to a messenger-backed service whose caller gives up (the future is
//! dropped: an HTTP client that disconnects, a Speaker that closes its
//! connection to colony's listener while colony proxies its requests to a Node
//! listener, a `select!`/`timeout` around `node.request`) must not stay counted
//! against the listener. After any number of them, a call to a listener that is
//! connected but silent still fails with `Timeout`.

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;
use futures::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A Node listener that reads everything and never answers.
async fn silent_listener() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    actix_rt::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            actix_rt::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[actix_rt::test]
async fn dropped_calls_do_not_fill_the_pending_table() {
    let listener = silent_listener().await;
    let node = start_node(&format!(
        "node: {{ name: m, threads: 1 }}
state: {{ mode: memory }}
services:
  calc: {{ workers: 1 }}
  legacy: {{ messenger: [\"{listener}\"], timeout: 30s }}
"
    ))
    .await;
    wait_until("the speaker is connected", Duration::from_secs(10), || {
        let node = node.clone();
        async move {
            match node
                .request_timeout("legacy", Add { a: 1, b: 2 }, Duration::from_millis(50))
                .await
            {
                Err(e) if e.kind == ErrorKind::Timeout => true,
                Err(e) if e.kind == ErrorKind::NodeDown => false,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;

    // Calls abandoned by their callers once sent.
    const DROPPED: usize = 70_000;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut dropped = 0;
    while dropped < DROPPED {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{dropped} calls dropped"
        );
        let call = node
            .request_timeout("legacy", Add { a: 1, b: 2 }, Duration::from_secs(30))
            .now_or_never();
        match call {
            // Sent and waiting: its caller gives up.
            None => dropped += 1,
            // The write queue is full: let the writer drain it.
            Some(Err(e))
                if e.kind == ErrorKind::Overloaded && e.message.contains("to be written") =>
            {
                actix_rt::time::sleep(Duration::from_millis(1)).await;
            }
            Some(other) => panic!("after {dropped} dropped calls: {other:?}"),
        }
        if dropped % 512 == 0 {
            tokio::task::yield_now().await;
        }
    }

    // Nothing waits for the listener now: a call waits its timeout.
    let answer = node
        .request_timeout("legacy", Add { a: 1, b: 2 }, Duration::from_millis(200))
        .await;
    match answer {
        Err(e) if e.kind == ErrorKind::Timeout => {}
        other => panic!("after {DROPPED} dropped calls: {other:?}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}
