//! The byte count of a queue follows its jobs exactly, through every way a job
//! leaves or comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::value::RawValue;

use super::{Answer, JobQueues};
use crate::config::QueueConfig;
use crate::error::{ErrorKind, ServiceError};
use crate::events::EventBus;
use crate::store::{Loaded, Store};

const NOW: Duration = Duration::from_millis(1);

fn job(len: usize) -> Box<RawValue> {
    RawValue::from_string(format!("\"{}\"", "x".repeat(len - 2))).unwrap()
}

fn queues(config: QueueConfig) -> JobQueues {
    JobQueues::new(
        "solo",
        BTreeMap::from([("q".to_string(), config)]),
        EventBus::default(),
        None,
        &mut Loaded::default(),
    )
}

fn bytes(queues: &JobQueues) -> (usize, usize) {
    let status = queues.status().remove(0);
    let dead = status.dead.iter().map(|d| d.job.to_string().len()).sum();
    (status.bytes, dead)
}

fn failed() -> Answer {
    Answer {
        error: Some(ServiceError::bad_request("no")),
        counts: true,
    }
}

fn ok() -> Answer {
    Answer {
        error: None,
        counts: true,
    }
}

#[actix_rt::test]
async fn a_push_past_max_bytes_is_overloaded_and_the_count_returns_to_zero() {
    let queues = queues(QueueConfig {
        max_bytes: 250,
        max_attempts: 2,
        ..QueueConfig::default()
    });
    queues.push("q", job(100)).await.unwrap();
    queues.push("q", job(100)).await.unwrap();
    let refused = queues.push("q", job(100)).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Overloaded);
    assert!(refused.message.contains("queues.q.max_bytes"), "{refused}");
    queues.push("q", job(50)).await.unwrap();
    assert_eq!(bytes(&queues), (250, 0));

    // Leased jobs still count; a completed one frees its bytes.
    let a = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    assert_eq!(bytes(&queues).0, 250);
    queues
        .ack("q", a.id, a.attempt, a.lease, ok())
        .await
        .unwrap();
    assert_eq!(bytes(&queues).0, 150);

    // A failed delivery comes back: its bytes stay; a late answer changes nothing.
    let b = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    queues
        .ack("q", b.id, b.attempt, b.lease, failed())
        .await
        .unwrap();
    queues
        .ack("q", b.id, b.attempt, b.lease, ok())
        .await
        .unwrap();
    assert_eq!(bytes(&queues).0, 150);

    // Expired and lost leases come back too, then go to the dead letters.
    let b = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    assert_eq!(b.attempt, 2);
    queues.expire(tokio::time::Instant::now() + Duration::from_secs(3600));
    assert_eq!(bytes(&queues), (50, 100));
    queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    queues.node_down("solo");
    assert_eq!(bytes(&queues).0, 50);
    let c = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    assert_eq!(c.attempt, 2);
    queues
        .ack("q", c.id, c.attempt, c.lease, failed())
        .await
        .unwrap();
    assert_eq!(bytes(&queues), (0, 150));
    assert!(queues.take("q", "solo", "w", NOW).await.unwrap().is_none());
}

#[actix_rt::test]
async fn dead_letters_past_max_bytes_drop_the_oldest() {
    let queues = queues(QueueConfig {
        max_bytes: 250,
        max_attempts: 1,
        ..QueueConfig::default()
    });
    for _ in 0..3 {
        queues.push("q", job(100)).await.unwrap();
        let given = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
        queues
            .ack("q", given.id, given.attempt, given.lease, failed())
            .await
            .unwrap();
    }
    let status = queues.status().remove(0);
    assert_eq!(status.bytes, 0);
    let ids: Vec<u64> = status.dead.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![2, 3], "the oldest dead letter is dropped");
    assert_eq!(bytes(&queues).1, 200);
}

/// Opens the store in `dir`, waiting for a previous writer of it to close it.
async fn reopen(dir: &std::path::Path) -> (Store, Loaded) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(dir) {
            Ok(opened) => return opened,
            Err(crate::store::StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn durable(dir: &std::path::Path, opened: (Store, Loaded)) -> JobQueues {
    let _ = dir;
    let (store, mut loaded) = opened;
    JobQueues::new(
        "solo",
        BTreeMap::from([(
            "q".to_string(),
            QueueConfig {
                max_attempts: 3,
                ..QueueConfig::default()
            },
        )]),
        EventBus::default(),
        Some(store),
        &mut loaded,
    )
}

#[actix_rt::test]
async fn a_durable_queue_reopened_has_every_unfinished_job_its_counts_and_new_ids() {
    let dir = tempfile::tempdir().unwrap();
    let before = durable(dir.path(), reopen(dir.path()).await);
    for n in 0..4 {
        before.push("q", job(10 + n)).await.unwrap();
    }
    let done = before.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    before
        .ack("q", done.id, done.attempt, done.lease, ok())
        .await
        .unwrap();
    let failing = before.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    before
        .ack("q", failing.id, failing.attempt, failing.lease, failed())
        .await
        .unwrap();
    // Leased when the state stops: delivered again after, with its count.
    let leased = before.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    assert_eq!((leased.id, leased.attempt), (failing.id, 2));
    // The next queue operation is written after the delivery count it follows.
    before.push("q", job(20)).await.unwrap();
    drop(before);

    let after = durable(dir.path(), reopen(dir.path()).await);
    let status = after.status().remove(0);
    assert_eq!(
        (status.pushed, status.completed, status.failures),
        (5, 1, 1)
    );
    assert_eq!(status.queued, 4, "{status:?}");
    assert_eq!(status.leased, 0);
    // The old lease's answer completes nothing.
    after
        .ack("q", leased.id, leased.attempt, leased.lease, ok())
        .await
        .unwrap();
    assert_eq!(after.status().remove(0).completed, 1);
    let again = after.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    assert_eq!(
        (again.id, again.attempt),
        (failing.id, 3),
        "attempts are kept"
    );
    assert_ne!(again.lease, leased.lease);
    let id = after.push("q", job(30)).await.unwrap();
    assert_eq!(id, 6, "job ids continue after the last one handed out");
    after
        .ack("q", again.id, again.attempt, again.lease, failed())
        .await
        .unwrap();
    drop(after);

    let last = durable(dir.path(), reopen(dir.path()).await);
    let status = last.status().remove(0);
    assert_eq!(status.dead.len(), 1, "dead letters are kept: {status:?}");
    assert_eq!(status.dead[0].id, failing.id);
    assert_eq!(status.dead[0].attempts, 3);
    assert_eq!(status.queued, 4);
}

#[actix_rt::test]
async fn a_job_on_its_last_delivery_when_the_state_stops_is_dead_after() {
    let dir = tempfile::tempdir().unwrap();
    let before = durable(dir.path(), reopen(dir.path()).await);
    let id = before.push("q", job(12)).await.unwrap();
    for _ in 0..2 {
        let given = before.take("q", "solo", "w", NOW).await.unwrap().unwrap();
        before
            .ack("q", given.id, given.attempt, given.lease, failed())
            .await
            .unwrap();
    }
    let last = before.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    assert_eq!((last.id, last.attempt), (id, 3));
    // Written after the delivery count it follows.
    before.push("q", job(14)).await.unwrap();
    drop(before);

    let after = durable(dir.path(), reopen(dir.path()).await);
    let status = after.status().remove(0);
    assert_eq!(status.queued, 1, "{status:?}");
    assert_eq!(status.dead.len(), 1, "{status:?}");
    assert_eq!((status.dead[0].id, status.dead[0].attempts), (id, 3));
    drop(after);
    // Buried on disk too: not delivered again after another restart.
    let again = durable(dir.path(), reopen(dir.path()).await);
    let status = again.status().remove(0);
    assert_eq!((status.queued, status.dead.len()), (1, 1), "{status:?}");
}
