//! Shared test harness: a small test app, `start_node` on port 0, `wait_until`
//! (poll with a deadline, never a fixed sleep) and an actor counting lifecycle events.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use colony::{
    App, ExitReason, LifecycleEvent, Meta, Node, NodeConfig, Rejection, Request, ServiceError,
    WorkerContext, WorkerId,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

mod backbone;
pub mod http;
pub mod logs;
pub mod nats;
pub mod tracer;
mod watch;
#[allow(unused_imports)]
pub use backbone::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use watch::*;

/// Starts a node from YAML text inside the current actix System.
pub async fn start_node(yaml: &str) -> Node {
    let mut config = NodeConfig::parse(Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(test_app(), config).await.expect("node starts")
}

/// Polls `condition` every few milliseconds until it holds; panics after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The state of worker `id` in the node's status.
pub fn worker_status(node: &Node, id: &str) -> colony::status::WorkerStatus {
    node.status()
        .services
        .iter()
        .flat_map(|s| s.workers.iter())
        .find(|w| w.id == id)
        .cloned()
        .unwrap_or_else(|| panic!("no worker {id} in status"))
}

/// Waits until every worker of the node is running.
pub async fn all_running(node: &Node) {
    wait_until("all workers run", Duration::from_secs(5), || async {
        node.status()
            .services
            .iter()
            .flat_map(|s| s.workers.iter())
            .all(|w| w.state == "running")
    })
    .await;
}

/// The test app: `calc`, `chaos`, `guarded` and master handlers.
pub fn test_app() -> App {
    App::new()
        .service("calc", Calc::new)
        .handles::<Add>()
        .handles::<WhoAmI>()
        .handles::<Fail>()
        .service("chaos", Chaos::new)
        .handles::<Sleep>()
        .handles::<SlowIfFirst>()
        .handles::<Nap>()
        .handles::<Panic>()
        .handles::<AsyncPanic>()
        .handles::<WhoAmI>()
        .handles::<Add>()
        .service("guarded", Calc::new)
        .handles::<Add>()
        .guard::<Secret>(require_user)
        .guard::<Secret>(shout_user)
        .master(Calc::new)
        .handles::<WhoAmI>()
        .into()
}

/// A worker that knows its own id.
pub struct Calc {
    id: WorkerId,
}

impl Calc {
    pub fn new(ctx: WorkerContext) -> Self {
        Calc { id: ctx.id }
    }
}

impl Actor for Calc {
    type Context = Context<Self>;
}

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<Added, ServiceError>")]
pub struct Add {
    pub a: i64,
    pub b: i64,
}
impl Request for Add {
    const SUBJECT: &'static str = "add";
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    pub sum: i64,
    pub by: String,
}

impl Handler<Add> for Calc {
    type Result = Result<Added, ServiceError>;
    fn handle(&mut self, m: Add, _: &mut Context<Self>) -> Self::Result {
        Ok(Added {
            sum: m.a + m.b,
            by: self.id.to_string(),
        })
    }
}

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<String, ServiceError>")]
pub struct WhoAmI {}
impl Request for WhoAmI {
    const SUBJECT: &'static str = "whoami";
}

impl Handler<WhoAmI> for Calc {
    type Result = Result<String, ServiceError>;
    fn handle(&mut self, _: WhoAmI, _: &mut Context<Self>) -> Self::Result {
        Ok(self.id.to_string())
    }
}

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Fail {
    pub code: u32,
}
impl Request for Fail {
    const SUBJECT: &'static str = "fail";
}

impl Handler<Fail> for Calc {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, m: Fail, _: &mut Context<Self>) -> Self::Result {
        Err(ServiceError::application(
            "fail requested",
            serde_json::json!({ "code": m.code }),
        ))
    }
}

/// A message passed through two guards: one rejects it without a user, the next
/// upper-cases the user.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<String, ServiceError>")]
pub struct Secret {
    pub user: Option<String>,
}
impl Request for Secret {
    const SUBJECT: &'static str = "secret";
}

impl Handler<Secret> for Calc {
    type Result = Result<String, ServiceError>;
    fn handle(&mut self, m: Secret, _: &mut Context<Self>) -> Self::Result {
        Ok(format!("secret for {}", m.user.unwrap_or_default()))
    }
}

fn require_user(m: &mut Secret, _: &Meta<'_>) -> Result<(), Rejection> {
    match m.user {
        Some(_) => Ok(()),
        None => Err("You are not authenticated.".into()),
    }
}

fn shout_user(m: &mut Secret, _: &Meta<'_>) -> Result<(), Rejection> {
    m.user = m.user.take().map(|u| u.to_uppercase());
    Ok(())
}

/// A worker that sleeps, panics and counts the workers it was built as.
pub struct Chaos {
    id: WorkerId,
}

/// How many `Chaos` actors were built, process-wide.
pub static CHAOS_BUILT: AtomicUsize = AtomicUsize::new(0);

impl Chaos {
    pub fn new(ctx: WorkerContext) -> Self {
        CHAOS_BUILT.fetch_add(1, Ordering::SeqCst);
        Chaos { id: ctx.id }
    }
}

impl Actor for Chaos {
    type Context = Context<Self>;
}

impl Handler<WhoAmI> for Chaos {
    type Result = Result<String, ServiceError>;
    fn handle(&mut self, _: WhoAmI, _: &mut Context<Self>) -> Self::Result {
        Ok(self.id.to_string())
    }
}

impl Handler<Add> for Chaos {
    type Result = Result<Added, ServiceError>;
    fn handle(&mut self, m: Add, _: &mut Context<Self>) -> Self::Result {
        Ok(Added {
            sum: m.a + m.b,
            by: self.id.to_string(),
        })
    }
}

/// Sleeps without blocking the thread; replies with the sleeper's id.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<String, ServiceError>")]
pub struct Sleep {
    pub ms: u64,
}
impl Request for Sleep {
    const SUBJECT: &'static str = "sleep";
}

impl Handler<Sleep> for Chaos {
    type Result = ResponseFuture<Result<String, ServiceError>>;
    fn handle(&mut self, m: Sleep, _: &mut Context<Self>) -> Self::Result {
        let id = self.id.to_string();
        Box::pin(async move {
            actix_rt::time::sleep(Duration::from_millis(m.ms)).await;
            Ok(id)
        })
    }
}

/// Sleeps within the worker (an actor future, not a detached one): a worker
/// that stops before it ends drops it unanswered. Replies with the napper's id.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<String, ServiceError>")]
pub struct Nap {
    pub ms: u64,
}
impl Request for Nap {
    const SUBJECT: &'static str = "nap";
}

impl Handler<Nap> for Chaos {
    type Result = ResponseActFuture<Self, Result<String, ServiceError>>;
    fn handle(&mut self, m: Nap, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            actix::fut::wrap_future::<_, Self>(actix_rt::time::sleep(Duration::from_millis(m.ms)))
                .map(|(), act, _| Ok(act.id.to_string())),
        )
    }
}

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Panic {
    pub message: String,
}
impl Request for Panic {
    const SUBJECT: &'static str = "panic";
}

impl Handler<Panic> for Chaos {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, m: Panic, _: &mut Context<Self>) -> Self::Result {
        panic!("{}", m.message);
    }
}

/// Counts lifecycle events by kind and keeps them in order.
#[derive(Clone, Default)]
pub struct Events {
    pub seen: Arc<Mutex<Vec<LifecycleEvent>>>,
}

impl Events {
    /// Subscribes a fresh counter to `node`.
    pub async fn subscribe(node: &Node) -> Events {
        let events = Events::default();
        let recipient = EventSink(events.clone()).start().recipient();
        node.subscribe_events(recipient).await.expect("subscribe");
        events
    }

    /// How many events `pred` matches.
    pub fn count(&self, pred: impl Fn(&LifecycleEvent) -> bool) -> usize {
        self.seen.lock().iter().filter(|e| pred(e)).count()
    }

    pub fn restarts_of(&self, worker: &str) -> usize {
        self.count(
            |e| matches!(e, LifecycleEvent::Restart { worker: w, .. } if w.to_string() == worker),
        )
    }

    pub fn onlines_of(&self, worker: &str) -> usize {
        self.count(|e| matches!(e, LifecycleEvent::Online { worker: w } if w.to_string() == worker))
    }

    /// The exit reasons of `worker`, in order.
    pub fn exits_of(&self, worker: &str) -> Vec<ExitReason> {
        self.seen
            .lock()
            .iter()
            .filter_map(|e| match e {
                LifecycleEvent::Exit { worker: w, reason } if w.to_string() == worker => {
                    Some(reason.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// `(restarts, delay_ms)` of every Restart event of `worker`, in order.
    pub fn restart_events(&self, worker: &str) -> Vec<(u64, u64)> {
        self.seen
            .lock()
            .iter()
            .filter_map(|e| match e {
                LifecycleEvent::Restart {
                    worker: w,
                    restarts,
                    delay_ms,
                } if w.to_string() == worker => Some((*restarts, *delay_ms)),
                _ => None,
            })
            .collect()
    }
}

/// Waits until `worker` has been online `onlines` times and runs.
pub async fn wait_online(node: &Node, events: &Events, worker: &str, onlines: usize) {
    wait_until(
        &format!("{worker} is online for the {onlines}. time"),
        Duration::from_secs(5),
        || async {
            events.onlines_of(worker) == onlines && worker_status(node, worker).state == "running"
        },
    )
    .await;
}

struct EventSink(Events);

impl Actor for EventSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<LifecycleEvent> for EventSink {
    type Result = ();
    fn handle(&mut self, event: LifecycleEvent, _: &mut Context<Self>) {
        self.0.seen.lock().push(event);
    }
}

/// Worker 0 sleeps `ms` before replying; every other worker replies at once.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<String, ServiceError>")]
pub struct SlowIfFirst {
    pub ms: u64,
}
impl Request for SlowIfFirst {
    const SUBJECT: &'static str = "slow_if_first";
}

impl Handler<SlowIfFirst> for Chaos {
    type Result = ResponseFuture<Result<String, ServiceError>>;
    fn handle(&mut self, m: SlowIfFirst, _: &mut Context<Self>) -> Self::Result {
        let id = self.id.to_string();
        let ms = if self.id.index == 0 { m.ms } else { 0 };
        Box::pin(async move {
            actix_rt::time::sleep(Duration::from_millis(ms)).await;
            Ok(id)
        })
    }
}

/// Requests waiting at `service`'s dealer.
pub fn queued(node: &Node, service: &str) -> usize {
    node.status()
        .services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.queued)
        .unwrap_or_else(|| panic!("no service {service} in status"))
}

/// Panics inside the handler's detached future (`ResponseFuture`), not in the actor.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct AsyncPanic {}
impl Request for AsyncPanic {
    const SUBJECT: &'static str = "async_panic";
}

impl Handler<AsyncPanic> for Chaos {
    type Result = ResponseFuture<Result<(), ServiceError>>;
    fn handle(&mut self, _: AsyncPanic, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move { panic!("async boom") })
    }
}

/// Starts a `Sleep { ms }` on `chaos` and waits until `worker` holds it.
pub async fn keep_busy(
    node: &Node,
    worker: &str,
    ms: u64,
) -> actix_rt::task::JoinHandle<Result<String, ServiceError>> {
    let sleeper = {
        let node = node.clone();
        actix_rt::spawn(async move { node.request("chaos", Sleep { ms }).await })
    };
    wait_until("the sleep is in flight", Duration::from_secs(5), || async {
        worker_status(node, worker).in_flight == 1
    })
    .await;
    sleeper
}

/// Requests `msg` from `chaos` in the background and waits until `waiting`
/// requests wait at its dealer, this one included.
pub async fn line_up<M: Request>(
    node: &Node,
    msg: M,
    waiting: usize,
) -> actix_rt::task::JoinHandle<Result<colony::ReplyOf<M>, ServiceError>> {
    let call = {
        let node = node.clone();
        actix_rt::spawn(async move { node.request("chaos", msg).await })
    };
    wait_until(
        "the request waits at the dealer",
        Duration::from_secs(5),
        || async { queued(node, "chaos") == waiting },
    )
    .await;
    call
}

/// A cluster secret file for tests, removed when dropped.
pub fn secret_file(secret: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(secret.as_bytes()).expect("write secret");
    file
}

/// The `bridge:` section of a test node: port 0, the given secret, fast heartbeats.
pub fn bridge_yaml(secret: &tempfile::NamedTempFile, join: Option<std::net::SocketAddr>) -> String {
    let join = join
        .map(|a| format!("[{a}]"))
        .unwrap_or_else(|| "[]".into());
    format!(
        "bridge: {{ listen: 127.0.0.1:0, join: {join}, secret_file: {}, heartbeat: 100ms }}\n",
        secret.path().display()
    )
}

/// Waits until `node` sees `count` nodes, all of them up.
pub async fn cluster_of(node: &Node, count: usize) {
    wait_until(
        &format!("{count} nodes are up"),
        Duration::from_secs(10),
        || async {
            let status = node.cluster_status().await;
            status.nodes.len() == count && status.nodes.iter().all(|n| n.state == "running")
        },
    )
    .await;
}
