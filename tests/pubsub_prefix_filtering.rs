//! Pub/sub filters by topic prefix at the publishing node: across three nodes,
//! on the bridge and on NATS (where the server filters on `.` boundaries), a message reaches exactly the subscribers whose prefix it matches, with
//! its topic and who published it (node, worker, service); a node with no
//! matching subscriber receives no PUBLISH frame at all; `publish` returns the
//! exact number of subscribers reached; a subscriber on the publishing node gets
//! the value itself (no JSON); the empty prefix receives everything; and dropping
//! a subscription stops delivery and is withdrawn from the other nodes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::{
    App, Node, NodeConfig, PublishMeta, Published, Request, ServiceError, Subscription,
    WorkerContext,
};
use common::{cluster_of, wait_until, Net};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Messages published on `user.x` by a plain task, and again by a worker.
const N: u64 = 40;
/// Index of PUBLISH frames in `BridgeStats::frames_in`.
const PUBLISH: usize = 4;
const DEADLINE: Duration = Duration::from_secs(10);

/// The published message. `note` is never serialized: it survives only when
/// the value itself is delivered, never through JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    seq: u64,
    #[serde(skip)]
    note: Option<String>,
}

/// Publishes `count` events on `topic` from inside a worker's handler; replies
/// with what each `publish` returned.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<Vec<usize>, ServiceError>")]
struct PublishSome {
    topic: String,
    first: u64,
    count: u64,
}
impl Request for PublishSome {
    const SUBJECT: &'static str = "publish_some";
}

struct Publisher {
    node: Node,
}

impl Publisher {
    fn new(ctx: WorkerContext) -> Self {
        Publisher { node: ctx.node }
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;
}

impl Handler<PublishSome> for Publisher {
    type Result = Result<Vec<usize>, ServiceError>;
    fn handle(&mut self, m: PublishSome, _: &mut Context<Self>) -> Self::Result {
        (m.first..m.first + m.count)
            .map(|seq| {
                let event = Event {
                    seq,
                    note: Some("by a worker".into()),
                };
                self.node.publish(&m.topic, event)
            })
            .collect()
    }
}

fn app() -> App {
    App::new()
        .service("pub", Publisher::new)
        .handles::<PublishSome>()
        .into()
}

async fn start(yaml: &str) -> Node {
    let mut config = NodeConfig::parse(Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(app(), config).await.expect("node starts")
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    meta: PublishMeta,
    event: Option<Event>,
    json: serde_json::Value,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// Records every message of its subscriptions.
struct Subscriber {
    log: Log,
    subscriptions: Vec<Subscription>,
}

impl Subscriber {
    /// A subscriber to `prefixes` on `node`, and its log.
    fn on(node: &Node, prefixes: &[&str]) -> (Addr<Subscriber>, Log) {
        let log = Log::default();
        let addr = Subscriber::create(|ctx| Subscriber {
            log: log.clone(),
            subscriptions: prefixes
                .iter()
                .map(|p| {
                    node.subscribe(p, ctx.address().recipient())
                        .expect("subscribe")
                })
                .collect(),
        });
        (addr, log)
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;
}

impl Handler<Published> for Subscriber {
    type Result = ();
    fn handle(&mut self, m: Published, _: &mut Context<Self>) {
        self.log.lock().push(Received {
            topic: m.topic().to_string(),
            meta: m.meta().clone(),
            event: m.decode::<Event>().ok(),
            json: m.json(),
        });
    }
}

/// Drops the subscription to `prefix`.
#[derive(Message)]
#[rtype(result = "()")]
struct Unsubscribe(&'static str);

impl Handler<Unsubscribe> for Subscriber {
    type Result = ();
    fn handle(&mut self, m: Unsubscribe, _: &mut Context<Self>) {
        self.subscriptions.retain(|s| s.prefix() != m.0);
    }
}

/// The messages of `log` whose topic starts with `prefix`.
fn on(log: &Log, prefix: &str) -> Vec<Received> {
    log.lock()
        .iter()
        .filter(|r| r.topic.starts_with(prefix))
        .cloned()
        .collect()
}

fn publish_frames(node: &Node) -> u64 {
    node.bridge_stats().expect("bridged").frames_in[PUBLISH]
}

fn meta(node: &str, worker: Option<&str>) -> PublishMeta {
    PublishMeta {
        node: node.to_string(),
        worker: worker.map(str::to_string),
        service: worker.map(|_| "pub".to_string()),
    }
}

/// Checks the `user.x` messages a subscriber got: seqs 0..N from the task, N..2N
/// from the worker `m/pub/0`; `local` when the value itself was delivered.
fn check_user_messages(got: &[Received], local: bool) {
    assert_eq!(got.len() as u64, 2 * N, "{got:?}");
    let mut seqs: Vec<u64> = got
        .iter()
        .map(|r| {
            assert_eq!(r.topic, "user.x");
            let event = r.event.clone().expect("decodes as an Event");
            let by_worker = event.seq >= N;
            let expected = if by_worker {
                meta("m", Some("m/pub/0"))
            } else {
                meta("m", None)
            };
            assert_eq!(r.meta, expected, "seq {}", event.seq);
            let note = match (local, by_worker) {
                (false, _) => None,
                (true, false) => Some("by a task".to_string()),
                (true, true) => Some("by a worker".to_string()),
            };
            assert_eq!(event.note, note, "seq {}", event.seq);
            assert_eq!(r.json, serde_json::json!({ "seq": event.seq }));
            event.seq
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..2 * N).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn messages_reach_only_matching_subscribers_over_the_bridge() {
    matching(Net::bridge()).await;
}

#[actix_rt::test]
async fn messages_reach_only_matching_subscribers_over_nats() {
    matching(Net::nats()).await;
}

async fn matching(net: Net) {
    let m = start(&format!(
        "node: {{ name: m, role: master, threads: 1 }}\n{}services: {{ pub: {{ workers: 1 }} }}\n",
        net.yaml(None)
    ))
    .await;
    let b = start(&format!(
        "node: {{ name: b, role: worker, threads: 1 }}\n{}",
        net.yaml(Some(&m))
    ))
    .await;
    let c = start(&format!(
        "node: {{ name: c, role: worker, threads: 1 }}\n{}",
        net.yaml(Some(&m))
    ))
    .await;
    for node in [&m, &b, &c] {
        cluster_of(node, 3).await;
    }

    // B wants `user.` (and `sync.`, to know when everything before has arrived);
    // C wants `order.`; on M itself, `user.` and everything.
    let (b_sub, b_log) = Subscriber::on(&b, &["user.", "sync."]);
    let (_c_sub, c_log) = Subscriber::on(&c, &["order."]);
    let (_m_user, m_user_log) = Subscriber::on(&m, &["user."]);
    let (_m_all, m_all_log) = Subscriber::on(&m, &[""]);
    wait_until("M knows every subscription", DEADLINE, || async {
        m.subscribers("user.x") == 3
            && m.subscribers("order.1") == 2
            && m.subscribers("sync.1") == 2
    })
    .await;
    assert_eq!(m.subscribers("other"), 1, "only M's empty prefix");
    assert_eq!(publish_frames(&b), 0);
    assert_eq!(publish_frames(&c), 0);

    // N from a plain task, N from a worker's handler on M.
    for seq in 0..N {
        let event = Event {
            seq,
            note: Some("by a task".into()),
        };
        assert_eq!(m.publish("user.x", event).unwrap(), 3, "seq {seq}");
    }
    let delivered = m
        .request(
            "pub",
            PublishSome {
                topic: "user.x".into(),
                first: N,
                count: N,
            },
        )
        .await
        .unwrap();
    assert_eq!(delivered, vec![3; N as usize]);
    assert_eq!(m.publish("sync.1", ()).unwrap(), 2);

    wait_until("B has every user.x message", DEADLINE, || async {
        on(&b_log, "sync.").len() == 1 && on(&b_log, "user.").len() as u64 == 2 * N
    })
    .await;
    // The sync message came after all of them over one link, into one mailbox.
    check_user_messages(&on(&b_log, "user."), false);
    assert_eq!(on(&b_log, "sync.")[0].meta, meta("m", None));
    assert_eq!(publish_frames(&b), 2 * N + 1);
    wait_until("M's own user. subscriber has them", DEADLINE, || async {
        m_user_log.lock().len() as u64 == 2 * N
    })
    .await;
    check_user_messages(&on(&m_user_log, ""), true);

    // C got nothing of that: not even a frame to drop. `order.1` reaches only C.
    assert_eq!(publish_frames(&c), 0);
    assert_eq!(
        m.publish("order.1", Event { seq: 7, note: None }).unwrap(),
        2
    );
    wait_until("C has order.1", DEADLINE, || async {
        !c_log.lock().is_empty()
    })
    .await;
    let got = c_log.lock().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "order.1");
    assert_eq!(got[0].meta, meta("m", None));
    assert_eq!(got[0].event, Some(Event { seq: 7, note: None }));
    // Over the same link, after every earlier frame: C was sent nothing else.
    assert_eq!(publish_frames(&c), 1);
    assert_eq!(m.publish("sync.2", ()).unwrap(), 2);
    wait_until("B has sync.2", DEADLINE, || async {
        on(&b_log, "sync.").len() == 2
    })
    .await;
    assert_eq!(on(&b_log, "user.").len() as u64, 2 * N);
    assert_eq!(on(&b_log, "order.").len(), 0);
    assert_eq!(publish_frames(&b), 2 * N + 2, "B was not sent order.1");

    // B drops its `user.` subscription: the other nodes learn it.
    b_sub.send(Unsubscribe("user.")).await.unwrap();
    wait_until("M and C forget B's user. subscriber", DEADLINE, || async {
        m.subscribers("user.x") == 2 && c.subscribers("user.x") == 2
    })
    .await;
    assert_eq!(b.subscribers("user.x"), 2, "M's two");
    assert_eq!(m.subscribers("sync.3"), 2, "B still wants sync.");
    assert_eq!(
        m.publish(
            "user.z",
            Event {
                seq: 99,
                note: None
            }
        )
        .unwrap(),
        2
    );
    assert_eq!(m.publish("sync.3", ()).unwrap(), 2);
    wait_until("B has sync.3", DEADLINE, || async {
        on(&b_log, "sync.").len() == 3
    })
    .await;
    assert_eq!(on(&b_log, "user.").len() as u64, 2 * N);
    assert_eq!(publish_frames(&b), 2 * N + 3, "user.z not sent to B");
    assert_eq!(publish_frames(&c), 1);

    // On M: `user.` got user.x and user.z as values; the empty prefix got all.
    let user_z = |log: &Log| on(log, "user.z");
    wait_until("M's subscribers have everything", DEADLINE, || async {
        user_z(&m_user_log).len() == 1 && m_all_log.lock().len() as u64 == 2 * N + 5
    })
    .await;
    assert_eq!(
        user_z(&m_user_log)[0].event,
        Some(Event {
            seq: 99,
            note: None
        })
    );
    assert_eq!(on(&m_user_log, "").len() as u64, 2 * N + 1);
    let mut topics: Vec<String> = m_all_log.lock().iter().map(|r| r.topic.clone()).collect();
    topics.dedup();
    assert_eq!(
        topics,
        vec!["user.x", "sync.1", "order.1", "sync.2", "user.z", "sync.3"]
    );
    let all = m_all_log.lock().clone();
    check_user_messages(&all[..2 * N as usize], true);

    c.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    m.shutdown(Duration::from_secs(1)).await;
}
