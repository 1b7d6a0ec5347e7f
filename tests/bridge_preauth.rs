//! Strangers on a node's bridge port, before they prove the cluster secret:
//! 60 connections announcing 16 MiB frames, 200 connections at once against a
//! small `bridge.max_handshakes`, one address stalling more handshakes than its
//! share, hellos with a forged or a 2 MB node name, bad hellos from 100
//! addresses of one network, and a storm of wrong secrets. Each is refused, the
//! node's memory stays bounded, its log stays one short line per refusal and
//! network (/24), and a real peer still joins and is served.
//!
//! Log lines are captured in-process by a logger installed for this file; each
//! attack connects from its own loopback addresses (127.0.C.D) so that its lines
//! can be told apart from those of the tests running beside it.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use colony::bridge::frame::{Frame, FrameCodec};
use colony::bridge::handshake::{self, HandshakeError, Secret};
use colony::bridge::wire::{self, Control};
use colony::Node;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

const SECRET: &str = "a-cluster-secret-for-tests-only";
const MIB: u64 = 1024 * 1024;
/// Memory the node may grow by under one attack (the unfixed node grew by
/// 16 MiB per connection announcing a 16 MiB frame).
const RSS_BOUND: u64 = 64 * MIB;
/// Longest log line accepted (200 characters of peer text plus the line's own).
const MAX_LINE: usize = 300;

/// The captured lines that mention connections from `ip`.
fn lines_from(ip: Ipv4Addr) -> Vec<String> {
    log_lines_with(&[&format!("from {ip}:")])
}

/// The loopback address 127.0.`c`.`d`.
fn lo(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, c, d)
}

/// Resident memory of this process (the nodes run in it), in bytes.
fn rss() -> u64 {
    rss_kb() * 1024
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind a loopback source address");
    timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect to the bridge")
}

/// Reads until the node closes the connection (EOF or reset); panics if it
/// stays open past the handshake timeout and some slack.
async fn closed_by_node(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: the node kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A master (`m`, running `calc`) with `bridge_extra` in its bridge section.
async fn master(secret: &tempfile::NamedTempFile, bridge_extra: &str) -> Node {
    let bridge = bridge_yaml(secret, None).replace(" }\n", &format!("{bridge_extra} }}\n"));
    start_node(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{bridge}services: {{ calc: {{ workers: 1 }} }}\n"
    ))
    .await
}

/// A real worker node joins `master`, and a request crosses the link.
async fn real_peer_is_served(secret: &tempfile::NamedTempFile, master: &Node, n: i64) -> Node {
    let worker = start_node(&format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{ chaos: {{ workers: 1 }} }}\n",
        bridge_yaml(secret, master.bridge_addr())
    ))
    .await;
    cluster_of(master, 2).await;
    cluster_of(&worker, 2).await;
    let added = worker
        .request("calc", Add { a: n, b: 1000 })
        .await
        .expect("a request across the bridge");
    assert_eq!(added.sum, n + 1000);
    assert!(added.by.starts_with("m/calc/"), "{}", added.by);
    worker
}

fn control_frame(control: &Control) -> Frame {
    Frame {
        kind: wire::CONTROL,
        body: Bytes::from(serde_json::to_vec(control).expect("JSON")),
    }
}

/// Asserts that the node's RSS grew by less than [`RSS_BOUND`] since `before`.
#[track_caller]
fn assert_grew_little(before: u64) {
    let grown = rss().saturating_sub(before);
    eprintln!("RSS +{} KiB", grown / 1024);
    assert!(grown < RSS_BOUND, "grew by {} MiB", grown / MIB);
}

/// Waits until `closed` counts `expected` connections closed (`what`), and
/// asserts it is exactly that many: the others are held.
async fn exactly_closed(closed: &AtomicUsize, expected: usize, what: &str) {
    wait_until(
        &format!("{what} are closed"),
        Duration::from_secs(4),
        || async { closed.load(Ordering::SeqCst) >= expected },
    )
    .await;
    assert_eq!(
        closed.load(Ordering::SeqCst),
        expected,
        "exactly {what} are closed; the others are held"
    );
}

#[actix_rt::test]
async fn announced_16_mib_frames_are_refused_without_reserving_them() {
    capture_logs();
    let secret = secret_file(SECRET);
    let master = master(&secret, "").await;
    let addr = master.bridge_addr().expect("a bridge");
    let before = rss();

    // 60 strangers each announce a 16 MiB frame, send its first 4 MiB and stall
    // (the unfixed node buffered them all, and reserved the rest).
    let mut announce = BytesMut::new();
    announce.put_u32(16 * 1024 * 1024);
    announce.put_u8(wire::CONTROL);
    announce.extend_from_slice(&vec![b'{'; 4 * MIB as usize]);
    let announce = announce.freeze();
    let mut strangers = Vec::new();
    for _ in 0..60 {
        let mut stream = connect_from(lo(0, 2), addr).await;
        // The node may close it mid-write: the read below sees that.
        let _ = stream.write_all(&announce).await;
        strangers.push(stream);
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "RSS {} MiB before, +{} KiB after 60 announced 16 MiB frames",
        before / MIB,
        grown / 1024
    );
    // Each is refused on its prefix (over the 4 KiB handshake limit), well
    // before the handshake timeout would close it.
    for (i, stream) in strangers.iter_mut().enumerate() {
        closed_by_node(stream, &format!("stranger {i}")).await;
    }
    assert!(
        grown < RSS_BOUND,
        "the node grew by {} MiB under 60 announced 16 MiB frames",
        grown / MIB
    );
    let from = lo(0, 2);
    wait_until("the refusal is logged", Duration::from_secs(5), || async {
        !lines_from(from).is_empty()
    })
    .await;
    let refusals = lines_from(from);
    assert!(
        refusals
            .first()
            .is_some_and(|l| l.contains("exceeds the 4096-byte limit")),
        "{refusals:?}"
    );

    let worker = real_peer_is_served(&secret, &master, 1).await;
    assert_grew_little(before);
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn connections_past_max_handshakes_are_closed_at_once() {
    capture_logs();
    const CAP: usize = 4;
    const CONNECTIONS: usize = 200;
    let secret = secret_file(SECRET);
    let master = master(&secret, &format!(", max_handshakes: {CAP}")).await;
    let addr = master.bridge_addr().expect("a bridge");
    let before = rss();

    // 200 strangers, each from its own address of 127.0.1.0/24 (so that the
    // cap per address does not refuse them first), connect and send nothing:
    // CAP of them hold a handshake (until the Hello timeout), every other one
    // is closed by the node unread.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for n in 1..=CONNECTIONS {
        let d = u8::try_from(n).expect("200 addresses");
        let mut stream = connect_from(lo(1, d), addr).await;
        let closed = closed.clone();
        holders.push(actix_rt::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
            // Parked, so that the stream's end is counted once.
            futures::future::pending::<()>().await;
        }));
    }
    exactly_closed(
        &closed,
        CONNECTIONS - CAP,
        "the connections past bridge.max_handshakes",
    )
    .await;
    assert_grew_little(before);
    // One line for the whole network, naming it and the cap.
    let network = "127.0.1.0/24";
    wait_until("the refusal is logged", Duration::from_secs(5), || async {
        logged(&[network]) > 0
    })
    .await;
    let refusals = log_lines_with(&[network]);
    assert!(
        refusals.len() == 1 && refusals[0].contains("(bridge.max_handshakes)"),
        "{refusals:?}"
    );

    // The strangers go; their handshakes end and free the slots for a real peer.
    for holder in holders {
        holder.abort();
    }
    let worker = real_peer_is_served(&secret, &master, 2).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

/// Opens a connection from `from` that sends the first 3 bytes of a frame
/// header and stalls; `closed` counts it once the node closes it.
async fn stall_from(from: Ipv4Addr, to: SocketAddr, closed: Arc<AtomicUsize>) {
    let mut stream = connect_from(from, to).await;
    // The node may already have closed it.
    let _ = stream.write_all(&[0, 0, 0]).await;
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    closed.fetch_add(1, Ordering::SeqCst);
}

#[actix_rt::test]
async fn one_address_holds_at_most_its_share_of_handshakes_and_a_real_peer_still_joins() {
    capture_logs();
    // An eighth of bridge.max_handshakes per address.
    const CAP: usize = 16;
    const PER_ADDRESS: usize = CAP / 8;
    const CONNECTIONS: usize = 20;
    let secret = secret_file(SECRET);
    let master = master(&secret, &format!(", max_handshakes: {CAP}")).await;
    let addr = master.bridge_addr().expect("a bridge");
    let attacker = lo(0, 50);
    let before = rss();

    // 20 stalled handshakes from one address: 2 are held (until the Hello
    // timeout), the other 18 are closed at once, unread. (With only the global
    // cap, 16 would be held and every real peer refused.)
    let closed = Arc::new(AtomicUsize::new(0));
    let mut stalls = Vec::new();
    for _ in 0..CONNECTIONS {
        stalls.push(actix_rt::spawn(stall_from(attacker, addr, closed.clone())));
    }
    exactly_closed(
        &closed,
        CONNECTIONS - PER_ADDRESS,
        "the connections past one address's share",
    )
    .await;
    wait_until("the refusal is logged", Duration::from_secs(5), || async {
        !lines_from(attacker).is_empty()
    })
    .await;
    let refusals = lines_from(attacker);
    assert!(
        refusals.len() == 1 && refusals[0].contains("from 127.0.0.50/32 (at most 2 per address"),
        "{refusals:?}"
    );

    // The attack goes on, re-opening stalled handshakes as the node closes
    // them, while a real peer (from 127.0.0.1) joins and is served.
    let opened = Arc::new(AtomicUsize::new(CONNECTIONS));
    let attack = {
        let (closed, opened) = (closed.clone(), opened.clone());
        actix_rt::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            loop {
                pace.tick().await;
                // At most CONNECTIONS open at once.
                if opened.load(Ordering::SeqCst) - closed.load(Ordering::SeqCst) < CONNECTIONS {
                    opened.fetch_add(1, Ordering::SeqCst);
                    actix_rt::spawn(stall_from(attacker, addr, closed.clone()));
                }
            }
        })
    };
    let worker = real_peer_is_served(&secret, &master, 5).await;
    let reopened = opened.load(Ordering::SeqCst) - CONNECTIONS;
    attack.abort();
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{}: RSS +{} KiB; {reopened} stalled handshakes re-opened during the join",
        line!(),
        grown / 1024
    );
    assert!(grown < RSS_BOUND, "grew by {} MiB", grown / MIB);
    for stall in stalls {
        stall.abort();
    }
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

/// Sends a hello naming itself `name`; a hello back is answered with a forged
/// proof (the old node only checked the name then). Returns the node's answer
/// to the hello, if any came.
async fn hello_as(from: Ipv4Addr, addr: SocketAddr, name: &str) -> Option<Control> {
    let mut framed = Framed::new(
        connect_from(from, addr).await,
        FrameCodec::new(4 * MIB as usize),
    );
    let hello = control_frame(&Control::Hello {
        version: wire::PROTOCOL_VERSION,
        node: name.into(),
        nonce: "cd".repeat(32),
        proof: None,
    });
    // A node that refuses on the prefix may reset the connection mid-write.
    let _ = framed.send(hello).await;
    let answer = match timeout(Duration::from_secs(5), framed.next()).await {
        Ok(Some(Ok(frame))) => Control::decode(&frame.body).ok(),
        _ => None,
    };
    if let Some(Control::Hello { .. }) = answer {
        let proof = control_frame(&Control::Proof {
            proof: "ab".repeat(32),
        });
        let _ = framed.send(proof).await;
    }
    closed_by_node(framed.get_mut(), name.get(..20).unwrap_or(name)).await;
    answer
}

#[actix_rt::test]
async fn forged_and_huge_node_names_are_refused_and_never_reach_the_log_raw() {
    capture_logs();
    let secret = secret_file(SECRET);
    let master = master(&secret, "").await;
    let addr = master.bridge_addr().expect("a bridge");
    let before = rss();

    let answer = hello_as(
        lo(4, 1),
        addr,
        "evil\nFORGED 00:00:00 INFO the node was hacked",
    )
    .await;
    match answer {
        Some(Control::Refused { reason }) => assert!(reason.contains("node name"), "{reason}"),
        other => panic!("expected a refusal of the name, got {other:?}"),
    }
    // A 2 MB name: the hello is far over the 4 KiB a handshake frame may hold.
    let huge = "n".repeat(2_000_000);
    assert!(!matches!(
        hello_as(lo(5, 1), addr, &huge).await,
        Some(Control::Hello { .. })
    ));

    // From two networks, so that neither refusal's line waits for the other's.
    let (forged, huge) = (lo(4, 1), lo(5, 1));
    // The node logs a refusal just after it closes the connection.
    wait_until(
        "both refusals are logged",
        Duration::from_secs(5),
        || async { !lines_from(forged).is_empty() && !lines_from(huge).is_empty() },
    )
    .await;
    let (forged, huge) = (lines_from(forged), lines_from(huge));
    assert!(
        forged.len() == 1 && forged[0].contains("node name"),
        "{forged:?}"
    );
    assert!(
        huge.len() == 1 && huge[0].contains("exceeds the 4096-byte limit"),
        "{huge:?}"
    );
    // No line of this process holds a raw newline or runs long, and the forged
    // text never became a line of its own.
    for line in log_lines_with(&[]) {
        assert!(!line.contains('\n'), "a raw newline in the log: {line:?}");
        assert!(line.len() <= MAX_LINE, "a line of {} bytes", line.len());
        assert!(!line.contains("FORGED"), "{line:?}");
    }
    assert_grew_little(before);

    let worker = real_peer_is_served(&secret, &master, 3).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

/// Opens a connection from `from` holding another cluster's secret;
/// the stranger, dialing, finds the node's proof wrong and refuses it.
async fn wrong_secret_dial(from: Ipv4Addr, addr: SocketAddr) {
    let other = Secret::new(b"another-cluster-secret-0123456789").expect("secret");
    let mut framed = Framed::new(connect_from(from, addr).await, FrameCodec::default());
    let dialed = handshake::dial(&mut framed, "stranger", &other).await;
    assert!(
        matches!(dialed, Err(HandshakeError::WrongSecret { .. })),
        "{dialed:?}"
    );
}

#[actix_rt::test]
async fn a_storm_of_wrong_secrets_logs_one_line_per_network_and_period_with_a_count() {
    capture_logs();
    let secret = secret_file(SECRET);
    let master = master(&secret, "").await;
    let addr = master.bridge_addr().expect("a bridge");
    let from = lo(0, 6);
    let before = rss();

    for _ in 0..100 {
        wrong_secret_dial(from, addr).await;
    }
    wait_until(
        "the first refusal is logged",
        Duration::from_secs(5),
        || async { !lines_from(from).is_empty() },
    )
    .await;
    let lines = lines_from(from);
    assert!(
        (1..=2).contains(&lines.len()) && lines[0].contains("wrong cluster secret"),
        "100 refusals logged as {lines:?}"
    );

    // The storm goes on until the network's next line (10 s after its first),
    // which counts the refusals left out in between.
    let mut dialed = 100;
    let counted = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    while lines_from(from).len() < 2 {
        assert!(
            tokio::time::Instant::now() < counted,
            "no second line: {:?}",
            lines_from(from)
        );
        pace.tick().await;
        wrong_secret_dial(from, addr).await;
        dialed += 1;
    }
    let lines = lines_from(from);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let count: usize = lines[1]
        .split(" more refused from 127.0.0.0/24")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {:?}", lines[1]));
    assert!(
        (99..dialed).contains(&count),
        "{count} counted of {dialed} refusals: {lines:?}"
    );
    assert_grew_little(before);

    let worker = real_peer_is_served(&secret, &master, 4).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn bad_hellos_from_100_addresses_of_one_network_log_one_line_for_it() {
    capture_logs();
    let secret = secret_file(SECRET);
    let master = master(&secret, "").await;
    let addr = master.bridge_addr().expect("a bridge");
    let network = "127.0.3.0/24";
    let before = rss();

    // 100 hellos with a bad node name, each from its own address.
    for d in 1..=100 {
        match hello_as(lo(3, d), addr, "bad name!").await {
            Some(Control::Refused { reason }) => assert!(reason.contains("node name"), "{reason}"),
            other => panic!("expected a refusal of the name, got {other:?}"),
        }
    }
    wait_until("the refusal is logged", Duration::from_secs(5), || async {
        logged(&[network]) > 0
    })
    .await;
    let lines = log_lines_with(&[network]);
    assert!(
        (1..=2).contains(&lines.len()) && lines[0].contains("node name"),
        "100 refusals from one network logged as {lines:?}"
    );
    assert_grew_little(before);

    let worker = real_peer_is_served(&secret, &master, 6).await;
    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
