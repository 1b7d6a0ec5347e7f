//! A handler that holds its worker thread for many heartbeats (a blocking call
//! in a synchronous handler) does not get its node declared down: heartbeats
//! are read and written on the bridge's own thread, and the replies produced on
//! that worker thread just before it blocked still go out. The peer's requests
//! served meanwhile on other threads, and those queued behind the handler, are
//! all answered.

mod common;

use std::time::Duration;

use actix::prelude::*;
use colony::{App, LifecycleEvent, Request, ServiceError};
use common::*;
use serde::{Deserialize, Serialize};

/// A worker whose `Block` handler holds its thread.
struct Blocker;

impl Actor for Blocker {
    type Context = Context<Self>;
}

#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<u64, ServiceError>")]
struct Block {
    ms: u64,
}
impl Request for Block {
    const SUBJECT: &'static str = "block";
}

impl Handler<Block> for Blocker {
    type Result = Result<u64, ServiceError>;
    fn handle(&mut self, m: Block, _: &mut Context<Self>) -> Self::Result {
        // Deliberately blocking: the whole worker thread stops for `ms`.
        std::thread::sleep(Duration::from_millis(m.ms));
        Ok(m.ms)
    }
}

fn app() -> App {
    App::new()
        .service("blocker", |_| Blocker)
        .handles::<Block>()
        .service("calc", Calc::new)
        .handles::<Add>()
        .into()
}

async fn start(yaml: &str) -> colony::Node {
    let config =
        colony::NodeConfig::parse(std::path::Path::new("test.yaml"), yaml).expect("a valid config");
    colony::Node::start(app(), config)
        .await
        .expect("node starts")
}

#[actix_rt::test]
async fn a_handler_blocking_its_thread_for_many_heartbeats_keeps_its_node_up() {
    let secret = secret_file("a-cluster-secret-for-tests-only");
    // One worker thread on `m`: the blocking handler stops every worker there.
    let master = start(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ blocker: {{ workers: 1 }}, calc: {{ workers: 1 }} }}\n",
        bridge_yaml(&secret, None)
    ))
    .await;
    let addr = master.bridge_addr().expect("m has a bridge");
    let caller = start(&format!(
        "node: {{ name: w, role: worker, threads: 1 }}\n{}",
        bridge_yaml(&secret, Some(addr))
    ))
    .await;
    cluster_of(&master, 2).await;
    cluster_of(&caller, 2).await;
    let caller_events = Events::subscribe(&caller).await;
    let master_events = Events::subscribe(&master).await;

    // Warm the link: `calc` answers from `m`.
    let added = caller.request("calc", Add { a: 1, b: 2 }).await.unwrap();
    assert_eq!(added.sum, 3);

    // Requests to `calc` in flight when the handler blocks, more behind it, and
    // the block itself: 8 heartbeats (100 ms each) of a stopped worker thread.
    let before: Vec<_> = (0..50i64)
        .map(|a| caller.request("calc", Add { a, b: 1 }))
        .collect();
    let blocked = caller.request("blocker", Block { ms: 800 });
    let after: Vec<_> = (0..50i64)
        .map(|a| caller.request("calc", Add { a, b: 2 }))
        .collect();
    let (before, blocked, after) = futures::join!(
        futures::future::join_all(before),
        blocked,
        futures::future::join_all(after)
    );
    assert_eq!(blocked.expect("the blocking call is answered"), 800);
    for (a, added) in before.into_iter().enumerate() {
        assert_eq!(added.expect("answered").sum, a as i64 + 1);
    }
    for (a, added) in after.into_iter().enumerate() {
        assert_eq!(added.expect("answered").sum, a as i64 + 2);
    }

    // Neither node saw the other go down, and both still see two nodes running.
    let down = |e: &LifecycleEvent| matches!(e, LifecycleEvent::NodeDown { .. });
    assert_eq!(
        caller_events.count(down),
        0,
        "{:?}",
        caller_events.seen.lock()
    );
    assert_eq!(
        master_events.count(down),
        0,
        "{:?}",
        master_events.seen.lock()
    );
    for node in [&master, &caller] {
        let status = node.cluster_status().await;
        assert_eq!(status.nodes.len(), 2);
        assert!(status.nodes.iter().all(|n| n.state == "running"));
    }
    caller.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
