//! The embedded store: one SQLite file holds callbacks (which are also the queue: a due
//! callback is a row in `scheduled`/`pending` with `next_attempt_at <= now`), attempts, the
//! audit trail, idempotency records, API keys and signing secrets.
//!
//! Ingest writes the callback, its queue entry (the same row) and its idempotency record in one
//! transaction, so there is no window where one exists without the other. All writes go through
//! [`writer::Writer`]'s group commit with `synchronous=FULL` in WAL mode: an acknowledged write
//! has been fsync'd. Reads use a small pool of separate connections, which WAL lets run beside
//! the writer.

mod callbacks;
mod destinations;
pub mod error;
mod files;
mod keys;
mod legacy;
mod ops;
mod rows;
mod schema;
mod stats;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxcb_core::ports::StoreError;
use rusqlite::{Connection, OpenFlags};

pub use error::OpenError;
pub use files::{backup, restore, DataDirLock, Restored, LOCK_FILE};
pub use schema::SCHEMA_VERSION;

use crate::error::classify;
use crate::writer::Writer;

pub const DB_FILE: &str = "fluxcb.db";
/// Jobs that may wait for the writer before ingest answers 503 instead of queueing forever.
const WRITE_QUEUE_CAPACITY: usize = 16_384;
/// How long a write waits for another process's lock (a backup, a CLI command) before the
/// caller is told the store is busy.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Writer,
    readers: ReadPool,
    path: PathBuf,
    /// What a dead letter does to its ordering key (`ordering_after_dead_letter`).
    hold_after_dead_letter: std::sync::atomic::AtomicBool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and migrates its schema.
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        files::create_private_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        files::make_private(&path).map_err(|source| OpenError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        let (writer, _thread) = Writer::start(conn, WRITE_QUEUE_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                readers: ReadPool {
                    path: path.clone(),
                    idle: Mutex::new(Vec::new()),
                },
                path,
                hold_after_dead_letter: Default::default(),
            }),
        })
    }

    /// What a dead letter does to the later callbacks of its ordering key (default: continue).
    pub fn set_after_dead_letter(&self, policy: fluxcb_core::ordering::AfterDeadLetter) {
        self.inner.hold_after_dead_letter.store(
            policy == fluxcb_core::ordering::AfterDeadLetter::Hold,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(crate) fn after_dead_letter(&self) -> fluxcb_core::ordering::AfterDeadLetter {
        if self
            .inner
            .hold_after_dead_letter
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            fluxcb_core::ordering::AfterDeadLetter::Hold
        } else {
            fluxcb_core::ordering::AfterDeadLetter::Continue
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsync'd at every commit, so an acknowledged callback survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    // Every group-commit job runs in a savepoint, whose sub-journal would otherwise be a temp
    // file written for each page a job touches.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Read connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

const MAX_IDLE_READERS: usize = 8;

impl ReadPool {
    fn with<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, StoreError> {
        let reused = self.idle.lock().expect("reader pool poisoned").pop();
        let conn = match reused {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(classify)?;
                c.busy_timeout(BUSY_TIMEOUT).map_err(classify)?;
                c.pragma_update(None, "query_only", true)
                    .map_err(classify)?;
                c
            }
        };
        let result = f(&conn).map_err(classify);
        let mut idle = self.idle.lock().expect("reader pool poisoned");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_stats;
