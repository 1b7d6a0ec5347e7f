//! Byte bounds over many items at once: a job queue holds at most
//! `queues.NAME.max_bytes` of job JSON, and all the `GET /v1/subscribe` streams
//! of a node share one budget of 8 × `api.subscribe_buffer`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use colony::{App, Node, NodeConfig, QueueStatus, Request, ServiceError, WorkerContext};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::common::*;
use super::support::*;

const DEADLINE: Duration = Duration::from_secs(10);
/// Bytes of each job pushed: its JSON, a string.
const JOB: usize = 1_000_000;
/// `queues.big.max_bytes`.
const QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// A job of queue `big`: a long string.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<usize, ServiceError>")]
struct Blob(String);

impl Request for Blob {
    const SUBJECT: &'static str = "blob";
}

/// A consumer that holds each job until the test opens its gate.
struct Gated(Arc<Semaphore>);

impl Actor for Gated {
    type Context = Context<Self>;
}

impl Handler<Blob> for Gated {
    type Result = ResponseFuture<Result<usize, ServiceError>>;

    fn handle(&mut self, blob: Blob, _: &mut Context<Self>) -> Self::Result {
        let gate = self.0.clone();
        Box::pin(async move {
            let _permit = tokio::time::timeout(Duration::from_secs(60), gate.acquire())
                .await
                .map_err(|_| ServiceError::timeout("the gate stayed shut"))?
                .map_err(|_| ServiceError::timeout("the gate was closed"))?;
            Ok(blob.0.len())
        })
    }
}

async fn queue(node: &Node) -> QueueStatus {
    node.queues().await.expect("queues").remove(0)
}

/// POSTs `body` to `url` `times` times; the status and body of each answer.
async fn post_many(url: String, body: Vec<u8>, times: usize) -> Vec<(u16, String)> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(DEADLINE))
            .build()
            .into();
        (0..times)
            .map(|_| {
                let mut answer = agent
                    .post(&url)
                    .content_type("application/json")
                    .send(&body[..])
                    .unwrap_or_else(|e| panic!("POST {url}: {e}"));
                let text = answer.body_mut().read_to_string().unwrap_or_default();
                (answer.status().as_u16(), text)
            })
            .collect()
    })
    .await
    .expect("HTTP thread")
}

#[actix_rt::test]
async fn a_job_queue_holds_at_most_max_bytes_of_jobs_then_pushes_are_overloaded() {
    let _serial = serial().await;
    let gate = Arc::new(Semaphore::new(0));
    let factory_gate = gate.clone();
    let app: App = App::new()
        .service("consumer", move |_: WorkerContext| {
            Gated(factory_gate.clone())
        })
        .consumes::<Blob>("big")
        .into();
    let yaml = format!(
        "node: {{ name: solo, threads: 2 }}\napi: {{ listen: 127.0.0.1:0 }}\n\
         services: {{ consumer: {{ workers: 1, concurrency: 1 }} }}\n\
         queues: {{ big: {{ max_bytes: {QUEUE_BYTES} }} }}\n"
    );
    let mut config = NodeConfig::parse(Path::new("test.yaml"), &yaml).expect("config");
    config.state.mode = colony::config::StateMode::Memory;
    let node = Node::start(app, config).await.expect("node starts");
    let url = format!("http://{}/v1/push/big", node.api_addr().expect("api"));
    let body = format!("\"{}\"", "x".repeat(JOB - 2)).into_bytes();

    // 300 MB of jobs pushed; the consumer holds the one it took.
    let before = rss();
    let answers = post_many(url.clone(), body.clone(), 300).await;
    let fit = QUEUE_BYTES / JOB;
    assert_eq!(fit, 16);
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(accepted, fit, "jobs of {JOB} bytes within {QUEUE_BYTES}");
    for (status, text) in answers.iter().filter(|(status, _)| *status != 202) {
        assert_eq!(*status, 503, "{text}");
        assert!(text.contains("Overloaded"), "{text}");
        assert!(text.contains("queues.big.max_bytes"), "{text}");
    }
    let status = queue(&node).await;
    assert_eq!(status.queued + status.leased, fit, "{status:?}");
    assert_eq!(status.bytes, fit * JOB);
    assert_grew_less_than(before, 64 * MB, "300 jobs of 1 MB pushed over HTTP");

    // Jobs done free their bytes: a push is taken again, and completed.
    gate.add_permits(1000);
    wait_until("the consumer completed every job", DEADLINE, || async {
        let q = queue(&node).await;
        q.completed == fit as u64 && q.bytes == 0
    })
    .await;
    let again = post_many(url, body, 1).await;
    assert_eq!(again[0].0, 202, "{}", again[0].1);
    wait_until("the new job is completed", DEADLINE, || async {
        queue(&node).await.completed == fit as u64 + 1
    })
    .await;
    let status = queue(&node).await;
    assert_eq!((status.bytes, status.dead.len()), (0, 0), "{status:?}");
    node.shutdown(Duration::from_millis(100)).await;
}

#[actix_rt::test]
async fn stalled_http_subscribers_together_hold_at_most_the_shared_budget() {
    let _serial = serial().await;
    // Each stream may hold 1 MiB; all of them together 8 MiB.
    let node = start_node(
        "node: { name: web, threads: 2 }\napi: { listen: 127.0.0.1:0, subscribe_buffer: 1048576 }\n",
    )
    .await;
    let api = node.api_addr().expect("api");
    const STREAMS: usize = 100;
    const PUBLISHES: usize = 10;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(open_stream(api, "big.", 4096).await.0);
    }
    wait_until("every stream is subscribed", DEADLINE, || async {
        node.subscribers("big.x") == STREAMS
    })
    .await;

    // Lines of 400 KB: two fit each stream's own buffer, so 100 streams alone
    // would hold 200 of them (80 MB) in this process; 20 fit the shared 8 MiB.
    // The kernel's send buffers take more, piece by piece, as the streams hand
    // them on: that is the kernel's memory, not the node's, so how many lines
    // are taken in all varies, while the node's memory does not.
    let before = rss();
    let message = json_string(400_000);
    let mut accepted = 0;
    for _ in 0..PUBLISHES {
        accepted += node.publish("big.x", message.clone()).expect("publish");
    }
    let dropped = STREAMS * PUBLISHES - accepted;
    eprintln!(
        "{accepted} of {} lines of 400 KB taken by {STREAMS} stalled streams",
        STREAMS * PUBLISHES
    );
    assert!(accepted >= 20, "the budget holds 20 lines: {accepted}");
    assert!(dropped > 0, "the streams took every line");
    assert_eq!(node.publish_dropped(), dropped as u64);
    assert_grew_less_than(before, 40 * MB, "400 MB published to 100 stalled streams");

    // The clients hang up: their streams give the budget back, and a new stream
    // takes a whole buffer of messages again. The server learns that a client is
    // gone when it next writes to it.
    drop(streams);
    wait_until("every stream ended", DEADLINE, || async {
        node.publish("big.ping", "ping").expect("publish");
        node.subscribers("big.x") == 0
    })
    .await;
    let dropped = node.publish_dropped();
    let (stream, buf, _) = open_stream(api, "big.", 4096).await;
    wait_until("the new stream is subscribed", DEADLINE, || async {
        node.subscribers("big.x") == 1
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..2 {
        assert_eq!(node.publish("big.x", message.clone()).expect("publish"), 1);
    }
    assert_eq!(node.publish_dropped(), dropped);
    actix_rt::spawn(read_lines(stream, buf, seen.clone()));
    wait_until("the new client read both messages", DEADLINE, || async {
        seen.lock().unwrap().len() == 2
    })
    .await;
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| *s == Seen::Message("big.x".into())));
    let health = ureq::get(&format!("http://{api}/v1/health"))
        .call()
        .expect("health answers");
    assert_eq!(health.status(), 200);
    node.shutdown(Duration::from_millis(100)).await;
}
