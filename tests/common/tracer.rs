//! An app whose handlers report the trace they run in (`colony::trace::current`):
//! the `tracer` service answers [`WhichTrace`] and [`LaterTrace`], panics on
//! [`TracedPanic`], records the trace of each [`TracedJob`] it works (queue
//! [`TRACE_JOBS`]), and [`TraceSubscriber`] records the trace of each
//! publication it gets.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use colony::trace::{self, TraceContext};
use colony::{
    App, Node, NodeConfig, Published, Request, ServiceError, Subscription, WorkerContext,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The queue `tracer` takes [`TracedJob`]s from.
pub const TRACE_JOBS: &str = "trace.jobs";

/// The traces the jobs of [`TRACE_JOBS`] were worked in, by job `n`.
pub static JOBS_WORKED: Mutex<Vec<(u64, Option<TraceContext>)>> = Mutex::new(Vec::new());

/// The app: `tracer` only.
pub fn tracer_app() -> App {
    App::new()
        .service("tracer", Tracer::new)
        .handles::<WhichTrace>()
        .handles::<LaterTrace>()
        .handles::<TracedPanic>()
        .consumes::<TracedJob>(TRACE_JOBS)
        .into()
}

/// Starts a node of [`tracer_app`] from YAML text, its state in memory.
pub async fn start_tracer_node(yaml: &str) -> Node {
    let mut config =
        NodeConfig::parse(std::path::Path::new("test.yaml"), yaml).expect("test config parses");
    config.state.mode = colony::config::StateMode::Memory;
    Node::start(tracer_app(), config)
        .await
        .expect("node starts")
}

/// A worker that reports the trace its handlers run in.
pub struct Tracer {
    id: String,
}

impl Tracer {
    pub fn new(ctx: WorkerContext) -> Self {
        Tracer {
            id: ctx.id.to_string(),
        }
    }
}

impl Actor for Tracer {
    type Context = Context<Self>;
}

/// What a handler saw: the trace current while it ran, and which worker it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub trace: Option<TraceContext>,
    pub by: String,
}

/// Answers the trace current in the handler.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<Seen, ServiceError>")]
pub struct WhichTrace {}
impl Request for WhichTrace {
    const SUBJECT: &'static str = "which";
}

impl Handler<WhichTrace> for Tracer {
    type Result = Result<Seen, ServiceError>;
    fn handle(&mut self, _: WhichTrace, _: &mut Context<Self>) -> Self::Result {
        log::info!("tracer: which trace");
        Ok(Seen {
            trace: trace::current(),
            by: self.id.clone(),
        })
    }
}

/// Takes the trace in the handler, answers it after `ms` (other requests are
/// handled meanwhile), and checks that the trace is still current then.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<Seen, ServiceError>")]
pub struct LaterTrace {
    pub ms: u64,
}
impl Request for LaterTrace {
    const SUBJECT: &'static str = "later";
}

impl Handler<LaterTrace> for Tracer {
    type Result = ResponseFuture<Result<Seen, ServiceError>>;
    fn handle(&mut self, m: LaterTrace, _: &mut Context<Self>) -> Self::Result {
        let by = self.id.clone();
        let taken = trace::current();
        Box::pin(trace::scope(taken, async move {
            actix_rt::time::sleep(Duration::from_millis(m.ms)).await;
            if trace::current() != taken {
                return Err(ServiceError::bad_request(
                    "the trace changed across the await",
                ));
            }
            Ok(Seen { trace: taken, by })
        }))
    }
}

/// Panics in the handler.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct TracedPanic {}
impl Request for TracedPanic {
    const SUBJECT: &'static str = "panic";
}

impl Handler<TracedPanic> for Tracer {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, _: TracedPanic, _: &mut Context<Self>) -> Self::Result {
        panic!("traced panic");
    }
}

/// A job of [`TRACE_JOBS`]: its trace is recorded in [`JOBS_WORKED`].
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct TracedJob {
    pub n: u64,
}
impl Request for TracedJob {
    const SUBJECT: &'static str = "job";
}

impl Handler<TracedJob> for Tracer {
    type Result = Result<(), ServiceError>;
    fn handle(&mut self, m: TracedJob, _: &mut Context<Self>) -> Self::Result {
        JOBS_WORKED.lock().push((m.n, trace::current()));
        Ok(())
    }
}

/// The topic and trace of each publication a [`TraceSubscriber`] got.
pub type Got = Arc<Mutex<Vec<(String, Option<TraceContext>)>>>;

/// An actor subscribed to a prefix that records each publication's topic and trace.
pub struct TraceSubscriber {
    pub node: Node,
    pub prefix: String,
    pub got: Got,
    pub subscription: Option<Subscription>,
}

impl Actor for TraceSubscriber {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        let recipient = ctx.address().recipient();
        self.subscription = Some(
            self.node
                .subscribe(&self.prefix, recipient)
                .expect("subscribe"),
        );
    }
}

impl Handler<Published> for TraceSubscriber {
    type Result = ();
    fn handle(&mut self, msg: Published, _: &mut Context<Self>) {
        self.got.lock().push((msg.topic().to_string(), msg.trace()));
    }
}
