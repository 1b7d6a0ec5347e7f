//! The workers' side of job queues: for each worker of a consuming service, one
//! loop per unit of its concurrency takes a job from the cluster state when the
//! worker is online, hands it to that worker and answers the cluster state with the
//! outcome. Taking is how a worker says it is ready (ZeroMQ's LRU `READY`), so no
//! worker is given jobs before it can run them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::handle::{Inner, Node};
use crate::backoff::Backoff;
use crate::error::ServiceError;
use crate::guard::Origin;
use crate::jobs::Answer;
use crate::service::LocalService;
use crate::worker::WorkerSlot;

/// How long one take waits at the cluster state for a job.
const TAKE_WAIT: Duration = Duration::from_secs(5);
/// How often a loop looks whether its worker is back online.
const READY_POLL: Duration = Duration::from_millis(20);
/// Backoff after a failed take (master unreachable): 50 ms to 2 s, doubling.
const RETAKE: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
/// Take loops per worker: jobs one worker runs at once, however large its
/// `concurrency`, so a big concurrency does not become that many idle tasks.
const MAX_TAKE_LOOPS: usize = 64;
/// Answers one take loop may have on their way to the cluster state while it runs
/// its next job: a durable state answers an ack once it is on disk, and the
/// worker need not wait for the disk before it starts on the next job.
const ACKS_AHEAD: usize = 8;

/// Starts the take loops of the workers of `service` whose slots are `slots`
/// (all of them at boot, those a scale-up added later) on their threads. A
/// loop ends when a scale-down removes its slot.
pub(super) fn start(node: &Node, service: &Arc<LocalService>, slots: &[Arc<WorkerSlot>]) {
    let threads = &service.threads;
    for (queue, subject) in &service.def.consumes {
        for slot in slots {
            let thread = &threads[slot.id.index % threads.len()];
            for _ in 0..service.config.concurrency.min(MAX_TAKE_LOOPS) {
                thread.spawn(take_loop(
                    Arc::downgrade(&node.inner),
                    service.clone(),
                    slot.clone(),
                    queue.clone(),
                    subject,
                ));
            }
        }
    }
}

async fn take_loop(
    node: Weak<Inner>,
    service: Arc<LocalService>,
    slot: Arc<WorkerSlot>,
    queue: String,
    subject: &'static str,
) {
    let index = slot.id.index;
    let worker = slot.id.to_string();
    let mut backoff = RETAKE;
    let mut warned = false;
    let mut acks: std::collections::VecDeque<actix_rt::task::JoinHandle<()>> = Default::default();
    loop {
        while acks.front().is_some_and(|a| a.is_finished()) || acks.len() >= ACKS_AHEAD {
            if let Some(ack) = acks.pop_front() {
                let _ = ack.await;
            }
        }
        let Some(node) = node.upgrade().map(|inner| Node { inner }) else {
            return;
        };
        if node.is_stopping() || !kept(&service, &slot) {
            return;
        }
        // A worker that has exited but is not yet removed from the dealer is not
        // online: taking a job for it would spend one of the job's attempts.
        if !running(&service, index) {
            drop(node);
            tokio::time::sleep(READY_POLL).await;
            continue;
        }
        let given = match node.take(&queue, &worker, TAKE_WAIT).await {
            Ok(Some(given)) => given,
            Ok(None) => continue,
            Err(e) => {
                if e.kind == crate::error::ErrorKind::NoSuchService && !warned {
                    warned = true;
                    log::warn!("queue {queue}: {worker} cannot take jobs: {e}");
                } else {
                    log::debug!("queue {queue}: {worker} cannot take jobs: {e}");
                }
                drop(node);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.reset();
        if !running(&service, index) {
            // The worker exited while this loop waited for a job: the job never
            // reached it, so the delivery does not count against its attempts.
            let answer = Answer {
                counts: false,
                error: Some(ServiceError::no_such_service(format!(
                    "worker {worker} exited before the job reached it"
                ))),
            };
            if let Err(e) = node.ack(&queue, &given, answer).await {
                log::warn!(
                    "queue {queue}: the return of job {} did not reach the master ({e}); it will be delivered again",
                    given.id
                );
            }
            continue;
        }
        // A job pushed within a trace is worked in a span of it.
        let worked = async {
            log::debug!("job {} of queue {queue}: worked by {worker}", given.id);
            node.inner
                .router
                .request_json(
                    &service.name,
                    subject,
                    bytes::Bytes::copy_from_slice(given.job.get().as_bytes()),
                    None,
                    Origin::Local,
                    Some(index),
                )
                .await
        };
        let result = crate::trace::maybe_scope(given.trace.map(|t| t.child()), worked).await;
        // A worker that a scale-down removed between the take and the request
        // never got the job: the delivery does not count against its attempts.
        let removed = result
            .as_ref()
            .is_err_and(|e| e.kind == crate::error::ErrorKind::NoSuchService)
            && !running(&service, index);
        let answer = Answer {
            counts: !node.is_stopping() && !removed,
            error: result.err(),
        };
        let queue = queue.clone();
        let mut ack = Box::pin(async move {
            if let Err(e) = node.ack(&queue, &given, answer).await {
                log::warn!(
                    "queue {queue}: the answer for job {} did not reach the master ({e}); it will be delivered again",
                    given.id
                );
            }
        });
        // An answer kept at once (the state in this node's memory) needs no task.
        if futures::FutureExt::now_or_never(&mut ack).is_none() {
            acks.push_back(actix_rt::spawn(ack));
        }
    }
}

/// Whether `slot` is still one of the service's workers: a scale-down removes
/// it, and a later scale-up puts a new slot at its index.
fn kept(service: &LocalService, slot: &Arc<WorkerSlot>) -> bool {
    let slots = service.slots.get();
    slots
        .get(slot.id.index)
        .is_some_and(|s| Arc::ptr_eq(s, slot))
}

/// Whether worker `index` of `service` runs now.
fn running(service: &LocalService, index: usize) -> bool {
    service.dealer.worker(index).is_some_and(|w| w.is_alive())
}
