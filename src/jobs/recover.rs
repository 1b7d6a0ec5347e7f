//! A durable queue's jobs, dead letters and counts, read back from the store
//! when the cluster state starts.

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::queue::{Buried, Job, Queue};
use super::{bury, DeadLetter};
use crate::error::ServiceError;
use crate::events::LifecycleEvent;
use crate::store::{Change, Loaded, Store};

/// Puts what `loaded` holds into the declared `queues`: every job back in line
/// in id order with its delivery count, except one that was on its last
/// delivery, which is buried; dead letters (the newest the queue keeps); counts.
/// Returns the events of the jobs buried now.
pub(super) fn restore(
    queues: &mut HashMap<String, Queue>,
    loaded: &mut Loaded,
    store: Option<&Store>,
) -> Vec<LifecycleEvent> {
    let mut exhausted = Vec::new();
    for (name, jobs) in std::mem::take(&mut loaded.jobs) {
        let Some(queue) = queues.get_mut(&name) else {
            log::warn!(
                "queue {name} has {} jobs on disk but is not declared in the config; they are kept there and not delivered",
                jobs.len()
            );
            continue;
        };
        for (id, attempts, json) in jobs {
            let json = String::from_utf8(json)
                .ok()
                .and_then(|text| RawValue::from_string(text).ok());
            let Some(json) = json else {
                log::error!("queue {name}: job {id} on disk is not JSON; skipped");
                continue;
            };
            let job = Job {
                id,
                json,
                attempts,
                trace: None,
            };
            if attempts >= queue.config.max_attempts {
                // Its last delivery was under way when the state stopped.
                exhausted.push((name.clone(), job));
                continue;
            }
            queue.bytes = queue.bytes.saturating_add(job.bytes());
            queue.ready.push_back(job);
        }
        if !queue.ready.is_empty() {
            log::info!(
                "queue {name}: {} jobs recovered from disk",
                queue.ready.len()
            );
        }
    }
    for (name, letters) in std::mem::take(&mut loaded.dead) {
        let Some(queue) = queues.get_mut(&name) else {
            continue;
        };
        // The newest `dead_letters` of them, as the queue keeps.
        let skip = letters.len().saturating_sub(queue.config.dead_letters);
        for (_, letter) in letters.into_iter().skip(skip) {
            if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&letter) {
                let bytes = letter.job.to_string().len();
                queue.dead_bytes = queue.dead_bytes.saturating_add(bytes);
                queue.dead.push_back(Buried { letter, bytes });
            }
        }
    }
    let mut buried = Vec::new();
    for (name, job) in exhausted {
        let Some(queue) = queues.get_mut(&name) else {
            continue;
        };
        let id = job.id;
        queue.note(|q| Change::Done {
            queue: q.to_string(),
            id,
        });
        let dead = Buried {
            bytes: job.bytes(),
            letter: DeadLetter {
                id,
                job: serde_json::from_str(job.json.get()).unwrap_or_default(),
                attempts: job.attempts,
                error: ServiceError::service_failed(format!(
                    "delivered {} times; the cluster state stopped during its last delivery",
                    job.attempts
                )),
            },
        };
        buried.push(bury(queue, dead));
    }
    if let Some(store) = store {
        for queue in queues.values_mut() {
            queue.record(store);
        }
    }
    for ((name, counter), value) in &loaded.counts {
        if let Some(queue) = queues.get_mut(name) {
            match counter.as_str() {
                "pushed" => queue.pushed = *value,
                "completed" => queue.completed = *value,
                "failures" => queue.failures = *value,
                _ => {}
            }
        }
    }
    buried
}
