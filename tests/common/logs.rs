//! What the tests of `GET /v1/logs` share: an app whose `chatter` workers log
//! what they are told ([`Say`]), the stream read as JSON lines (all at once, or
//! followed on a thread of its own), and raw HTTP for clients that misbehave.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::{App, Node, NodeConfig, Request, ServiceError, WorkerContext};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The target of the lines `chatter` logs.
pub const CHATTER: &str = "chatter";

/// The app: `chatter` only.
pub fn chatter_app() -> App {
    App::new()
        .service("chatter", Chatter::new)
        .handles::<Say>()
        .into()
}

/// Starts a node of [`chatter_app`] from YAML text, its state in memory.
pub async fn start_chatter_node(yaml: &str) -> Node {
    let mut config =
        NodeConfig::parse(std::path::Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(chatter_app(), config)
        .await
        .expect("node starts")
}

/// A worker that logs what it is told.
pub struct Chatter;

impl Chatter {
    pub fn new(_: WorkerContext) -> Self {
        Chatter
    }
}

impl Actor for Chatter {
    type Context = Context<Self>;
}

/// Logs `text` at `level` (`info` when absent) with target [`CHATTER`], `times`
/// times (once when absent).
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Say {
    pub text: String,
    pub level: Option<String>,
    pub times: Option<usize>,
}
impl Request for Say {
    const SUBJECT: &'static str = "say";
}

impl Say {
    pub fn info(text: impl Into<String>) -> Say {
        Say {
            text: text.into(),
            level: None,
            times: None,
        }
    }
}

impl Handler<Say> for Chatter {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, m: Say, _: &mut Context<Self>) -> Self::Result {
        let level = match m.level.as_deref() {
            Some("error") => log::Level::Error,
            Some("warn") => log::Level::Warn,
            _ => log::Level::Info,
        };
        for _ in 0..m.times.unwrap_or(1) {
            log::log!(target: CHATTER, level, "{}", m.text);
        }
        Ok(())
    }
}

/// `GET /v1/logs?QUERY` read to its end on a blocking thread: the status and
/// the JSON lines (or the error's body as the one line).
pub async fn log_lines(api: SocketAddr, query: &str) -> (u16, Vec<Value>) {
    let url = format!("http://{api}/v1/logs?{query}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect();
        (status, lines)
    })
    .await
    .expect("HTTP thread")
}

/// A `GET /v1/logs` stream read line by line on a thread of its own.
pub struct Followed {
    lines: Arc<Mutex<Vec<Value>>>,
    ended: Arc<std::sync::atomic::AtomicBool>,
    pub status: u16,
    pub content_type: String,
}

impl Followed {
    /// Opens `GET /v1/logs?QUERY` on `api`; returns once the answer's head has
    /// come (the stream is open), then reads its lines in the background.
    pub async fn open(api: SocketAddr, query: &str) -> Followed {
        let url = format!("http://{api}/v1/logs?{query}");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (head, opened) = tokio::sync::oneshot::channel();
        let kept = lines.clone();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let end = ended.clone();
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(10)))
                .build()
                .into();
            let response = agent
                .get(&url)
                .call()
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let _ = head.send((status, content_type));
            let reader = std::io::BufReader::new(response.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                kept.lock().push(value);
            }
            end.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let (status, content_type) = opened.await.expect("the stream's head");
        Followed {
            lines,
            ended,
            status,
            content_type,
        }
    }

    /// The lines read so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().clone()
    }

    /// Whether the stream has ended (or broke).
    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The messages read so far of lines with target [`CHATTER`].
    pub fn chatter(&self) -> Vec<String> {
        chatter(&self.lines())
    }
}

/// The messages of the lines with target [`CHATTER`].
pub fn chatter(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["target"] == CHATTER)
        .map(|l| l["msg"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A client on a raw connection that sends `GET PATH` and then reads nothing.
pub fn stalled_get(api: SocketAddr, path: &str) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // A small window, so that the node's writes stall soon.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect(&api.into())
        .unwrap_or_else(|e| panic!("connect {api}: {e}"));
    let mut stream: TcpStream = socket.into();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
    )
    .expect("write the request");
    stream
}

/// Whether the node has closed `stream`: reads what it has (without waiting
/// long) and says whether the end came.
pub fn closed_by_node(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut buf = [0u8; 64 * 1024];
    // A stream still open may have more than this to give: it is not closed.
    for _ in 0..256 {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}
