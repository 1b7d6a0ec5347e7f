//! What the byte-bound tests share: memory readings, a counting subscriber, a
//! raw peer and a reader of `GET /v1/subscribe` streams.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::{Buf, BytesMut};
use colony::bridge::frame::FrameCodec;
use colony::bridge::handshake;
use colony::bridge::wire::{self, Control, Member, Message, Offer};
use colony::Published;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::{Framed, FramedRead};

pub const SECRET: &str = "a-cluster-secret-for-tests-only";
pub const MB: u64 = 1024 * 1024;

/// Memory is measured for the whole process: the tests run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// This process's resident memory, in bytes.
pub fn rss() -> u64 {
    super::common::rss_kb() * 1024
}

pub fn assert_grew_less_than(before: u64, limit: u64, what: &str) {
    let after = rss();
    let grew = after.saturating_sub(before);
    eprintln!(
        "{what}: VmRSS {} MB -> {} MB (+{} MB)",
        before / MB,
        after / MB,
        grew / MB
    );
    assert!(
        grew < limit,
        "{what}: memory grew by {} MB, more than {} MB",
        grew / MB,
        limit / MB
    );
}

/// A JSON string `len` bytes long with its quotes, as a value that serializes
/// without escaping each byte (a debug build would take seconds for many).
pub fn json_string(len: usize) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(len - 2)))
        .expect("a JSON string")
}

/// A subscriber actor counting what it handles.
pub struct Counter(pub Arc<AtomicUsize>);

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<Published> for Counter {
    type Result = ();
    fn handle(&mut self, _: Published, _: &mut Context<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub fn counter() -> (Addr<Counter>, Arc<AtomicUsize>) {
    let handled = Arc::new(AtomicUsize::new(0));
    (Counter(handled.clone()).start(), handled)
}

/// A raw peer that completed the real handshake: it writes frames (and a
/// heartbeat every 100 ms, so that the node keeps the link) and reads nothing
/// until told to.
pub struct FakePeer {
    frames: tokio::sync::mpsc::UnboundedSender<BytesMut>,
    reader: Option<FramedRead<OwnedReadHalf, FrameCodec>>,
}

impl FakePeer {
    pub async fn dial(addr: SocketAddr, name: &str) -> FakePeer {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut framed = Framed::new(stream, FrameCodec::default());
        let secret = handshake::Secret::new(SECRET.as_bytes()).expect("secret");
        handshake::dial(&mut framed, name, &secret)
            .await
            .expect("the handshake succeeds");
        let parts = framed.into_parts();
        let (read, mut write) = parts.io.into_split();
        let mut reader = FramedRead::new(read, parts.codec);
        *reader.read_buffer_mut() = parts.read_buf;
        let (frames, mut queued) = tokio::sync::mpsc::unbounded_channel::<BytesMut>();
        actix_rt::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_millis(100));
            loop {
                let frame = tokio::select! {
                    frame = queued.recv() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                    _ = beat.tick() => {
                        let mut frame = BytesMut::new();
                        wire::encode_heartbeat(&mut frame);
                        frame
                    }
                };
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        FakePeer {
            frames,
            reader: Some(reader),
        }
    }

    pub fn send(&self, control: Control) {
        let mut frame = BytesMut::new();
        control.encode(&mut frame, usize::MAX).expect("encode");
        self.frames.send(frame).expect("the fake peer runs");
    }

    /// Starts reading: returns the node's subscriptions as this peer learns them.
    pub fn read_subscriptions(&mut self) -> Arc<Mutex<Learned>> {
        let learned = Arc::new(Mutex::new(Learned::default()));
        let mut reader = self.reader.take().expect("reading once");
        let table = learned.clone();
        actix_rt::spawn(async move {
            while let Some(Ok(frame)) = reader.next().await {
                let Ok(Message::Control(control)) = Message::decode(frame) else {
                    continue;
                };
                let mut learned = table.lock().unwrap();
                let table = &mut learned.table;
                match control {
                    Control::Subscriptions { prefixes } => {
                        *table = prefixes;
                        learned.tables += 1;
                    }
                    Control::Subscribed { prefix } => *table.entry(prefix).or_insert(0) += 1,
                    Control::Unsubscribed { prefix } => {
                        if let Some(n) = table.get_mut(&prefix) {
                            *n -= 1;
                            if *n == 0 {
                                table.remove(&prefix);
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        learned
    }
}

/// A node's subscriptions as a peer learned them: its whole table when the link
/// opened (and again after a change could not be queued), then each change.
#[derive(Debug, Default)]
pub struct Learned {
    pub table: BTreeMap<String, u32>,
    /// Whole tables received.
    pub tables: usize,
}

/// The `Join` of a peer named `a-fake` offering the service `far`.
pub fn join_offering_far() -> Control {
    Control::Join {
        member: Member {
            name: "a-fake".into(),
            role: "worker".into(),
            bridge: "127.0.0.1:9".parse().unwrap(),
            api: None,
            services: vec![Offer {
                name: "far".into(),
                workers: 1,
                capacity: 1_000_000,
                timeout_ms: 30_000,
            }],
        },
    }
}

/// What an HTTP subscribe client read.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Message(String),
    Dropped(u64),
}

/// Reads a chunked `GET /v1/subscribe` body from `stream`, one JSON line at a
/// time, into `seen`.
pub async fn read_lines(
    mut stream: tokio::net::TcpStream,
    mut buf: BytesMut,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut body = BytesMut::new();
    loop {
        // Chunks: `SIZE-HEX\r\nDATA\r\n`.
        while let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&buf[..eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .expect("a chunk size");
            if size == 0 {
                return;
            }
            if buf.len() < eol + 2 + size + 2 {
                break;
            }
            buf.advance(eol + 2);
            body.extend_from_slice(&buf.split_to(size));
            buf.advance(2);
            while let Some(nl) = body.iter().position(|&b| b == b'\n') {
                let line = body.split_to(nl + 1);
                let json: serde_json::Value = serde_json::from_slice(&line).expect("a JSON line");
                let item = match json.get("dropped") {
                    Some(n) => Seen::Dropped(n.as_u64().expect("a count")),
                    None => Seen::Message(json["topic"].as_str().expect("a topic").to_string()),
                };
                seen.lock().unwrap().push(item);
            }
        }
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Opens `GET /v1/subscribe/PREFIX` with a receive buffer of `recv` bytes and
/// reads the response head, which must be 200; the stream, what was read past
/// the head, and the head.
pub async fn open_stream(
    api: SocketAddr,
    prefix: &str,
    recv: u32,
) -> (tokio::net::TcpStream, BytesMut, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(recv).unwrap();
    let mut stream = socket.connect(api).await.expect("connect");
    let request = format!("GET /v1/subscribe/{prefix} HTTP/1.1\r\nHost: {api}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.expect("response");
        assert!(n > 0, "the API closed the stream");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    buf.advance(head_end);
    (stream, buf, head)
}
