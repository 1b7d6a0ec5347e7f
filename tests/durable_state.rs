//! The cluster state on disk (`state.mode: durable`): lock tokens keep growing
//! across a restart of the node that holds them, and a lock held when it stopped
//! is granted to nobody else until its lease ends; a guard learns that its lock
//! is lost when its node is cut off from the master; a damaged state file and a
//! state directory that cannot be made each refuse the start with an error that
//! names the file and what to do.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use colony::{ErrorKind, LockOptions, Node, NodeConfig, StartError};
use common::{bridge_yaml, cluster_of, secret_file, test_app};

/// How long any single step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

fn config(name: &str, dir: &Path, extra: &str) -> NodeConfig {
    let yaml = format!(
        "node: {{ name: {name}, threads: 1 }}\nstate: {{ dir: {} }}\n{extra}",
        dir.display()
    );
    NodeConfig::parse(Path::new("durable.yaml"), &yaml).expect("test config parses")
}

/// Starts a node on state directory `dir`, waiting while the previous node on
/// it lets go of its file.
async fn start(dir: &Path) -> Node {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Node::start(test_app(), config("keeper", dir, "")).await {
            Ok(node) => return node,
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("node does not start: {e}"),
        }
    }
}

#[actix_rt::test]
async fn lock_tokens_grow_across_a_restart_and_a_held_lock_waits_out_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let first = node.lock("a").await.expect("lock a");
    let second = node.lock("b").await.expect("lock b");
    assert!(second.token() > first.token());
    let last = second.token();
    drop(second);
    // `c` is held, with a short lease, when the node stops without releasing it.
    let held = node
        .lock_with(
            "c",
            LockOptions {
                lease: Duration::from_millis(1_500),
                ..LockOptions::default()
            },
        )
        .await
        .expect("lock c");
    let stopped = Instant::now();
    // The node stops as if it crashed: the guard of `c` is never dropped.
    std::mem::forget(held);
    drop(first);
    node.shutdown(Duration::from_secs(1)).await;
    drop(node);

    let node = start(dir.path()).await;
    let again = node.lock("a").await.expect("lock a again");
    assert!(again.token() > last, "token {} after {last}", again.token());
    // Nobody gets `c` until the lease of its holder from before the restart ends.
    let quick = LockOptions {
        wait: Duration::from_millis(200),
        ..LockOptions::default()
    };
    let err = node.lock_with("c", quick).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
    let c = node
        .lock_with(
            "c",
            LockOptions {
                wait: DEADLINE,
                ..LockOptions::default()
            },
        )
        .await
        .expect("c once its lease ended");
    assert!(stopped.elapsed() >= Duration::from_millis(1_400));
    assert!(c.token() > again.token());
    node.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_guard_learns_that_its_lock_is_lost_when_its_node_is_cut_off() {
    let secret = secret_file("a-cluster-secret-for-durable-tests");
    let dir = tempfile::tempdir().unwrap();
    let mut master_config = config("m", dir.path(), &bridge_yaml(&secret, None));
    master_config.node.role = Some(colony::config::Role::Master);
    let master = Node::start(test_app(), master_config)
        .await
        .expect("master starts");
    let mut worker_config = NodeConfig::parse(
        Path::new("worker.yaml"),
        &format!(
            "node: {{ name: w, role: worker, threads: 1 }}\n{}",
            bridge_yaml(&secret, master.bridge_addr())
        ),
    )
    .expect("worker config parses");
    worker_config.state.mode = colony::config::StateMode::Memory;
    let worker = Node::start(test_app(), worker_config)
        .await
        .expect("worker starts");
    cluster_of(&worker, 2).await;

    let guard = worker
        .lock_with(
            "cut",
            LockOptions {
                lease: Duration::from_millis(600),
                ..LockOptions::default()
            },
        )
        .await
        .expect("the worker node takes the lock");
    // Renewals keep it while the link lives: three leases later it is still held.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert!(!guard.is_lost());
    let err = master
        .lock_with(
            "cut",
            LockOptions {
                wait: Duration::from_millis(100),
                ..LockOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");

    // The worker node is cut off from the master: the guard learns it.
    master.shutdown(Duration::from_secs(1)).await;
    let lost = tokio::time::timeout(DEADLINE, guard.lost())
        .await
        .expect("the guard learns of the loss in time");
    assert!(guard.is_lost());
    assert!(!lost.message.is_empty());
    worker.shutdown(Duration::from_secs(1)).await;
}

fn refusal(result: Result<Node, StartError>) -> String {
    match result {
        Ok(_) => panic!("the node started"),
        Err(e) => e.to_string(),
    }
}

#[actix_rt::test]
async fn a_damaged_state_file_refuses_the_start_and_says_how_to_move_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    node.push("none", &1).await.unwrap_err();
    node.shutdown(Duration::from_secs(1)).await;
    let file = dir.path().join("cluster.redb");
    let mut bytes = std::fs::read(&file).expect("the state file exists");
    assert!(bytes.len() > 64);
    // A torn header: the first bytes overwritten.
    bytes[..64].copy_from_slice(&[0xAB; 64]);
    std::fs::write(&file, &bytes).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let said = refusal(Node::start(test_app(), config("keeper", dir.path(), "")).await);
    assert!(said.contains(&file.display().to_string()), "{said}");
    assert!(said.contains("mv "), "{said}");

    // A truncated file too.
    std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
    let said = refusal(Node::start(test_app(), config("keeper", dir.path(), "")).await);
    assert!(said.contains(&file.display().to_string()), "{said}");
}

#[actix_rt::test]
async fn a_state_directory_that_cannot_be_made_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    // A file where a directory should be: even root cannot make a directory in it.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let state = blocker.join("state");
    let said = refusal(Node::start(test_app(), config("keeper", &state, "")).await);
    assert!(said.contains(&blocker.display().to_string()), "{said}");
    assert!(said.contains("state.dir"), "{said}");

    // A name no file system takes: refused, and quoted cut, not whole.
    let long = dir.path().join("x".repeat(300_000));
    let said = refusal(Node::start(test_app(), config("keeper", &long, "")).await);
    assert!(
        said.contains("state.dir"),
        "{}",
        &said[..said.len().min(500)]
    );
    assert!(said.len() < 1_000, "{} bytes of error", said.len());
}

#[actix_rt::test]
async fn confirmation_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    assert_eq!(node.confirm("warm").await.expect("confirmed"), 1);
    node.shutdown(Duration::from_secs(1)).await;
    drop(node);

    let node = start(dir.path()).await;
    // The wait for one is met at once, by the confirmation from before.
    let met = tokio::time::timeout(
        Duration::from_millis(50),
        node.on_confirmation(1, "warm", DEADLINE),
    )
    .await
    .expect("met before the restart");
    assert_eq!(met.expect("confirmed"), 1);
    // The same sender again counts once.
    assert_eq!(node.confirm("warm").await.expect("confirmed"), 1);
    node.shutdown(Duration::from_secs(1)).await;
}

/// Sends a whole push over a fresh connection and resets the connection at
/// once, before the answer (`SO_LINGER` 0): the server's handler is dropped
/// while the push is being written.
fn push_and_reset(addr: std::net::SocketAddr, n: usize) {
    use std::io::Write;
    let body = format!("{{\"n\":{n}}}");
    let request = format!(
        "POST /v1/push/q HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.write_all(request.as_bytes());
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

#[actix_rt::test]
async fn pushes_whose_clients_vanish_keep_the_queue_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(
        "keeper",
        dir.path(),
        "api: { listen: 127.0.0.1:0 }\nqueues: { q: { capacity: 10 } }\n",
    );
    config.node.threads = Some(1);
    let node = Node::start(test_app(), config).await.expect("node starts");
    let addr = node.api_addr().expect("the API listens");
    let clients: Vec<_> = (0..6)
        .map(|c| {
            std::thread::spawn(move || {
                for n in 0..50 {
                    push_and_reset(addr, c * 50 + n);
                }
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || clients.into_iter().for_each(|c| c.join().unwrap()))
        .await
        .unwrap();
    // Every push written is in line, and every other left no trace: the queue
    // takes exactly as many more as it has room for.
    let deadline = Instant::now() + DEADLINE;
    let settled = loop {
        let q = node.queues().await.expect("queues").remove(0);
        if q.queued as u64 == q.pushed {
            break q;
        }
        assert!(
            Instant::now() < deadline,
            "jobs written but not in line: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Pushes still on their way settle within the deadline too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = {
        let q = node.queues().await.expect("queues").remove(0);
        assert_eq!(q.queued as u64, q.pushed, "{q:?}");
        assert!(q.pushed >= settled.pushed);
        q
    };
    for n in settled.queued..10 {
        node.push("q", &n).await.expect("room left in the queue");
    }
    let err = node.push("q", &"one too many").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded, "{err:?}");
    node.shutdown(Duration::from_secs(1)).await;
}
