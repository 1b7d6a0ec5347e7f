//! The `colony` binary end to end (SPEC §5): a node runs as a child process on a
//! port-0 API, and the client commands run as child processes against it.
//!
//! Every child is killed by a guard when the test ends, even after a failed
//! assertion; a client that does not finish within its deadline is killed too.

mod common;

use common::*;
use std::path::Path;

use serde_json::Value;

/// A config for node `name` with every service of the example app.
fn node_config(name: &str) -> String {
    format!(
        "
node: {{ name: {name}, role: master, threads: 2 }}
api: {{ listen: 127.0.0.1:0 }}
services:
  math: {{ workers: 2 }}
  data: {{ workers: 1 }}
  stream: {{ workers: 1 }}
  chaos: {{ workers: 1, concurrency: 4 }}
"
    )
}

#[test]
fn request_prints_the_reply_or_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "cli.yaml", &node_config("cli"));
    let node = NodeProcess::start(&config, &[]);
    node.wait_all_running();

    // --timeout shorter than the handler's sleep. (First, so that the sleep ends
    // while the other requests run.)
    let out = node.cli(&[
        "request",
        "chaos",
        "sleep",
        r#"{"ms":2000}"#,
        "--timeout",
        "100ms",
    ]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(out.stderr.starts_with("error: Timeout:"), "{out:?}");

    let out = node.cli(&["request", "math", "sum", r#"{"a":1,"b":2}"#]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "{\"sum\":3}\n"),
        "{out:?}"
    );
    assert_eq!(out.stderr, "");

    // The member_only guard rejects a delete without userId.
    let out = node.cli(&["request", "data", "users.delete", "{}"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "error: Rejected: You are not authenticated.\n");

    // A delete with userId succeeds and the stream worker hears of it.
    let out = node.cli(&["request", "data", "users.delete", r#"{"userId":3}"#]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "{\"deleted\":3}\n"),
        "{out:?}"
    );
    let out = node.cli(&["request", "stream", "recent"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let recent: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        recent,
        serde_json::json!({ "events": [{ "topic": "user.deleted", "userId": 3, "node": "cli" }] })
    );

    // An unknown service; a message that is not JSON.
    let out = node.cli(&["request", "nope", "x"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.starts_with("error: NoSuchService:"), "{out:?}");
    let out = node.cli(&["request", "math", "sum", "{a:1"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.starts_with("error: BadRequest:"), "{out:?}");

    // The sleeper the caller gave up on still finishes its request, and is counted.
    poll("chaos/0 finished the abandoned sleep", || {
        let w = worker(&node.status(), "cli/chaos/0");
        w["in_flight"] == 0 && w["handled"] == 1
    });

    node.terminate_gracefully();
}

#[test]
fn status_shows_workers_and_kill_restarts_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "cli.yaml", &node_config("cli"));
    let node = NodeProcess::start(&config, &[]);
    node.wait_all_running();

    let out = node.cli(&["status"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("WORKER"), "{}", out.stdout);
    for id in [
        "cli/math/0",
        "cli/math/1",
        "cli/data/0",
        "cli/stream/0",
        "cli/chaos/0",
    ] {
        let row = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row for {id} in\n{}", out.stdout));
        let cells: Vec<&str> = row.split_whitespace().collect();
        // WORKER STATE PID RESTARTS ...
        assert_eq!(cells[1], "running", "{row}");
        assert_eq!(cells[2], node.pid(), "{row}");
        assert_eq!(cells[3], "0", "{row}");
    }

    let status = node.status();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["nodes"][0]["name"], "cli");
    assert_eq!(status["nodes"][0]["pid"].to_string(), node.pid());
    assert_eq!(worker(&status, "cli/math/0")["restarts"], 0);

    let out = node.cli(&["kill", "cli/math/0"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "killed cli/math/0\n");
    poll("cli/math/0 restarted once and runs", || {
        let w = worker(&node.status(), "cli/math/0");
        w["restarts"] == 1 && w["state"] == "running"
    });
    let status = node.status();
    assert_eq!(worker(&status, "cli/math/0")["restarts"], 1, "{status}");
    assert_eq!(worker(&status, "cli/math/1")["restarts"], 0, "{status}");

    let out = node.cli(&["kill", "cli/math/7"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.starts_with("error: NoSuchService:"), "{out:?}");

    node.terminate_gracefully();
}

#[test]
fn environment_overrides_config_keys_and_names_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "cli2.yaml", &node_config("cli2"));
    let node = NodeProcess::start(&config, &[("COLONY__SERVICES__MATH__WORKERS", "3")]);

    // COLONY_API instead of --api.
    let via_env = |args: &[&str]| run(colony_command().env("COLONY_API", &node.api).args(args));
    let math_ids = || -> Vec<String> {
        let out = via_env(&["status", "--json"]);
        assert_eq!(out.code(), 0, "{out:?}");
        let status: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(status["nodes"][0]["name"], "cli2", "{status}");
        all_workers(&status)
            .iter()
            .filter(|w| w["state"] == "running")
            .filter_map(|w| w["id"].as_str().map(String::from))
            .filter(|id| id.starts_with("cli2/math/"))
            .collect()
    };
    poll("three math workers run", || math_ids().len() == 3);
    assert_eq!(math_ids(), ["cli2/math/0", "cli2/math/1", "cli2/math/2"]);

    let out = via_env(&["request", "math", "sum", r#"{"a":40,"b":2}"#]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "{\"sum\":42}\n"),
        "{out:?}"
    );

    // --api wins over COLONY_API.
    let out = run(colony_command()
        .env("COLONY_API", "http://127.0.0.1:1")
        .args([
            "--api",
            &node.api,
            "request",
            "math",
            "sum",
            r#"{"a":1,"b":1}"#,
        ]));
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "{\"sum\":2}\n"),
        "{out:?}"
    );

    node.terminate_gracefully();
}

#[test]
fn an_unreachable_api_is_a_clear_error() {
    let out = run(colony_command().args(["--api", "http://127.0.0.1:1", "status"]));
    assert_eq!(out.code(), 1, "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .starts_with("error: NodeDown: cannot reach http://127.0.0.1:1/v1/status ("),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[test]
fn a_token_file_opens_a_node_that_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_private(dir.path(), "api.token", "cli-t0ken\n");
    let wrong = write_private(dir.path(), "wrong.token", "not-it\n");
    let text = format!(
        "node: {{ name: locked, role: master, threads: 1 }}\napi: {{ listen: 127.0.0.1:0, token_file: {} }}\nservices:\n  math: {{ workers: 1 }}\n",
        token.display()
    );
    let config = write_config(dir.path(), "locked.yaml", &text);
    let node = NodeProcess::start(&config, &[]);
    let sum = ["request", "math", "sum", r#"{"a":1,"b":2}"#];

    // No token: refused, with the kind.
    let out = node.cli(&sum);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.starts_with("error: Rejected:"), "{out:?}");

    // --token-file, and COLONY_TOKEN_FILE.
    let token = token.to_str().unwrap();
    let mut args = vec!["--token-file", token];
    args.extend_from_slice(&sum);
    let out = node.cli(&args);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "{\"sum\":3}\n"),
        "{out:?}"
    );
    let out = run(colony_command()
        .env("COLONY_TOKEN_FILE", token)
        .args(["--api", node.api.as_str()])
        .args(sum));
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "{\"sum\":3}\n"),
        "{out:?}"
    );

    // A wrong token, and a token file that does not exist.
    let out = node.cli(&["--token-file", wrong.to_str().unwrap(), "status"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: Rejected: wrong bearer token"),
        "{out:?}"
    );
    let missing = dir.path().join("missing.token");
    let out = node.cli(&["--token-file", missing.to_str().unwrap(), "status"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.starts_with("error: token file "), "{out:?}");

    // The node kept serving.
    let out = node.cli(&["--token-file", token, "status"]);
    assert_eq!(out.code(), 0, "{out:?}");
    node.terminate_gracefully();
}

#[test]
fn check_config_reports_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "good.yaml", &node_config("good"));
    let zero = write_config(
        dir.path(),
        "zero.yaml",
        "node: { name: zero }\nservices:\n  math: { workers: 0 }\n",
    );
    let unknown = write_config(
        dir.path(),
        "unknown.yaml",
        "node: { name: unknown }\nservices:\n  nope: { workers: 1 }\n",
    );
    let missing = dir.path().join("missing.yaml");
    let show = |p: &Path| p.display().to_string();

    let out = run(colony_command().arg("check-config").arg(&good));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, format!("ok: {}\n", show(&good)));
    assert_eq!(out.stderr, "");

    let out = run(colony_command()
        .arg("check-config")
        .args([&good, &zero, &unknown, &missing]));
    assert_eq!(out.code(), 2, "{out:?}");
    assert_eq!(out.stdout, format!("ok: {}\n", show(&good)));
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 3, "{out:?}");
    assert_eq!(
        errors[0],
        format!(
            "error: {}: services.math.workers: must be at least 1",
            show(&zero)
        )
    );
    assert_eq!(
        errors[1],
        format!(
            "error: {}: services.nope: unknown service, expected one of chaos, data, math, stream",
            show(&unknown)
        )
    );
    assert!(
        errors[2].starts_with(&format!("error: {}: cannot read: ", show(&missing))),
        "{out:?}"
    );
}
