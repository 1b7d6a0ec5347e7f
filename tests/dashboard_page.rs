//! The dashboard's page (`GET /`) on a node with a token: the page, its script
//! and its style sheet load without the token (a browser's navigation cannot send
//! one) and hold no secret, with a policy that allows nothing from elsewhere and
//! no framing; everything else still needs the token, a foreign `Host` is still
//! 421, and a POST from a foreign page is still refused even with the token.
//! And `GET /v1/status` carries the counters the page draws: what each service
//! served, by error kind and latency, and the node's publications.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::{Published, ServiceError};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const TOKEN: &str = "dashb0ard-token-s3cret";
const EXCHANGE: Duration = Duration::from_secs(15);

/// An answer read off a raw connection: status, headers (names lowercased), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    #[track_caller]
    fn refused(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.json()["error"]["kind"], kind, "{self:?}");
    }
}

/// `method path` with exactly `headers` (and a Content-Length for a body), on a
/// new connection; the node closes it after answering.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let mut stream = timeout(EXCHANGE, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.write_all(text.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    timeout(EXCHANGE, stream.read_to_end(&mut buf))
        .await
        .expect("the node answers in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

#[actix_rt::test]
async fn the_page_loads_without_the_token_and_every_call_still_needs_it() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, TOKEN.as_bytes()).unwrap();
    let node = start_node(&format!(
        "node: {{ name: dash, role: master, threads: 1 }}\n\
         api: {{ listen: 127.0.0.1:0, token_file: {} }}\n\
         services:\n  calc: {{ workers: 1 }}\n",
        file.path().display()
    ))
    .await;
    all_running(&node).await;
    let addr = node.api_addr().expect("an API");
    let host = addr.to_string();
    let own = format!("http://{addr}");
    let bearer = format!("Bearer {TOKEN}");

    // The page, its script and its style, each with its type and the headers
    // that keep other sites out; none of them holds the token.
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let answer = send(addr, "GET", path, &[("Host", &host)], "").await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let got = answer.header("content-type").unwrap_or_default();
        assert!(got.starts_with(content_type), "{path}: {got}");
        let policy = answer.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert!(!answer.body.contains(TOKEN), "{path} holds the token");
    }
    let page = send(addr, "GET", "/", &[("Host", &host)], "").await;
    assert!(page
        .body
        .contains(r#"<script src="/dashboard.js" defer></script>"#));

    // Everything else needs the token, as before.
    send(addr, "GET", "/v1/status", &[("Host", &host)], "")
        .await
        .refused(401, "Rejected");
    send(addr, "GET", "/index.html", &[("Host", &host)], "")
        .await
        .refused(401, "Rejected");
    let status = send(
        addr,
        "GET",
        "/v1/status",
        &[("Host", &host), ("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status.status, 200, "{status:?}");
    // Only GET serves the page.
    send(
        addr,
        "POST",
        "/",
        &[
            ("Host", &host),
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        "{}",
    )
    .await
    .refused(405, "BadRequest");
    // A rebound DNS name gets no page either.
    send(addr, "GET", "/", &[("Host", "evil.example")], "")
        .await
        .refused(421, "Rejected");

    // A foreign page that somehow had the token still cannot kill: its Origin
    // is refused. The page's own origin, with the token, can.
    let kill = r#"{"worker":"dash/calc/0"}"#;
    let restarts = || worker_status(&node, "dash/calc/0").restarts;
    for origin in [
        "http://evil.example",
        "null",
        "http://localhost.evil.example",
    ] {
        send(
            addr,
            "POST",
            "/v1/kill",
            &[
                ("Host", &host),
                ("Origin", origin),
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            kill,
        )
        .await
        .refused(403, "Rejected");
    }
    // The page's own origin without the token: refused for the token.
    send(
        addr,
        "POST",
        "/v1/kill",
        &[
            ("Host", &host),
            ("Origin", &own),
            ("Content-Type", "application/json"),
        ],
        kill,
    )
    .await
    .refused(401, "Rejected");
    assert_eq!(restarts(), 0, "a refused kill killed the worker");
    let killed = send(
        addr,
        "POST",
        "/v1/kill",
        &[
            ("Host", &host),
            ("Origin", &own),
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        kill,
    )
    .await;
    assert_eq!(killed.status, 202, "{killed:?}");
    wait_until(
        "the killed worker restarts",
        Duration::from_secs(5),
        || async { restarts() == 1 },
    )
    .await;
    node.shutdown(Duration::from_millis(200)).await;
}

/// Counts the publications it gets.
struct Counter(Arc<AtomicUsize>);

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<Published> for Counter {
    type Result = ();
    fn handle(&mut self, _: Published, _: &mut Context<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[actix_rt::test]
async fn status_counts_what_each_service_served_and_the_publications() {
    let node = start_node(
        "node: { name: counted, role: master, threads: 1 }\n\
         services:\n  calc: { workers: 2 }\n  chaos: { workers: 1 }\n",
    )
    .await;
    all_running(&node).await;
    let served = |service: &str| {
        node.status()
            .services
            .into_iter()
            .find(|s| s.name == service)
            .unwrap_or_else(|| panic!("no service {service}"))
            .served
    };
    assert_eq!(served("calc"), colony::status::Served::default());

    for a in 0..5 {
        node.request("calc", Add { a, b: 1 }).await.expect("add");
    }
    for _ in 0..2 {
        let panic = Panic {
            message: "counted".into(),
        };
        let e: ServiceError = node.request("chaos", panic).await.unwrap_err();
        assert_eq!(e.kind, colony::ErrorKind::HandlerPanicked);
        // Served at once, not after a wait for the restart.
        all_running(&node).await;
    }
    node.request("chaos", Sleep { ms: 30 })
        .await
        .expect("sleep");

    let calc = served("calc");
    assert_eq!(calc.requests, 5, "{calc:?}");
    assert!(calc.errors.is_empty(), "{calc:?}");
    let in_buckets: u64 = calc.latency_ms.iter().map(|(_, n)| n).sum();
    assert_eq!(in_buckets, 5, "{calc:?}");
    assert!(
        calc.latency_ms.windows(2).all(|w| w[0].0 < w[1].0),
        "bounds rise: {calc:?}"
    );
    assert!(
        calc.latency_ms.last().is_some_and(|(_, n)| *n > 0),
        "{calc:?}"
    );

    let chaos = served("chaos");
    assert_eq!(chaos.requests, 3, "{chaos:?}");
    assert_eq!(
        chaos.errors,
        [("HandlerPanicked".to_string(), 2)].into_iter().collect(),
        "{chaos:?}"
    );
    // Two panics and a sleep of 30 ms, the slowest: the p99 lies in the
    // sleep's bucket (at least 25 ms, within the highest bound that holds any),
    // interpolated as Prometheus does; the median lies below it.
    let p50 = chaos.quantile_ms(0.5).expect("a median");
    let p99 = chaos.quantile_ms(0.99).expect("a p99");
    let highest = chaos.latency_ms.last().expect("buckets").0;
    assert!(p99 >= 25.0 && p99 <= highest, "p99 {p99} of {chaos:?}");
    assert!(p50 < p99, "p50 {p50} of {chaos:?}");
    assert_eq!(chaos.quantile_ms(0.0).map(|q| q < p50), Some(true));

    // Publications: two from this node, each to the one subscriber here.
    let got = Arc::new(AtomicUsize::new(0));
    let subscriber = Counter(got.clone()).start();
    let _subscription = node
        .subscribe("counted.", subscriber.recipient())
        .expect("subscribe");
    assert_eq!(node.publish("counted.a", 1).expect("publish"), 1);
    assert_eq!(node.publish("other.b", 2).expect("publish"), 0);
    wait_until("the subscriber has it", Duration::from_secs(5), || async {
        got.load(Ordering::SeqCst) == 1
    })
    .await;
    let pubsub = node.status().pubsub;
    assert_eq!(
        (pubsub.published, pubsub.delivered, pubsub.dropped),
        (2, 1, 0)
    );

    // The node's JSON carries them as documented.
    let json = serde_json::to_value(node.status()).expect("status is JSON");
    let chaos_json = json["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "chaos"))
        .expect("chaos in the JSON");
    assert_eq!(chaos_json["served"]["errors"]["HandlerPanicked"], 2);
    assert!(
        chaos_json["served"]["latency_ms"][0].is_array(),
        "{chaos_json}"
    );
    assert_eq!(json["pubsub"]["published"], 2);
    node.shutdown(Duration::from_millis(200)).await;
}
