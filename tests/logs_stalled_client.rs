//! A `GET /v1/logs?follow=1` client that reads nothing, while the node logs far
//! more than its buffers hold, is bounded: the node's memory stays within a
//! bound while 100 MB of lines go by, the node keeps serving other requests,
//! at most 16 log streams are open at once (the 17th is 503), and the stalled
//! clients are dropped (after `api.read_timeout` with no write taken), which
//! frees their places for new streams.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::logs::*;
use common::*;
use serde_json::Value;

const NODE: &str = "stall";
/// `GET /v1/logs` streams a node serves at once (`api::logs::MAX_STREAMS`).
const MAX_STREAMS: usize = 16;
/// Lines of 1 KiB logged while the clients stall: 100 MB.
const LINES: usize = 100_000;

async fn get(api: SocketAddr, path: &'static str) -> u16 {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("http://{api}{path}");
        let response = agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        response.status().as_u16()
    })
    .await
    .expect("HTTP thread")
}

/// A follower that gets no line (none is an error) and reads its answer's
/// status line only; the connection stays open.
fn quiet_follower(api: SocketAddr) -> (u16, TcpStream) {
    let stream = stalled_get(api, "/v1/logs?follow=1&level=error&lines=0");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut status_line = String::new();
    BufReader::new(&stream)
        .read_line(&mut status_line)
        .expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    (status, stream)
}

#[actix_rt::test]
async fn a_client_that_reads_nothing_is_bounded_and_dropped() {
    colony::logging::init_quiet(NODE);
    let node = start_chatter_node(&format!(
        "node: {{ name: {NODE}, threads: 1 }}\napi: {{ listen: 127.0.0.1:0, read_timeout: 1s }}\n"
    ))
    .await;
    let api = node.api_addr().expect("an API");
    let payload = "x".repeat(1000);

    // The ring full first (8 MiB), so that what grows later is not the ring.
    for n in 0..20_000 {
        log::info!(target: CHATTER, "{n} {payload}");
    }
    let before = rss_kb();

    let mut stalled: Vec<TcpStream> = (0..MAX_STREAMS)
        .map(|_| stalled_get(api, "/v1/logs?follow=1&lines=10000"))
        .collect();
    // The streams are open once their places are taken: the next is refused.
    wait_until(
        "a log stream past the bound is refused",
        Duration::from_secs(10),
        || async { get(api, "/v1/logs?lines=0").await == 503 },
    )
    .await;

    for chunk in 0..20 {
        for n in 0..LINES / 20 {
            log::info!(target: CHATTER, "{chunk}.{n} {payload}");
        }
        // Other requests are served meanwhile.
        assert_eq!(get(api, "/v1/health").await, 200);
        assert_eq!(get(api, "/v1/status").await, 200);
    }
    let grown_mb = rss_kb().saturating_sub(before) / 1024;
    assert!(
        grown_mb < 64,
        "the node's memory grew by {grown_mb} MB while {} MB of lines went by unread",
        LINES / 1000
    );

    // The stalled clients are dropped: all their places come free.
    wait_until(
        "every stalled client is dropped",
        Duration::from_secs(20),
        || async { get(api, "/v1/logs?lines=0").await == 200 },
    )
    .await;
    let mut quiet = Vec::new();
    wait_until(
        "16 new streams are open at once",
        Duration::from_secs(20),
        || {
            let (status, stream) = quiet_follower(api);
            if status == 200 {
                quiet.push(stream);
            }
            let open = quiet.len();
            async move { open == MAX_STREAMS }
        },
    )
    .await;
    // And the bound holds for them too.
    let (status, _refused) = quiet_follower(api);
    assert_eq!(status, 503);
    for stream in &mut stalled {
        assert!(
            closed_by_node(stream),
            "a stalled client is still connected"
        );
    }

    // The node's log still serves a reader once places are free.
    drop(quiet);
    wait_until(
        "a reader gets the newest line",
        Duration::from_secs(20),
        || async {
            let (status, lines) = log_lines(api, "lines=1").await;
            status == 200 && lines.len() == 1 && lines[0]["msg"] != Value::Null
        },
    )
    .await;
}
