//! One job queue's streams in JetStream: its jobs (`P_JOBS_Q`, work queue,
//! discard new past `capacity` or `max_bytes`), its dead letters (`P_DEAD_Q`,
//! discard old past `dead_letters`), and the consumer every node takes from.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType, Stream};
use async_nats::jetstream::{Context, ErrorCode, Message};
use futures::StreamExt;
use tokio::time::Instant;

use super::{encode, failed};
use crate::config::QueueConfig;
use crate::error::ServiceError;
use crate::jobs::DeadLetter;
use crate::logging::untrusted;

/// A take that may wait less than this asks the server not to wait at all.
const MIN_EXPIRES: Duration = Duration::from_millis(10);
/// Beyond its wait, how long a take waits for the server's answer to its pull.
const FETCH_SLACK: Duration = Duration::from_secs(2);
/// How long reading a queue's dead letters may take.
const READ_DEAD: Duration = Duration::from_secs(5);
/// Bytes of a dead letter's envelope (id, attempts, error) beyond its job,
/// allowed over `max_bytes` in the dead-letter stream.
const DEAD_ENVELOPE: usize = 1024 * 1024;
/// Pull requests that may wait on one queue at once, across the cluster.
const MAX_WAITING: i64 = 65_536;
/// JetStream's longest stream name.
const MAX_STREAM_NAME: usize = 255;
/// Queues one node binds at most.
pub(super) const MAX_QUEUES: usize = 1024;
/// The consumer every node takes from.
const CONSUMER: &str = "workers";
/// The stream metadata key that holds the queue's name.
const NAME_KEY: &str = "colony.queue";
/// The stream metadata key that holds the queue's config, as JSON.
const CONFIG_KEY: &str = "colony.config";

/// One queue's streams and consumer.
pub(super) struct Queue {
    pub(super) name: String,
    pub(super) config: QueueConfig,
    pub(super) subject: String,
    pub(super) dead_subject: String,
    pub(super) jobs: Stream<()>,
    pub(super) dead: Stream<()>,
    pub(super) consumer: PullConsumer,
    /// Its key in the `P_counts` bucket.
    pub(super) failures_key: String,
}

impl Queue {
    /// Creates or binds queue `name`'s streams and consumer.
    pub(super) async fn open(
        js: &Context,
        prefix: &str,
        name: &str,
        config: &QueueConfig,
        replicas: usize,
    ) -> Result<Queue, String> {
        let token = encode(name);
        let (jobs_name, dead_name) = (
            format!("{prefix}_JOBS_{token}"),
            format!("{prefix}_DEAD_{token}"),
        );
        if jobs_name.len() > MAX_STREAM_NAME {
            return Err(format!(
                "queue {} has too long a name for a JetStream stream",
                untrusted(name)
            ));
        }
        let subject = format!("{prefix}.state.jobs.{token}");
        let dead_subject = format!("{prefix}.state.dead.{token}");
        let limit = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let jobs = stream::Config {
            name: jobs_name.clone(),
            description: Some(format!("colony job queue {name}")),
            subjects: vec![subject.clone()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: replicas,
            max_messages: limit(config.capacity),
            max_bytes: limit(config.max_bytes),
            discard: DiscardPolicy::New,
            // A node whose config does not declare the queue binds it from these.
            metadata: [
                (NAME_KEY.to_string(), name.to_string()),
                (
                    CONFIG_KEY.to_string(),
                    serde_json::to_string(config).unwrap_or_default(),
                ),
            ]
            .into(),
            ..Default::default()
        };
        let dead = stream::Config {
            name: dead_name.clone(),
            description: Some(format!("colony dead letters of job queue {name}")),
            subjects: vec![dead_subject.clone()],
            storage: StorageType::File,
            num_replicas: replicas,
            // JetStream reads 0 as no limit; the master keeps one at least.
            max_messages: limit(config.dead_letters.max(1)),
            max_bytes: limit(config.max_bytes.saturating_add(DEAD_ENVELOPE)),
            discard: DiscardPolicy::Old,
            // Long enough to catch a letter written again when a lease ran out.
            duplicate_window: (config.lease * 2)
                .clamp(Duration::from_secs(120), Duration::from_secs(24 * 3600)),
            ..Default::default()
        };
        for config in [jobs, dead] {
            let stream = config.name.clone();
            js.create_or_update_stream(config)
                .await
                .map_err(|e| format!("cannot create or bind the JetStream stream {stream}: {e}"))?;
        }
        let jobs = js
            .get_stream_no_info(&jobs_name)
            .await
            .map_err(|e| e.to_string())?;
        let dead = js
            .get_stream_no_info(&dead_name)
            .await
            .map_err(|e| e.to_string())?;
        let consumer = jobs
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                description: Some(format!("colony workers of job queue {name}")),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.lease,
                max_ack_pending: -1,
                max_waiting: MAX_WAITING,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create or bind the consumer of {jobs_name}: {e}"))?;
        Ok(Queue {
            name: name.to_string(),
            config: config.clone(),
            subject,
            dead_subject,
            jobs,
            dead,
            consumer,
            failures_key: format!("failures.{token}"),
        })
    }

    /// Binds queue `name`, which a node whose config declares it has made:
    /// its config is read from its jobs stream's metadata. `None` when no node
    /// has made it.
    pub(super) async fn bind(
        js: &Context,
        prefix: &str,
        name: &str,
    ) -> Result<Option<Queue>, String> {
        let jobs_name = format!("{prefix}_JOBS_{}", encode(name));
        if jobs_name.len() > MAX_STREAM_NAME {
            return Ok(None);
        }
        let mut stream = match js.get_stream(&jobs_name).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(format!(
                    "cannot look up the JetStream stream {jobs_name}: {e}"
                ))
            }
        };
        let info = stream
            .info()
            .await
            .map_err(|e| format!("cannot read the JetStream stream {jobs_name}: {e}"))?;
        let config = info
            .config
            .metadata
            .get(CONFIG_KEY)
            .and_then(|json| serde_json::from_str::<QueueConfig>(json).ok());
        let (Some(config), Some(true)) = (
            config,
            info.config.metadata.get(NAME_KEY).map(|n| n == name),
        ) else {
            return Err(format!(
                "the JetStream stream {jobs_name} is not colony queue {}'s",
                untrusted(name)
            ));
        };
        let replicas = info.config.num_replicas.max(1);
        Queue::open(js, prefix, name, &config, replicas)
            .await
            .map(Some)
    }

    /// The names of the queues made in JetStream under `prefix`, by any node.
    pub(super) async fn names(js: &Context, prefix: &str) -> Result<Vec<String>, String> {
        let start = format!("{prefix}_JOBS_");
        let mut streams = js.streams();
        let mut names = Vec::new();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| format!("cannot list the JetStream streams: {e}"))?;
            if !info.config.name.starts_with(&start) {
                continue;
            }
            if let Some(name) = info.config.metadata.get(NAME_KEY) {
                names.push(name.clone());
            }
            if names.len() >= MAX_QUEUES {
                break;
            }
        }
        Ok(names)
    }

    /// The error of a push the server refused: `Overloaded` when the queue is
    /// full (its stream refuses new messages past its limits).
    pub(super) fn refused_push(
        &self,
        len: usize,
        e: async_nats::jetstream::context::PublishError,
    ) -> ServiceError {
        use async_nats::jetstream::context::PublishErrorKind;
        let queue = self;
        let name = untrusted(&queue.name);
        if e.kind() == PublishErrorKind::MaxPayloadExceeded {
            return ServiceError::bad_request(format!(
                "job of {len} bytes for queue {name} is larger than the NATS server's max_payload"
            ));
        }
        let full = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|s| s.error_code() == ErrorCode::STREAM_STORE_FAILED);
        if full {
            return ServiceError::overloaded(format!(
                "queue {name} is full: it holds queues.{name}.capacity ({}) jobs or \
             queues.{name}.max_bytes ({}) bytes ({e})",
                queue.config.capacity, queue.config.max_bytes
            ));
        }
        failed(format_args!("push a job to queue {name}"), e)
    }

    /// One delivery, waiting up to `wait` for it.
    pub(super) async fn fetch_one(&self, wait: Duration) -> Result<Option<Message>, ServiceError> {
        let queue = self;
        let what = || format!("take from queue {}", untrusted(&queue.name));
        let batch = if wait >= MIN_EXPIRES {
            queue
                .consumer
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
        } else {
            queue.consumer.fetch().max_messages(1).messages().await
        };
        let mut batch = batch.map_err(|e| failed(what(), e))?;
        match tokio::time::timeout(wait + FETCH_SLACK, batch.next()).await {
            Ok(Some(Ok(message))) => Ok(Some(message)),
            Ok(Some(Err(e))) => Err(failed(what(), e)),
            Ok(None) | Err(_) => Ok(None),
        }
    }

    /// The dead letters, oldest first, as `info` (of the dead-letter stream)
    /// counts them.
    pub(super) async fn dead_letters(
        &self,
        info: &stream::Info,
    ) -> Result<Vec<DeadLetter>, ServiceError> {
        let queue = self;
        let (count, last) = (info.state.messages, info.state.last_sequence);
        if count == 0 {
            return Ok(Vec::new());
        }
        let what = format!("read the dead letters of queue {}", untrusted(&queue.name));
        let reader = queue
            .dead
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&what, e))?;
        let mut messages = reader.messages().await.map_err(|e| failed(&what, e))?;
        let deadline = Instant::now() + READ_DEAD;
        let mut letters = Vec::new();
        let mut seen = 0;
        while seen < count {
            let message = match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(failed(&what, e)),
                Ok(None) | Err(_) => break,
            };
            seen += 1;
            match serde_json::from_slice::<DeadLetter>(&message.payload) {
                Ok(letter) => letters.push(letter),
                Err(e) => log::warn!("{what}: an unreadable one is skipped: {e}"),
            }
            if message.info().is_ok_and(|i| i.stream_sequence >= last) {
                break;
            }
        }
        Ok(letters)
    }
}
