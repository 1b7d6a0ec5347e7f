//! The HTTP API (SPEC §6): health, status, request, kill and the bearer token, with
//! every error answered by the status of its kind (SPEC §3) and
//! `{"error":{"kind","message"}}`.
//!
//! The node's master and supervisors run on the test's own System thread, so every
//! (blocking) HTTP call goes through `spawn_blocking`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use colony::{Node, NodeConfig, WorkerId};
use common::*;
use serde_json::{json, Value};

const MAX_BODY: usize = 1024;

fn config() -> String {
    format!(
        "
node: {{ name: web, role: master, threads: 2 }}
api: {{ listen: 127.0.0.1:0, max_body: {MAX_BODY} }}
services:
  calc: {{ workers: 2 }}
  chaos: {{ workers: 2, concurrency: 4, timeout: 5s }}
  guarded: {{ workers: 1 }}
"
    )
}

/// One HTTP exchange, made on a blocking thread.
async fn http(
    method: &'static str,
    url: String,
    body: Option<Vec<u8>>,
    token: Option<String>,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut response = match method {
            "GET" => {
                let mut req = agent.get(&url);
                if let Some(auth) = &auth {
                    req = req.header("Authorization", auth);
                }
                req.call()
            }
            _ => {
                let mut req = agent.post(&url).content_type("application/json");
                if let Some(auth) = &auth {
                    req = req.header("Authorization", auth);
                }
                req.send(body.unwrap_or_default())
            }
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url} answered {status} non-JSON {text:?}: {e}"));
        (status, value)
    })
    .await
    .expect("HTTP thread")
}

fn addr(node: &Node) -> SocketAddr {
    node.api_addr().expect("the API listens")
}

async fn get(node: &Node, path: &str) -> (u16, Value) {
    http("GET", format!("http://{}{path}", addr(node)), None, None).await
}

async fn post(node: &Node, path: &str, body: impl Into<Vec<u8>>) -> (u16, Value) {
    let url = format!("http://{}{path}", addr(node));
    http("POST", url, Some(body.into()), None).await
}

/// Asserts an error answer: the status, the kind, and that there is a message.
#[track_caller]
fn assert_error(answer: &(u16, Value), status: u16, kind: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["kind"], kind, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no error message in {body}");
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
    items.iter().copied().collect()
}

#[actix_rt::test]
async fn health_and_status_have_the_documented_shape() {
    let node = start_node(&config()).await;
    all_running(&node).await;

    let (status, body) = get(&node, "/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "status": "ok", "node": "web" }));

    let (status, body) = get(&node, "/v1/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), set(&["nodes"]));
    let nodes = body["nodes"].as_array().expect("nodes is a list");
    assert_eq!(nodes.len(), 1, "{body}");
    let n = &nodes[0];
    // SPEC §6 keys; the node also reports its uptime_ms, restarts (by the node that
    // spawned it), cpus (its affinity), and the counters the dashboard draws
    // (pubsub, call_failures).
    assert_eq!(
        keys(n),
        set(&[
            "name",
            "role",
            "pid",
            "state",
            "services",
            "uptime_ms",
            "restarts",
            "cpus",
            "pubsub",
            "call_failures"
        ]),
        "{n}"
    );
    assert_eq!(n["name"], "web");
    assert_eq!(n["role"], "master");
    assert_eq!(n["pid"], std::process::id());
    assert_eq!(n["restarts"], 0);
    assert!(
        !n["cpus"].as_array().expect("cpus is a list").is_empty(),
        "{n}"
    );
    assert_eq!(n["state"], "running");
    assert!(n["uptime_ms"].is_u64(), "{n}");

    let services = n["services"].as_array().expect("services is a list");
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().expect("service name"))
        .collect();
    // The configured services, sorted, and the master's handlers (`@master`).
    assert_eq!(names, ["@master", "calc", "chaos", "guarded"], "{n}");
    for service in services {
        // SPEC §6 keys; a service also reports its state and what it served.
        assert_eq!(
            keys(service),
            set(&["name", "queued", "workers", "state", "served"]),
            "{service}"
        );
        assert_eq!(service["queued"], 0, "{service}");
        assert_eq!(service["state"], "running", "{service}");
    }
    let workers_of = |name: &str| -> Vec<Value> {
        services.iter().find(|s| s["name"] == name).unwrap()["workers"]
            .as_array()
            .unwrap()
            .clone()
    };
    let calc = workers_of("calc");
    let ids: Vec<&str> = calc.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["web/calc/0", "web/calc/1"]);
    assert_eq!(workers_of("chaos").len(), 2);
    assert_eq!(workers_of("guarded").len(), 1);
    for worker in &calc {
        assert_eq!(
            keys(worker),
            set(&[
                "id",
                "state",
                "restarts",
                "uptime_ms",
                "handled",
                "in_flight"
            ]),
            "{worker}"
        );
        assert_eq!(worker["state"], "running", "{worker}");
        assert_eq!(worker["restarts"], 0, "{worker}");
        assert_eq!(worker["handled"], 0, "{worker}");
        assert_eq!(worker["in_flight"], 0, "{worker}");
        assert!(worker["uptime_ms"].is_u64(), "{worker}");
    }

    // A handled request shows in the worker's counter.
    let (status, body) = post(&node, "/v1/request/calc/add", r#"{"a":1,"b":2}"#).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = get(&node, "/v1/status").await;
    let handled: u64 = body["nodes"][0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "calc")
        .unwrap()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["handled"].as_u64().unwrap())
        .sum();
    assert_eq!(handled, 1, "{body}");

    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn requests_reply_and_every_bad_input_gets_its_kind() {
    let node = start_node(&config()).await;
    all_running(&node).await;

    let (status, body) = post(&node, "/v1/request/calc/add", r#"{"a":1,"b":2}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), set(&["reply"]));
    assert_eq!(body["reply"]["sum"], 3, "{body}");
    let by = body["reply"]["by"].as_str().unwrap();
    assert!(by == "web/calc/0" || by == "web/calc/1", "{body}");

    // A per-request timeout shorter than the handler's sleep.
    let answer = post(
        &node,
        "/v1/request/chaos/sleep?timeout=50ms",
        r#"{"ms":2000}"#,
    )
    .await;
    assert_error(&answer, 504, "Timeout");
    // A timeout that is not a duration.
    let answer = post(&node, "/v1/request/chaos/sleep?timeout=soon", r#"{"ms":1}"#).await;
    assert_error(&answer, 400, "BadRequest");

    // Malformed JSON.
    let answer = post(&node, "/v1/request/calc/add", r#"{"a":1,"b":"#).await;
    assert_error(&answer, 400, "BadRequest");
    // Well-formed JSON of the wrong shape.
    let answer = post(&node, "/v1/request/calc/add", r#"{"a":"one","b":2}"#).await;
    assert_error(&answer, 400, "BadRequest");
    let answer = post(&node, "/v1/request/calc/add", r#"{"a":1}"#).await;
    assert_error(&answer, 400, "BadRequest");
    // Unknown service, unknown subject.
    let answer = post(&node, "/v1/request/nope/add", r#"{"a":1,"b":2}"#).await;
    assert_error(&answer, 404, "NoSuchService");
    let answer = post(&node, "/v1/request/calc/nope", r#"{"a":1,"b":2}"#).await;
    assert_error(&answer, 400, "BadRequest");

    // api.max_body: a valid message padded to exactly the limit passes, one byte more
    // does not.
    let padded = |len: usize| {
        let head = r#"{"a":1,"b":2,"pad":""#;
        let tail = r#""}"#;
        let pad = "x".repeat(len - head.len() - tail.len());
        format!("{head}{pad}{tail}")
    };
    assert_eq!(padded(MAX_BODY).len(), MAX_BODY);
    let (status, body) = post(&node, "/v1/request/calc/add", padded(MAX_BODY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["sum"], 3, "{body}");
    let answer = post(&node, "/v1/request/calc/add", padded(MAX_BODY + 1)).await;
    assert_error(&answer, 413, "BadRequest");

    // A guard's rejection, with the guard's reason; a passing message is changed by
    // the next guard in the chain.
    let (status, body) = post(&node, "/v1/request/guarded/secret", "{}").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({ "error": { "kind": "Rejected", "message": "You are not authenticated." } })
    );
    let (status, body) = post(&node, "/v1/request/guarded/secret", r#"{"user":"ada"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "reply": "secret for ADA" }));

    // The handler's own error keeps its data.
    let (status, body) = post(&node, "/v1/request/calc/fail", r#"{"code":7}"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["kind"], "Application", "{body}");
    assert_eq!(body["error"]["message"], "fail requested", "{body}");
    assert_eq!(body["error"]["data"], json!({ "code": 7 }), "{body}");

    // A panicking handler.
    let answer = post(&node, "/v1/request/chaos/panic", r#"{"message":"boom"}"#).await;
    assert_error(&answer, 500, "HandlerPanicked");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boom"),
        "{}",
        answer.1
    );

    // An unknown endpoint.
    let answer = get(&node, "/v1/nope").await;
    assert_error(&answer, 404, "NoSuchService");
    assert_eq!(answer.1["error"]["message"], "no endpoint GET /v1/nope");

    // After all of that the node keeps serving, the panicked service included.
    let (status, body) = post(&node, "/v1/request/calc/add", r#"{"a":20,"b":22}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["sum"], 42, "{body}");
    let (status, body) = post(&node, "/v1/request/chaos/sleep", r#"{"ms":1}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["reply"]
            .as_str()
            .is_some_and(|by| by.starts_with("web/chaos/")),
        "{body}"
    );

    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn kill_restarts_the_worker_exactly_once() {
    let node = start_node(&config()).await;
    all_running(&node).await;
    let id = "web/calc/0";
    assert_eq!(worker_status(&node, id).restarts, 0);

    let (status, body) = post(&node, "/v1/kill", json!({ "worker": id }).to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({ "killed": id }));

    wait_until("web/calc/0 restarted", Duration::from_secs(5), || async {
        let w = worker_status(&node, id);
        w.restarts == 1 && w.state == "running"
    })
    .await;
    // It answers as itself again, and was restarted once, not more.
    let who = node
        .request_worker(&WorkerId::new("web", "calc", 0), WhoAmI {})
        .await
        .expect("the restarted worker answers");
    assert_eq!(who, id);
    assert_eq!(worker_status(&node, id).restarts, 1);
    // Its sibling was left alone (one_for_one).
    assert_eq!(worker_status(&node, "web/calc/1").restarts, 0);

    // Workers that do not exist.
    for unknown in ["web/calc/9", "web/nope/0", "elsewhere/calc/0"] {
        let answer = post(&node, "/v1/kill", json!({ "worker": unknown }).to_string()).await;
        assert_error(&answer, 404, "NoSuchService");
    }
    // Malformed kill bodies.
    for bad in [
        "not json",
        "{}",
        r#"{"wrker":"web/calc/0"}"#,
        r#"{"worker":"calc-0"}"#,
        r#"{"worker":7}"#,
        r#"{"worker":"web/calc/0","code":3}"#,
        r#"{"worker":"web/calc/0","node":"web"}"#,
        r#"{"node":"web","code":"three"}"#,
    ] {
        let answer = post(&node, "/v1/kill", bad).await;
        assert_error(&answer, 400, "BadRequest");
    }
    // A node that is not in the cluster.
    let answer = post(&node, "/v1/kill", r#"{"node":"elsewhere","code":3}"#).await;
    assert_error(&answer, 404, "NoSuchService");
    // Reload: this node spawns nothing, and bad bodies are named.
    for (body, status, kind) in [
        ("", 400, "BadRequest"),
        ("{}", 400, "BadRequest"),
        (r#"{"node":"web"}"#, 400, "BadRequest"),
        ("not json", 400, "BadRequest"),
        (r#"{"nodes":["a"]}"#, 400, "BadRequest"),
    ] {
        let answer = post(&node, "/v1/reload", body).await;
        assert_error(&answer, status, kind);
    }
    let (_, body) = post(&node, "/v1/reload", "{}").await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("spawns no nodes"), "{body}");
    // None of those touched a worker.
    assert_eq!(worker_status(&node, id).restarts, 1);
    assert_eq!(worker_status(&node, "web/calc/1").restarts, 0);

    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_token_guards_every_endpoint_but_health() {
    let token = "s3cret-t0ken";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{token}").unwrap();
    let yaml = format!(
        "
node: {{ name: locked, threads: 1 }}
api: {{ listen: 127.0.0.1:0, token_file: {} }}
services:
  calc: {{ workers: 1 }}
",
        file.path().display()
    );
    let node = start_node(&yaml).await;
    all_running(&node).await;
    let base = format!("http://{}", addr(&node));
    let with = |t: &str| Some(t.to_string());

    let answer = http("GET", format!("{base}/v1/status"), None, None).await;
    assert_error(&answer, 401, "Rejected");
    let answer = http("GET", format!("{base}/v1/status"), None, with("wrong")).await;
    assert_error(&answer, 403, "Rejected");
    let answer = http(
        "GET",
        format!("{base}/v1/status"),
        None,
        with("s3cret-t0ke"),
    )
    .await;
    assert_error(&answer, 403, "Rejected");
    let (status, body) = http("GET", format!("{base}/v1/status"), None, with(token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes"][0]["name"], "locked");

    let add = || Some(br#"{"a":1,"b":2}"#.to_vec());
    let answer = http("POST", format!("{base}/v1/request/calc/add"), add(), None).await;
    assert_error(&answer, 401, "Rejected");
    let (status, body) = http(
        "POST",
        format!("{base}/v1/request/calc/add"),
        add(),
        with(token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["sum"], 3);

    let kill = || Some(br#"{"worker":"locked/calc/0"}"#.to_vec());
    let answer = http("POST", format!("{base}/v1/kill"), kill(), None).await;
    assert_error(&answer, 401, "Rejected");
    assert_eq!(worker_status(&node, "locked/calc/0").restarts, 0);

    // Health stays open.
    let (status, body) = http("GET", format!("{base}/v1/health"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "status": "ok", "node": "locked" }));

    node.shutdown(Duration::from_millis(200)).await;
}

#[test]
fn a_non_loopback_listen_needs_a_token_file() {
    let path = Path::new("configs/open.yaml");
    let err = NodeConfig::parse(path, "node: { name: open }\napi: { listen: 0.0.0.0:0 }\n")
        .expect_err("0.0.0.0 without a token is refused");
    assert_eq!(err.file, "configs/open.yaml");
    assert_eq!(err.key, "api.token_file");
    assert!(err.problem.contains("0.0.0.0:0"), "{err}");

    NodeConfig::parse(
        path,
        "node: { name: open }\napi: { listen: 0.0.0.0:0, token_file: /run/colony.token }\n",
    )
    .expect("with a token file it is allowed");
    NodeConfig::parse(path, "node: { name: open }\napi: { listen: '[::1]:0' }\n")
        .expect("IPv6 loopback needs no token");
}
