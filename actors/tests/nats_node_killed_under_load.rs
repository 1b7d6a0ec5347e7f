//! Three node processes on NATS, a nats-server of the test's own between them:
//! a master that runs no chaos, and worker-a and worker-b, which do. Clients
//! keep calling `chaos sleep` through the master's HTTP API while a worker node
//! is SIGKILLed, or while the nats-server restarts. Every call is answered:
//! served with its own answer, or failed with `NodeDown` (across the server's
//! restart, also `NoSuchService` or `Timeout`: see that test); none is left
//! without an answer. Afterwards the cluster serves again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Client threads calling at once: more than the four chaos workers, so that
/// each worker node holds calls at every moment.
const CLIENTS: usize = 6;
/// Each call's own timeout, which no call may reach when a node is killed.
const CALL_TIMEOUT: &str = "20s";
/// Long before [`CALL_TIMEOUT`]: an answer later than this is a call that hung.
const ANSWER_BOUND: Duration = Duration::from_secs(10);
/// Each call's own timeout across a restart of the server, where a call in
/// flight may reach it; short, so that the test stays short.
const RESTART_CALL_TIMEOUT: &str = "3s";
/// Calls served after an event before the load stops.
const SERVED_AFTER: u64 = 50;

/// What became of the calls, counted as their answers come.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    served: AtomicU64,
    node_down: AtomicU64,
    no_such_service: AtomicU64,
    timeout: AtomicU64,
    /// Anything else: a wrong answer, another error, or no answer at all.
    other: Mutex<Vec<String>>,
    /// The messages of the `NodeDown` errors.
    down_messages: Mutex<Vec<String>>,
    /// The messages of the `Timeout` errors.
    timeout_messages: Mutex<Vec<String>>,
    /// The longest any call took, in ms.
    slowest_ms: AtomicU64,
}

impl Tally {
    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// Clients calling `chaos sleep` through one node's API until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts [`CLIENTS`] clients of `api`, each call with its own `timeout`.
    fn start(api: &str, timeout: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..CLIENTS)
            .map(|_| {
                let (api, stop, tally) = (api.to_string(), stop.clone(), tally.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let n = tally.sent.fetch_add(1, Ordering::SeqCst);
                        if !call(&api, &tally, 10 + n % 20, timeout) {
                            // A failed call comes back at once: no busy loop of them.
                            thread::sleep(Duration::from_millis(5));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn served(&self) -> u64 {
        self.tally.served()
    }

    /// Stops the clients once their calls in flight are answered.
    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a client thread panicked");
        }
        self.tally
    }
}

/// One `chaos sleep` of `ms` through `api` with its own `timeout`, counted in
/// `tally` by its answer; whether it was served.
fn call(api: &str, tally: &Tally, ms: u64, timeout: &str) -> bool {
    let started = Instant::now();
    let path = format!("/v1/request/chaos/sleep?timeout={timeout}");
    let answer = http(api, "POST", &path, &format!(r#"{{"ms":{ms}}}"#));
    tally
        .slowest_ms
        .fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
    let body = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_default();
    match &answer {
        Ok((200, text)) if body(text)["reply"]["slept"] == ms => {
            tally.served.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        Ok((502, text)) if body(text)["error"]["kind"] == "NodeDown" => {
            tally.node_down.fetch_add(1, Ordering::SeqCst);
            let message = body(text)["error"]["message"].to_string();
            tally.down_messages.lock().unwrap().push(message);
        }
        Ok((404, text)) if body(text)["error"]["kind"] == "NoSuchService" => {
            tally.no_such_service.fetch_add(1, Ordering::SeqCst);
        }
        Ok((504, text)) if body(text)["error"]["kind"] == "Timeout" => {
            tally.timeout.fetch_add(1, Ordering::SeqCst);
            let message = body(text)["error"]["message"].to_string();
            tally.timeout_messages.lock().unwrap().push(message);
        }
        _ => tally
            .other
            .lock()
            .unwrap()
            .push(format!("sleep {ms}: {answer:?}")),
    }
    false
}

/// The nats-server, the master (no chaos) and worker-a and worker-b (two chaos
/// workers each), all running.
struct Cluster {
    _dir: tempfile::TempDir,
    net: Net,
    master: NodeProcess,
    a: NodeProcess,
    _b: NodeProcess,
}

fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(Backbone::Nats, dir.path());
    let master_cfg = net.config("master", "master", "{ math: { workers: 1 } }", "");
    let worker_cfg = |name: &str| net.config(name, "worker", "{ chaos: { workers: 2 } }", "");
    let (a_cfg, b_cfg) = (worker_cfg("worker-a"), worker_cfg("worker-b"));
    let master = net.start(&master_cfg);
    let a = net.start(&a_cfg);
    let b = net.start(&b_cfg);
    wait_nodes_running(&master, 3);
    Cluster {
        _dir: dir,
        net,
        master,
        a,
        _b: b,
    }
}

/// The `chaos sleep` calls node `node`'s two chaos workers have served, as
/// the master's status shows them.
fn handled(status: &Value, node: &str) -> u64 {
    (0..2)
        .map(|i| {
            worker(status, &format!("{node}/chaos/{i}"))["handled"]
                .as_u64()
                .unwrap_or_default()
        })
        .sum()
}

/// Waits until the load has `more` calls served past what it had when called.
fn wait_served(master: &NodeProcess, load: &Load, what: &str, more: u64) {
    let target = load.served() + more;
    wait_until(master, what, Duration::from_secs(20), || {
        load.served() >= target
    });
}

/// Every call sent was answered, each by a kind the test allows, within
/// [`ANSWER_BOUND`]; prints the counts.
fn assert_all_answered(tally: &Tally) {
    let other = tally.other.lock().unwrap();
    assert!(
        other.is_empty(),
        "calls not answered as allowed: {other:#?}"
    );
    let count = |n: &AtomicU64| n.load(Ordering::SeqCst);
    let (sent, served) = (count(&tally.sent), tally.served());
    let (node_down, no_such_service) = (count(&tally.node_down), count(&tally.no_such_service));
    let timeout = count(&tally.timeout);
    let slowest = Duration::from_millis(count(&tally.slowest_ms));
    let counts = format!(
        "{sent} calls: {served} served, {node_down} NodeDown, {no_such_service} NoSuchService, \
         {timeout} Timeout; the slowest took {slowest:?}"
    );
    eprintln!("{counts}");
    assert_eq!(
        served + node_down + no_such_service + timeout,
        sent,
        "{counts}"
    );
    assert!(slowest < ANSWER_BOUND, "{counts}");
}

#[test]
fn a_node_killed_under_load_fails_only_its_calls_with_node_down_and_the_survivor_serves() {
    let Cluster {
        _dir,
        net: _net,
        master,
        mut a,
        _b,
    } = start_cluster();
    let load = Load::start(&master.api, CALL_TIMEOUT);
    wait_status(&master, "both worker nodes serve the load", |s| {
        handled(s, "worker-a") >= 5 && handled(s, "worker-b") >= 5
    });
    a.kill9();
    wait_status(&master, "the master shows worker-a down", |s| {
        find_node(s, "worker-a").is_some_and(|n| n["state"] == "down")
    });
    wait_served(&master, &load, "the survivor serves the load", SERVED_AFTER);
    let tally = load.finish();

    assert_all_answered(&tally);
    assert_eq!(
        (
            tally.no_such_service.load(Ordering::SeqCst),
            tally.timeout.load(Ordering::SeqCst)
        ),
        (0, 0),
        "worker-b ran chaos all along, and a call held by worker-a fails at once"
    );
    // worker-a held calls when it died (each client has one in flight, and
    // least-loaded routing spreads them over both nodes), and took more until
    // the master heard no beat of it for 300 ms: those, and only those, failed.
    let down = tally.down_messages.lock().unwrap();
    assert!(!down.is_empty(), "no call was held by worker-a");
    assert!(
        down.iter().all(|m| m.contains("node worker-a is down")),
        "{down:#?}"
    );

    // After the kill every call goes to the survivor.
    let before = handled(&master.status(), "worker-b");
    let survivor = Tally::default();
    for i in 0..20 {
        call(&master.api, &survivor, i, CALL_TIMEOUT);
    }
    assert_eq!(
        survivor.served(),
        20,
        "{:?}",
        survivor.other.lock().unwrap()
    );
    wait_status(&master, "worker-b served the last 20 calls", |s| {
        handled(s, "worker-b") == before + 20
    });
}

/// The server is stopped (SIGTERM) and started again on the same port and store
/// while the calls go on. Every call is answered, by one of:
/// - served;
/// - `NodeDown`: held by a worker node the master heard no beat of for three
///   heartbeats, when the server was away that long;
/// - `NoSuchService`: made while the master heard no node that runs chaos, so
///   it had nowhere to go (as on the bridge when no node runs the service);
/// - `Timeout`, at the call's own timeout: NATS delivers at most once, so a
///   request or answer on its way when the server went is lost, and when the
///   server is back within three heartbeats no node was ever down to fail it
///   with `NodeDown`. Only a call in flight at that moment: one per client at most.
///
/// Once the server is back every node rejoins and the calls are served across
/// nodes again.
#[test]
fn a_nats_server_restart_under_load_leaves_no_call_unanswered_and_the_cluster_serves_again() {
    let Cluster {
        _dir,
        mut net,
        master,
        a: _a,
        _b,
    } = start_cluster();
    let load = Load::start(&master.api, RESTART_CALL_TIMEOUT);
    wait_status(&master, "both worker nodes serve the load", |s| {
        handled(s, "worker-a") >= 5 && handled(s, "worker-b") >= 5
    });
    net.server().restart();
    wait_nodes_running(&master, 3);
    let back = master.status();
    wait_status(&master, "both worker nodes serve again", |s| {
        handled(s, "worker-a") >= handled(&back, "worker-a") + 5
            && handled(s, "worker-b") >= handled(&back, "worker-b") + 5
    });
    wait_served(&master, &load, "calls are served again", SERVED_AFTER);
    let tally = load.finish();

    assert_all_answered(&tally);
    let timeouts = tally.timeout_messages.lock().unwrap();
    assert!(timeouts.len() <= CLIENTS, "{timeouts:#?}");
    assert!(
        timeouts
            .iter()
            .all(|m| m.contains("no reply from node worker-")),
        "{timeouts:#?}"
    );
    let status = master.status();
    for name in ["master", "worker-a", "worker-b"] {
        assert_eq!(node_of(&status, name)["state"], "running", "{status}");
    }
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
}
