//! `Node::shutdown` with Speakers connected to its messenger listener: every
//! Speaker's connection is closed (one mid-request included), none is left
//! open, and the port takes no new Speaker.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the listener closes `stream`; whether it did within 10 s.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[actix_rt::test]
async fn shutdown_closes_every_speaker() {
    let node = start_node(
        "node: { name: m, threads: 2 }
state: { mode: memory }
services: { calc: { workers: 2 }, chaos: { workers: 1 } }
messenger:
  listen: 127.0.0.1:0
  routes: { add: calc/add, sleep: chaos/sleep }
",
    )
    .await;
    let addr = node.messenger_addr().expect("a messenger listener");
    let mut speakers = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"{\"id\":1,\"subject\":\"add\",\"data\":{\"a\":1,\"b\":2}}\0")
            .await
            .unwrap();
        let mut read = Vec::new();
        let mut buf = [0u8; 1024];
        while !read.contains(&0) {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("an answer")
                .expect("read");
            assert!(n > 0, "closed before answering");
            read.extend_from_slice(&buf[..n]);
        }
        speakers.push(stream);
    }
    // One more mid-request (a long sleep), and one mid-message.
    speakers[0]
        .write_all(b"{\"id\":2,\"subject\":\"sleep\",\"data\":{\"ms\":60000}}\0")
        .await
        .unwrap();
    speakers[1].write_all(b"{\"id\":3,\"subj").await.unwrap();

    node.shutdown(Duration::from_millis(500)).await;
    for (i, speaker) in speakers.iter_mut().enumerate() {
        assert!(closed(speaker).await, "Speaker {i} still connected");
    }
    // The port takes no new Speaker: refused, or closed at once.
    if let Ok(mut late) = TcpStream::connect(addr).await {
        let _ = late.write_all(b"{\"id\":1,\"subject\":\"add\"}\0").await;
        assert!(
            closed(&mut late).await,
            "a Speaker connected after shutdown"
        );
    }
}
