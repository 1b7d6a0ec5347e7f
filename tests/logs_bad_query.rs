//! `GET /v1/logs` with a value it cannot use is a 400 naming it (an unknown
//! node a 404), and it is behind the same checks as every endpoint: the bearer
//! token, the Host and the Origin.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::logs::*;
use serde_json::Value;

/// `GET /v1/logs?QUERY` with `headers`: the status and the body as JSON.
async fn get(api: SocketAddr, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("http://{api}/v1/logs?{query}");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut req = agent.get(&url);
        for (key, value) in &headers {
            req = req.header(key, value);
        }
        let mut response = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let first = text.lines().next().unwrap_or("null");
        (status, serde_json::from_str(first).unwrap_or(Value::Null))
    })
    .await
    .expect("HTTP thread")
}

fn message(answer: &(u16, Value)) -> String {
    answer.1["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {answer:?}"))
        .to_string()
}

#[actix_rt::test]
async fn bad_values_are_400s_that_name_them() {
    colony::logging::init_quiet("query");
    let mut token = tempfile::NamedTempFile::new().expect("temp file");
    token.write_all(b"sesame").expect("write token");
    let node = start_chatter_node(&format!(
        "node: {{ name: query, threads: 1 }}\napi: {{ listen: 127.0.0.1:0, token_file: {} }}\n",
        token.path().display()
    ))
    .await;
    let api = node.api_addr().expect("an API");
    let auth = [("Authorization", "Bearer sesame")];

    let ok = get(api, "lines=5&level=info&follow=0&node=query", &auth).await;
    assert_eq!(ok.0, 200, "{ok:?}");

    for (query, named) in [
        (
            "level=loud",
            "level `loud` is not one of error, warn, info, debug, trace",
        ),
        ("lines=many", "lines `many` is not a number from 0 to 10000"),
        ("lines=10001", "lines `10001`"),
        ("lines=-1", "lines `-1`"),
        ("follow=maybe", "follow `maybe`"),
        ("colour=red", "unknown field `colour`"),
    ] {
        let answer = get(api, query, &auth).await;
        assert_eq!(answer.0, 400, "{query}: {answer:?}");
        assert_eq!(answer.1["error"]["kind"], "BadRequest", "{query}");
        assert!(message(&answer).contains(named), "{query}: {answer:?}");
    }
    let unknown = get(api, "node=elsewhere", &auth).await;
    assert_eq!(unknown.0, 404, "{unknown:?}");
    assert!(
        message(&unknown).contains("no node `elsewhere`"),
        "{unknown:?}"
    );

    // The same protections as every endpoint.
    assert_eq!(get(api, "lines=5", &[]).await.0, 401);
    assert_eq!(
        get(api, "lines=5", &[("Authorization", "Bearer wrong")])
            .await
            .0,
        403
    );
    let foreign = [auth[0], ("Origin", "http://evil.example")];
    assert_eq!(get(api, "lines=5", &foreign).await.0, 403);
    let rebound = [auth[0], ("Host", "evil.example")];
    assert_eq!(get(api, "lines=5", &rebound).await.0, 421);
}
