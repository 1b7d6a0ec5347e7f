//! Confirmations in the key-value bucket `P_confirms`: one key per sender of
//! an id, `ID.SENDER` (both [encoded](super::encode)), created once, so a
//! sender that confirms again is counted once. An id's count is the number of
//! its keys, which the server counts (the bucket's subjects under `ID.*`).
//!
//! The bucket keeps at most [`MAX_MARKERS`] keys, dropping the oldest first,
//! as the master forgets its oldest ids.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use super::{changed, encode, failed, RECHECK};
use crate::error::ServiceError;
use crate::logging::untrusted;

/// Senders one id may have, as on the master.
const KEEP: usize = crate::confirm::KEEP;
/// Longest confirmation id or sender name, in bytes.
const MAX_NAME: usize = 256;
/// Confirmations the bucket keeps; past them the oldest are dropped.
const MAX_MARKERS: i64 = 1_000_000;
/// Bytes the bucket keeps; past them the oldest are dropped.
const MAX_BYTES: i64 = 512 * 1024 * 1024;
/// Waits for counts one node may have pending at once.
const MAX_WAITS: usize = 10_000;
/// How long counting an id's senders may take.
const COUNT_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates or binds the bucket `P_confirms`: a key-value bucket whose stream
/// drops its oldest keys past [`MAX_MARKERS`], where a bucket made as a bucket
/// would refuse new ones.
pub(super) async fn bucket(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    let name = format!("{prefix}_confirms");
    js.create_or_update_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some("colony confirmations".to_string()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_messages: MAX_MARKERS,
        max_bytes: MAX_BYTES,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or bind the JetStream bucket {name}: {e}"))?;
    js.get_key_value(&name)
        .await
        .map_err(|e| format!("cannot bind the JetStream bucket {name}: {e}"))
}

/// The confirmations as this node reaches them.
pub(super) struct Confirms {
    store: kv::Store,
    changes: broadcast::Sender<String>,
    runtime: tokio::runtime::Handle,
    waits: Arc<AtomicUsize>,
}

impl Confirms {
    /// Confirmations in `store`, whose changes `changes` carries.
    pub(super) fn new(
        store: kv::Store,
        changes: broadcast::Sender<String>,
        runtime: tokio::runtime::Handle,
    ) -> Confirms {
        Confirms {
            store,
            changes,
            runtime,
            waits: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `sender` confirms `id`; returns how many distinct senders have, once
    /// that is stored.
    pub(super) async fn confirm(&self, id: &str, sender: &str) -> Result<usize, ServiceError> {
        check("confirmation id", id)?;
        check("sender", sender)?;
        let key = format!("{}.{}", encode(id), encode(sender));
        let what = || format!("confirm {}", untrusted(id));
        let created = match self.store.create(&key, Bytes::from_static(b"1")).await {
            Ok(_) => true,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
            Err(e) => return Err(failed(what(), e)),
        };
        let count = self.count(id).await?;
        if created && count > KEEP {
            // One too many: this sender's key goes again.
            let subject = format!("{}{key}", self.store.prefix);
            if let Err(e) = self.store.stream.purge().filter(subject).await {
                log::warn!("{}: the sender past {KEEP} stays: {e}", what());
            }
            return Err(ServiceError::overloaded(format!(
                "confirmation id {} already has {KEEP} senders",
                untrusted(id)
            )));
        }
        Ok(count)
    }

    /// How many distinct senders have confirmed `id`.
    async fn count(&self, id: &str) -> Result<usize, ServiceError> {
        let what = || format!("count the confirmations of {}", untrusted(id));
        let filter = format!("{}{}.*", self.store.prefix, encode(id));
        let counting = async {
            let mut subjects = self.store.stream.info_with_subjects(filter).await?;
            let mut count = 0;
            while let Some(subject) = subjects.next().await {
                subject?;
                count += 1;
            }
            Ok::<usize, async_nats::jetstream::stream::InfoError>(count)
        };
        match tokio::time::timeout(COUNT_WITHIN, counting).await {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(e)) => Err(failed(what(), e)),
            Err(_) => Err(ServiceError::timeout(format!(
                "{} took longer than {COUNT_WITHIN:?}",
                what()
            ))),
        }
    }

    /// Resolves once `n` distinct senders have confirmed `id` (at once if they
    /// already have), with their count; a task on the state's runtime counts
    /// again whenever one of `id`'s keys changes, until then or until the
    /// receiver is dropped. `Overloaded` past [`MAX_WAITS`] waits.
    pub(super) fn confirmed(
        self: &Arc<Self>,
        n: usize,
        id: &str,
    ) -> Result<oneshot::Receiver<usize>, ServiceError> {
        check("confirmation id", id)?;
        let slot = Slot::take(&self.waits).ok_or_else(|| {
            ServiceError::overloaded(format!("{MAX_WAITS} waits for confirmations are pending"))
        })?;
        let (mut tx, rx) = oneshot::channel();
        // Watching before counting: no confirmation falls between the two.
        let mut changes = self.changes.subscribe();
        let (confirms, id) = (self.clone(), id.to_string());
        self.runtime.spawn(async move {
            let _slot = slot;
            let mine = format!("{}.", encode(&id));
            loop {
                match confirms.count(&id).await {
                    Ok(count) if count >= n => {
                        let _ = tx.send(count);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => log::debug!("{e}; counting again"),
                }
                let until = Instant::now() + RECHECK;
                tokio::select! {
                    () = tx.closed() => return,
                    () = changed(&mut changes, |key| key.starts_with(&mine), until) => {}
                }
            }
        });
        Ok(rx)
    }
}

/// One of the [`MAX_WAITS`] waits, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(waits: &Arc<AtomicUsize>) -> Option<Slot> {
        let taken = waits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_WAITS).then_some(n + 1)
        });
        taken.ok().map(|_| Slot(waits.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn check(what: &str, text: &str) -> Result<(), ServiceError> {
    if text.is_empty() || text.len() > MAX_NAME || text.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(format!(
            "{what} `{}` must be 1 to {MAX_NAME} printable characters",
            untrusted(text)
        )));
    }
    Ok(())
}
