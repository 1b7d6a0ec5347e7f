//! The cluster state on disk: one redb file, `cluster.redb`, in the node's state
//! directory (`state.dir`, default `.colony/state/<node>`).
//!
//! Changes are sent to one writer thread, which applies every change waiting at
//! once in a single transaction and commits it with one fsync (a group commit),
//! then answers each sender that waits. A change sent while the writer is
//! committing joins the next transaction, so under load one fsync covers
//! hundreds of pushes and acks.
//!
//! What is kept, so that it survives a crash:
//!
//! | table | key | value |
//! |---|---|---|
//! | `jobs` | queue, job id | the job's JSON |
//! | `attempts` | queue, job id | deliveries so far |
//! | `dead` | queue, job id | the dead letter as JSON |
//! | `counts` | queue, counter | `pushed`, `completed`, `failures` |
//! | `meta` | `seq`, `fence` | the job-id sequence and the lock-token ceiling |
//! | `locks` | key | the holder: node, claim, token, lease end |
//! | `confirms` | id, sender | order of arrival |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

/// Batches of changes waiting for the writer; a sender finding it full gets
/// `Overloaded`.
const PENDING: usize = 65_536;
/// Bytes of changes waiting for the writer, at most.
const PENDING_BYTES: usize = 256 * 1024 * 1024;
/// Most changes one transaction takes.
const BATCH: usize = 8_192;

const JOBS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("jobs");
const ATTEMPTS: TableDefinition<(&str, u64), u32> = TableDefinition::new("attempts");
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");
const COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("counts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
const CONFIRMS: TableDefinition<(&str, &str), u64> = TableDefinition::new("confirms");

/// The name of the state file in its directory.
pub(crate) const FILE: &str = "cluster.redb";

/// One change to the stored cluster state.
#[derive(Debug)]
pub(crate) enum Change {
    /// A job was pushed.
    Job {
        queue: String,
        id: u64,
        json: Vec<u8>,
    },
    /// A job's delivery count.
    Attempts {
        queue: String,
        id: u64,
        attempts: u32,
    },
    /// A job left its queue (completed or buried).
    Done { queue: String, id: u64 },
    /// A dead letter was kept.
    Dead {
        queue: String,
        id: u64,
        letter: Vec<u8>,
    },
    /// A dead letter was dropped to make room.
    Undead { queue: String, id: u64 },
    /// A queue's counter grows by `add`.
    Count {
        queue: String,
        counter: &'static str,
        add: u64,
    },
    /// The highest job id handed out.
    Seq(u64),
    /// No lock token at or above this has been handed out.
    Fence(u64),
    /// A lock's holder (JSON), or none.
    Lock {
        key: String,
        holder: Option<Vec<u8>>,
    },
    /// A sender confirmed an id.
    Confirm {
        id: String,
        sender: String,
        order: u64,
    },
    /// A confirmation id was forgotten.
    Forget { id: String },
}

/// Why the state could not be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The state directory cannot be created or written.
    #[error("state directory {dir} cannot be used: {reason} (set state.dir to a writable directory, or state.mode: memory)")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The state file is damaged.
    #[error("state file {file} is damaged: {reason}; move it aside to start with an empty state (mv {file} {file}.damaged), or restore it from a backup")]
    Damaged {
        /// The file.
        file: PathBuf,
        /// What redb found.
        reason: String,
    },
    /// Another process has the state file open.
    #[error("state file {file} is in use by another process (is a node named like this one already running?)")]
    InUse {
        /// The file.
        file: PathBuf,
    },
    /// Too much waits for the disk already.
    #[error("the cluster state cannot take more now: {0}")]
    Busy(String),
    /// A write failed.
    #[error("the cluster state could not be written to {file}: {reason}")]
    Write {
        /// The file.
        file: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// What the state file held when it was opened.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Jobs by queue, oldest first: id, attempts, JSON.
    pub(crate) jobs: BTreeMap<String, Vec<(u64, u32, Vec<u8>)>>,
    /// Dead letters by queue, oldest first: id, letter JSON.
    pub(crate) dead: BTreeMap<String, Vec<(u64, Vec<u8>)>>,
    /// Counters by queue and name.
    pub(crate) counts: BTreeMap<(String, String), u64>,
    /// The highest job id handed out.
    pub(crate) seq: u64,
    /// The lock-token ceiling.
    pub(crate) fence: u64,
    /// Held locks: key, holder JSON.
    pub(crate) locks: Vec<(String, Vec<u8>)>,
    /// Confirmations in order of arrival: their order number, id and sender.
    pub(crate) confirms: Vec<(u64, String, String)>,
}

/// What the writer calls once a batch's transaction is committed, or failed.
type Then = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Batch {
    changes: Vec<Change>,
    /// What the changes weigh, counted in [`Store::pending`] until written.
    bytes: usize,
    done: Option<Then>,
}

impl Change {
    /// Roughly what the change holds in memory while it waits.
    fn bytes(&self) -> usize {
        let payload = match self {
            Change::Job { queue, json, .. } => queue.len() + json.len(),
            Change::Dead { queue, letter, .. } => queue.len() + letter.len(),
            Change::Attempts { queue, .. }
            | Change::Done { queue, .. }
            | Change::Undead { queue, .. }
            | Change::Count { queue, .. } => queue.len(),
            Change::Lock { key, holder } => key.len() + holder.as_ref().map_or(0, Vec::len),
            Change::Confirm { id, sender, .. } => id.len() + sender.len(),
            Change::Forget { id } => id.len(),
            Change::Seq(_) | Change::Fence(_) => 0,
        };
        payload + std::mem::size_of::<Change>()
    }
}

/// The writer of one state file. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Store {
    tx: Arc<parking_lot::RwLock<Option<mpsc::Sender<Batch>>>>,
    writer: Arc<parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Bytes of changes sent and not yet written.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    file: Arc<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("file", &self.file).finish()
    }
}

impl Store {
    /// Opens (or creates) the state file in `dir`, reads it whole and starts its writer.
    pub(crate) fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let directory = |reason: String| StoreError::Directory {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| directory(e.to_string()))?;
        let probe = dir.join(".colony-write-check");
        std::fs::write(&probe, b"ok").map_err(|e| directory(format!("cannot write in it: {e}")))?;
        let _ = std::fs::remove_file(&probe);
        let file = dir.join(FILE);
        let db = open_file(&file)?;
        // A damaged file must refuse the start, never abort it.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&db)))
            .unwrap_or_else(|_| Err("its structure is inconsistent".into()))
            .map_err(|reason| StoreError::Damaged {
                file: file.clone(),
                reason,
            })?;
        let (tx, rx) = mpsc::channel(PENDING);
        let file = Arc::new(file);
        let writer_file = file.clone();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = pending.clone();
        let writer = std::thread::Builder::new()
            .name("colony-store".into())
            .spawn(move || write_loop(db, rx, &writer_file, &written))
            .map_err(|e| directory(format!("cannot start its writer thread: {e}")))?;
        let store = Store {
            tx: Arc::new(parking_lot::RwLock::new(Some(tx))),
            writer: Arc::new(parking_lot::Mutex::new(Some(writer))),
            pending,
            file,
        };
        Ok((store, loaded))
    }

    /// Writes what is waiting, then closes the file, so that another node may
    /// open it; later changes fail. Returns once the file is closed.
    pub(crate) fn close(&self) {
        self.tx.write().take();
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }

    /// The state file.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// Writes `changes` in the next transaction; resolves once it is committed.
    pub(crate) fn commit(
        &self,
        changes: Vec<Change>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (done, rx) = oneshot::channel();
        self.commit_then(changes, move |kept| {
            let _ = done.send(kept);
        })?;
        Ok(rx)
    }

    /// Writes `changes` in the next transaction, and calls `then` (on the
    /// writer's thread) once it is committed or has failed, whether or not
    /// anyone still waits for it. `then` is not called when the changes cannot
    /// be sent at all (the error comes back at once).
    pub(crate) fn commit_then(
        &self,
        changes: Vec<Change>,
        then: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.send(Batch {
            bytes: changes.iter().map(Change::bytes).sum(),
            changes,
            done: Some(Box::new(then)),
        })
    }

    /// Writes `changes` in the next transaction, without waiting for it.
    pub(crate) fn record(&self, changes: Vec<Change>) {
        if let Err(e) = self.send(Batch {
            bytes: changes.iter().map(Change::bytes).sum(),
            changes,
            done: None,
        }) {
            log::error!("{e}");
        }
    }

    fn send(&self, batch: Batch) -> Result<(), StoreError> {
        let tx = self.tx.read();
        let Some(tx) = tx.as_ref() else {
            return Err(StoreError::Write {
                file: self.file.to_path_buf(),
                reason: "the cluster state is closed (the node is stopping)".into(),
            });
        };
        let bytes = batch.bytes;
        let before = self.pending.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > PENDING_BYTES {
            self.pending.fetch_sub(bytes, Ordering::AcqRel);
            return Err(StoreError::Busy(format!(
                "{before} bytes of changes are waiting for the disk already (at most {PENDING_BYTES})"
            )));
        }
        tx.try_send(batch).map_err(|e| {
            self.pending.fetch_sub(bytes, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Busy(format!("{PENDING} writes are waiting for the disk already"))
                }
                mpsc::error::TrySendError::Closed(_) => StoreError::Write {
                    file: self.file.to_path_buf(),
                    reason: "its writer has stopped".into(),
                },
            }
        })
    }
}

/// Waits for a commit answer from [`Store::commit`].
pub(crate) async fn committed(
    rx: oneshot::Receiver<Result<(), StoreError>>,
    file: &Path,
) -> Result<(), StoreError> {
    rx.await.unwrap_or_else(|_| {
        Err(StoreError::Write {
            file: file.to_path_buf(),
            reason: "its writer has stopped".into(),
        })
    })
}

fn open_file(file: &Path) -> Result<Database, StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        file: file.to_path_buf(),
        reason,
    };
    // redb checks a file's checksums as it opens it; a damaged file must refuse the
    // start, never abort it, so a panic inside the check is an error too.
    let opened = std::panic::catch_unwind(|| {
        Database::builder()
            .set_check_integrity_on_open(true)
            .create(file)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::InUse {
            file: file.to_path_buf(),
        }),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Err(StoreError::Directory {
                dir: file.parent().unwrap_or(file).to_path_buf(),
                reason: format!("{}: {e}", file.display()),
            })
        }
        Ok(Err(e)) => Err(damaged(e.to_string())),
        Err(_) => Err(damaged("its structure is inconsistent".into())),
    }
}

fn load(db: &Database) -> Result<Loaded, String> {
    // Create every table once, so that reading never meets a missing one.
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        txn.open_table(JOBS).map_err(|e| e.to_string())?;
        txn.open_table(ATTEMPTS).map_err(|e| e.to_string())?;
        txn.open_table(DEAD).map_err(|e| e.to_string())?;
        txn.open_table(COUNTS).map_err(|e| e.to_string())?;
        txn.open_table(META).map_err(|e| e.to_string())?;
        txn.open_table(LOCKS).map_err(|e| e.to_string())?;
        txn.open_table(CONFIRMS).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let s = |e: redb::StorageError| e.to_string();
    let t = |e: redb::TableError| e.to_string();
    let mut loaded = Loaded::default();
    let attempts = txn.open_table(ATTEMPTS).map_err(t)?;
    for row in txn.open_table(JOBS).map_err(t)?.iter().map_err(s)? {
        let (key, json) = row.map_err(s)?;
        let (queue, id) = key.value();
        let tries = attempts
            .get((queue, id))
            .map_err(s)?
            .map_or(0, |a| a.value());
        loaded
            .jobs
            .entry(queue.to_string())
            .or_default()
            .push((id, tries, json.value().to_vec()));
    }
    for row in txn.open_table(DEAD).map_err(t)?.iter().map_err(s)? {
        let (key, letter) = row.map_err(s)?;
        let (queue, id) = key.value();
        loaded
            .dead
            .entry(queue.to_string())
            .or_default()
            .push((id, letter.value().to_vec()));
    }
    for row in txn.open_table(COUNTS).map_err(t)?.iter().map_err(s)? {
        let (key, value) = row.map_err(s)?;
        let (queue, counter) = key.value();
        loaded
            .counts
            .insert((queue.to_string(), counter.to_string()), value.value());
    }
    let meta = txn.open_table(META).map_err(t)?;
    loaded.seq = meta.get("seq").map_err(s)?.map_or(0, |v| v.value());
    loaded.fence = meta.get("fence").map_err(s)?.map_or(0, |v| v.value());
    for row in txn.open_table(LOCKS).map_err(t)?.iter().map_err(s)? {
        let (key, holder) = row.map_err(s)?;
        loaded
            .locks
            .push((key.value().to_string(), holder.value().to_vec()));
    }
    let mut confirms = Vec::new();
    for row in txn.open_table(CONFIRMS).map_err(t)?.iter().map_err(s)? {
        let (key, order) = row.map_err(s)?;
        let (id, sender) = key.value();
        confirms.push((order.value(), id.to_string(), sender.to_string()));
    }
    confirms.sort();
    loaded.confirms = confirms;
    Ok(loaded)
}

fn write_loop(
    db: Database,
    mut rx: mpsc::Receiver<Batch>,
    file: &Path,
    pending: &std::sync::atomic::AtomicUsize,
) {
    let mut db = Some(db);
    while let Some(first) = rx.blocking_recv() {
        let mut batches = vec![first];
        let mut changes = batches[0].changes.len();
        while changes < BATCH {
            match rx.try_recv() {
                Ok(batch) => {
                    changes += batch.changes.len();
                    batches.push(batch);
                }
                Err(_) => break,
            }
        }
        // After a failed write redb refuses every later one on the same handle
        // (`PreviousIo`): the file is opened again, so that once the disk has
        // room, writes succeed again.
        if db.is_none() {
            db = open_file(file).ok();
        }
        let result = match &db {
            Some(open) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(open, &batches)))
                    .unwrap_or_else(|_| Err("the write failed inside the store".into()))
            }
            None => Err("the file could not be opened again after a failed write".into()),
        };
        let result = result.map_err(|reason| StoreError::Write {
            file: file.to_path_buf(),
            reason,
        });
        if let Err(e) = &result {
            log::error!("{e}");
            db = None;
        }
        for batch in batches {
            pending.fetch_sub(batch.bytes, Ordering::AcqRel);
            if let Some(then) = batch.done {
                then(result.clone());
            }
        }
    }
}

fn apply(db: &Database, batches: &[Batch]) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    {
        let s = |e: redb::StorageError| e.to_string();
        let t = |e: redb::TableError| e.to_string();
        let mut jobs = txn.open_table(JOBS).map_err(t)?;
        let mut attempts = txn.open_table(ATTEMPTS).map_err(t)?;
        let mut dead = txn.open_table(DEAD).map_err(t)?;
        let mut counts = txn.open_table(COUNTS).map_err(t)?;
        let mut meta = txn.open_table(META).map_err(t)?;
        let mut locks = txn.open_table(LOCKS).map_err(t)?;
        let mut confirms = txn.open_table(CONFIRMS).map_err(t)?;
        for change in batches.iter().flat_map(|b| &b.changes) {
            match change {
                Change::Job { queue, id, json } => {
                    jobs.insert((queue.as_str(), *id), json.as_slice())
                        .map_err(s)?;
                }
                Change::Attempts {
                    queue,
                    id,
                    attempts: n,
                } => {
                    // Only for a job still kept: a late count never revives a done job.
                    if jobs.get((queue.as_str(), *id)).map_err(s)?.is_some() {
                        attempts.insert((queue.as_str(), *id), *n).map_err(s)?;
                    }
                }
                Change::Done { queue, id } => {
                    jobs.remove((queue.as_str(), *id)).map_err(s)?;
                    attempts.remove((queue.as_str(), *id)).map_err(s)?;
                }
                Change::Dead { queue, id, letter } => {
                    dead.insert((queue.as_str(), *id), letter.as_slice())
                        .map_err(s)?;
                }
                Change::Undead { queue, id } => {
                    dead.remove((queue.as_str(), *id)).map_err(s)?;
                }
                Change::Count {
                    queue,
                    counter,
                    add,
                } => {
                    let key = (queue.as_str(), *counter);
                    let now = counts.get(key).map_err(s)?.map_or(0, |v| v.value());
                    counts.insert(key, now.saturating_add(*add)).map_err(s)?;
                }
                Change::Seq(seq) => {
                    raise(&mut meta, "seq", *seq)?;
                }
                Change::Fence(fence) => {
                    raise(&mut meta, "fence", *fence)?;
                }
                Change::Lock { key, holder } => match holder {
                    Some(holder) => {
                        locks.insert(key.as_str(), holder.as_slice()).map_err(s)?;
                    }
                    None => {
                        locks.remove(key.as_str()).map_err(s)?;
                    }
                },
                Change::Confirm { id, sender, order } => {
                    confirms
                        .insert((id.as_str(), sender.as_str()), *order)
                        .map_err(s)?;
                }
                Change::Forget { id } => {
                    let senders: Vec<String> = confirms
                        .range((id.as_str(), "")..)
                        .map_err(s)?
                        .map_while(|row| {
                            let (key, _) = row.ok()?;
                            let (i, sender) = key.value();
                            (i == id.as_str()).then(|| sender.to_string())
                        })
                        .collect();
                    for sender in senders {
                        confirms.remove((id.as_str(), sender.as_str())).map_err(s)?;
                    }
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// Sets `meta[name]` to `value` unless it is already higher: sequences never go back.
fn raise(meta: &mut redb::Table<&str, u64>, name: &str, value: u64) -> Result<(), String> {
    let now = meta
        .get(name)
        .map_err(|e| e.to_string())?
        .map_or(0, |v| v.value());
    if value > now {
        meta.insert(name, value).map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl From<StoreError> for crate::error::ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy(_) => crate::error::ServiceError::overloaded(e.to_string()),
            _ => crate::error::ServiceError::service_failed(e.to_string()),
        }
    }
}
