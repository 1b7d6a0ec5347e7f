//! A Speaker's sends (messages without an id) on a routed subject are bounded
//! per connection like its requests (`MAX_SERVING`): one connection cannot put
//! any number of calls in flight to the service behind the route, each holding
//! its body until the service's timeout.

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
async fn one_connections_sends_do_not_take_a_whole_service() {
    let legacy = silent_listener().await;
    let node = start_node(&format!(
        "node: {{ name: m, threads: 1 }}
state: {{ mode: memory }}
services:
  calc: {{ workers: 1 }}
  legacy: {{ messenger: [\"{legacy}\"], timeout: 60s }}
messenger:
  listen: 127.0.0.1:0
  routes: {{ old add: legacy/add }}
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

    // One Speaker: 100,000 sends, then a request whose answer (unrouted, so
    // answered at once) says every send before it was dispatched.
    let addr = node.messenger_addr().expect("a messenger listener");
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    actix_rt::spawn(async move {
        let send = b"{\"subject\":\"old add\",\"data\":{\"a\":1,\"b\":2}}\0".repeat(1000);
        for _ in 0..100 {
            if write.write_all(&send).await.is_err() {
                return;
            }
        }
        let _ = write
            .write_all(b"{\"id\":1,\"subject\":\"marker\"}\0")
            .await;
        // Kept open.
        std::future::pending::<()>().await;
    });
    // The marker's answer, unless the listener stopped reading this Speaker
    // (as it should, past its bound: then there is no answer to wait for).
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(3), read.read(&mut buf)).await;

    // Another caller of the service still reaches its (silent) listener.
    for _ in 0..20 {
        let answer = node
            .request_timeout("legacy", Add { a: 1, b: 2 }, Duration::from_millis(100))
            .await;
        match answer {
            Err(e) if e.kind == ErrorKind::Timeout => {}
            other => panic!("after one Speaker's 100,000 sends: {other:?}"),
        }
    }
    node.shutdown(Duration::from_secs(1)).await;
}
