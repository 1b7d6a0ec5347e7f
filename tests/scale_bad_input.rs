//! `POST /v1/scale/{service}` refuses what it cannot do, each with a clear
//! `BadRequest` (or the kind that fits) and nothing changed: bodies that are
//! not `{"workers":N}`, absurd numbers, counts outside the config's bounds,
//! the master's handlers. It stands behind the API's protections, as
//! `/v1/kill` does: JSON only, the API's own origin, the token.

mod common;

use std::io::Write;
use std::time::Duration;

use colony::Node;
use common::*;

const CONFIG: &str = "
node: { name: web, role: master, threads: 2 }
api: { listen: 127.0.0.1:0 }
services:
  calc: { workers: 2 }
  chaos: { workers: 1, concurrency: 1000 }
";

fn workers_of(node: &Node, service: &str) -> usize {
    node.status()
        .services
        .iter()
        .find(|s| s.name == service)
        .map_or(0, |s| s.workers.len())
}

#[actix_rt::test]
async fn bad_bodies_and_counts_out_of_bounds_are_refused() {
    let node = start_node(CONFIG).await;
    all_running(&node).await;
    let api = node.api_addr().expect("the API");

    // Not the body scale takes: each names the form it does take.
    for body in [
        "",
        "{}",
        "[]",
        "3",
        "not json",
        r#"{"workers":-1}"#,
        r#"{"workers":1e30}"#,
        r#"{"workers":18446744073709551616}"#,
        r#"{"workers":"3"}"#,
        r#"{"workers":2.5}"#,
        r#"{"workers":null}"#,
        r#"{"workers":[3]}"#,
        r#"{"workers":3,"extra":1}"#,
        r#"{"workers":3,"node":5}"#,
    ] {
        let answer = http_post(api, "/v1/scale/calc", body).await;
        assert_refused(&answer, 400, "BadRequest", &["scale takes", "1 to 10000"]);
    }

    // Out of the config's bounds: each names the bound and its key.
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":0}"#).await;
    assert_refused(
        &answer,
        400,
        "BadRequest",
        &["least allowed, 1", "services.calc.workers"],
    );
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":10001}"#).await;
    assert_refused(
        &answer,
        400,
        "BadRequest",
        &["most allowed, 10000", "services.calc.workers"],
    );
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":18446744073709551615}"#).await;
    assert_refused(&answer, 400, "BadRequest", &["most allowed, 10000"]);
    let answer = http_post(api, "/v1/scale/chaos", r#"{"workers":1001}"#).await;
    assert_refused(
        &answer,
        400,
        "BadRequest",
        &["1000000", "services.chaos.workers × concurrency"],
    );

    // What cannot be scaled, or is not there.
    let answer = http_post(api, "/v1/scale/@master", r#"{"workers":2}"#).await;
    assert_refused(&answer, 400, "BadRequest", &["@master"]);
    let answer = http_post(api, "/v1/scale/nope", r#"{"workers":2}"#).await;
    assert_refused(&answer, 404, "NoSuchService", &["nope"]);
    let answer = http_post(api, "/v1/scale/calc", r#"{"workers":2,"node":"ghost"}"#).await;
    assert_refused(&answer, 404, "NoSuchService", &["ghost"]);
    let answer = http_call(api, "GET", "/v1/scale/calc", b"", &[]).await;
    assert_eq!(answer.0, 405, "{}", answer.1);

    // Nothing changed, and the node still serves and scales.
    assert_eq!(
        (workers_of(&node, "calc"), workers_of(&node, "chaos")),
        (2, 1)
    );
    let answer = http_post(api, "/v1/scale/chaos", r#"{"workers":1000}"#).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(workers_of(&node, "chaos"), 1000);
    let answer = http_post(api, "/v1/scale/chaos", r#"{"workers":1,"node":"web"}"#).await;
    assert_eq!(
        (answer.1["workers"].as_u64(), answer.1["was"].as_u64()),
        (Some(1), Some(1000))
    );
    assert_eq!(workers_of(&node, "chaos"), 1);
    node.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn the_api_protections_guard_scale() {
    let token = "sc4le-t0ken";
    let mut file = tempfile::NamedTempFile::new().expect("token file");
    writeln!(file, "{token}").expect("write token");
    let yaml = format!(
        "node: {{ name: locked, threads: 1 }}\napi: {{ listen: 127.0.0.1:0, token_file: {} }}\n\
         services:\n  calc: {{ workers: 1 }}\n",
        file.path().display()
    );
    let node = start_node(&yaml).await;
    all_running(&node).await;
    let api = node.api_addr().expect("the API");
    let body = br#"{"workers":3}"#;
    let bearer = format!("Bearer {token}");
    let scale = |headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http_call(api, "POST", "/v1/scale/calc", body, &headers).await
    };

    let answer = scale(vec![]).await;
    assert_refused(&answer, 401, "Rejected", &[]);
    let answer = scale(vec![("Authorization", "Bearer wrong".into())]).await;
    assert_refused(&answer, 403, "Rejected", &[]);
    // What a web page could send: a form's content type, a foreign origin.
    let answer = scale(vec![
        ("Authorization", bearer.clone()),
        ("Content-Type", "text/plain".into()),
    ])
    .await;
    assert_eq!(answer.0, 415, "{}", answer.1);
    let answer = scale(vec![
        ("Authorization", bearer.clone()),
        ("Origin", "http://evil.example".into()),
    ])
    .await;
    assert_eq!(answer.0, 403, "{}", answer.1);
    assert_eq!(
        workers_of(&node, "calc"),
        1,
        "a refused scale changed nothing"
    );

    let answer = scale(vec![("Authorization", bearer)]).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(workers_of(&node, "calc"), 3);
    node.shutdown(Duration::from_millis(200)).await;
}
