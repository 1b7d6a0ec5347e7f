//! Hostile bytes on a node's bridge port: random garbage, a truncated frame, a
//! 4 GiB length prefix, garbage and forged handshake messages. Each connection is
//! closed by the node, and the node keeps serving: the healthy link to a joined
//! worker node survives every one of them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use colony::bridge::frame::{Frame, FrameCodec};
use colony::bridge::wire::{self, Control};
use colony::{LifecycleEvent, Node};
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;

const SECRET: &str = "a-cluster-secret-for-tests-only";

/// The bridge's handshake timeout: a connection that sends a plausible but
/// incomplete frame is closed after it at the latest.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on top of it for a loaded machine.
const SLACK: Duration = Duration::from_secs(2);
/// Input the node can refuse at once must be refused well before the handshake
/// timeout: closing only then would mean it was not recognised as bad.
const PROMPTLY: Duration = Duration::from_secs(4);

/// Reads until the node closes the connection (EOF or reset) and returns how
/// long that took; panics if it stays open for `within`.
async fn closed_by_node(stream: &mut TcpStream, what: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let deadline = started + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: the node kept the connection open for {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Writes `bytes`; a node that already closed the connection (reset, broken
/// pipe) is fine, the read that follows sees it.
async fn write_tolerant(stream: &mut TcpStream, bytes: &[u8]) {
    if let Err(e) = stream.write_all(bytes).await {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "writing to the bridge: {e}"
        );
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the bridge")
}

/// The node still serves across the healthy link and sees both nodes running.
async fn still_healthy(master: &Node, worker: &Node, after: &str, n: i64) {
    let added = worker
        .request("calc", Add { a: n, b: 1000 })
        .await
        .unwrap_or_else(|e| panic!("after {after}: request across the link failed: {e}"));
    assert_eq!(added.sum, n + 1000, "after {after}");
    assert!(
        added.by.starts_with("m/calc/"),
        "after {after}: {}",
        added.by
    );
    let status = master.cluster_status().await;
    let nodes: Vec<(&str, &str)> = status
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.state.as_str()))
        .collect();
    assert_eq!(
        nodes,
        vec![("m", "running"), ("w", "running")],
        "after {after}"
    );
}

fn control_frame(control: &Control) -> Frame {
    Frame {
        kind: wire::CONTROL,
        body: Bytes::from(serde_json::to_vec(control).unwrap()),
    }
}

fn node_downs(events: &Events) -> Vec<String> {
    events
        .seen
        .lock()
        .iter()
        .filter_map(|e| match e {
            LifecycleEvent::NodeDown { node, reason } => Some(format!("{node}: {reason}")),
            _ => None,
        })
        .collect()
}

#[actix_rt::test]
async fn garbage_on_the_bridge_port_is_dropped_and_the_cluster_keeps_serving() {
    let secret = secret_file(SECRET);
    let master = start_node(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ calc: {{ workers: 2 }} }}\n",
        bridge_yaml(&secret, None)
    ))
    .await;
    let master_events = Events::subscribe(&master).await;
    let worker = start_node(&format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1 }} }}\n",
        bridge_yaml(&secret, master.bridge_addr())
    ))
    .await;
    let worker_events = Events::subscribe(&worker).await;
    cluster_of(&master, 2).await;
    cluster_of(&worker, 2).await;
    still_healthy(&master, &worker, "joining", 0).await;
    let addr = master.bridge_addr().expect("the master has a bridge");

    // 1. 4 KiB of random bytes, the write half left open: the node must not wait
    // for more. (A random prefix under the maximum announces a frame that never
    // completes: the handshake timeout closes that one.)
    let mut noise = vec![0u8; 4096];
    getrandom::fill(&mut noise).expect("randomness");
    let prefix = u32::from_be_bytes([noise[0], noise[1], noise[2], noise[3]]);
    let mut stream = connect(addr).await;
    write_tolerant(&mut stream, &noise).await;
    let took = closed_by_node(
        &mut stream,
        &format!("random bytes (prefix {prefix:#010x})"),
        HANDSHAKE_TIMEOUT + SLACK,
    )
    .await;
    if prefix as usize > colony::bridge::frame::DEFAULT_MAX_FRAME || prefix == 0 {
        assert!(took < PROMPTLY, "random bytes: closed only after {took:?}");
    }
    still_healthy(&master, &worker, "random bytes", 1).await;

    // 2. A truncated frame: the prefix announces 100 bytes, 10 arrive, then EOF.
    let mut stream = connect(addr).await;
    let mut truncated = BytesMut::new();
    truncated.put_u32(100);
    truncated.put_u8(wire::CONTROL);
    truncated.extend_from_slice(br#"{"type":"""#);
    truncated.truncate(4 + 10);
    write_tolerant(&mut stream, &truncated).await;
    stream.shutdown().await.expect("close the write half");
    let took = closed_by_node(&mut stream, "a truncated frame", PROMPTLY).await;
    assert!(took < PROMPTLY, "truncated frame: closed after {took:?}");
    still_healthy(&master, &worker, "a truncated frame", 2).await;

    // 3. A 4 GiB length prefix and a few bytes, the write half left open: refused
    // on the prefix alone, before any buffer for it.
    let mut stream = connect(addr).await;
    write_tolerant(
        &mut stream,
        &[0xff, 0xff, 0xff, 0xff, wire::CONTROL, b'{', b'}'],
    )
    .await;
    closed_by_node(&mut stream, "a 4 GiB length prefix", PROMPTLY).await;
    still_healthy(&master, &worker, "a 4 GiB length prefix", 3).await;

    // 4. A zero length prefix (no kind byte).
    let mut stream = connect(addr).await;
    write_tolerant(&mut stream, &[0, 0, 0, 0, 1, 2, 3]).await;
    closed_by_node(&mut stream, "a zero length prefix", PROMPTLY).await;
    still_healthy(&master, &worker, "a zero length prefix", 4).await;

    // 5. A well-framed CONTROL frame whose body is not JSON.
    let mut framed = Framed::new(connect(addr).await, FrameCodec::default());
    framed
        .send(Frame {
            kind: wire::CONTROL,
            body: Bytes::from_static(b"\x00{not json at all"),
        })
        .await
        .expect("send garbage JSON");
    closed_by_node(framed.get_mut(), "garbage JSON", PROMPTLY).await;
    still_healthy(&master, &worker, "garbage JSON", 5).await;

    // 6. A frame of a kind other than CONTROL before any handshake.
    let mut framed = Framed::new(connect(addr).await, FrameCodec::default());
    let mut request = BytesMut::new();
    wire::encode_request(
        &mut request,
        1 << 20,
        wire::RequestHead {
            id: 1,
            timeout_ms: 1000,
            flags: 0,
            worker: 0,
            trace: None,
            service: "calc",
            subject: "add",
        },
        br#"{"a":1,"b":2}"#,
    )
    .unwrap();
    framed.get_mut().write_all(&request).await.unwrap();
    closed_by_node(framed.get_mut(), "a request before the handshake", PROMPTLY).await;
    still_healthy(&master, &worker, "a request before the handshake", 6).await;

    // 7. A hello claiming to be the joined node "w", carrying a forged proof, then
    // a wrong proof of the secret: refused as a wrong secret, and the real "w"
    // keeps its link.
    let mut framed = Framed::new(connect(addr).await, FrameCodec::default());
    let forged = "ab".repeat(32);
    framed
        .send(control_frame(&Control::Hello {
            version: wire::PROTOCOL_VERSION,
            node: "w".into(),
            nonce: "cd".repeat(32),
            proof: Some(forged.clone()),
        }))
        .await
        .expect("send hello");
    let answer = timeout(PROMPTLY, framed.next())
        .await
        .expect("the node answers the hello in time")
        .expect("the node answers the hello")
        .expect("a whole frame");
    assert_eq!(answer.kind, wire::CONTROL);
    match Control::decode(&answer.body).expect("the answer is a control message") {
        Control::Hello {
            version,
            node,
            proof,
            ..
        } => {
            assert_eq!(version, wire::PROTOCOL_VERSION);
            assert_eq!(node, "m");
            let proof = proof.expect("the acceptor proves the secret");
            assert_ne!(proof, forged);
        }
        other => panic!("expected the master's hello, got {other:?}"),
    }
    framed
        .send(control_frame(&Control::Proof { proof: forged }))
        .await
        .expect("send the wrong proof");
    let refused = timeout(PROMPTLY, framed.next())
        .await
        .expect("the node answers the proof in time")
        .expect("the node refuses before closing")
        .expect("a whole frame");
    match Control::decode(&refused.body).expect("a control message") {
        Control::Refused { reason } => assert_eq!(reason, "wrong cluster secret"),
        other => panic!("expected refused, got {other:?}"),
    }
    closed_by_node(framed.get_mut(), "a wrong proof", PROMPTLY).await;
    still_healthy(&master, &worker, "a wrong proof", 7).await;

    // 8. A hello in another protocol version: refused, naming the versions.
    let mut framed = Framed::new(connect(addr).await, FrameCodec::default());
    framed
        .send(control_frame(&Control::Hello {
            version: wire::PROTOCOL_VERSION + 1,
            node: "w".into(),
            nonce: "cd".repeat(32),
            proof: None,
        }))
        .await
        .expect("send hello");
    let refused = timeout(PROMPTLY, framed.next())
        .await
        .expect("the node answers in time")
        .expect("the node refuses before closing")
        .expect("a whole frame");
    match Control::decode(&refused.body).expect("a control message") {
        Control::Refused { reason } => assert!(reason.contains("version"), "{reason}"),
        other => panic!("expected refused, got {other:?}"),
    }
    closed_by_node(framed.get_mut(), "another protocol version", PROMPTLY).await;
    still_healthy(&master, &worker, "another protocol version", 8).await;

    // 9. A hello whose nonce is not hex.
    let mut framed = Framed::new(connect(addr).await, FrameCodec::default());
    framed
        .send(control_frame(&Control::Hello {
            version: wire::PROTOCOL_VERSION,
            node: "w".into(),
            nonce: "not hex!".into(),
            proof: None,
        }))
        .await
        .expect("send hello");
    closed_by_node(framed.get_mut(), "a nonce that is not hex", PROMPTLY).await;
    still_healthy(&master, &worker, "a nonce that is not hex", 9).await;

    // Not one of these disturbed the real link, on either side.
    assert_eq!(node_downs(&master_events), Vec::<String>::new());
    assert_eq!(node_downs(&worker_events), Vec::<String>::new());
    assert_eq!(
        master_events.count(|e| matches!(e, LifecycleEvent::NodeUp { node } if node == "w")),
        1,
        "the worker node joined once and only once"
    );

    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
