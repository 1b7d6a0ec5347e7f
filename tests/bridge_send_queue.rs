//! A peer's send queue is bounded: when the other node stops reading, frames pile up
//! in the socket, then in the queue, and past `bridge.queue` callers get
//! `Overloaded` at once instead of memory growing without bound.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use colony::bridge::frame::FrameCodec;
use colony::bridge::handshake;
use colony::bridge::wire::{Control, Member, Offer};
use colony::ErrorKind;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

const SECRET: &str = "a-cluster-secret-for-tests-only";

#[actix_rt::test]
async fn a_peer_that_stops_reading_fills_the_queue_and_callers_are_overloaded() {
    // A fake master: it completes the real handshake, announces a `calc` service,
    // then never reads again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = listener.local_addr().unwrap();
    let silent = actix_rt::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::default());
        let secret = handshake::Secret::new(SECRET.as_bytes()).unwrap();
        let peer = handshake::accept(&mut framed, "fake", &secret)
            .await
            .unwrap();
        assert_eq!(peer, "caller");
        // The caller's Join arrives first.
        let joined = framed.next().await.unwrap().unwrap();
        assert_eq!(joined.kind, colony::bridge::wire::CONTROL);
        let me = Member {
            name: "fake".into(),
            role: "master".into(),
            bridge: fake,
            api: None,
            services: vec![Offer {
                name: "calc".into(),
                workers: 1,
                capacity: 1_000,
                timeout_ms: 30_000,
            }],
        };
        let mut frame = BytesMut::new();
        Control::Members { members: vec![me] }
            .encode(&mut frame, usize::MAX)
            .unwrap();
        framed.get_mut().try_write(&frame).unwrap();
        framed.flush().await.unwrap();
        // Hold the connection open without reading a byte.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(framed);
    });

    let secret = secret_file(SECRET);
    let caller = start_node(&format!(
        "node: {{ name: caller, role: worker, threads: 1 }}\n\
         bridge: {{ listen: 127.0.0.1:0, join: [{fake}], secret_file: {}, heartbeat: 10s, queue: 4 }}\n",
        secret.path().display()
    ))
    .await;
    wait_until(
        "the fake master is a member",
        Duration::from_secs(10),
        || async {
            caller
                .cluster_status()
                .await
                .nodes
                .iter()
                .any(|n| n.name == "fake")
        },
    )
    .await;

    // 64 requests of 256 KiB each, 16 MiB in all: the fake never reads, so after the socket's
    // buffers the four queue places fill and the next callers are turned away.
    let big = "x".repeat(256 * 1024);
    let mut calls: futures::stream::FuturesUnordered<_> = (0..64)
        .map(|_| {
            let caller = caller.clone();
            let user = Some(big.clone());
            actix_rt::spawn(async move {
                caller
                    .request_timeout("calc", Secret { user }, Duration::from_secs(20))
                    .await
            })
        })
        .collect();
    // Overloaded answers come at once; the others wait for a reply that never
    // comes, so the first call to finish is a turned-away one.
    let first = tokio::time::timeout(Duration::from_secs(10), calls.next()).await;
    let overloaded = match first {
        Ok(Some(Ok(Err(e)))) if e.kind == ErrorKind::Overloaded => Some(e),
        other => panic!("expected an Overloaded caller first, got {other:?}"),
    };
    let overloaded = overloaded.expect("a caller is turned away once the queue is full");
    assert!(
        overloaded
            .message
            .contains("send queue to node fake is full"),
        "{}",
        overloaded.message
    );
    silent.abort();
    caller.shutdown(Duration::from_millis(100)).await;
}
