//! The root actor: one per node, whatever the node's role. It starts the node's
//! services through their supervisors, owns the lifecycle event bus, kills workers
//! and scales services on request and drains every service at shutdown. Requests to the app's master
//! handlers ([`Node::request_master`](crate::Node::request_master)) go through the
//! router to the `@master` service, which it starts like any other.

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use futures::future::join_all;

use crate::error::ServiceError;
use crate::events::{EventBus, LifecycleEvent};
use crate::message::WorkerId;
use crate::supervisor::{Drain, KillWorker, Rescaled, Scale, Supervisor};

/// The root of a node's supervision tree.
pub(crate) struct Root {
    node: String,
    events: EventBus,
    pending: Vec<(String, Supervisor)>,
    supervisors: HashMap<String, Addr<Supervisor>>,
}

impl Root {
    pub(crate) fn new(
        node: &str,
        events: EventBus,
        supervisors: Vec<(String, Supervisor)>,
    ) -> Self {
        Root {
            node: node.to_string(),
            events,
            pending: supervisors,
            supervisors: HashMap::new(),
        }
    }
}

impl Actor for Root {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        for (name, supervisor) in self.pending.drain(..) {
            self.supervisors.insert(name, supervisor.start());
        }
        log::info!(
            "node {}: root started {} services",
            self.node,
            self.supervisors.len()
        );
    }
}

/// Subscribe an actor to the node's lifecycle events.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Subscribe(pub(crate) Recipient<LifecycleEvent>);

impl Handler<Subscribe> for Root {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.events.subscribe(msg.0);
    }
}

/// Kill a worker of this node as if it crashed.
#[derive(Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub(crate) struct Kill(pub(crate) WorkerId);

impl Handler<Kill> for Root {
    type Result = ResponseFuture<Result<(), ServiceError>>;

    fn handle(&mut self, msg: Kill, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let not_running = ServiceError::no_such_service(format!(
            "worker {} is not running",
            crate::logging::untrusted(&id.to_string())
        ));
        let supervisor = match self.supervisors.get(&id.service) {
            Some(s) if id.node == self.node => s.clone(),
            _ => return Box::pin(async move { Err(not_running) }),
        };
        Box::pin(async move {
            // The supervisor's own refusal cannot name an index it has no slot for.
            match supervisor.send(KillWorker { index: id.index }).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(not_running),
            }
        })
    }
}

/// Set the number of workers of one of this node's services (see [`Scale`]).
#[derive(Message)]
#[rtype(result = "Result<Rescaled, ServiceError>")]
pub(crate) struct ScaleService {
    pub(crate) service: String,
    pub(crate) workers: usize,
}

impl Handler<ScaleService> for Root {
    type Result = ResponseFuture<Result<Rescaled, ServiceError>>;

    fn handle(&mut self, msg: ScaleService, _: &mut Context<Self>) -> Self::Result {
        let supervisor = self.supervisors.get(&msg.service).cloned();
        let node = self.node.clone();
        Box::pin(async move {
            let gone = || {
                ServiceError::no_such_service(format!(
                    "node {node} runs no service `{}`",
                    crate::logging::untrusted(&msg.service)
                ))
            };
            let supervisor = supervisor.ok_or_else(gone)?;
            let scale = Scale {
                workers: msg.workers,
            };
            supervisor.send(scale).await.map_err(|_| gone())?
        })
    }
}

/// Drain every service until `deadline`, then stop all workers.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown {
    pub(crate) deadline: Instant,
}

impl Handler<Shutdown> for Root {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let drains: Vec<_> = self
            .supervisors
            .values()
            .map(|s| {
                s.send(Drain {
                    deadline: msg.deadline,
                })
            })
            .collect();
        Box::pin(
            async move {
                // A supervisor already gone has nothing left to drain.
                join_all(drains).await;
            }
            .into_actor(self)
            .map(|_, act, _| {
                for supervisor in act.supervisors.values() {
                    supervisor.do_send(StopActor);
                }
            }),
        )
    }
}

/// Stops the actor that receives it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopActor;

impl Handler<StopActor> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<StopActor> for Root {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
