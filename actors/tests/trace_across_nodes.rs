//! A request followed through the logs of two node processes: it enters the
//! master's HTTP API with a `traceparent` and is served by `math` on worker-b.
//! The response carries the same trace id back, and the log of each node
//! (`RUST_LOG` at debug for colony and the app) has its lines of that request
//! ending with `trace=<that id>`: the master's routing line, and worker-b's
//! serving line and the handler's own line. A request without a `traceparent`
//! gets a new trace, followed the same way. On the bridge and on NATS.

mod common;

use common::*;
use serde_json::Value;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const LOG: &str = "info,colony=debug,actors=debug";

/// POSTs `math sum` to `api` with `headers`; the trace id of the response's
/// `traceparent`, after checking the reply and the header's form.
fn sum_traced(api: &str, headers: &[(&str, &str)]) -> String {
    let (code, response_headers, body) = http_exchange(
        api,
        "POST",
        "/v1/request/math/sum",
        headers,
        r#"{"a":1,"b":2}"#,
    )
    .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(code, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(reply["reply"]["sum"], 3, "{body}");
    let traceparent = response_headers
        .iter()
        .find(|(name, _)| name == "traceparent")
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| panic!("no traceparent in {response_headers:?}"));
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{traceparent}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{traceparent}");
    parts[1].to_string()
}

/// Waits until `node` logged a line ending with `trace=<id>` that contains
/// every one of `parts`.
fn wait_trace_line(node: &NodeProcess, what: &str, id: &str, parts: &[&str]) {
    let suffix = format!(" trace={id}");
    node.wait_logged(what, |line| {
        line.ends_with(&suffix) && parts.iter().all(|p| line.contains(p))
    });
}

fn followed_through_the_logs(backbone: Backbone) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(backbone, dir.path());
    let master_cfg = net.config("master", "master", "{}", "");
    let master = net.start_with_env(&master_cfg, &[("RUST_LOG", LOG)]);
    let b_cfg = net.config("worker-b", "worker", "{ math: { workers: 1 } }", "");
    let b = net.start_with_env(&b_cfg, &[("RUST_LOG", LOG)]);
    poll("the master reaches math on worker-b", || {
        request_sum(&master.api).is_ok()
    });

    let sent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let back = sum_traced(&master.api, &[("traceparent", &sent)]);
    assert_eq!(back, TRACE_ID);

    wait_trace_line(
        &master,
        "the master's routing line of the traced request",
        TRACE_ID,
        &["[master] colony::", "request math/sum: to node worker-b"],
    );
    wait_trace_line(
        &b,
        "worker-b's serving line of the traced request",
        TRACE_ID,
        &[
            "[worker-b",
            "request math/sum from node master: served here",
        ],
    );
    wait_trace_line(
        &b,
        "the handler's own line on worker-b",
        TRACE_ID,
        &["[worker-b/math/0] actors::math: sum of 1 and 2"],
    );

    // No traceparent: a new trace, which worker-b's lines name as well.
    let fresh = sum_traced(&master.api, &[]);
    assert_ne!(fresh, TRACE_ID);
    wait_trace_line(
        &master,
        "the new trace's routing line",
        &fresh,
        &["to node worker-b"],
    );
    wait_trace_line(
        &b,
        "the new trace's handler line",
        &fresh,
        &["actors::math: sum"],
    );

    // Lines outside any request name no trace.
    assert!(
        b.logged(|l| l.contains("colony::") && !l.contains(" trace=")),
        "{}",
        b.log()
    );
}

#[test]
fn a_request_is_followed_through_both_nodes_logs_over_the_bridge() {
    followed_through_the_logs(Backbone::Bridge);
}

#[test]
fn a_request_is_followed_through_both_nodes_logs_over_nats() {
    followed_through_the_logs(Backbone::Nats);
}
