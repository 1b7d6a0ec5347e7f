//! Shared harness for tests of the `colony` binary: node processes on port-0 APIs,
//! client commands with deadlines, and polling. Every child is killed by a guard
//! when its owner is dropped, even after a failed assertion.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A real nats-server for the NATS tests: the framework's harness, shared (std and tempfile only).
#[path = "../../../tests/common/nats.rs"]
pub mod nats;

pub const COLONY: &str = env!("CARGO_BIN_EXE_colony");
pub const NODE_START: Duration = Duration::from_secs(20);
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(20);
pub const POLL: Duration = Duration::from_millis(20);

/// Kills the child when dropped, unless it already exited.
pub struct KillOnDrop(pub Child);

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
pub fn colony_command() -> Command {
    let mut command = Command::new(COLONY);
    clean_env(&mut command);
    command
}

/// Removes from `command`'s environment what whoever runs the tests may have set.
fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COLONY") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
}

/// A running `colony node`, its API address and the stderr lines it wrote so far.
pub struct NodeProcess {
    pub child: KillOnDrop,
    pub api: String,
    /// Where the node's bridge listens, if it logged one.
    pub bridge: Option<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Starts `colony node --config FILE` with `env` and waits for its API line.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> NodeProcess {
        let mut command = colony_command();
        command.args(["node", "--config"]).arg(config);
        NodeProcess::start_command(command, config, env)
    }

    /// Starts `colony node --config FILE` in a process that may write files of at
    /// most `kib` KiB (a soft `ulimit -f`, with `SIGXFSZ` ignored so that a write past it
    /// fails with `EFBIG`, as on a full disk, instead of killing the node).
    pub fn start_with_file_limit(config: &Path, kib: u64) -> NodeProcess {
        let mut command = Command::new("sh");
        clean_env(&mut command);
        command
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -S -f {kib}; exec \"$0\" node --config \"$1\""
            ))
            .arg(COLONY)
            .arg(config);
        NodeProcess::start_command(command, config, &[])
    }

    fn start_command(mut command: Command, config: &Path, env: &[(&str, &str)]) -> NodeProcess {
        command
            // The node keeps its cluster state under `.colony/` of the directory it
            // starts in: the test's own directory, never shared with another test.
            .current_dir(config.parent().expect("a config in a directory"))
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
        let bridge = log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                l.split_once("bridge of node ")
                    .and_then(|(_, r)| r.split_once(" on "))
            })
            .map(|(_, addr)| addr.trim().to_string());
        NodeProcess {
            child,
            api: format!("http://{addr}"),
            bridge,
            log,
        }
    }

    /// SIGKILL: the node dies without a word to anyone.
    pub fn kill9(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    pub fn pid(&self) -> String {
        self.child.0.id().to_string()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A client command of the binary talking to this node through `--api`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["--api", self.api.as_str()];
        all.extend_from_slice(args);
        run(colony_command().args(&all))
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert_eq!(out.code(), 0, "status --json: {out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }

    /// Polls status until every worker of the node runs.
    pub fn wait_all_running(&self) {
        poll("every worker runs", || {
            let status = self.status();
            let workers = all_workers(&status);
            !workers.is_empty() && workers.iter().all(|w| w["state"] == "running")
        });
    }

    /// SIGTERM, then the node must exit with status 0 (drain, then exit).
    pub fn terminate_gracefully(mut self) {
        send_signal(self.child.0.id(), "TERM");
        // Nothing is in flight, so the drain (10 s at most) has nothing to wait for.
        self.wait_clean_exit(Duration::from_secs(5));
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
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code().expect("exited with a code")
    }
}

/// Runs `command` to completion within `CLIENT_DEADLINE`, capturing its output.
pub fn run(command: &mut Command) -> Output {
    let what = format!("{command:?}");
    let mut running = Background::spawn(command);
    let deadline = Instant::now() + CLIENT_DEADLINE;
    loop {
        if let Some(output) = running.try_finish() {
            return output;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within {CLIENT_DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `condition` until it holds; panics after 10 s.
pub fn poll(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(POLL);
    }
}

pub fn all_workers(status: &Value) -> Vec<Value> {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["services"].as_array().into_iter().flatten())
        .flat_map(|s| s["workers"].as_array().into_iter().flatten())
        .cloned()
        .collect()
}

pub fn worker(status: &Value, id: &str) -> Value {
    all_workers(status)
        .into_iter()
        .find(|w| w["id"] == id)
        .unwrap_or_else(|| panic!("no worker {id} in {status}"))
}

pub fn write_config(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// A client command running in the background.
pub struct Background {
    child: KillOnDrop,
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Background {
    /// Starts `command` with its output captured.
    pub fn spawn(command: &mut Command) -> Background {
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
        let stdout = Some(read(Box::new(child.0.stdout.take().expect("stdout"))));
        let stderr = Some(read(Box::new(child.0.stderr.take().expect("stderr"))));
        Background {
            child,
            stdout,
            stderr,
        }
    }

    /// Its output, if it has finished.
    pub fn try_finish(&mut self) -> Option<Output> {
        let status = self.child.0.try_wait().expect("try_wait")?;
        let stdout = self.stdout.take()?.join().unwrap_or_default();
        let stderr = self.stderr.take()?.join().unwrap_or_default();
        Some(Output {
            status,
            stdout,
            stderr,
        })
    }
}

impl NodeProcess {
    /// A client command against this node, left running.
    pub fn cli_background(&self, args: &[&str]) -> Background {
        let mut all = vec!["--api", self.api.as_str()];
        all.extend_from_slice(args);
        Background::spawn(colony_command().args(&all))
    }

    /// The nodes in this node's status, with their states.
    pub fn nodes(&self) -> Vec<(String, String)> {
        let status = self.status();
        status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let name = n["name"].as_str().unwrap_or_default().to_string();
                let state = n["state"].as_str().unwrap_or_default().to_string();
                (name, state)
            })
            .collect()
    }

    /// Starts the node like [`NodeProcess::start`] and also requires the bridge line
    /// it logs before its API line, with a bound loopback address.
    pub fn start_bridged(config: &Path, env: &[(&str, &str)]) -> NodeProcess {
        let node = NodeProcess::start(config, env);
        node.bridge_addr();
        node
    }

    /// Where the node's bridge listens; panics with the node's stderr if it logged
    /// no bridge, or one not on a bound loopback port.
    pub fn bridge_addr(&self) -> &str {
        let bridge = self.bridge.as_deref().unwrap_or_else(|| {
            panic!(
                "no `bridge of node NAME on ADDR` line before the API line; stderr:\n{}",
                self.log()
            )
        });
        assert!(
            bridge.starts_with("127.0.0.1:") && !bridge.ends_with(":0"),
            "bridge address {bridge:?}"
        );
        bridge
    }

    /// Whether a stderr line so far satisfies `pred`.
    pub fn logged(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.log.lock().unwrap().iter().any(|l| pred(l))
    }

    /// How many stderr lines so far satisfy `pred`.
    pub fn count_logged(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|l| pred(l)).count()
    }

    /// Waits until the node's process exits, which must be with code 0; panics
    /// with the stderr if it exits otherwise or is still running after `limit`.
    pub fn wait_clean_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.0.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not exit within {limit:?}; stderr:\n{}",
                self.log()
            );
            thread::sleep(POLL);
        };
        assert_eq!(
            status.code(),
            Some(0),
            "the node exited with {status}; stderr:\n{}",
            self.log()
        );
    }

    /// Waits until a stderr line satisfies `pred`; panics with the log after 10 s.
    pub fn wait_logged(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.logged(&pred) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                self.log()
            );
            thread::sleep(POLL);
        }
    }
}

/// A cluster secret file in `dir`, readable by its owner only (as a node requires).
pub fn write_secret(dir: &Path) -> PathBuf {
    write_private(dir, "cluster.secret", "test-cluster-secret-0123456789")
}

/// Writes `text` to `dir/name` with mode 0600, as secret and token files must be.
pub fn write_private(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = write_config(dir, name, text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

/// A node config joined to `join` (a bridge address) with fast heartbeats.
pub fn cluster_config(
    name: &str,
    role: &str,
    secret: &Path,
    join: Option<&str>,
    services: &str,
) -> String {
    let join = join
        .map(|j| format!("[{j}]"))
        .unwrap_or_else(|| "[]".into());
    format!(
        "node: {{ name: {name}, role: {role}, threads: 1 }}\n\
         api: {{ listen: 127.0.0.1:0 }}\n\
         bridge: {{ listen: 127.0.0.1:0, join: {join}, secret_file: {}, heartbeat: 100ms }}\n\
         services: {services}\n",
        secret.display()
    )
}

/// A node config on the NATS backbone at `url` (`nats://127.0.0.1:PORT`) with
/// fast presence beats: a node silent for three of them (300 ms) is down.
pub fn nats_cluster_config(name: &str, role: &str, url: &str, services: &str) -> String {
    format!(
        "node: {{ name: {name}, role: {role}, threads: 1 }}\n\
         api: {{ listen: 127.0.0.1:0 }}\n\
         nats: {{ url: \"{url}\", heartbeat: 100ms }}\n\
         services: {services}\n"
    )
}

/// Which backbone a cluster of node processes runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backbone {
    /// colony's own bridge: the other nodes join the master's bridge address.
    Bridge,
    /// A nats-server of the test's own, with JetStream.
    Nats,
}

/// A test's cluster of node processes on one backbone: writes each node's config
/// into a directory and starts it. On the bridge the master must start first (the
/// others join its bridge address); on NATS every node joins through the server.
pub struct Net {
    pub backbone: Backbone,
    dir: PathBuf,
    secret: PathBuf,
    join: Option<String>,
    server: Option<nats::NatsServer>,
}

impl Net {
    /// A cluster on `backbone` with its configs in `dir`; on NATS this starts the
    /// server.
    pub fn new(backbone: Backbone, dir: &Path) -> Net {
        Net {
            backbone,
            dir: dir.to_path_buf(),
            secret: write_secret(dir),
            join: None,
            server: (backbone == Backbone::Nats).then(nats::NatsServer::start),
        }
    }

    /// The config of node `name` (written to `dir/NAME.yaml`), with `extra` YAML
    /// after its services; returns its path.
    pub fn config(&self, name: &str, role: &str, services: &str, extra: &str) -> PathBuf {
        let text = match (self.backbone, &self.server) {
            (Backbone::Nats, Some(server)) => {
                nats_cluster_config(name, role, &server.url(), services)
            }
            _ => cluster_config(name, role, &self.secret, self.join.as_deref(), services),
        };
        write_config(&self.dir, &format!("{name}.yaml"), &(text + extra))
    }

    /// Starts the node of `config`. On the bridge it must log its bridge
    /// address ([`NodeProcess::start_bridged`]), and the first node started (the
    /// master) is the one the later configs join.
    pub fn start(&mut self, config: &Path) -> NodeProcess {
        self.start_with_env(config, &[])
    }

    /// [`Net::start`] with `env` set for the node's process (e.g. `RUST_LOG`).
    pub fn start_with_env(&mut self, config: &Path, env: &[(&str, &str)]) -> NodeProcess {
        let node = NodeProcess::start(config, env);
        if self.backbone == Backbone::Bridge {
            let bridge = node.bridge_addr().to_string();
            self.join.get_or_insert(bridge);
        }
        node
    }

    /// The nats-server; panics on the bridge.
    pub fn server(&mut self) -> &mut nats::NatsServer {
        self.server
            .as_mut()
            .expect("a nats-server: the cluster runs on NATS")
    }
}

/// A master config on port-0 addresses that spawns `children` (each
/// `(name, extra YAML keys of its spawn entry, its services)`); the children's
/// configs have a bridge and no `join`, so they join the master that spawned them.
/// Returns the master's config path.
pub fn spawning_cluster(
    dir: &Path,
    master_services: &str,
    children: &[(&str, &str, &str)],
) -> PathBuf {
    let secret = write_secret(dir);
    let mut spawn = String::from("spawn:\n");
    for (name, extra, services) in children {
        let path = write_config(
            dir,
            &format!("{name}.yaml"),
            &cluster_config(name, "worker", &secret, None, services),
        );
        spawn.push_str(&format!("  - config: {}\n", path.display()));
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            spawn.push_str(&format!("    {}\n", line.trim()));
        }
    }
    let master = cluster_config("master", "master", &secret, None, master_services) + &spawn;
    write_config(dir, "master.yaml", &master)
}

/// The node named `name` in a status, if it lists one.
pub fn find_node<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
}

/// The node named `name` in a status; panics with the status if there is none.
pub fn node_of(status: &Value, name: &str) -> Value {
    find_node(status, name)
        .cloned()
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}

/// The pid of node `name` in a status; panics with the status if the node is
/// missing or has no pid, or a pid of 0.
pub fn pid_of(status: &Value, name: &str) -> u32 {
    let pid = find_node(status, name)
        .and_then(|n| n["pid"].as_u64())
        .unwrap_or(0);
    assert!(pid > 0, "node {name} has no pid in {status}");
    pid as u32
}

/// Whether node `name` in a status runs and has services, every one of which
/// has workers, all running.
pub fn serving(status: &Value, name: &str) -> bool {
    find_node(status, name).is_some_and(|n| {
        n["state"] == "running"
            && n["services"].as_array().is_some_and(|s| !s.is_empty())
            && n["services"].as_array().into_iter().flatten().all(|s| {
                s["workers"]
                    .as_array()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["state"] == "running"))
            })
    })
}

/// Polls the master's status until `cond` holds and returns that status; panics
/// with the last status and the stderr after 15 s.
pub fn wait_status(master: &NodeProcess, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = master.status();
        if cond(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last status {status}; stderr:\n{}",
            master.log()
        );
        thread::sleep(POLL);
    }
}

/// Polls the node's status until it lists `count` nodes, each `running`;
/// panics with the states last seen and the stderr after 20 s.
pub fn wait_nodes_running(node: &NodeProcess, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = node.nodes();
        if nodes.len() == count && nodes.iter().all(|(_, state)| state == "running") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 20s waiting until {count} nodes run; last seen {nodes:?}; stderr:\n{}",
            node.log()
        );
        thread::sleep(POLL);
    }
}

/// Polls `cond` every [`POLL`]; panics with the node's stderr after `limit`.
pub fn wait_until(node: &NodeProcess, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}; stderr:\n{}",
            node.log()
        );
        thread::sleep(POLL);
    }
}

/// The spawner's lines on the master about child `name` (fork, listening,
/// online, exit, errored; not the bridge's `up`/`down`): the text after
/// `node NAME: ` of each `[master] colony::events` line, in log order.
pub fn master_events(master: &NodeProcess, name: &str) -> Vec<String> {
    let marker = format!("[master] colony::events: node {name}: ");
    master
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.split_once(&marker).map(|(_, rest)| rest.to_string()))
        .filter(|e| {
            ["fork ", "listening ", "online ", "exit ", "errored "]
                .iter()
                .any(|kind| e.starts_with(kind))
        })
        .collect()
}

/// The kind of a [`master_events`] event: its first word (`fork`, `online`, …).
pub fn event_kind(event: &str) -> &str {
    event.split_whitespace().next().unwrap_or("")
}

/// The index of the first of `lines` that contains `tag` (e.g.
/// `[master] colony::events:`) and ends with `message`.
pub fn find_line(lines: &[String], tag: &str, message: &str) -> Option<usize> {
    lines
        .iter()
        .position(|l| l.contains(tag) && l.ends_with(message))
}

/// [`find_line`] in the node's stderr so far.
pub fn line_of(node: &NodeProcess, tag: &str, message: &str) -> Option<usize> {
    find_line(&node.log.lock().unwrap(), tag, message)
}

/// Sends `kill -SIGNAL PID` (`signal` is e.g. `TERM` or `KILL`); panics if
/// `kill` fails.
pub fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} {pid} failed");
}

/// POSTs `math sum` of 1 and 2 to `api`: `Ok` if the answer is 200 with
/// `{"reply":{"sum":3}}`, else the HTTP result, debug-formatted.
pub fn request_sum(api: &str) -> Result<(), String> {
    let result = http(api, "POST", "/v1/request/math/sum", r#"{"a":1,"b":2}"#);
    let good = matches!(&result, Ok((200, body))
        if serde_json::from_str::<Value>(body).is_ok_and(|v| v["reply"]["sum"] == 3));
    if good {
        Ok(())
    } else {
        Err(format!("{result:?}"))
    }
}

/// Whether a process with `pid` exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); the status
/// code and body, or why it could not be made. Every step has a deadline.
pub fn http(api: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    http_exchange(api, method, path, &[], body).map(|(code, _, body)| (code, body))
}

/// An HTTP answer: the status code, the headers (names lowercased), the body.
pub type Exchange = (u16, Vec<(String, String)>, String);

/// [`http`] with extra request `headers`; the status code, the response's
/// headers (names lowercased) and its body.
pub fn http_exchange(
    api: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Exchange, String> {
    use std::io::Write;
    use std::net::TcpStream;
    let addr = api.trim_start_matches("http://").trim_end_matches('/');
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| e.to_string())?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {response:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok((code, headers, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Clients that send [`request_sum`] to an API from several threads until
/// stopped, pausing after each request: they count the requests that succeed and
/// fail, keep the first five failures, and record each success's latency.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` threads sending `math sum` to `api`, each pausing `pause`
    /// after every request (not at all if it is zero).
    pub fn start(api: &str, clients: usize, pause: Duration) -> Load {
        Load::start_with(api, clients, pause, request_sum)
    }

    /// As [`Load::start`], each client making `request` (Ok when the reply is right).
    pub fn start_with(
        api: &str,
        clients: usize,
        pause: Duration,
        request: fn(&str) -> Result<(), String>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (api, stop) = (api.to_string(), stop.clone());
                let (ok, failed) = (ok.clone(), failed.clone());
                let (failures, latencies) = (failures.clone(), latencies.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let answer = request(&api);
                        let took = started.elapsed();
                        match answer {
                            Ok(()) => {
                                latencies.lock().unwrap().push(took);
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(failure) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                let mut failures = failures.lock().unwrap();
                                if failures.len() < 5 {
                                    failures.push(failure);
                                }
                            }
                        }
                        if !pause.is_zero() {
                            thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            failures,
            latencies,
            threads,
        }
    }

    /// How many requests succeeded so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// The latencies of the requests that succeeded since the last call.
    pub fn take_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.latencies.lock().unwrap())
    }

    /// Stops the clients; the number of failed requests and the first failures.
    /// Panics if a client thread panicked.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a load thread panicked");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.failed.load(Ordering::SeqCst), failures)
    }
}
