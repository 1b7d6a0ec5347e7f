//! `node.request_timeout(service, msg, Duration::MAX)` to a messenger-backed
//! service is answered like the same call to a service of the app: the
//! deadline saturates, as `deadline::after` does for every other service
//! ("durations that may come from outside").

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A Node listener answering every request `{"sum":3,"by":"node"}`.
async fn answering_listener() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    actix_rt::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            actix_rt::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.iter().position(|&b| b == 0) {
                        let message: Vec<u8> = buf.drain(..=end).collect();
                        let message: serde_json::Value =
                            serde_json::from_slice(&message[..end]).unwrap();
                        let reply = serde_json::json!({
                            "id": message["id"],
                            "data": {"sum": 3, "by": "node"},
                        });
                        let mut reply = serde_json::to_vec(&reply).unwrap();
                        reply.push(0);
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[actix_rt::test]
async fn a_call_with_duration_max_to_a_messenger_backed_service_does_not_panic() {
    let listener = answering_listener().await;
    let node = start_node(&format!(
        "node: {{ name: m, threads: 1 }}
state: {{ mode: memory }}
services:
  calc: {{ workers: 1 }}
  legacy: {{ messenger: [\"{listener}\"] }}
"
    ))
    .await;
    // Connected: a call with a sane timeout is answered.
    wait_until("the speaker is connected", Duration::from_secs(10), || {
        let node = node.clone();
        async move {
            match node
                .request_timeout("legacy", Add { a: 1, b: 2 }, Duration::from_secs(5))
                .await
            {
                Ok(added) => added.sum == 3,
                Err(e) if e.kind == ErrorKind::NodeDown => false,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;

    // The same call to a service of the app saturates.
    let added = node
        .request_timeout("calc", Add { a: 1, b: 2 }, Duration::MAX)
        .await
        .expect("calc answers");
    assert_eq!(added.sum, 3);
    // A caller's own huge timeout.
    let call = {
        let node = node.clone();
        actix_rt::spawn(async move {
            node.request_timeout("legacy", Add { a: 1, b: 2 }, Duration::MAX)
                .await
        })
    };
    match call.await {
        Ok(answer) => assert_eq!(answer.expect("answered").sum, 3),
        Err(e) => panic!("a call with Duration::MAX panicked: {e}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}
