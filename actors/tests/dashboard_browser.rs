//! The dashboard in a real browser: headless Chromium (Debian's package, from
//! `scripts/chromium.sh`, which installs it when missing) loads `GET /` from the
//! master of a three-node cluster whose API needs a token, while clients send
//! traffic to the other two nodes. The page asks for the token and shows nothing
//! of the cluster before it has it; given it, it lists every node and draws
//! charts with data in them (requests, latency, pub/sub), its Kill button
//! restarts exactly the worker it names, and its Scale button shows whatever the
//! API answers. The page throws no error and breaks no rule of its own
//! Content-Security-Policy. A screenshot goes to `target/dashboard.png`.
//!
//! The browser is driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands on its fd 3, answers on its fd 4), in
//! real time, so the page polls as it does for a user. Every wait has a deadline;
//! the browser's whole process group is killed when the test ends.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-t0ken";
/// How long `scripts/chromium.sh` may take, an install included.
const INSTALL: Duration = Duration::from_secs(900);
/// How long the browser may take to answer one DevTools command.
const CALL: Duration = Duration::from_secs(30);
/// How long the page may take to show what a step waits for (it polls every 2 s).
const PAGE: Duration = Duration::from_secs(60);
/// How often a wait looks at the page again.
const PAGE_POLL: Duration = Duration::from_millis(100);

#[test]
fn the_dashboard_shows_every_node_and_draws_live_charts() {
    let started = Instant::now();
    let chromium = chromium_path();
    let dir = tempfile::tempdir().expect("temp dir");
    let (master, workers) = start_cluster(dir.path());
    let traffic: Vec<Load> = workers
        .iter()
        .map(|node| Load::start_with(&node.api, 2, Duration::from_millis(3), traffic))
        .collect();

    let mut browser = Browser::start(&chromium);
    browser.open(&format!("{}/", master.api));

    // The master needs a token: the page asks for it and shows no node yet.
    let asked = browser.wait("the page asks for the token", |p| p["tokenAsked"] == true);
    assert_eq!(asked["nodes"], json!([]), "{asked}");
    browser.eval(&format!(
        "document.getElementById('token-input').value = {};\
         document.getElementById('token-form').requestSubmit(); true",
        json!(TOKEN)
    ));

    // Every node, and charts drawn from the traffic.
    let names = json!(["master", "worker-a", "worker-b"]);
    let shown = browser.wait("every node and charts with data", |p| {
        p["nodes"] == names
            && chart(p, "requests").0 >= 3
            && chart(p, "requests").1 > 0.0
            && chart(p, "latency").0 >= 1
            && chart(p, "pubsub").1 > 0.0
            && chart(p, "queued").0 >= 3
    });
    assert_eq!(shown["tokenAsked"], false, "{shown}");
    assert!(shown["workers"].as_u64() >= Some(9), "{shown}");

    // Kill, through the page: exactly that worker restarts.
    let victim = "worker-a/math/0";
    assert_eq!(worker_restarts(&master, victim), 0);
    browser.eval(&format!(
        "window.confirm = () => true;\
         document.querySelector('tr[data-worker=\"{victim}\"] button').click(); true"
    ));
    wait_until(&master, "the page's kill restarts the worker", PAGE, || {
        worker_restarts(&master, victim) == 1
    });
    browser.wait("the page says it killed the worker", |p| {
        has_message(p, true, &format!("killed worker {victim}"))
    });
    assert_eq!(worker_restarts(&master, victim), 1, "killed once");

    // Scale, through the page: it shows the API's answer, whatever it is.
    browser.eval(
        "const s = document.getElementById('scale-service'); s.value = 'math';\
         s.dispatchEvent(new Event('change'));\
         const n = document.getElementById('scale-node'); n.value = 'worker-b';\
         n.dispatchEvent(new Event('change'));\
         document.getElementById('scale-workers').value = '1';\
         document.getElementById('scale-form').requestSubmit(); true",
    );
    browser.wait("the page shows the scale's answer", |p| {
        has_message(p, true, "math on worker-b") || has_message(p, false, "scale math on worker-b")
    });

    // A little more history (the kill among the restarts), then the picture,
    // without the answers of the buttons over it.
    browser.wait("the restart is charted", |p| {
        chart(p, "restarts").1 >= 1.0 && chart(p, "requests").0 >= 10
    });
    browser.eval("document.querySelectorAll('#messages li').forEach(li => li.remove()); true");
    let png = browser.screenshot();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).expect("mkdir target");
    std::fs::write(target.join("dashboard.png"), &png).expect("write the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);

    let problems = browser.problems();
    assert!(problems.is_empty(), "the page had problems: {problems:#?}");
    // Of the `math sum` requests, only those the killed worker held may fail:
    // one per client of its node at most.
    let (failed, failures): (Vec<u64>, Vec<Vec<String>>) =
        traffic.into_iter().map(Load::finish).unzip();
    assert!(failed.iter().sum::<u64>() <= 2, "{failed:?}: {failures:?}");
    eprintln!("dashboard_browser: done in {:?}", started.elapsed());
}

/// `(samples, max)` that chart `id` of the page state drew: the points of its
/// longest line (one per poll with data), and its highest value.
fn chart(page: &Value, id: &str) -> (u64, f64) {
    let c = &page["charts"][id];
    (
        c["samples"].as_u64().unwrap_or(0),
        c["max"].as_f64().unwrap_or(0.0),
    )
}

fn has_message(page: &Value, ok: bool, text: &str) -> bool {
    page["messages"].as_array().is_some_and(|all| {
        all.iter()
            .any(|m| m["ok"] == ok && m["text"].as_str().is_some_and(|t| t.contains(text)))
    })
}

/// What the test reads of the page, as JSON; `null` until the page is there.
const PAGE_STATE: &str = "(() => !document.getElementById('token-panel') ? null : ({
    tokenAsked: !document.getElementById('token-panel').hidden,
    nodes: [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node),
    workers: document.querySelectorAll('tr[data-worker]').length,
    charts: Object.fromEntries([...document.querySelectorAll('.chart')].map(c =>
        [c.dataset.chart, { points: Number(c.dataset.points), samples: Number(c.dataset.samples || 0),
            max: Number(c.dataset.max || 0) }])),
    messages: [...document.querySelectorAll('#messages li')].map(li =>
        ({ ok: li.classList.contains('ok'), text: li.textContent })),
    live: document.getElementById('live-text').textContent,
}))()";

// ---------------------------------------------------------------------------
// The cluster and its traffic.
// ---------------------------------------------------------------------------

/// A master whose API needs [`TOKEN`], and worker-a and worker-b joined to it.
fn start_cluster(dir: &Path) -> (NodeProcess, Vec<NodeProcess>) {
    let secret = write_secret(dir);
    let token = write_private(dir, "api.token", TOKEN);
    let master = cluster_config(
        "master",
        "master",
        &secret,
        None,
        "{ math: { workers: 1 }, data: { workers: 1 }, stream: { workers: 1 } }",
    );
    let with_token = format!(
        "api: {{ listen: 127.0.0.1:0, token_file: {} }}",
        token.display()
    );
    let master = master.replace("api: { listen: 127.0.0.1:0 }", &with_token);
    assert!(master.contains("token_file"), "{master}");
    let master = NodeProcess::start_bridged(&write_config(dir, "master.yaml", &master), &[]);
    let join = master.bridge_addr().to_string();
    let workers: Vec<NodeProcess> = [
        (
            "worker-a",
            "{ math: { workers: 1 }, chaos: { workers: 2 } }",
        ),
        (
            "worker-b",
            "{ math: { workers: 1 }, stream: { workers: 1 }, chaos: { workers: 1 } }",
        ),
    ]
    .into_iter()
    .map(|(name, services)| {
        let config = cluster_config(name, "worker", &secret, Some(&join), services);
        NodeProcess::start_bridged(&write_config(dir, &format!("{name}.yaml"), &config), &[])
    })
    .collect();
    wait_until(&master, "three nodes serving", NODE_START, || {
        status(&master).is_some_and(|s| {
            ["master", "worker-a", "worker-b"]
                .iter()
                .all(|n| serving(&s, n))
        })
    });
    (master, workers)
}

/// The master's status, asked with the token.
fn status(master: &NodeProcess) -> Option<Value> {
    let auth = format!("Bearer {TOKEN}");
    let (code, _, body) = http_exchange(
        &master.api,
        "GET",
        "/v1/status",
        &[("Authorization", &auth)],
        "",
    )
    .ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

fn worker_restarts(master: &NodeProcess, id: &str) -> u64 {
    let status = status(master).expect("the master's status");
    all_workers(&status)
        .iter()
        .find(|w| w["id"] == id)
        .and_then(|w| w["restarts"].as_u64())
        .unwrap_or_else(|| panic!("no worker {id} in {status}"))
}

/// One step of a client's traffic: a `math sum` (whose answer counts), and
/// between them chaos sleeps, publications, a few bad requests and, rarely,
/// a panic (at most one every 4 s in all, far within the restart intensity).
fn traffic(api: &str) -> Result<(), String> {
    static STEP: AtomicU64 = AtomicU64::new(0);
    static LAST_PANIC: Mutex<Option<Instant>> = Mutex::new(None);
    let step = STEP.fetch_add(1, Ordering::Relaxed);
    let side = |path: &str, body: &str| {
        let _ = http(api, "POST", path, body);
    };
    if step.is_multiple_of(3) {
        side(
            "/v1/request/chaos/sleep",
            &format!("{{\"ms\":{}}}", step % 40),
        );
    }
    if step % 4 == 1 {
        side(
            "/v1/publish/user.created",
            &format!("{{\"userId\":{step}}}"),
        );
    }
    if step % 120 == 2 {
        side("/v1/request/chaos/no-such-subject", "{}");
    }
    let panic_now = {
        let mut last = LAST_PANIC.lock().unwrap();
        let due = last.is_none_or(|at| at.elapsed() > Duration::from_secs(4));
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    if panic_now {
        side("/v1/request/chaos/panic", "{}");
    }
    request_sum(api)
}

// ---------------------------------------------------------------------------
// Chromium over the DevTools protocol.
// ---------------------------------------------------------------------------

/// `scripts/chromium.sh`'s answer: the browser's path. The test fails, and
/// says why, when there is none and none can be installed.
fn chromium_path() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chromium.sh");
    let mut child = KillOnDrop(
        Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scripts/chromium.sh"),
    );
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + INSTALL;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for chromium.sh") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "scripts/chromium.sh took longer than {INSTALL:?}"
        );
        thread::sleep(POLL);
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let path = PathBuf::from(out.trim());
    assert!(
        status.success() && path.is_file(),
        "this test needs Chromium, which scripts/chromium.sh could not find or install \
         ({status}):\n{err}"
    );
    path
}

/// A headless Chromium, its page target, and what the page reported.
struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Exceptions, console errors and log entries that are not plain network
    /// failures (the API's 401 before the token is one of those, and is fine).
    problems: Vec<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser leads its own process group: renderers and helpers go too.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(path: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let (commands_in, commands) = std::io::pipe().expect("a pipe");
        let (answers_out, answers_in) = std::io::pipe().expect("a pipe");
        let (read_fd, write_fd) = (commands_in.as_raw_fd(), answers_in.as_raw_fd());
        let mut command = Command::new(path);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1280,1000",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2).
        unsafe {
            command.pre_exec(move || {
                // Copies above the low numbers first, so that dup2 never meets
                // its own source; those copies close at exec, 3 and 4 stay.
                let read = libc::fcntl(read_fd, libc::F_DUPFD_CLOEXEC, 10);
                let write = libc::fcntl(write_fd, libc::F_DUPFD_CLOEXEC, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start chromium");
        drop((commands_in, answers_in));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let lines = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut lines = lines.lock().unwrap();
                if lines.len() < 200 {
                    lines.push(line);
                }
            }
        });
        let (sender, answers) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(answers_out);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        message.pop_if(|b| *b == 0);
                        let Ok(value) = serde_json::from_slice::<Value>(&message) else {
                            continue;
                        };
                        if sender.send(value).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            commands,
            answers,
            next_id: 0,
            session: None,
            problems: Vec::new(),
            stderr,
            _profile: profile,
        }
    }

    /// Opens `url` in a new page of 1280×1000 and attaches to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].clone();
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        let session = attached["sessionId"].as_str().expect("a session id");
        self.session = Some(session.to_string());
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(domain, json!({}));
        }
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        );
        let navigated = self.call("Page.navigate", json!({ "url": url }));
        assert!(navigated.get("errorText").is_none(), "{navigated}");
    }

    /// Sends one command (to the page once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&command).expect("JSON");
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            panic!("cannot send {method} to chromium ({e}):\n{}", self.stderr());
        }
        let deadline = Instant::now() + CALL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(message) = self.answers.recv_timeout(left) else {
                panic!(
                    "chromium did not answer {method} within {CALL:?}:\n{}",
                    self.stderr()
                );
            };
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method}: {error}");
                }
                return message["result"].clone();
            }
            self.note(message);
        }
    }

    /// Keeps an event that says something went wrong in the page.
    fn note(&mut self, event: Value) {
        let params = &event["params"];
        let problem = match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => true,
            Some("Runtime.consoleAPICalled") => params["type"] == "error",
            Some("Log.entryAdded") => {
                params["entry"]["level"] == "error" && params["entry"]["source"] != "network"
            }
            _ => false,
        };
        if problem && self.problems.len() < 20 {
            self.problems.push(event);
        }
    }

    /// Evaluates `js` in the page; its value, as JSON.
    fn eval(&mut self, js: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{js}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls the page's state until `done` holds, and returns it; fails after
    /// [`PAGE`] with the last state seen.
    fn wait(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PAGE;
        loop {
            let state = self.eval(PAGE_STATE);
            if done(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not show {what} within {PAGE:?}; it shows {state:#}\nproblems: {:#?}",
                self.problems
            );
            thread::sleep(PAGE_POLL);
        }
    }

    /// A PNG of the page as it is.
    fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64(shot["data"].as_str().expect("base64 data")).expect("valid base64")
    }

    /// What went wrong in the page so far (events arrive with the answers).
    fn problems(&mut self) -> Vec<Value> {
        self.eval("true");
        self.problems.clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// Standard base64 (with padding) to bytes.
fn base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)?) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}
