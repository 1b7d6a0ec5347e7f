//! Three nodes of one process on the in-memory transport, without sockets: the
//! master `hub`, `alpha` (which runs `calc`) and `beta` (which consumes the job
//! queue and subscribes to `news`). A request from beta is served by a worker on
//! alpha, a publication on alpha reaches beta's subscriber, a job pushed on
//! alpha (through the master, which holds the queue) is taken on beta, and a
//! lock taken on alpha keeps beta waiting until it drops. A node that shuts
//! down leaves the others' routing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use colony::memory::MemoryNetwork;
use colony::{
    App, ErrorKind, LifecycleEvent, LockOptions, Node, NodeConfig, Published, Request,
    ServiceError, Subscription, WorkerContext,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<String, ServiceError>")]
struct WhoServes;
impl Request for WhoServes {
    const SUBJECT: &'static str = "who_serves";
}

struct Calc {
    id: String,
}

impl Actor for Calc {
    type Context = Context<Self>;
}

impl Handler<WhoServes> for Calc {
    type Result = Result<String, ServiceError>;
    fn handle(&mut self, _: WhoServes, _: &mut Context<Self>) -> Self::Result {
        Ok(self.id.clone())
    }
}

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<u64, ServiceError>")]
struct Job {
    n: u64,
}
impl Request for Job {
    const SUBJECT: &'static str = "job";
}

type Taken = Arc<Mutex<Vec<(u64, String)>>>;

struct Consumer {
    id: String,
    taken: Taken,
}

impl Actor for Consumer {
    type Context = Context<Self>;
}

impl Handler<Job> for Consumer {
    type Result = Result<u64, ServiceError>;
    fn handle(&mut self, job: Job, _: &mut Context<Self>) -> Self::Result {
        self.taken.lock().push((job.n, self.id.clone()));
        Ok(job.n)
    }
}

type News = Arc<Mutex<Vec<(String, String, String)>>>;

struct Reader {
    news: News,
    _subscription: Option<Subscription>,
}

impl Actor for Reader {
    type Context = Context<Self>;
}

impl Handler<Published> for Reader {
    type Result = ();
    fn handle(&mut self, m: Published, _: &mut Context<Self>) {
        let text: String = m.decode().expect("a string");
        self.news
            .lock()
            .push((m.topic().to_string(), m.meta().node.clone(), text));
    }
}

fn app(taken: &Taken) -> App {
    let taken = taken.clone();
    App::new()
        .service("calc", |ctx: WorkerContext| Calc {
            id: ctx.id.to_string(),
        })
        .handles::<WhoServes>()
        .service("consumer", move |ctx: WorkerContext| Consumer {
            id: ctx.id.to_string(),
            taken: taken.clone(),
        })
        .consumes::<Job>("jobs")
        .into()
}

async fn start(net: &MemoryNetwork, taken: &Taken, yaml: &str) -> Node {
    let yaml = format!("{yaml}queues: {{ jobs: {{}} }}\n");
    let mut config = NodeConfig::parse(Path::new("test.yaml"), &yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start_with_transport(app(taken), config, net.backbone())
        .await
        .expect("node starts")
}

async fn wait_until<F: FnMut() -> bool>(what: &str, mut condition: F) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn three_nodes_in_one_process_serve_publish_and_share_queues_and_locks() {
    let net = MemoryNetwork::new();
    let taken = Taken::default();
    let hub = start(
        &net,
        &taken,
        "node: { name: hub, role: master, threads: 1 }\n",
    )
    .await;
    let alpha = start(
        &net,
        &taken,
        "node: { name: alpha, role: worker, threads: 1 }\nservices: { calc: { workers: 2 } }\n",
    )
    .await;
    let beta = start(
        &net,
        &taken,
        "node: { name: beta, role: worker, threads: 1 }\nservices: { consumer: { workers: 1 } }\n",
    )
    .await;
    assert_eq!(net.nodes(), ["alpha", "beta", "hub"]);
    let mut config = NodeConfig::parse(Path::new("test.yaml"), "node: { name: alpha }\n").unwrap();
    config.state.mode = colony::config::StateMode::Memory;
    let twin = Node::start_with_transport(app(&taken), config, net.backbone()).await;
    assert!(
        matches!(&twin, Err(colony::StartError::Transport(why)) if why.contains("alpha")),
        "{twin:?}"
    );
    let status = hub.cluster_status().await;
    let mut names: Vec<_> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta", "hub"]);

    // A request from beta, which runs no calc, is served on alpha.
    let by = beta.request("calc", WhoServes).await.expect("served");
    assert!(by.starts_with("alpha/calc/"), "{by}");
    let by = hub.request("calc", WhoServes).await.expect("served");
    assert!(by.starts_with("alpha/calc/"), "{by}");

    // A publication on alpha reaches beta's subscriber.
    let news = News::default();
    let reader = {
        let news = news.clone();
        Reader::create(|_| Reader {
            news,
            _subscription: None,
        })
    };
    let subscription = beta
        .subscribe("news.", reader.recipient())
        .expect("subscribed");
    assert_eq!(alpha.subscribers("news.today"), 1);
    assert_eq!(alpha.subscribers("sports"), 0);
    assert_eq!(alpha.publish("news.today", "rain").expect("published"), 1);
    wait_until("beta's reader has the news", || news.lock().len() == 1).await;
    assert_eq!(
        news.lock()[0],
        (
            "news.today".to_string(),
            "alpha".to_string(),
            "rain".to_string()
        )
    );
    drop(subscription);

    // A job pushed on alpha goes to the master's queue and is taken on beta.
    alpha.push("jobs", &Job { n: 7 }).await.expect("pushed");
    wait_until("beta's consumer took the job", || !taken.lock().is_empty()).await;
    assert_eq!(taken.lock()[0], (7, "beta/consumer/0".to_string()));
    let queues = beta.queues().await.expect("the master's queues");
    assert!(queues.iter().any(|q| q.name == "jobs"), "{queues:?}");

    // A lock held on alpha keeps beta waiting until it drops.
    let guard = alpha.lock("key").await.expect("alpha takes the lock");
    let short = LockOptions {
        wait: Duration::from_millis(100),
        ..Default::default()
    };
    let waited = beta.lock_with("key", short).await;
    assert_eq!(waited.err().map(|e| e.kind), Some(ErrorKind::Timeout));
    drop(guard);
    let again = beta.lock("key").await.expect("beta takes the lock");
    assert!(again.token() > 0);
    drop(again);

    // Confirmations are counted on the master.
    assert_eq!(alpha.confirm("ready").await.expect("confirmed"), 1);
    assert_eq!(beta.confirm("ready").await.expect("confirmed"), 2);

    // Alpha leaves: beta's requests for calc find no node that runs it.
    alpha.shutdown(Duration::from_secs(1)).await;
    assert_eq!(net.nodes(), ["beta", "hub"]);
    let gone = beta.request("calc", WhoServes).await;
    assert_eq!(gone.err().map(|e| e.kind), Some(ErrorKind::NoSuchService));

    beta.shutdown(Duration::from_secs(1)).await;
    hub.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_node_that_leaves_the_network_is_down_for_the_others_and_its_locks_are_released() {
    let net = MemoryNetwork::new();
    let taken = Taken::default();
    let hub = start(
        &net,
        &taken,
        "node: { name: hub, role: master, threads: 1 }\n",
    )
    .await;
    let alpha = start(
        &net,
        &taken,
        "node: { name: alpha, role: worker, threads: 1 }\nservices: { calc: { workers: 1 } }\n",
    )
    .await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let events = events.clone();
        Watcher::create(|_| Watcher { events })
    };
    hub.subscribe_events(watcher.recipient())
        .await
        .expect("subscribed");

    // Alpha holds a lock, then leaves without dropping its guard.
    let guard = alpha.lock("key").await.expect("alpha takes the lock");
    alpha.shutdown(Duration::from_secs(1)).await;
    wait_until("the hub sees alpha down", || {
        events
            .lock()
            .iter()
            .any(|e| matches!(e, LifecycleEvent::NodeDown { node, .. } if node == "alpha"))
    })
    .await;
    let status = hub.cluster_status().await;
    assert!(status.nodes.iter().all(|n| n.name != "alpha"), "{status:?}");
    let short = LockOptions {
        wait: Duration::from_secs(2),
        ..Default::default()
    };
    let again = hub
        .lock_with("key", short)
        .await
        .expect("the lock of a node that left is released");
    drop(again);
    drop(guard);
    hub.shutdown(Duration::from_secs(1)).await;
}

struct Watcher {
    events: Arc<Mutex<Vec<LifecycleEvent>>>,
}

impl Actor for Watcher {
    type Context = Context<Self>;
}

impl Handler<LifecycleEvent> for Watcher {
    type Result = ();
    fn handle(&mut self, event: LifecycleEvent, _: &mut Context<Self>) {
        self.events.lock().push(event);
    }
}
