//! Subscriptions survive a reconnect: a worker node's subscriber keeps receiving
//! after its master goes away and a new master comes up on the same bridge
//! address; the worker node's dial loop reconnects and tells the new master its
//! subscriptions again, without the subscriber doing anything.

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::bridge::BridgeError;
use colony::{App, Node, NodeConfig, PublishMeta, Published, StartError, Subscription};
use common::{bridge_yaml, cluster_of, secret_file, wait_until};
use parking_lot::Mutex;

const SECRET: &str = "a-cluster-secret-for-tests-only";
/// The worker node redials with backoff up to 5 s.
const RECONNECT: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(10);

type Log = Arc<Mutex<Vec<(String, PublishMeta, String)>>>;

struct Subscriber {
    log: Log,
    _news: Option<Subscription>,
}

impl Actor for Subscriber {
    type Context = Context<Self>;
}

impl Handler<Published> for Subscriber {
    type Result = ();
    fn handle(&mut self, m: Published, _: &mut Context<Self>) {
        let text: String = m.decode().expect("a string");
        self.log
            .lock()
            .push((m.topic().to_string(), m.meta().clone(), text));
    }
}

fn config(yaml: &str) -> NodeConfig {
    let mut config = NodeConfig::parse(Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    config
}

fn master_yaml(name: &str, secret: &tempfile::NamedTempFile, listen: SocketAddr) -> String {
    format!(
        "node: {{ name: {name}, role: master, threads: 1 }}\n\
         bridge: {{ listen: {listen}, join: [], secret_file: {}, heartbeat: 100ms }}\n",
        secret.path().display()
    )
}

fn from(node: &str) -> PublishMeta {
    PublishMeta {
        node: node.to_string(),
        worker: None,
        service: None,
    }
}

#[actix_rt::test]
async fn a_subscription_is_announced_again_after_a_reconnect() {
    let secret = secret_file(SECRET);
    let m = Node::start(
        App::new(),
        config(&master_yaml("m", &secret, "127.0.0.1:0".parse().unwrap())),
    )
    .await
    .expect("master starts");
    let addr = m.bridge_addr().expect("bridged");
    let w = Node::start(
        App::new(),
        config(&format!(
            "node: {{ name: w, role: worker, threads: 1 }}\n{}",
            bridge_yaml(&secret, Some(addr))
        )),
    )
    .await
    .expect("worker node starts");
    cluster_of(&m, 2).await;

    let log = Log::default();
    let _subscriber = Subscriber::create(|ctx| Subscriber {
        log: log.clone(),
        _news: Some(
            w.subscribe("news.", ctx.address().recipient())
                .expect("subscribe"),
        ),
    });
    wait_until("M knows W's subscriber", DEADLINE, || async {
        m.subscribers("news.x") == 1
    })
    .await;
    assert_eq!(m.publish("news.x", "first".to_string()).unwrap(), 1);
    wait_until("W has the first", DEADLINE, || async {
        !log.lock().is_empty()
    })
    .await;
    assert_eq!(
        *log.lock(),
        vec![("news.x".to_string(), from("m"), "first".to_string())]
    );

    m.shutdown(Duration::from_secs(1)).await;
    wait_until("W notices M is gone", DEADLINE, || async {
        w.bridge_stats().expect("bridged").peers_up == 0
    })
    .await;

    // A new master on the very same address; the old listener may take a moment
    // to close, so its bind is retried.
    let m2 = RefCell::new(None);
    wait_until("M2 binds M's bridge address", DEADLINE, || async {
        match Node::start(App::new(), config(&master_yaml("m2", &secret, addr))).await {
            Ok(node) => {
                *m2.borrow_mut() = Some(node);
                true
            }
            Err(StartError::Bridge(BridgeError::Bind { .. })) => false,
            Err(e) => panic!("M2 does not start: {e}"),
        }
    })
    .await;
    let m2 = m2.into_inner().expect("started");
    assert_eq!(m2.bridge_addr(), Some(addr));

    wait_until(
        "W reconnects and M2 knows W's subscriber",
        RECONNECT,
        || async { m2.subscribers("news.x") == 1 },
    )
    .await;
    assert_eq!(w.bridge_stats().expect("bridged").links_opened, 2);
    assert_eq!(m2.subscribers("sports.x"), 0);
    assert_eq!(m2.publish("news.x", "second".to_string()).unwrap(), 1);
    wait_until("W has the second", DEADLINE, || async {
        log.lock().len() == 2
    })
    .await;
    assert_eq!(
        *log.lock(),
        vec![
            ("news.x".to_string(), from("m"), "first".to_string()),
            ("news.x".to_string(), from("m2"), "second".to_string()),
        ]
    );

    w.shutdown(Duration::from_secs(1)).await;
    m2.shutdown(Duration::from_secs(1)).await;
}
