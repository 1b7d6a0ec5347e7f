//! Channels route across nodes, on the bridge and on NATS: workers on three nodes join the public,
//! group and private channels in `started()`, and an actor on the master joins
//! the public channel. A message on `public` reaches every one of them exactly
//! once, on `group(service)` exactly that service's workers on every node, and on
//! `private(id)` exactly that one worker, whichever node publishes it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::{channel, App, Node, NodeConfig, Published, Subscription, WorkerContext, WorkerId};
use common::{nodes_on, wait_until, Net};
use parking_lot::Mutex;

const DEADLINE: Duration = Duration::from_secs(10);
const NODES: [&str; 3] = ["m", "a", "b"];
/// Who subscribes to the public channel besides the workers.
const OBSERVER: &str = "observer on m";

/// What each subscriber received: `(topic, message)`, by worker id.
type Log = Arc<Mutex<HashMap<String, Vec<(String, String)>>>>;

fn record(log: &Log, who: &str, m: &Published) {
    let message: String = m.decode().expect("a string");
    log.lock()
        .entry(who.to_string())
        .or_default()
        .push((m.topic().to_string(), message));
}

/// A worker that joins its channels when it starts.
struct Member {
    id: WorkerId,
    node: Node,
    log: Log,
    channels: Vec<Subscription>,
}

impl Actor for Member {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.channels = self
            .node
            .join_channels(&self.id, ctx.address().recipient())
            .expect("join channels");
    }
}

impl Handler<Published> for Member {
    type Result = ();
    fn handle(&mut self, m: Published, _: &mut Context<Self>) {
        record(&self.log, &self.id.to_string(), &m);
    }
}

/// A plain actor on the master that joins the public channel.
struct Observer {
    log: Log,
    _public: Option<Subscription>,
}

impl Actor for Observer {
    type Context = Context<Self>;
}

impl Handler<Published> for Observer {
    type Result = ();
    fn handle(&mut self, m: Published, _: &mut Context<Self>) {
        record(&self.log, OBSERVER, &m);
    }
}

fn app(log: &Log) -> App {
    let (svc, svc2) = (log.clone(), log.clone());
    App::new()
        .service("svc", move |ctx: WorkerContext| Member {
            id: ctx.id,
            node: ctx.node,
            log: svc.clone(),
            channels: Vec::new(),
        })
        .service("svc2", move |ctx: WorkerContext| Member {
            id: ctx.id,
            node: ctx.node,
            log: svc2.clone(),
            channels: Vec::new(),
        })
        .into()
}

async fn start(log: &Log, yaml: String) -> Node {
    let mut config = NodeConfig::parse(Path::new("test.yaml"), &yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(app(log), config).await.expect("node starts")
}

/// Every worker of the cluster: `svc` 2 and `svc2` 1 on each node.
fn workers() -> Vec<WorkerId> {
    NODES
        .iter()
        .flat_map(|node| {
            [
                WorkerId::new(*node, "svc", 0),
                WorkerId::new(*node, "svc", 1),
                WorkerId::new(*node, "svc2", 0),
            ]
        })
        .collect()
}

fn ends(received: &[(String, String)]) -> usize {
    received
        .iter()
        .filter(|(_, m)| m.starts_with("end"))
        .count()
}

#[actix_rt::test]
async fn channels_reach_exactly_their_members_over_the_bridge() {
    channels(Net::bridge()).await;
}

#[actix_rt::test]
async fn channels_reach_exactly_their_members_over_nats() {
    channels(Net::nats()).await;
}

async fn channels(net: Net) {
    let log = Log::default();
    let services = "services: { svc: { workers: 2 }, svc2: { workers: 1 } }\n";
    let nodes = nodes_on(&net, &NODES, services, |yaml| start(&log, yaml)).await;
    let m = nodes[0].clone();
    let _observer = Observer::create(|ctx| Observer {
        log: log.clone(),
        _public: Some(
            m.subscribe(&channel::public(), ctx.address().recipient())
                .expect("subscribe"),
        ),
    });

    wait_until(
        "every node knows every channel member",
        DEADLINE,
        || async {
            nodes.iter().all(|n| {
                n.subscribers(&channel::public()) == 10
                    && n.subscribers(&channel::group("svc")) == 6
                    && n.subscribers(&channel::group("svc2")) == 3
                    && workers()
                        .iter()
                        .all(|w| n.subscribers(&channel::private(w)) == 1)
            })
        },
    )
    .await;

    let (a, b) = (&nodes[1], &nodes[2]);
    let to = |node: &str, service: &str, index: usize| {
        channel::private(&WorkerId::new(node, service, index))
    };
    assert_eq!(m.publish(&channel::public(), "p1".to_string()).unwrap(), 10);
    assert_eq!(
        a.publish(&channel::group("svc"), "g1".to_string()).unwrap(),
        6
    );
    assert_eq!(
        m.publish(&channel::group("svc2"), "g2".to_string())
            .unwrap(),
        3
    );
    assert_eq!(b.publish(&to("a", "svc", 1), "x1".to_string()).unwrap(), 1);
    assert_eq!(a.publish(&to("m", "svc2", 0), "x2".to_string()).unwrap(), 1);
    assert_eq!(m.publish(&to("m", "svc", 0), "x3".to_string()).unwrap(), 1);
    assert_eq!(
        b.publish(&channel::group("nobody"), "lost".to_string())
            .unwrap(),
        0
    );
    // Last, from each publisher: once a subscriber has all three, everything
    // published before reached it (one link per publisher, in order).
    for node in &nodes {
        let end = format!("end from {}", node.name());
        assert_eq!(node.publish(&channel::public(), end).unwrap(), 10);
    }
    wait_until("every subscriber has the three ends", DEADLINE, || async {
        let log = log.lock();
        log.len() == 10 && log.values().all(|r| ends(r) == 3)
    })
    .await;

    let public = channel::public();
    let mut expected: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut add = |who: &str, topic: &str, message: &str| {
        expected
            .entry(who.to_string())
            .or_default()
            .push((topic.to_string(), message.to_string()));
    };
    let everyone: Vec<String> = workers()
        .iter()
        .map(ToString::to_string)
        .chain([OBSERVER.to_string()])
        .collect();
    for who in &everyone {
        add(who, &public, "p1");
        for node in NODES {
            add(who, &public, &format!("end from {node}"));
        }
    }
    for w in workers() {
        let id = w.to_string();
        match w.service.as_str() {
            "svc" => add(&id, &channel::group("svc"), "g1"),
            _ => add(&id, &channel::group("svc2"), "g2"),
        }
    }
    add("a/svc/1", &to("a", "svc", 1), "x1");
    add("m/svc2/0", &to("m", "svc2", 0), "x2");
    add("m/svc/0", &to("m", "svc", 0), "x3");
    for received in expected.values_mut() {
        received.sort();
    }
    let got: BTreeMap<String, Vec<(String, String)>> = log
        .lock()
        .iter()
        .map(|(who, received)| {
            let mut received = received.clone();
            received.sort();
            (who.clone(), received)
        })
        .collect();
    assert_eq!(got, expected);

    for node in nodes.iter().rev() {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
