//! messenger's shout is `Node::broadcast(service, msg)`: with a service running
//! two workers on each of three nodes (on the bridge, and on NATS), a broadcast from any node reaches
//! each of the six workers exactly once and reports six.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::{App, Node, NodeConfig, Request, ServiceError, WorkerContext, WorkerId};
use common::{all_running, nodes_on, wait_until, Net};
use serde::{Deserialize, Serialize};

const DEADLINE: Duration = Duration::from_secs(10);
const NODES: [&str; 3] = ["m", "a", "b"];
const PER_NODE: usize = 2;

/// Shouts heard, by worker: slot `node index * 2 + worker index`.
type Heard = Arc<[AtomicUsize; NODES.len() * PER_NODE]>;

fn slot(id: &WorkerId) -> usize {
    let node = NODES
        .iter()
        .position(|n| *n == id.node)
        .expect("known node");
    node * PER_NODE + id.index
}

/// The shout.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
struct Shout {
    from: String,
}
impl Request for Shout {
    const SUBJECT: &'static str = "shout";
}

/// How many shouts this worker handled, from its own state.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<usize, ServiceError>")]
struct HowMany {}
impl Request for HowMany {
    const SUBJECT: &'static str = "how_many";
}

struct Listener {
    id: WorkerId,
    heard: Heard,
    shouts: usize,
}

impl Actor for Listener {
    type Context = Context<Self>;
}

impl Handler<Shout> for Listener {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, _: Shout, _: &mut Context<Self>) -> Self::Result {
        self.shouts += 1;
        self.heard[slot(&self.id)].fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Handler<HowMany> for Listener {
    type Result = Result<usize, ServiceError>;
    fn handle(&mut self, _: HowMany, _: &mut Context<Self>) -> Self::Result {
        Ok(self.shouts)
    }
}

async fn start(heard: &Heard, yaml: String) -> Node {
    let heard = heard.clone();
    let app: App = App::new()
        .service("listen", move |ctx: WorkerContext| Listener {
            id: ctx.id,
            heard: heard.clone(),
            shouts: 0,
        })
        .handles::<Shout>()
        .handles::<HowMany>()
        .into();
    let mut config = NodeConfig::parse(Path::new("test.yaml"), &yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(app, config).await.expect("node starts")
}

fn counts(heard: &Heard) -> Vec<usize> {
    heard.iter().map(|n| n.load(Ordering::SeqCst)).collect()
}

/// Waits until every worker heard `n` shouts, then asks each worker itself.
async fn everyone_heard(node: &Node, heard: &Heard, n: usize) {
    wait_until(&format!("every worker heard {n}"), DEADLINE, || async {
        counts(heard).iter().sum::<usize>() >= NODES.len() * PER_NODE * n
    })
    .await;
    assert_eq!(counts(heard), vec![n; NODES.len() * PER_NODE]);
    let mut answers: Vec<(String, usize)> = node
        .request_all("listen", HowMany {})
        .await
        .unwrap()
        .into_iter()
        .map(|(id, r)| (id.to_string(), r.unwrap()))
        .collect();
    answers.sort();
    let expected: Vec<(String, usize)> = NODES
        .iter()
        .flat_map(|node| (0..PER_NODE).map(move |i| (format!("{node}/listen/{i}"), n)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(answers, expected);
    assert_eq!(counts(heard), vec![n; NODES.len() * PER_NODE]);
}

#[actix_rt::test]
async fn a_shout_reaches_every_worker_once_over_the_bridge() {
    shout(Net::bridge()).await;
}

#[actix_rt::test]
async fn a_shout_reaches_every_worker_once_over_nats() {
    shout(Net::nats()).await;
}

async fn shout(net: Net) {
    let heard = Heard::default();
    let services = format!("services: {{ listen: {{ workers: {PER_NODE} }} }}\n");
    let nodes = nodes_on(&net, &NODES, &services, |yaml| start(&heard, yaml)).await;
    let m = nodes[0].clone();
    // A broadcast skips a worker that is not running yet (and a remote one
    // silently: it counts as reached), so every worker must be up first.
    for node in &nodes {
        all_running(node).await;
    }

    // From a worker node, then from the master.
    let b = &nodes[2];
    let shout = |from: &str| Shout {
        from: from.to_string(),
    };
    assert_eq!(b.broadcast("listen", shout("b")).await.unwrap(), 6);
    everyone_heard(b, &heard, 1).await;
    assert_eq!(m.broadcast("listen", shout("m")).await.unwrap(), 6);
    everyone_heard(&m, &heard, 2).await;

    for node in nodes.iter().rev() {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
