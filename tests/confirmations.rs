//! Confirmations across a bridged master + worker node: workers confirm an id
//! from inside their handlers; the master's `on_confirmation(n, id, timeout)` resolves
//! only once `n` distinct senders have confirmed (repeats from one worker count
//! once), a later wait that is already met resolves at once, a confirmation
//! from outside a worker counts its node as the sender, and only the master
//! counts (`NoSuchService` elsewhere). The same on NATS, where the counts are in
//! a JetStream bucket: there any node may wait, and a wait already met
//! resolves a moment later rather than within the call.

mod common;

use std::path::Path;
use std::time::Duration;

use actix::prelude::*;
use colony::{App, ErrorKind, Node, NodeConfig, Request, ServiceError, WorkerContext, WorkerId};
use common::*;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

const ID: &str = "ready";
const WAIT: Duration = Duration::from_secs(5);

/// Asks a worker to confirm `id`; replies with the count the master reports.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<usize, ServiceError>")]
struct ConfirmNow {
    id: String,
}

impl Request for ConfirmNow {
    const SUBJECT: &'static str = "confirm_now";
}

struct Confirmer {
    node: Node,
}

impl Actor for Confirmer {
    type Context = Context<Self>;
}

impl Handler<ConfirmNow> for Confirmer {
    type Result = ResponseFuture<Result<usize, ServiceError>>;

    fn handle(&mut self, m: ConfirmNow, _: &mut Context<Self>) -> Self::Result {
        // Called here, inside the handler: the sender is this worker.
        Box::pin(self.node.confirm(&m.id))
    }
}

fn app() -> App {
    App::new()
        .service("confirmer", |ctx: WorkerContext| Confirmer {
            node: ctx.node,
        })
        .handles::<ConfirmNow>()
        .into()
}

async fn start(yaml: &str) -> Node {
    let mut config = NodeConfig::parse(Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(app(), config).await.expect("node starts")
}

/// Has worker `index` of the worker node confirm `ID`; the count it got back.
async fn confirm_by(master: &Node, index: usize) -> usize {
    let worker = WorkerId::new("w", "confirmer", index);
    master
        .request_worker(&worker, ConfirmNow { id: ID.into() })
        .await
        .unwrap_or_else(|e| panic!("{worker} confirms: {e}"))
}

#[actix_rt::test]
async fn the_master_counts_distinct_senders_of_a_confirmation() {
    counts(Net::bridge()).await;
}

#[actix_rt::test]
async fn distinct_senders_of_a_confirmation_are_counted_over_nats() {
    counts(Net::nats()).await;
}

/// Resolves `wait` at once on the bridge, within a moment on NATS.
async fn met<F: std::future::Future>(net: &Net, wait: F) -> F::Output {
    match net {
        Net::Bridge(_) => wait
            .now_or_never()
            .expect("a wait already met resolves at once"),
        Net::Nats(_) => actix_rt::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("a wait already met resolves"),
    }
}

async fn counts(net: Net) {
    let master = start(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{}}\n",
        net.yaml(None)
    ))
    .await;
    let worker = start(&format!(
        "node: {{ name: w, role: worker, threads: 2 }}\n{}services: {{ confirmer: {{ workers: 3 }} }}\n",
        net.yaml(Some(&master))
    ))
    .await;
    cluster_of(&master, 2).await;
    cluster_of(&worker, 2).await;

    // Registered before any confirmation.
    let mut three = Box::pin(master.on_confirmation(3, ID, WAIT));
    assert!((&mut three).now_or_never().is_none());

    // Worker 0 confirms five times: one sender.
    for _ in 0..5 {
        assert_eq!(confirm_by(&master, 0).await, 1);
    }
    assert!(
        (&mut three).now_or_never().is_none(),
        "one distinct sender must not resolve a wait for three"
    );
    assert_eq!(confirm_by(&master, 1).await, 2);
    assert_eq!(confirm_by(&master, 0).await, 2);
    // The count is settled on the master before a confirm returns: still pending.
    assert!(
        (&mut three).now_or_never().is_none(),
        "two distinct senders must not resolve a wait for three"
    );

    assert_eq!(confirm_by(&master, 2).await, 3);
    let resolved = actix_rt::time::timeout(Duration::from_secs(5), three)
        .await
        .expect("the wait for three resolves after the third sender");
    assert_eq!(resolved.expect("confirmed"), 3);

    // Already met: resolves at once, with the count so far.
    let two = met(&net, master.on_confirmation(2, ID, WAIT)).await;
    assert_eq!(two.expect("confirmed"), 3);

    // Outside a worker, the sender is the node: the master counts once however often.
    assert_eq!(master.confirm(ID).await.expect("master confirms"), 4);
    assert_eq!(master.confirm(ID).await.expect("master confirms"), 4);
    // The worker node outside a worker is another sender, `w`.
    assert_eq!(worker.confirm(ID).await.expect("w confirms"), 5);
    assert_eq!(worker.confirm(ID).await.expect("w confirms"), 5);
    let five = met(&net, master.on_confirmation(5, ID, WAIT)).await;
    assert_eq!(five.expect("confirmed"), 5);
    // Another id counts apart.
    assert_eq!(master.confirm("other").await.expect("master confirms"), 1);
    // An id too long to keep is refused, from the master and from another node.
    let huge = "x".repeat(10_000);
    for node in [&master, &worker] {
        let err = node.confirm(&huge).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest, "{err:?}");
        assert!(
            err.message.len() < 1_000,
            "the error quotes it cut: {err:?}"
        );
    }

    // A count that is never reached ends in Timeout, not a wait for ever.
    let err = master
        .on_confirmation(10, ID, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");

    // Only the master counts, on the bridge; on NATS any node may wait.
    match net {
        Net::Bridge(_) => {
            let err = worker.on_confirmation(1, ID, WAIT).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::NoSuchService, "{err:?}");
        }
        Net::Nats(_) => {
            assert_eq!(
                met(&net, worker.on_confirmation(5, ID, WAIT))
                    .await
                    .unwrap(),
                5
            );
        }
    }

    worker.shutdown(Duration::from_secs(1)).await;
    master.shutdown(Duration::from_secs(1)).await;
}
