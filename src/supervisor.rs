//! The supervisor of one service: starts its workers, and restarts them by the
//! service's policy, strategy, intensity and backoff.
//!
//! ```text
//!                      Root   (one per node; starts supervisors, owns the event bus)
//!                        |
//!          +-------------+--------------+
//!          |                            |
//!   Supervisor "math"            Supervisor "data"     one per service, on the
//!     policy/strategy/             ...                 node's main arbiter
//!     intensity/backoff
//!          |
//!    +-----+------+
//!    |            |
//!  math/0       math/1         workers: the app's actor, each on one of the
//!  arbiter 0    arbiter 1      node's `threads` arbiters, run in catch_unwind
//! ```
//!
//! Who restarts whom: a worker that exits (panic, kill, stop) is reported to its
//! supervisor with the reason. The policy decides whether it comes back
//! (`permanent`: always, `transient`: after a panic or kill, `temporary`: never); the
//! strategy decides who comes back with it (`one_for_one`: itself, `one_for_all`:
//! every worker of the service, `rest_for_one`: itself and the workers started after
//! it); the restart waits an exponential backoff (`backoff.min` doubling up to
//! `backoff.max`). More than `max_restarts` failures within `within` fail the
//! service: its workers stop, every request gets `ServiceFailed`, and a
//! `service_failed` lifecycle event and the logs say so. What dies with a worker: the requests in its mailbox and
//! in its actor futures (`ResponseActFuture`); their callers get `HandlerPanicked`.
//! Requests waiting at the dealer stay in line for the restarted worker or a
//! sibling. A handler's detached future (`ResponseFuture`) is a task of its own
//! that actix does not tie to the actor: it runs to its end even if the worker is
//! killed, and if it panics its caller gets `HandlerPanicked` while the worker,
//! whose state it could not touch, keeps running.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures::future::join_all;

use crate::config::{Policy, Strategy};
use crate::dealer::Availability;
use crate::error::ServiceError;
use crate::events::{EventBus, LifecycleEvent};
use crate::service::LocalService;
use crate::worker::{
    Incarnation, KillSwitch, SpawnArgs, StartWorker, WorkerExited, WorkerOnline, WorkerState,
};

/// How long a draining supervisor waits for stopped workers to end.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Supervises the workers of one service on this node.
pub(crate) struct Supervisor {
    service: Arc<LocalService>,
    /// Starts an incarnation of one of the service's workers.
    start: StartWorker,
    /// The name of this node.
    node: String,
    arbiters: Vec<ArbiterHandle>,
    events: EventBus,
    children: Vec<Child>,
    /// Failures counted against the restart intensity, oldest first.
    failures: VecDeque<Instant>,
    stopping: bool,
    failed: bool,
}

#[derive(Default)]
struct Child {
    generation: u64,
    running: Option<(Arc<Incarnation>, KillSwitch)>,
    /// Set when the strategy stopped this worker because a sibling failed: its
    /// exit restarts it after this delay without counting as a failure.
    restart_after: Option<Duration>,
    restart_pending: bool,
}

impl Supervisor {
    pub(crate) fn new(
        service: Arc<LocalService>,
        start: StartWorker,
        node: &str,
        arbiters: Vec<ArbiterHandle>,
        events: EventBus,
    ) -> Self {
        let children = service.slots.iter().map(|_| Child::default()).collect();
        Supervisor {
            service,
            start,
            node: node.to_string(),
            arbiters,
            events,
            children,
            failures: VecDeque::new(),
            stopping: false,
            failed: false,
        }
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        if self.stopping || self.failed {
            return;
        }
        let slot = self.service.slots[index].clone();
        let child = &mut self.children[index];
        child.restart_pending = false;
        child.generation += 1;
        slot.set_state(WorkerState::Starting);
        self.events.publish(LifecycleEvent::Fork {
            worker: slot.id.clone(),
        });
        let args = SpawnArgs {
            arbiter: self.arbiters[index % self.arbiters.len()].clone(),
            slot,
            generation: child.generation,
            online: ctx.address().recipient(),
            exited: ctx.address().recipient(),
        };
        let (incarnation, kill) = (self.start)(args);
        child.running = Some((incarnation, kill));
    }

    fn schedule_restart(&mut self, index: usize, delay: Duration, ctx: &mut Context<Self>) {
        let slot = &self.service.slots[index];
        slot.set_state(WorkerState::Restarting);
        self.children[index].restart_pending = true;
        let restarts = slot
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.events.publish(LifecycleEvent::Restart {
            worker: slot.id.clone(),
            restarts,
            delay_ms: delay.as_millis() as u64,
        });
        ctx.run_later(delay, move |act, ctx| act.start_child(index, ctx));
    }

    /// Stops `index` so that its exit restarts it after `delay`.
    fn restart_sibling(&mut self, index: usize, delay: Duration) {
        let child = &mut self.children[index];
        if child.running.is_some() {
            child.restart_after = Some(delay);
            child.running = None; // drops the kill switch
        }
    }

    fn on_failure(&mut self, index: usize, ctx: &mut Context<Self>) {
        let restart = &self.service.config.restart;
        let now = Instant::now();
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > restart.within)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() > restart.max_restarts as usize {
            let reason = format!(
                "{} restarts within {} exceed max_restarts {}",
                self.failures.len(),
                humantime::format_duration(restart.within),
                restart.max_restarts
            );
            self.fail(reason);
            return;
        }
        let delay = restart.backoff.delay(self.failures.len() as u32);
        let siblings: Vec<usize> = match restart.strategy {
            Strategy::OneForOne => Vec::new(),
            Strategy::OneForAll => (0..self.children.len()).filter(|&i| i != index).collect(),
            Strategy::RestForOne => (index + 1..self.children.len()).collect(),
        };
        for sibling in siblings {
            self.restart_sibling(sibling, delay);
        }
        self.schedule_restart(index, delay, ctx);
    }

    fn fail(&mut self, reason: String) {
        self.failed = true;
        for (child, slot) in self.children.iter_mut().zip(&self.service.slots) {
            child.running = None;
            slot.set_state(WorkerState::Stopped);
        }
        let error = ServiceError::service_failed(format!(
            "service {} has failed: {reason}",
            self.service.name
        ));
        self.service
            .dealer
            .shut(Availability::Failed(reason.clone()), error);
        self.events.publish(LifecycleEvent::ServiceFailed {
            node: self.node.clone(),
            service: self.service.name.clone(),
            reason,
        });
    }

    fn none_coming_back(&self) -> bool {
        self.children
            .iter()
            .all(|c| c.running.is_none() && !c.restart_pending)
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for index in 0..self.children.len() {
            self.start_child(index, ctx);
        }
    }
}

impl Handler<WorkerOnline> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkerOnline, _: &mut Context<Self>) {
        let child = &self.children[msg.index];
        let Some((incarnation, _)) = child.running.as_ref() else {
            return;
        };
        if child.generation != msg.generation {
            return;
        }
        let slot = &self.service.slots[msg.index];
        slot.set_state(WorkerState::Running);
        self.service
            .dealer
            .add_worker(incarnation.clone(), self.service.config.concurrency);
        self.events.publish(LifecycleEvent::Online {
            worker: slot.id.clone(),
        });
    }
}

impl Handler<WorkerExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkerExited, ctx: &mut Context<Self>) {
        let WorkerExited {
            index,
            generation,
            reason,
        } = msg;
        if self.children[index].generation != generation {
            return;
        }
        self.children[index].running = None;
        self.service.dealer.remove_worker(index, generation);
        let slot = self.service.slots[index].clone();
        slot.set_state(WorkerState::Stopped);
        self.events.publish(LifecycleEvent::Exit {
            worker: slot.id.clone(),
            reason: reason.clone(),
        });
        if self.stopping || self.failed {
            return;
        }
        if let Some(delay) = self.children[index].restart_after.take() {
            self.schedule_restart(index, delay, ctx);
            return;
        }
        let restart = match self.service.config.restart.policy {
            Policy::Permanent => true,
            Policy::Transient => reason.is_abnormal(),
            Policy::Temporary => false,
        };
        if restart {
            self.on_failure(index, ctx);
        } else if self.none_coming_back() {
            let why = format!(
                "its workers exited and its {} policy restarts none",
                self.service.config.restart.policy
            );
            let error = ServiceError::no_such_service(format!(
                "no worker of service {} exists: {why}",
                self.service.name
            ));
            self.service.dealer.shut(Availability::Gone(why), error);
        }
    }
}

/// Stop worker `index` as if it crashed; the restart policy applies.
#[derive(Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub(crate) struct KillWorker {
    pub(crate) index: usize,
}

impl Handler<KillWorker> for Supervisor {
    type Result = Result<(), ServiceError>;

    fn handle(&mut self, msg: KillWorker, _: &mut Context<Self>) -> Self::Result {
        let id = self
            .service
            .slots
            .get(msg.index)
            .map(|s| s.id.to_string())
            .unwrap_or_default();
        match self.children.get_mut(msg.index) {
            Some(child) if child.running.is_some() => {
                child.running = None; // drops the kill switch
                Ok(())
            }
            _ => Err(ServiceError::no_such_service(format!(
                "worker {id} is not running"
            ))),
        }
    }
}

/// Stop taking requests, let those in flight finish until `deadline`, then stop
/// every worker without restarting it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub(crate) deadline: Instant,
}

impl Handler<Drain> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, _: &mut Context<Self>) -> Self::Result {
        // The node closed the dealer already; what is left is to let the work in
        // flight finish and stop the workers without restarting them.
        self.stopping = true;
        let service = self.service.clone();
        let drained = async move {
            let idle = || {
                service.dealer.queued() == 0
                    && service
                        .slots
                        .iter()
                        .all(|s| s.in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0)
            };
            while !idle() && Instant::now() < msg.deadline {
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
        };
        Box::pin(drained.into_actor(self).then(|_, act, _| {
            let stopped: Vec<Arc<Incarnation>> = act
                .children
                .iter_mut()
                .filter_map(|child| child.running.take())
                .map(|(incarnation, switch)| {
                    switch.stop();
                    incarnation
                })
                .collect();
            async move {
                // Workers stop at their next poll; a wedged one is not waited for long.
                let deadline = tokio::time::Instant::now() + STOP_GRACE;
                join_all(stopped.iter().map(|w| w.exit_reason(deadline))).await;
            }
            .into_actor(act)
            .map(|_, act, _| {
                // Their exit messages may still be in this mailbox; the drain is what
                // the caller waits for, so the states are settled here.
                for slot in &act.service.slots {
                    slot.set_state(WorkerState::Stopped);
                }
            })
        }))
    }
}
