//! The messenger listener under hostile input: a message past
//! `messenger.max_message` (ended or not), bytes that are not JSON, JSON that
//! is not a messenger message, and more connections than
//! `messenger.max_connections` each close only their own connection (or are
//! refused at once); the node keeps serving every other Speaker, and a
//! request's id is echoed exactly, whatever JSON it is.

mod common;

use std::time::Duration;

use colony::Node;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn node() -> Node {
    start_node(
        "node: { name: m, threads: 1 }
state: { mode: memory }
services: { calc: { workers: 1, queue: 4096 } }
messenger:
  listen: 127.0.0.1:0
  max_message: 1024
  max_connections: 3
  routes: { add: calc/add }
",
    )
    .await
}

/// Sends `bytes`, then reads until the listener closes the connection or
/// `until` is in what was read; what was read.
async fn exchange(stream: &mut TcpStream, bytes: &[u8], until: Option<&str>) -> String {
    stream.write_all(bytes).await.expect("write");
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("an answer or a close within 10 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        read.extend_from_slice(&buf[..n]);
        if until.is_some_and(|u| String::from_utf8_lossy(&read).contains(u)) {
            break;
        }
    }
    String::from_utf8_lossy(&read).into_owned()
}

/// Whether the listener closed `stream` (it reads end-of-file).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

const ADD: &[u8] = b"{\"id\":\"id-1\",\"subject\":\"add\",\"data\":{\"a\":40,\"b\":2}}\0";

#[actix_rt::test]
async fn hostile_speakers_close_only_their_own_connection() {
    let node = node().await;
    let addr = node.messenger_addr().expect("a messenger listener");
    let mut good = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(&mut good, ADD, Some("\0")).await;
    assert!(
        answer.starts_with("{\"id\":\"id-1\",\"data\":{"),
        "{answer}"
    );
    assert!(answer.contains("\"sum\":42"), "{answer}");

    // Too long, with no terminator in sight: closed before it is all buffered.
    let mut long = TcpStream::connect(addr).await.unwrap();
    let _ = long.write_all(&vec![b' '; 4096]).await;
    assert!(closed(&mut long).await, "a message past max_message closes");
    // Too long, terminated.
    let mut long = TcpStream::connect(addr).await.unwrap();
    let mut message = vec![b'['; 2000];
    message.push(0);
    let _ = long.write_all(&message).await;
    assert!(closed(&mut long).await);
    // Not JSON; JSON that is no messenger message; a subject that is no string.
    for bad in [
        &b"\xff\xfe garbage\0"[..],
        b"[1,2,3]\0",
        b"{\"id\":\"x\",\"subject\":7}\0",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(bad).await;
        assert!(
            closed(&mut stream).await,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }

    // Ids are echoed exactly, whatever JSON they are; a huge number of
    // requests on one connection is answered in full.
    let mut odd = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(
        &mut odd,
        b"{\"id\":{\"deep\":[1,2.50,\"\\u00e9\"]},\"subject\":\"add\",\"data\":{\"a\":1,\"b\":1}}\0",
        Some("\0"),
    )
    .await;
    assert!(
        answer.starts_with("{\"id\":{\"deep\":[1,2.50,\"\\u00e9\"]},\"data\":{"),
        "{answer}"
    );
    let many: Vec<u8> = ADD.repeat(3_000);
    odd.write_all(&many).await.unwrap();
    let mut read = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while read.iter().filter(|&&b| b == 0).count() < 3_000 {
        let n = tokio::time::timeout(Duration::from_secs(10), odd.read(&mut buf))
            .await
            .expect("answers keep coming")
            .expect("read");
        assert!(n > 0, "the connection closed");
        read.extend_from_slice(&buf[..n]);
    }
    let answers: Vec<&[u8]> = read.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    assert_eq!(answers.len(), 3_000);
    assert!(
        answers
            .iter()
            .all(|a| a == b"{\"id\":\"id-1\",\"data\":{\"sum\":42,\"by\":\"m/calc/0\"}}"),
        "{}",
        answers
            .iter()
            .map(|a| String::from_utf8_lossy(a))
            .find(|a| !a.contains("42"))
            .unwrap_or_default()
    );

    // Past max_connections (3: `good`, `odd`, this one), the next is closed
    // at once; the others are still served.
    let _third = TcpStream::connect(addr).await.unwrap();
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed(&mut fourth).await,
        "a connection past the cap closes"
    );
    let answer = exchange(&mut good, ADD, Some("\0")).await;
    assert!(answer.contains("\"sum\":42"), "{answer}");
    node.shutdown(Duration::from_secs(1)).await;
}
