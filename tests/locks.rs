//! Cluster-wide exclusive locks on a master (which holds the lock table) and a
//! worker node bridged to it: waiters are served first come, first served with
//! strictly increasing fencing tokens; a lock is released when its holding worker
//! panics, when its holder's node goes down and when its lease runs out; a waiter
//! that gave up, was aborted or whose node went down leaves the line; a wait that
//! runs out is a `Timeout`.
//!
//! On NATS the lock table is a JetStream key-value bucket that every node uses
//! alike: the same guarantees hold (exclusion, increasing tokens, release by a
//! panic, a node's loss or a lease), except the order of waiters, which is not
//! first come, first served, and a grant comes a moment after the release
//! rather than within it.
//!
//! Waiters are lined up deterministically: a lock future on the master registers
//! its wait in its first poll (`futures::poll!`); a lock future on the worker node
//! sends its request in its first poll, and any later round trip of the worker
//! node to the master (`queues()`, the "barrier") is served after it.

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use colony::{
    ErrorKind, LockGuard, LockOptions, Node, NodeConfig, Request, ServiceError, WorkerContext,
    WorkerId,
};
use common::{cluster_of, wait_until, Net};
use serde::{Deserialize, Serialize};

/// How long any single step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

type Waiting = Pin<Box<dyn Future<Output = Result<LockGuard, ServiceError>>>>;

/// The test app: `locker`, a worker that keeps the lock it takes in its state.
fn app() -> colony::App {
    colony::App::new()
        .service("locker", Locker::new)
        .handles::<Take>()
        .handles::<Panic>()
        .into()
}

struct Locker {
    node: Node,
    guard: Option<LockGuard>,
}

impl Locker {
    fn new(ctx: WorkerContext) -> Self {
        Locker {
            node: ctx.node,
            guard: None,
        }
    }
}

impl Actor for Locker {
    type Context = Context<Self>;
}

/// Takes lock `key` and keeps its guard in the worker; replies with its token.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<u64, ServiceError>")]
struct Take {
    key: String,
}
impl Request for Take {
    const SUBJECT: &'static str = "take";
}

impl Handler<Take> for Locker {
    type Result = ResponseActFuture<Self, Result<u64, ServiceError>>;
    fn handle(&mut self, m: Take, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.node
                .lock(&m.key)
                .into_actor(self)
                .map(|taken, act, _| {
                    let guard = taken?;
                    let token = guard.token();
                    act.guard = Some(guard);
                    Ok(token)
                }),
        )
    }
}

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
struct Panic {}
impl Request for Panic {
    const SUBJECT: &'static str = "panic";
}

impl Handler<Panic> for Locker {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, _: Panic, _: &mut Context<Self>) -> Self::Result {
        panic!("the locker panics while holding its lock");
    }
}

struct Cluster {
    master: Node,
    worker: Node,
    _net: Net,
}

async fn start(yaml: &str) -> Node {
    let mut config = NodeConfig::parse(Path::new("locks.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(app(), config).await.expect("node starts")
}

/// Master `m` and worker node `w`, each with one `locker` worker, bridged.
async fn cluster() -> Cluster {
    cluster_on(Net::bridge()).await
}

/// The same on `net`.
async fn cluster_on(net: Net) -> Cluster {
    let master = start(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ locker: {{ workers: 1 }} }}\n",
        net.yaml(None)
    ))
    .await;
    let worker = start(&format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}services: {{ locker: {{ workers: 1 }} }}\n",
        net.yaml(Some(&master))
    ))
    .await;
    cluster_of(&master, 2).await;
    cluster_of(&worker, 2).await;
    Cluster {
        master,
        worker,
        _net: net,
    }
}

impl Cluster {
    async fn stop(self) {
        self.worker.shutdown(Duration::from_secs(1)).await;
        self.master.shutdown(Duration::from_secs(1)).await;
    }
}

fn wait(ms: u64) -> LockOptions {
    LockOptions {
        wait: Duration::from_millis(ms),
        ..Default::default()
    }
}

/// A lock future on `node`, polled once: on the master its wait is registered
/// when this returns; on the worker node its request is sent (see [`barrier`]).
async fn ask(node: &Node, key: &str) -> Waiting {
    let mut waiting: Waiting = Box::pin(node.lock(key));
    assert!(
        futures::poll!(waiting.as_mut()).is_pending(),
        "{key} is held: the lock must not be granted at once"
    );
    waiting
}

/// Once this returns, the master has served every operation the worker node
/// sent before (lock requests and releases): they came over the same link, and
/// the master serves them in order.
async fn barrier(worker: &Node) {
    worker.queues().await.expect("the master answers");
}

/// Whether `waiting` holds the lock now, without waiting.
async fn granted_now(waiting: &mut Waiting) -> Option<LockGuard> {
    match futures::poll!(waiting.as_mut()) {
        Poll::Ready(taken) => Some(taken.expect("the lock is granted")),
        Poll::Pending => None,
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
}

#[actix_rt::test]
async fn waiters_are_served_in_the_order_they_asked_with_increasing_tokens() {
    let c = cluster().await;
    let first = c.master.lock("k").await.unwrap();
    let mut waiting = Vec::new();
    for _ in 1..=5 {
        waiting.push(ask(&c.master, "k").await);
    }

    let mut last = first.token();
    let mut holding = first;
    for turn in 0..5 {
        drop(holding);
        // The release grants the lock to the first waiter still in line, at once.
        let mut granted = Vec::new();
        for (i, w) in waiting.iter_mut().enumerate() {
            if let Some(guard) = granted_now(w).await {
                granted.push((i, guard));
            }
        }
        assert_eq!(
            granted.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![turn],
            "exactly caller {} holds the lock after {} releases",
            turn + 1,
            turn + 1
        );
        let (_, guard) = granted.pop().unwrap();
        assert!(guard.token() > last, "token {} after {last}", guard.token());
        assert_eq!(guard.key(), "k");
        last = guard.token();
        holding = guard;
        // The granted future is done; the others keep waiting.
        waiting[turn] = Box::pin(futures::future::pending());
    }
    drop(holding);

    // The line is empty: a caller from the worker node gets the lock at once.
    let again = c.worker.lock_with("k", wait(5_000)).await.unwrap();
    assert!(again.token() > last);
    drop(again);
    drop(waiting);
    c.stop().await;
}

#[actix_rt::test]
async fn a_panicking_holder_releases_its_lock_to_the_next_waiter() {
    a_panicking_holder_releases_its_lock_to_the_next_waiter_on(cluster().await).await;
}

#[actix_rt::test]
async fn a_panicking_holder_releases_its_lock_to_the_next_waiter_over_nats() {
    a_panicking_holder_releases_its_lock_to_the_next_waiter_on(cluster_on(Net::nats()).await).await;
}

async fn a_panicking_holder_releases_its_lock_to_the_next_waiter_on(c: Cluster) {
    for (holder, waiter) in [(&c.worker, &c.master), (&c.master, &c.worker)] {
        let locker = WorkerId::new(holder.name(), "locker", 0);
        let key = format!("held-by-{}", holder.name());
        let held = holder
            .request_worker(&locker, Take { key: key.clone() })
            .await
            .unwrap();

        let mut next = ask(waiter, &key).await;
        barrier(&c.worker).await;
        assert!(granted_now(&mut next).await.is_none());

        let err = holder.request_worker(&locker, Panic {}).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::HandlerPanicked, "{err:?}");
        let guard = within("the waiter gets the dead worker's lock", next)
            .await
            .unwrap();
        assert!(guard.token() > held, "token {} after {held}", guard.token());

        // The restarted worker waits for the lock like anyone else.
        wait_until("the locker restarted", DEADLINE, || async {
            holder
                .status()
                .services
                .iter()
                .flat_map(|s| s.workers.iter())
                .any(|w| w.id == locker.to_string() && w.restarts == 1 && w.state == "running")
        })
        .await;
        let token = guard.token();
        drop(guard);
        let again = holder
            .request_worker(&locker, Take { key: key.clone() })
            .await
            .unwrap();
        assert!(again > token);
    }
    c.stop().await;
}

#[actix_rt::test]
async fn a_lock_held_from_a_node_that_goes_down_passes_to_the_next_waiter() {
    a_lock_held_from_a_node_that_goes_down_passes_to_the_next_waiter_on(cluster().await).await;
}

#[actix_rt::test]
async fn a_lock_held_from_a_node_that_goes_down_passes_to_the_next_waiter_over_nats() {
    a_lock_held_from_a_node_that_goes_down_passes_to_the_next_waiter_on(
        cluster_on(Net::nats()).await,
    )
    .await;
}

async fn a_lock_held_from_a_node_that_goes_down_passes_to_the_next_waiter_on(c: Cluster) {
    let held = c.worker.lock("c").await.unwrap();
    let mut next = ask(&c.master, "c").await;

    // The guard lives on in the test: only the master seeing the node go can
    // release the lock.
    assert!(granted_now(&mut next).await.is_none());
    c.worker.shutdown(Duration::from_millis(200)).await;
    let guard = within("the master waiter gets the lock", next)
        .await
        .unwrap();
    assert!(guard.token() > held.token());
    // Dropping the stale guard of the stopped node changes nothing.
    drop(held);
    let err = c.master.lock_with("c", wait(100)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
    let last = guard.token();
    drop(guard);
    let again = c.master.lock_with("c", wait(5_000)).await.unwrap();
    assert!(again.token() > last);
    c.master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn waiters_that_stopped_waiting_are_skipped() {
    let c = cluster().await;
    let held = c.master.lock("d").await.unwrap();

    // A caller on the master gives up before its own wait ends.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), c.master.lock("d")).await;
    assert!(
        gave_up.is_err(),
        "the lock is held: the caller cannot get it"
    );
    // One drops its future.
    drop(ask(&c.master, "d").await);
    // A task waiting on the worker node is aborted.
    let remote = ask(&c.worker, "d").await;
    let task = actix_rt::spawn(remote);
    barrier(&c.worker).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // A live waiter on each node, the master's first.
    let mut live_master = ask(&c.master, "d").await;
    let mut live_worker = ask(&c.worker, "d").await;
    barrier(&c.worker).await;

    let last = held.token();
    drop(held);
    // None of the three gone waiters took the lock: the first live one has it.
    let guard = granted_now(&mut live_master)
        .await
        .expect("the first live waiter holds the lock at once");
    assert!(guard.token() > last);
    let last = guard.token();
    barrier(&c.worker).await;
    assert!(granted_now(&mut live_worker).await.is_none());
    drop(guard);
    let guard = within("the worker node's waiter gets the lock", live_worker)
        .await
        .unwrap();
    assert!(guard.token() > last);
    let last = guard.token();
    drop(guard);
    let again = within(
        "the lock is free again",
        c.master.lock_with("d", wait(5_000)),
    )
    .await
    .unwrap();
    assert!(again.token() > last);
    c.stop().await;
}

#[actix_rt::test]
async fn waiters_of_a_node_that_goes_down_are_skipped() {
    let c = cluster().await;
    let held = c.master.lock("d").await.unwrap();
    let mut remote = ask(&c.worker, "d").await;
    barrier(&c.worker).await;
    let mut live = ask(&c.master, "d").await;

    c.worker.shutdown(Duration::from_millis(200)).await;
    cluster_of(&c.master, 1).await;
    assert!(granted_now(&mut live).await.is_none());
    // The stopped node's waiter never gets the lock. (It is not always told at
    // once either: its link may stop before failing what waits on it.)
    if let Poll::Ready(taken) = futures::poll!(remote.as_mut()) {
        let err = taken.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NodeDown, "{err:?}");
    }
    drop(remote);

    let last = held.token();
    drop(held);
    let guard = granted_now(&mut live)
        .await
        .expect("the live waiter behind the gone one holds the lock at once");
    assert!(guard.token() > last);
    let last = guard.token();
    drop(guard);
    let again = c.master.lock_with("d", wait(5_000)).await.unwrap();
    assert!(again.token() > last);
    c.master.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_lease_releases_a_lock_whose_guard_still_lives() {
    a_lease_releases_a_lock_whose_guard_still_lives_on(cluster().await).await;
}

#[actix_rt::test]
async fn a_lease_releases_a_lock_whose_guard_still_lives_over_nats() {
    a_lease_releases_a_lock_whose_guard_still_lives_on(cluster_on(Net::nats()).await).await;
}

async fn a_lease_releases_a_lock_whose_guard_still_lives_on(c: Cluster) {
    let leased = LockOptions {
        wait: DEADLINE,
        lease: Duration::from_millis(300),
        renew: false,
    };
    for (first_node, second_node) in [(&c.worker, &c.master), (&c.master, &c.worker)] {
        let first = first_node.lock_with("e", leased).await.unwrap();
        let second = within(
            "the lease runs out",
            second_node.lock_with("e", wait(DEADLINE.as_millis() as u64)),
        )
        .await
        .unwrap();
        assert!(
            second.token() > first.token(),
            "token {} after {}",
            second.token(),
            first.token()
        );
        // The stale guard's release does not touch the new holder's lock.
        drop(first);
        barrier(&c.worker).await;
        let err = c.master.lock_with("e", wait(100)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
        let err = c.worker.lock_with("e", wait(100)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
        drop(second);
        barrier(&c.worker).await;
    }
    c.stop().await;
}

#[actix_rt::test]
async fn a_wait_that_runs_out_is_a_timeout() {
    a_wait_that_runs_out_is_a_timeout_on(cluster().await).await;
}

#[actix_rt::test]
async fn a_wait_that_runs_out_is_a_timeout_over_nats() {
    a_wait_that_runs_out_is_a_timeout_on(cluster_on(Net::nats()).await).await;
}

async fn a_wait_that_runs_out_is_a_timeout_on(c: Cluster) {
    let held = c.master.lock("f").await.unwrap();
    let err = c.master.lock_with("f", wait(100)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
    let err = c.worker.lock_with("f", wait(100)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
    let last = held.token();
    drop(held);
    // The callers that timed out left the line.
    let guard = c.worker.lock_with("f", wait(5_000)).await.unwrap();
    assert!(guard.token() > last);
    drop(guard);
    c.stop().await;
}

#[actix_rt::test]
async fn absurd_waits_and_leases_are_bounded_not_overflowed() {
    absurd_waits_and_leases_are_bounded_not_overflowed_on(cluster().await).await;
}

#[actix_rt::test]
async fn absurd_waits_and_leases_are_bounded_not_overflowed_over_nats() {
    absurd_waits_and_leases_are_bounded_not_overflowed_on(cluster_on(Net::nats()).await).await;
}

async fn absurd_waits_and_leases_are_bounded_not_overflowed_on(c: Cluster) {
    let absurd = LockOptions {
        wait: Duration::MAX,
        lease: Duration::MAX,
        renew: true,
    };
    for node in [&c.master, &c.worker] {
        let guard = within("an absurd lock", node.lock_with("g", absurd))
            .await
            .expect("granted");
        assert!(!guard.is_lost());
        drop(guard);
        barrier(&c.worker).await;
    }
    c.stop().await;
}

#[actix_rt::test]
async fn over_nats_one_holder_at_a_time_with_increasing_tokens() {
    let c = cluster_on(Net::nats()).await;
    let first = c.master.lock("k").await.unwrap();
    let mut waiting = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { &c.master } else { &c.worker };
        waiting.push(Some(ask(node, "k").await));
    }
    let mut last = first.token();
    let mut holding = first;
    for _ in 0..6 {
        drop(holding);
        // Exactly one waiter gets it, a moment after the release.
        let mut granted = None;
        wait_until("a waiter holds the lock", DEADLINE, || {
            let mut now = Vec::new();
            for (i, w) in waiting.iter_mut().enumerate() {
                if let Some(w) = w {
                    if let Poll::Ready(taken) = futures::FutureExt::poll_unpin(w, &mut noop()) {
                        now.push((i, taken.expect("granted")));
                    }
                }
            }
            assert!(now.len() <= 1, "two holders at once");
            let got = now.pop();
            let done = got.is_some();
            if let Some((i, guard)) = got {
                waiting[i] = None;
                granted = Some(guard);
            }
            async move { done }
        })
        .await;
        let guard = granted.expect("granted");
        assert!(guard.token() > last, "token {} after {last}", guard.token());
        last = guard.token();
        holding = guard;
    }
    drop(holding);
    let again = c.worker.lock_with("k", wait(5_000)).await.unwrap();
    assert!(again.token() > last);
    drop(again);
    c.stop().await;
}

/// A context whose waker does nothing: the test polls by itself.
fn noop() -> std::task::Context<'static> {
    std::task::Context::from_waker(std::task::Waker::noop())
}
