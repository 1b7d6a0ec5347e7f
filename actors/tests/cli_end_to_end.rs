//! The `colony` binary end to end (SPEC §5): a node runs as a child process on a
//! port-0 API, and the client commands run as child processes against it.
//!
//! Every child is killed by a guard when the test ends, even after a failed
//! assertion; a client that does not finish within its deadline is killed too.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const COLONY: &str = env!("CARGO_BIN_EXE_colony");
const NODE_START: Duration = Duration::from_secs(20);
const CLIENT_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

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

/// Kills the child when dropped, unless it already exited.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A command of the `colony` binary with a clean environment: no `COLONY_API`,
/// `COLONY_TOKEN` or `COLONY__…` overrides inherited from whoever runs the tests.
fn colony_command() -> Command {
    let mut command = Command::new(COLONY);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COLONY") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// A running `colony node`, its API address and the stderr lines it wrote so far.
struct NodeProcess {
    child: KillOnDrop,
    api: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Starts `colony node --config FILE` with `env` and waits for its API line.
    fn start(config: &Path, env: &[(&str, &str)]) -> NodeProcess {
        let mut command = colony_command();
        command
            .args(["node", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = KillOnDrop(command.spawn().expect("spawn colony node"));
        let stderr = child.0.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        {
            let log = log.clone();
            // Reads every line until the node exits, so it never blocks on a full pipe.
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, rest)) = line.split_once("HTTP API on http://") {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = found.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match address.recv_timeout(NODE_START) {
            Ok(addr) => addr,
            Err(_) => panic!(
                "the node printed no API address within {NODE_START:?}; stderr:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        assert!(
            addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
            "API address {addr:?}"
        );
        NodeProcess {
            child,
            api: format!("http://{addr}"),
            log,
        }
    }

    fn pid(&self) -> String {
        self.child.0.id().to_string()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A client command of the binary talking to this node through `--api`.
    fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["--api", self.api.as_str()];
        all.extend_from_slice(args);
        run(colony_command().args(&all))
    }

    /// `status --json`, parsed.
    fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert_eq!(out.code(), 0, "status --json: {out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }

    /// Polls status until every worker of the node runs.
    fn wait_all_running(&self) {
        poll("every worker runs", || {
            let status = self.status();
            let workers = all_workers(&status);
            !workers.is_empty() && workers.iter().all(|w| w["state"] == "running")
        });
    }

    /// SIGTERM, then the node must exit with status 0 (drain, then exit).
    fn terminate_gracefully(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        // Nothing is in flight, so the drain (10 s at most) has nothing to wait for.
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.child.0.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not exit within 5s of SIGTERM; stderr:\n{}",
                self.log()
            );
            thread::sleep(POLL);
        };
        assert_eq!(
            status.code(),
            Some(0),
            "the node exited with {status} after SIGTERM; stderr:\n{}",
            self.log()
        );
        // The reader thread sees EOF once the process is gone; give it the deadline.
        poll("the node logged its stop", || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("colony::node: node ") && l.ends_with(": stopped"))
        });
    }
}

/// A finished client command.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn code(&self) -> i32 {
        self.status.code().expect("exited with a code")
    }
}

/// Runs `command` to completion within `CLIENT_DEADLINE`, capturing its output.
fn run(command: &mut Command) -> Output {
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn colony"),
    );
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.0.stdout.take().unwrap()));
    let stderr = read(Box::new(child.0.stderr.take().unwrap()));
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} did not finish within {CLIENT_DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Polls `condition` until it holds; panics after 10 s.
fn poll(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(POLL);
    }
}

fn all_workers(status: &Value) -> Vec<Value> {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["services"].as_array().into_iter().flatten())
        .flat_map(|s| s["workers"].as_array().into_iter().flatten())
        .cloned()
        .collect()
}

fn worker(status: &Value, id: &str) -> Value {
    all_workers(status)
        .into_iter()
        .find(|w| w["id"] == id)
        .unwrap_or_else(|| panic!("no worker {id} in {status}"))
}

fn write_config(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn request_prints_the_reply_or_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "cli.yaml", &node_config("cli"));
    let node = NodeProcess::start(&config, &[]);
    node.wait_all_running();

    // --timeout shorter than the handler's sleep. (First, so that the sleep ends
    // while the other requests run.)
    let started = Instant::now();
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
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout took {:?}",
        started.elapsed()
    );

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
        serde_json::json!({ "events": [{ "topic": "user.deleted", "userId": 3 }] })
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
            .starts_with("error: cannot reach the node API at http://127.0.0.1:1"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
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
