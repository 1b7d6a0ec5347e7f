//! One HTTP exchange with a node's API, made on a blocking thread (the node's
//! actors may run on the test's own thread), with the headers a test chooses.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// How long one exchange may take before the test fails.
pub const HTTP_EXCHANGE: Duration = Duration::from_secs(20);

/// `method path` at `addr` with `body` and `headers` (`Content-Type:
/// application/json` unless one is given); the status and the JSON body
/// (`Null` when it is not JSON).
pub async fn http_call(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let body = body.to_vec();
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("Content-Type".into(), "application/json".into()));
    }
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_EXCHANGE))
            .build()
            .into();
        let answer = if method == "GET" {
            let mut req = agent.get(&url);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            req.call()
        } else {
            let mut req = agent.post(&url);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            req.send(&body[..])
        };
        let mut response = answer.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .expect("HTTP thread")
}

/// `POST path` with a JSON `body`.
pub async fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    http_call(addr, "POST", path, body.as_bytes(), &[]).await
}

/// Asserts an error answer: its status, kind, and that its message names
/// each of `words`.
#[track_caller]
pub fn assert_refused(answer: &(u16, Value), status: u16, kind: &str, words: &[&str]) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["kind"], kind, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    for word in words {
        assert!(message.contains(word), "`{word}` not in: {message}");
    }
}
