//! The seed application of the Node `messenger` library against a colony node,
//! with the real npm `messenger` 0.0.9 (installed by `make test` from
//! `actors/tests/messenger/package-lock.json`):
//!
//! - a Node Speaker (web.js) asks colony `get me some popular users` and
//!   `delete this user` without a userId (the `member_only` rejection comes back
//!   as an error) and with one (served), and gets an error for an unrouted
//!   subject instead of waiting for ever;
//! - the deletion's `user.deleted` is shouted to a Node listener (stream.js) as
//!   `user deleted`, and so is a Speaker's own shout, published in colony;
//! - a Node listener serves as the colony service `legacy`, from the HTTP API
//!   and through colony's own messenger listener, and when it is gone a call
//!   fails with `NodeDown`;
//! - 2,000 concurrent Speaker requests are all answered correctly;
//! - garbage on the messenger port closes that connection and nothing else.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;
use serde_json::{json, Value};

/// Where the npm package and the Node scripts are.
fn scripts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/messenger");
    assert!(
        dir.join("node_modules/messenger/package.json").exists(),
        "the npm messenger package is not installed in {}: run `make test`, which runs `npm ci` there",
        dir.display()
    );
    dir
}

/// A free TCP port on loopback (Node's listener takes a port, not port 0).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `node listener.js PORT`, its stdout lines collected as they come.
struct NodeListener {
    _child: KillOnDrop,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl NodeListener {
    fn start(port: u16) -> NodeListener {
        let mut child = KillOnDrop(
            Command::new("node")
                .arg(scripts().join("listener.js"))
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("node runs"),
        );
        let stdout = child.0.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str(&line) {
                    collected.lock().unwrap().push(value);
                }
            }
        });
        poll("the Node listener listens", || {
            !lines.lock().unwrap().is_empty()
        });
        NodeListener {
            _child: child,
            lines,
        }
    }

    fn heard(&self, shout: &Value) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| &l["shout"] == shout)
    }
}

/// `node speaker.js ADDRESS MODE [ARG]` to completion: its JSON lines.
fn speaker(address: &str, mode: &str, arg: &str) -> Vec<Value> {
    let out = run(Command::new("node")
        .arg(scripts().join("speaker.js"))
        .args([address, mode, arg]));
    assert_eq!(out.code(), 0, "speaker.js {mode}: {out:?}");
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The line of `lines` that has `key`.
fn line<'a>(lines: &'a [Value], key: &str) -> &'a Value {
    lines
        .iter()
        .find_map(|l| l.get(key))
        .unwrap_or_else(|| panic!("no `{key}` in {lines:?}"))
}

/// The colony node: `data`, `math`, `stream` of the example app, `legacy` on
/// the Node listener at `legacy`, the seed's subjects routed.
fn start_colony(dir: &Path, legacy: u16) -> (NodeProcess, String) {
    let config = write_config(
        dir,
        "web.yaml",
        &format!(
            r#"node: {{ name: web, role: master, threads: 2 }}
api: {{ listen: 127.0.0.1:0 }}
state: {{ mode: memory }}
services:
  data: {{ workers: 1 }}
  math: {{ workers: 2, concurrency: 64, queue: 4096 }}
  legacy: {{ messenger: [127.0.0.1:{legacy}], timeout: 5s }}
messenger:
  listen: 127.0.0.1:0
  routes:
    get me some popular users: data/users.popular
    delete this user: data/users.delete
    add two numbers: math/sum
    recommend: legacy/recommend
  shouts:
    user deleted: user.deleted
  shout_to:
    - to: [127.0.0.1:{legacy}]
      topics: {{ user.deleted: user deleted }}
"#
        ),
    );
    let node = NodeProcess::start(&config, &[]);
    let mut address = None;
    poll("the node logs its messenger listener", || {
        address = node.log.lock().unwrap().iter().find_map(|l| {
            l.split_once("messenger listener on ")
                .map(|(_, a)| a.trim().to_string())
        });
        address.is_some()
    });
    (node, address.unwrap_or_default())
}

fn http_request(node: &NodeProcess, service: &str, subject: &str, body: Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .post(format!("{}/v1/request/{service}/{subject}", node.api))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("the API answers");
    let status = response.status().as_u16();
    let body: Value = response.body_mut().read_json().expect("a JSON body");
    (status, body)
}

#[test]
fn the_seed_runs_on_colony_with_node_speakers_and_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let legacy_port = free_port();
    let listener = NodeListener::start(legacy_port);
    let (node, address) = start_colony(dir.path(), legacy_port);

    // The Node listener serves the colony service `legacy` (the speaker dials
    // it within a second of its start).
    let mut served = (0, Value::Null);
    poll("legacy answers through the HTTP API", || {
        served = http_request(&node, "legacy", "recommend", json!({ "userId": 5 }));
        served.0 == 200
    });
    let recommended = json!({ "users": ["ada", "grace"], "for": 5, "by": "node" });
    assert_eq!(served.1, json!({ "reply": recommended }));

    // web.js's flow, from a Node Speaker.
    let lines = speaker(&address, "seed", "");
    let popular = line(&lines, "popular");
    assert_eq!(
        popular["users"].as_array().map(Vec::len),
        Some(2),
        "{popular}"
    );
    let anonymous = line(&lines, "anonymous");
    assert_eq!(anonymous["error"]["kind"], "Rejected", "{anonymous}");
    assert_eq!(
        anonymous["error"]["message"], "You are not authenticated.",
        "{anonymous}"
    );
    assert_eq!(line(&lines, "member"), &json!({ "deleted": 2 }));
    let unrouted = line(&lines, "unrouted");
    assert_eq!(unrouted["error"]["kind"], "NoSuchService", "{unrouted}");

    // data's `user.deleted` and the Speaker's own shout reach stream.js.
    poll("the Node listener heard both deletions", || {
        listener.heard(&json!({ "userId": 2 })) && listener.heard(&json!({ "userId": 3 }))
    });

    // A Speaker reaches the Node listener through colony's routes too.
    let routed = speaker(&address, "ask", "recommend");
    assert_eq!(line(&routed, "reply"), &recommended);

    // 2,000 concurrent requests on one Speaker connection, all answered right.
    let loaded = speaker(&address, "load", "2000");
    assert_eq!(line(&loaded, "correct"), 2000, "{loaded:?}");
    assert_eq!(line(&loaded, "wrong"), 0);

    // Garbage closes its own connection; the Speaker's keeps being served.
    let after = speaker(&address, "garbage", "");
    assert_eq!(line(&after, "garbage_closed"), true);
    assert_eq!(line(&after, "after"), &json!({ "sum": 42 }));
    assert!(
        node.log().contains("is not messenger JSON"),
        "{}",
        node.log()
    );

    // The Node listener gone, `legacy` is down, at once and by name.
    drop(listener);
    poll("legacy is NodeDown", || {
        let (status, body) = http_request(&node, "legacy", "recommend", json!({}));
        status == 502 && body["error"]["kind"] == "NodeDown"
    });
    node.terminate_gracefully();
}
