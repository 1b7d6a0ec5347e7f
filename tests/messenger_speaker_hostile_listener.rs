//! Node listeners that colony's Speaker dials and that misbehave: one answers
//! with bytes that are not JSON, one with a message that never ends, one never
//! answers, one closes the connection once asked, one answers ids it was never
//! asked (and `null`, numbers, objects) before the right one. Each call fails
//! with the error its listener earned (`NodeDown` when the connection goes,
//! `Timeout` when nothing comes), the right reply is never
//! mistaken, and the node keeps serving everything else.

mod common;

use std::future::Future;
use std::time::Duration;

use colony::{ErrorKind, Node, ServiceError};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener whose every connection is handed to `serve`.
async fn listener<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    actix_rt::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            actix_rt::spawn(serve(stream));
        }
    });
    addr
}

/// The next `\0`-ended message on `stream`, as JSON; `None` once it closes.
async fn next_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<serde_json::Value> {
    loop {
        if let Some(end) = buf.iter().position(|&b| b == 0) {
            let message: Vec<u8> = buf.drain(..=end).collect();
            return Some(serde_json::from_slice(&message[..end]).expect("colony sends JSON"));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn frame(value: serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&value).unwrap();
    bytes.push(0);
    bytes
}

/// Calls `service` until a call reaches a connected listener; its error.
async fn first_answered_error(node: &Node, service: &str, timeout: Duration) -> ServiceError {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service}: never connected"
        );
        let answer = node
            .request_timeout(service, Add { a: 1, b: 2 }, timeout)
            .await;
        match answer {
            Err(e) if e.kind == ErrorKind::NodeDown && e.message.contains("is connected") => {
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return e,
            Ok(added) => panic!("{service}: answered {added:?}"),
        }
    }
}

#[actix_rt::test]
async fn hostile_listeners_fail_only_their_own_calls_with_the_right_error() {
    let garbage = listener(|mut stream| async move {
        let mut buf = Vec::new();
        while next_message(&mut stream, &mut buf).await.is_some() {
            let _ = stream.write_all(b"\xff\xfe not json }\0").await;
        }
    })
    .await;
    let endless = listener(|mut stream| async move {
        let mut buf = Vec::new();
        if next_message(&mut stream, &mut buf).await.is_some() {
            let chunk = vec![b'x'; 64 * 1024];
            let _ = stream.write_all(b"{\"id\":\"").await;
            while stream.write_all(&chunk).await.is_ok() {}
        }
    })
    .await;
    let silent = listener(|mut stream| async move {
        let mut buf = vec![0u8; 4096];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let closing = listener(|mut stream| async move {
        let mut buf = Vec::new();
        let _ = next_message(&mut stream, &mut buf).await;
    })
    .await;
    let unasked = listener(|mut stream| async move {
        let mut buf = Vec::new();
        while let Some(request) = next_message(&mut stream, &mut buf).await {
            let id = request["id"].clone();
            let mut out = Vec::new();
            for wrong in [
                serde_json::json!("id-999999999"),
                serde_json::json!(null),
                serde_json::json!(7),
                serde_json::json!({ "id": id.clone() }),
                serde_json::json!([id.clone()]),
                serde_json::json!(format!("{}x", id.as_str().unwrap_or(""))),
            ] {
                out.extend(frame(serde_json::json!({
                    "id": wrong,
                    "data": { "sum": -1, "by": "wrong" },
                })));
            }
            // No id at all; no data at all.
            out.extend(frame(
                serde_json::json!({ "data": { "sum": -2, "by": "none" } }),
            ));
            out.extend(frame(serde_json::json!({ "subject": "hello" })));
            out.extend(frame(serde_json::json!({
                "id": id,
                "data": { "sum": 3, "by": "right" },
            })));
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    })
    .await;

    let node = start_node(&format!(
        "node: {{ name: m, threads: 1 }}
state: {{ mode: memory }}
services:
  calc: {{ workers: 1 }}
  garbage: {{ messenger: [\"{garbage}\"] }}
  endless: {{ messenger: [\"{endless}\"] }}
  silent: {{ messenger: [\"{silent}\"] }}
  closing: {{ messenger: [\"{closing}\"] }}
  unasked: {{ messenger: [\"{unasked}\"] }}
messenger: {{ max_message: 65536 }}
"
    ))
    .await;
    let timeout = Duration::from_secs(3);

    let e = first_answered_error(&node, "garbage", timeout).await;
    assert_eq!(e.kind, ErrorKind::NodeDown, "garbage: {e}");
    let e = first_answered_error(&node, "endless", timeout).await;
    assert_eq!(e.kind, ErrorKind::NodeDown, "endless: {e}");
    let e = first_answered_error(&node, "closing", timeout).await;
    assert_eq!(e.kind, ErrorKind::NodeDown, "closing: {e}");
    let e = first_answered_error(&node, "silent", Duration::from_millis(300)).await;
    assert_eq!(e.kind, ErrorKind::Timeout, "silent: {e}");

    // Replies to ids never asked are ignored; the right one is the answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let added = loop {
        match node
            .request_timeout("unasked", Add { a: 1, b: 2 }, timeout)
            .await
        {
            Ok(added) => break added,
            Err(e) if e.kind == ErrorKind::NodeDown && tokio::time::Instant::now() < deadline => {
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unasked: {e}"),
        }
    };
    assert_eq!((added.sum, added.by.as_str()), (3, "right"));
    for _ in 0..20 {
        let added = node
            .request_timeout("unasked", Add { a: 1, b: 2 }, timeout)
            .await
            .expect("unasked answers");
        assert_eq!((added.sum, added.by.as_str()), (3, "right"));
    }

    // The rest of the node is untouched.
    let added = node
        .request("calc", Add { a: 40, b: 2 })
        .await
        .expect("calc answers");
    assert_eq!(added.sum, 42);
    node.shutdown(Duration::from_secs(1)).await;
}
