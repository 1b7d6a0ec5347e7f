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
//!
//! Scaling ([`Scale`]): new indexes start as new workers; a scale-down removes
//! the highest indexes. A removed worker is retired at the dealer (no new
//! request reaches it), finishes what it holds, then stops; its exit is neither
//! restarted nor counted as a failure. An index added again while its old
//! worker still drains gets a new worker once the old one has stopped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;

use crate::config::limits::MAX_TIMEOUT;
use crate::config::{Policy, Strategy};
use crate::dealer::Availability;
use crate::error::ServiceError;
use crate::events::{EventBus, LifecycleEvent};
use crate::message::WorkerId;
use crate::service::LocalService;
use crate::worker::{
    Incarnation, SpawnArgs, StartWorker, WorkerExited, WorkerOnline, WorkerSlot, WorkerState,
};

mod child;
use child::Child;

/// How long a draining supervisor waits for stopped workers to end.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a worker removed by a scale-down is looked at, until it holds no
/// request.
const RETIRE_POLL: Duration = Duration::from_millis(5);
/// The longest a removed worker may keep requests: past it, every request it
/// was handed has timed out for its caller (a request's timeout is at most
/// this), so stopping it fails no one who still waits.
const RETIRE_LIMIT: Duration = MAX_TIMEOUT;

/// Supervises the workers of one service on this node.
pub(crate) struct Supervisor {
    service: Arc<LocalService>,
    /// Starts an incarnation of one of the service's workers.
    start: StartWorker,
    /// The name of this node.
    node: String,
    events: EventBus,
    /// By index: the service's workers (`..target`), then those a scale-down
    /// removed that have not stopped yet.
    children: Vec<Child>,
    /// How many workers the service has.
    target: usize,
    /// The last generation given to an incarnation, of any index: an index
    /// removed and added again never reuses one.
    generations: u64,
    /// Failures counted against the restart intensity, oldest first.
    failures: VecDeque<Instant>,
    stopping: bool,
    failed: bool,
    /// Whether a look at the retiring workers is scheduled.
    retire_check: bool,
}

impl Supervisor {
    pub(crate) fn new(
        service: Arc<LocalService>,
        start: StartWorker,
        node: &str,
        events: EventBus,
    ) -> Self {
        let children: Vec<Child> = service
            .slots
            .get()
            .iter()
            .map(|slot| Child::new(slot.clone()))
            .collect();
        Supervisor {
            target: children.len(),
            service,
            start,
            node: node.to_string(),
            events,
            children,
            generations: 0,
            failures: VecDeque::new(),
            stopping: false,
            failed: false,
            retire_check: false,
        }
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        if self.stopping || self.failed || index >= self.target {
            return;
        }
        self.generations += 1;
        let threads = &self.service.threads;
        let child = &mut self.children[index];
        child.restart_pending = false;
        child.generation = self.generations;
        let slot = child.slot.clone();
        slot.set_state(WorkerState::Starting);
        self.events.publish(LifecycleEvent::Fork {
            worker: slot.id.clone(),
        });
        let args = SpawnArgs {
            arbiter: threads[index % threads.len()].clone(),
            slot,
            generation: child.generation,
            online: ctx.address().recipient(),
            exited: ctx.address().recipient(),
        };
        let (incarnation, kill) = (self.start)(args);
        child.running = Some((incarnation, kill));
    }

    fn schedule_restart(&mut self, index: usize, delay: Duration, ctx: &mut Context<Self>) {
        let child = &mut self.children[index];
        let slot = child.slot.clone();
        slot.set_state(WorkerState::Restarting);
        child.restart_pending = true;
        let generation = child.generation;
        let restarts = slot
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.events.publish(LifecycleEvent::Restart {
            worker: slot.id.clone(),
            restarts,
            delay_ms: delay.as_millis() as u64,
        });
        ctx.run_later(delay, move |act, ctx| {
            // Unless a scale-down removed the index meanwhile.
            let due = act
                .children
                .get(index)
                .is_some_and(|c| c.restart_pending && c.generation == generation);
            if due {
                act.start_child(index, ctx);
            }
        });
    }

    /// Stops `index` so that its exit restarts it after `delay`.
    fn restart_sibling(&mut self, index: usize, delay: Duration) {
        let child = &mut self.children[index];
        if child.running.is_some() && child.retiring.is_none() {
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
            Strategy::OneForAll => (0..self.target).filter(|&i| i != index).collect(),
            Strategy::RestForOne => (index + 1..self.target).collect(),
        };
        for sibling in siblings {
            self.restart_sibling(sibling, delay);
        }
        self.schedule_restart(index, delay, ctx);
    }

    fn fail(&mut self, reason: String) {
        self.failed = true;
        for child in &mut self.children {
            child.running = None;
            child.slot.set_state(WorkerState::Stopped);
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
        self.children[..self.target]
            .iter()
            .all(|c| c.running.is_none() && !c.restart_pending)
    }

    /// Removes the workers at `indexes` (a scale-down): those running are
    /// retired at the dealer and stop once they hold no request; restarts
    /// waiting for their backoff are called off.
    fn remove_children(&mut self, indexes: std::ops::Range<usize>) {
        let until = Instant::now() + RETIRE_LIMIT;
        let mut retired = Vec::new();
        for child in &mut self.children[indexes] {
            let restarts = child
                .slot
                .restarts
                .load(std::sync::atomic::Ordering::Relaxed);
            self.service.metrics.count_removed_restarts(restarts);
            child.restart_pending = false;
            child.restart_after = None;
            if let Some((incarnation, _)) = &child.running {
                retired.push(incarnation.clone());
                child.retiring = Some(until);
            }
        }
        self.service.dealer.retire(&retired);
    }

    /// Stops each retiring worker that holds no request (or whose time is up),
    /// and looks again shortly while any still does.
    fn check_retiring(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut busy = false;
        for child in &mut self.children {
            let (Some(until), Some((incarnation, _))) = (child.retiring, &child.running) else {
                continue;
            };
            // Read after the worker was retired (see `Incarnation::retire`).
            let held = incarnation
                .slot
                .in_flight
                .load(std::sync::atomic::Ordering::SeqCst);
            if held == 0 || now >= until {
                if let Some((_, switch)) = child.running.take() {
                    switch.stop();
                }
            } else {
                busy = true;
            }
        }
        if busy && !self.retire_check {
            self.retire_check = true;
            ctx.run_later(RETIRE_POLL, |act, ctx| {
                act.retire_check = false;
                act.check_retiring(ctx);
            });
        }
    }

    /// Forgets the removed indexes at the end that have stopped.
    fn trim(&mut self) {
        while self.children.len() > self.target && self.children.last().is_some_and(Child::is_idle)
        {
            self.children.pop();
        }
    }

    /// The slots of the service's workers now, for status and the rest.
    fn publish_slots(&self) {
        let slots = self.children[..self.target]
            .iter()
            .map(|c| c.slot.clone())
            .collect();
        self.service.slots.set(slots);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for index in 0..self.target {
            self.start_child(index, ctx);
        }
    }
}

impl Handler<WorkerOnline> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkerOnline, _: &mut Context<Self>) {
        let Some(child) = self.children.get(msg.index) else {
            return;
        };
        let Some((incarnation, _)) = child.running.as_ref() else {
            return;
        };
        // A worker removed before it came online takes no request: it stops.
        if child.generation != msg.generation || child.retiring.is_some() {
            return;
        }
        incarnation.slot.set_state(WorkerState::Running);
        self.service
            .dealer
            .add_worker(incarnation.clone(), self.service.config.concurrency);
        self.events.publish(LifecycleEvent::Online {
            worker: incarnation.slot.id.clone(),
        });
    }
}

impl Handler<WorkerExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkerExited, ctx: &mut Context<Self>) {
        let WorkerExited {
            index,
            generation,
            slot,
            reason,
        } = msg;
        let Some(child) = self.children.get_mut(index) else {
            return;
        };
        if child.generation != generation {
            return;
        }
        child.running = None;
        let retired = child.retiring.take().is_some();
        self.service.dealer.remove_worker(index, generation);
        slot.set_state(WorkerState::Stopped);
        self.events.publish(LifecycleEvent::Exit {
            worker: slot.id.clone(),
            reason: reason.clone(),
        });
        if self.stopping || self.failed {
            return;
        }
        if retired || index >= self.target {
            // A scale-down removed it: nothing to restart, no failure. An index
            // added again meanwhile gets its new worker now.
            self.start_child(index, ctx);
            self.trim();
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
        let target = self.target;
        match self.children.get_mut(msg.index) {
            Some(child)
                if msg.index < target && child.retiring.is_none() && child.running.is_some() =>
            {
                child.running = None; // drops the kill switch
                Ok(())
            }
            _ => Err(ServiceError::no_such_service(format!(
                "worker {} is not running",
                WorkerId::new(&self.node, &self.service.name, msg.index)
            ))),
        }
    }
}

/// Set the number of the service's workers: new indexes start, the highest go
/// (each after the requests it holds). The caller has checked `workers` against
/// the config's bounds.
#[derive(Message)]
#[rtype(result = "Result<Rescaled, ServiceError>")]
pub(crate) struct Scale {
    pub(crate) workers: usize,
}

/// What a [`Scale`] did.
#[derive(Debug)]
pub(crate) struct Rescaled {
    /// The number of workers before.
    pub(crate) was: usize,
    /// The slots of the indexes it added.
    pub(crate) added: Vec<Arc<WorkerSlot>>,
}

impl Handler<Scale> for Supervisor {
    type Result = Result<Rescaled, ServiceError>;

    fn handle(&mut self, msg: Scale, ctx: &mut Context<Self>) -> Self::Result {
        let name = self.service.name.clone();
        if self.failed {
            return Err(ServiceError::service_failed(format!(
                "service {name} has failed and takes no workers until its node restarts"
            )));
        }
        if self.stopping || !self.service.dealer.is_open() {
            return Err(ServiceError::service_failed(format!(
                "service {name} is not taking requests (its node is stopping, or its policy let every worker go)"
            )));
        }
        if msg.workers == 0 {
            return Err(ServiceError::bad_request(format!(
                "service {name} needs at least 1 worker"
            )));
        }
        let was = self.target;
        let mut added = Vec::new();
        if msg.workers < was {
            self.remove_children(msg.workers..was);
            self.target = msg.workers;
        } else {
            self.target = msg.workers;
            for index in was..msg.workers {
                let id = WorkerId::new(&self.node, &name, index);
                let slot = Arc::new(WorkerSlot::new(id));
                added.push(slot.clone());
                match self.children.get_mut(index) {
                    // A worker still draining there: the new one starts on its exit.
                    Some(child) => child.slot = slot,
                    None => self.children.push(Child::new(slot)),
                }
            }
        }
        self.publish_slots();
        for index in was..msg.workers {
            if self.children[index].is_idle() {
                self.start_child(index, ctx);
            }
        }
        self.check_retiring(ctx);
        self.trim();
        Ok(Rescaled { was, added })
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
        // Workers a scale-down removed still finish what they hold.
        let slots: Vec<Arc<WorkerSlot>> = self
            .children
            .iter()
            .flat_map(|c| [Some(&c.slot), c.running.as_ref().map(|(w, _)| &w.slot)])
            .flatten()
            .cloned()
            .collect();
        let drained = async move {
            let idle = || {
                service.dealer.queued() == 0
                    && slots
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
                for child in &act.children {
                    child.slot.set_state(WorkerState::Stopped);
                }
            })
        }))
    }
}
