//! The HTTP API against the clients it must refuse: a web page the user opened
//! (cross-site simple requests, DNS rebinding), a client without or with the
//! wrong token, oversized and never-arriving bodies, absurd timeouts, made-up
//! endpoints and service names, a flood of connections under a 1,024-fd limit,
//! and pipelined requests whose answers are never read. Each test asserts the refusal, that memory stays bounded (VmRSS) and
//! that the node keeps serving.
//!
//! Requests are written by hand on raw TCP, so every header (`Host`, `Origin`,
//! `Content-Type`, `Content-Length`) is exactly what an attacker would send.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use colony::Node;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[path = "api_hostile/child.rs"]
mod child;
#[path = "api_hostile/flood.rs"]
mod flood;
#[path = "api_hostile/pipelining.rs"]
mod pipelining;

/// How long any one exchange may take before the test fails.
const EXCHANGE: Duration = Duration::from_secs(15);

fn config(api: &str) -> String {
    format!(
        "
node: {{ name: hostile, role: master, threads: 1 }}
api: {{ listen: 127.0.0.1:0, read_timeout: 1s{api} }}
services:
  calc: {{ workers: 1 }}
"
    )
}

/// A node's answer on a raw connection.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The node closed the connection after answering.
    pub closed: bool,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts the status and the error kind of the body.
    #[track_caller]
    pub fn refused(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["error"]["kind"], kind, "{self:?}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

/// A request written by hand. Starts with the headers a well-behaved local client
/// sends; `header` replaces one (an empty value removes it).
pub struct Req {
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    pub fn get(addr: SocketAddr, path: &str) -> Req {
        Req {
            head: format!("GET {path} HTTP/1.1"),
            headers: vec![
                ("Host".into(), addr.to_string()),
                ("Connection".into(), "close".into()),
            ],
            body: Vec::new(),
        }
    }

    pub fn post(addr: SocketAddr, path: &str, body: &str) -> Req {
        let mut req = Req::get(addr, path);
        req.head = format!("POST {path} HTTP/1.1");
        req.body = body.as_bytes().to_vec();
        req.header("Content-Type", "application/json")
            .header("Content-Length", &body.len().to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if !value.is_empty() {
            self.headers.push((name.into(), value.into()));
        }
        self
    }

    /// Adds one more `name` header, keeping those already there.
    pub fn also(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The request's bytes; the body is sent as given, whatever Content-Length says.
    pub fn bytes(&self) -> Vec<u8> {
        let mut text = format!("{}\r\n", self.head);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// Sends the request on a new connection and reads until the node closes it.
    pub async fn send(self, addr: SocketAddr) -> Answer {
        let mut stream = timeout(EXCHANGE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.write_all(&self.bytes()).await.expect("write");
        let mut buf = Vec::new();
        let closed = timeout(EXCHANGE, stream.read_to_end(&mut buf))
            .await
            .is_ok_and(|r| r.is_ok());
        parse(&buf, closed)
    }
}

/// Status and body of a response (sized or chunked).
pub fn parse(buf: &[u8], closed: bool) -> Answer {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Answer {
        status,
        body,
        closed,
    }
}

/// Growth of this process's memory a test tolerates: far less than any body it
/// announces (tests share the process, so this is not tight).
const MEMORY_SLACK_KB: u64 = 96 * 1024;

#[track_caller]
fn assert_memory_bounded(before_kb: u64) {
    let after = proc_kb("self", "VmRSS");
    assert!(
        after < before_kb + MEMORY_SLACK_KB,
        "VmRSS grew from {before_kb} kB to {after} kB"
    );
}

/// The node answers health and a request as before.
async fn assert_serving(node: &Node) {
    let addr = node.api_addr().expect("API");
    let health = Req::get(addr, "/v1/health").send(addr).await;
    assert_eq!(health.status, 200, "{health:?}");
    let add = Req::post(addr, "/v1/request/calc/add", r#"{"a":40,"b":2}"#)
        .send(addr)
        .await;
    assert_eq!(add.status, 200, "{add:?}");
    assert_eq!(add.json()["reply"]["sum"], 42, "{add:?}");
}

#[actix_rt::test]
async fn a_web_page_cannot_kill_a_worker() {
    let node = start_node(&config("")).await;
    all_running(&node).await;
    let addr = node.api_addr().unwrap();
    let memory = proc_kb("self", "VmRSS");
    let kill = r#"{"worker":"hostile/calc/0"}"#;
    let restarts = || worker_status(&node, "hostile/calc/0").restarts;

    // The browser's simple request: text/plain from a foreign page.
    let answer = Req::post(addr, "/v1/kill", kill)
        .header("Content-Type", "text/plain")
        .header("Origin", "http://evil.example")
        .send(addr)
        .await;
    answer.refused(403, "Rejected");
    // The same without an Origin (a page with no-referrer, or curl): the type.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let answer = Req::post(addr, "/v1/kill", kill)
            .header("Content-Type", content_type)
            .send(addr)
            .await;
        answer.refused(415, "BadRequest");
    }
    // JSON from a foreign page is refused by its Origin.
    let answer = Req::post(addr, "/v1/kill", kill)
        .header("Origin", "http://evil.example")
        .send(addr)
        .await;
    answer.refused(403, "Rejected");
    let answer = Req::post(addr, "/v1/reload", "{}")
        .header("Origin", "null")
        .send(addr)
        .await;
    answer.refused(403, "Rejected");
    assert_eq!(restarts(), 0, "a refused kill killed the worker");

    // The API's own origin and a JSON body with parameters are served: the kill
    // goes through, so the refusals above were the checks, not a broken kill.
    let answer = Req::post(addr, "/v1/kill", kill)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("Origin", &format!("http://{addr}"))
        .send(addr)
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    wait_until(
        "the killed worker restarts",
        Duration::from_secs(5),
        || async { restarts() == 1 },
    )
    .await;

    assert_memory_bounded(memory);
    all_running(&node).await;
    assert_serving(&node).await;
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_rebound_host_name_is_misdirected() {
    let node = start_node(&config(", allowed_hosts: [colony.internal]")).await;
    all_running(&node).await;
    let addr = node.api_addr().unwrap();
    let port = addr.port();
    let memory = proc_kb("self", "VmRSS");

    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("10.1.2.3:{port}"),
        format!("[::1]evil.example:{port}"),
        format!("[::1]:{port}evil"),
    ] {
        let answer = Req::get(addr, "/v1/status")
            .header("Host", &host)
            .send(addr)
            .await;
        answer.refused(421, "Rejected");
        let answer = Req::post(addr, "/v1/request/calc/add", r#"{"a":1,"b":1}"#)
            .header("Host", &host)
            .send(addr)
            .await;
        answer.refused(421, "Rejected");
    }
    for host in [
        format!("localhost:{port}"),
        format!("app.localhost:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.0.2:{port}"),
        format!("Colony.Internal:{port}"),
        "colony.internal".to_string(),
    ] {
        let answer = Req::get(addr, "/v1/health")
            .header("Host", &host)
            .send(addr)
            .await;
        assert_eq!(answer.status, 200, "Host {host}: {answer:?}");
    }

    assert_memory_bounded(memory);
    assert_serving(&node).await;
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn repeated_headers_are_bad_requests() {
    let node = start_node(&config("")).await;
    all_running(&node).await;
    let addr = node.api_addr().unwrap();
    let memory = proc_kb("self", "VmRSS");

    // A second Host, Origin or Content-Type could be read by one layer and not
    // by another: a request that carries two is refused whole.
    let kill = || Req::post(addr, "/v1/kill", r#"{"worker":"hostile/calc/0"}"#);
    for (name, value) in [
        ("Host", "evil.example".to_string()),
        ("Host", addr.to_string()),
        ("Origin", "http://evil.example".to_string()),
        ("Origin", format!("http://{addr}")),
        ("Content-Type", "text/plain".to_string()),
        ("Content-Type", "application/json".to_string()),
    ] {
        let answer = kill()
            .header("Origin", &format!("http://{addr}"))
            .also(name, &value)
            .send(addr)
            .await;
        if name == "Host" {
            // actix-http itself refuses a second Host, before any check runs.
            assert_eq!(answer.status, 400, "{name}: {answer:?}");
            continue;
        }
        answer.refused(400, "BadRequest");
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("more than one")),
            "{name}: {answer:?}"
        );
    }
    assert_eq!(
        worker_status(&node, "hostile/calc/0").restarts,
        0,
        "a kill with a repeated header killed the worker"
    );

    assert_memory_bounded(memory);
    assert_serving(&node).await;
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_token_is_needed_on_loopback_too() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"t0ken-on-loopback\n").unwrap();
    let api = format!(", token_file: {}", file.path().display());
    let node = start_node(&config(&api)).await;
    all_running(&node).await;
    let addr = node.api_addr().unwrap();
    let memory = proc_kb("self", "VmRSS");
    let add = || Req::post(addr, "/v1/request/calc/add", r#"{"a":1,"b":2}"#);

    add().send(addr).await.refused(401, "Rejected");
    Req::get(addr, "/metrics")
        .send(addr)
        .await
        .refused(401, "Rejected");
    Req::get(addr, "/v1/no-such-endpoint")
        .send(addr)
        .await
        .refused(401, "Rejected");
    for wrong in [
        "Bearer t0ken-on-loopbac",
        "Bearer t0ken-on-loopback2",
        "Bearer x",
    ] {
        let answer = add().header("Authorization", wrong).send(addr).await;
        answer.refused(403, "Rejected");
    }
    add()
        .header("Authorization", "Basic t0ken-on-loopback")
        .send(addr)
        .await
        .refused(401, "Rejected");
    for right in ["Bearer t0ken-on-loopback", "bearer t0ken-on-loopback"] {
        let answer = add().header("Authorization", right).send(addr).await;
        assert_eq!(answer.status, 200, "{right}: {answer:?}");
        assert_eq!(answer.json()["reply"]["sum"], 3);
    }
    let health = Req::get(addr, "/v1/health").send(addr).await;
    assert_eq!(health.status, 200, "{health:?}");

    assert_memory_bounded(memory);
    let answer = add()
        .header("Authorization", "BEARER t0ken-on-loopback")
        .send(addr)
        .await;
    assert_eq!(answer.status, 200, "the node keeps serving: {answer:?}");
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn bodies_too_large_or_too_slow_are_refused_and_closed() {
    let node = start_node(&config("")).await;
    all_running(&node).await;
    let addr = node.api_addr().unwrap();
    let memory = proc_kb("self", "VmRSS");

    // 1 GiB announced, nothing sent: 413 at once, and the connection closes.
    let answer = Req::post(addr, "/v1/request/calc/add", "")
        .header("Content-Length", "1073741824")
        .send(addr)
        .await;
    answer.refused(413, "BadRequest");
    assert!(answer.closed, "{answer:?}");
    let answer = Req::post(addr, "/v1/kill", "")
        .header("Content-Length", "99999999999999999999999")
        .send(addr)
        .await;
    assert!(answer.closed, "{answer:?}");
    assert!(matches!(answer.status, 400 | 413), "{answer:?}");

    // Ten bytes of a hundred, then silence: 408 after api.read_timeout, closed.
    let answer = Req::post(addr, "/v1/request/calc/add", r#"{"a":1,"b":"#)
        .header("Content-Length", "100")
        .send(addr)
        .await;
    answer.refused(408, "Timeout");
    assert!(answer.closed, "{answer:?}");
    // Headers that never end: 408 too (actix-web's request timeout).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v1/kill HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = timeout(EXCHANGE, stream.read_to_end(&mut buf))
        .await
        .is_ok();
    let answer = parse(&buf, closed);
    assert!(answer.closed, "{answer:?}");
    assert_eq!(answer.status, 408, "{answer:?}");

    assert_memory_bounded(memory);
    assert_serving(&node).await;
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn absurd_timeouts_are_bad_requests_not_panics() {
    let node = start_node(&config("")).await;
    all_running(&node).await;
    let addr = node.api_addr().unwrap();
    let memory = proc_kb("self", "VmRSS");
    let add = |query: &str| {
        Req::post(
            addr,
            &format!("/v1/request/calc/add{query}"),
            r#"{"a":1,"b":2}"#,
        )
    };

    for query in ["?timeout=300000000000y", "?timeout=2h", "?timeout=3601s"] {
        let answer = add(query).send(addr).await;
        answer.refused(400, "BadRequest");
        let message = answer.json()["error"]["message"].to_string();
        assert!(message.contains("timeout"), "{message}");
    }
    let answer = add("?timeout=1h").send(addr).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // The library's own calls take any Duration without overflowing.
    let sum = node
        .request_timeout("calc", Add { a: 2, b: 2 }, Duration::MAX)
        .await
        .expect("a request with Duration::MAX");
    assert_eq!(sum.sum, 4);

    assert_memory_bounded(memory);
    assert_serving(&node).await;
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn made_up_endpoints_and_services_leave_no_trace() {
    let node = start_node(&config("")).await;
    all_running(&node).await;
    let addr = node.api_addr().unwrap();

    let answer = Req::get(addr, "/v1/nope").send(addr).await;
    answer.refused(404, "NoSuchService");
    assert_eq!(
        answer.json()["error"]["message"],
        "no endpoint GET /v1/nope"
    );
    Req::post(addr, "/v1/nope/deeper", "{}")
        .send(addr)
        .await
        .refused(404, "NoSuchService");
    // A known endpoint with the wrong method keeps the error shape.
    Req::get(addr, "/v1/kill")
        .send(addr)
        .await
        .refused(405, "BadRequest");

    let metrics = || async {
        let answer = Req::get(addr, "/metrics").send(addr).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    };
    let samples = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let unknown = |i: usize| Req::post(addr, &format!("/v1/request/svc-{i}/x"), "{}").send(addr);
    unknown(0).await.refused(404, "NoSuchService");
    let before = metrics().await;
    let memory = proc_kb("self", "VmRSS");
    for batch in (1..=1000).collect::<Vec<_>>().chunks(50) {
        for answer in futures::future::join_all(batch.iter().map(|&i| unknown(i))).await {
            answer.refused(404, "NoSuchService");
        }
    }
    let after = metrics().await;
    assert_eq!(samples(&before), samples(&after), "{after}");
    assert!(!after.contains("svc-"), "{after}");
    let other = "colony_call_failures_total{node=\"hostile\",service=\"(other)\",kind=\"NoSuchService\"} 1001";
    assert!(after.contains(other), "{after}");
    // A long name from the URL is cut in the message, not echoed whole.
    let long = "s".repeat(16 * 1024);
    let answer = Req::post(addr, &format!("/v1/request/{long}/x"), "{}")
        .send(addr)
        .await;
    answer.refused(404, "NoSuchService");
    assert!(answer.body.len() < 1024, "{} bytes", answer.body.len());

    assert_memory_bounded(memory);
    assert_serving(&node).await;
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn health_answers_through_a_flood_under_a_1024_fd_limit() {
    flood::health_answers_through_a_flood().await;
}

/// The node process of the flood and pipelining tests, re-run from this binary
/// (see `child`); does nothing unless one of them started it.
#[test]
#[ignore = "started by the flood and pipelining tests"]
fn node_child() {
    child::serve();
}

#[actix_rt::test]
async fn pipelining_without_reading_holds_little_and_is_closed() {
    pipelining::pipelining_without_reading().await;
}
