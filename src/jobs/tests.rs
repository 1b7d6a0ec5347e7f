//! The byte count of a queue follows its jobs exactly, through every way a job
//! leaves or comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::value::RawValue;

use super::{Answer, JobQueues};
use crate::config::QueueConfig;
use crate::error::{ErrorKind, ServiceError};
use crate::events::EventBus;

const NOW: Duration = Duration::from_millis(1);

fn job(len: usize) -> Box<RawValue> {
    RawValue::from_string(format!("\"{}\"", "x".repeat(len - 2))).unwrap()
}

fn queues(config: QueueConfig) -> JobQueues {
    JobQueues::new(
        "solo",
        BTreeMap::from([("q".to_string(), config)]),
        EventBus::default(),
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
    queues.push("q", job(100)).unwrap();
    queues.push("q", job(100)).unwrap();
    let refused = queues.push("q", job(100)).unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Overloaded);
    assert!(refused.message.contains("queues.q.max_bytes"), "{refused}");
    queues.push("q", job(50)).unwrap();
    assert_eq!(bytes(&queues), (250, 0));

    // Leased jobs still count; a completed one frees its bytes.
    let a = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    assert_eq!(bytes(&queues).0, 250);
    queues.ack("q", a.id, a.attempt, ok());
    assert_eq!(bytes(&queues).0, 150);

    // A failed delivery comes back: its bytes stay; a late answer changes nothing.
    let b = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
    queues.ack("q", b.id, b.attempt, failed());
    queues.ack("q", b.id, b.attempt, ok());
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
    queues.ack("q", c.id, c.attempt, failed());
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
        queues.push("q", job(100)).unwrap();
        let given = queues.take("q", "solo", "w", NOW).await.unwrap().unwrap();
        queues.ack("q", given.id, given.attempt, failed());
    }
    let status = queues.status().remove(0);
    assert_eq!(status.bytes, 0);
    let ids: Vec<u64> = status.dead.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![2, 3], "the oldest dead letter is dropped");
    assert_eq!(bytes(&queues).1, 200);
}
