//! Group commit: one thread owns the only writing connection. Each write is a job; the thread
//! takes every job waiting, runs them all inside one transaction, commits once (one fsync for
//! all of them), and only then answers each job. So a caller hears "done" only after its rows
//! are on disk, and concurrent callers share the fsync instead of queueing for one each.
//!
//! Jobs rarely fail (a duplicate key name, say), so a group first runs without savepoints: a
//! savepoint per job would make SQLite journal every page a job touches that an earlier job
//! already dirtied. If any job fails, the whole group is rolled back and run again with one
//! savepoint per job, so one failure never undoes the others. Jobs may therefore run twice;
//! they only touch the database, which the rollback restored.
//!
//! Not every write needs the fsync. [`Durability::Full`] (ingest, operator actions, keys) commits
//! with `synchronous=FULL`. [`Durability::Relaxed`] (claims, attempt records, deferrals) commits
//! with `synchronous=NORMAL`: in WAL mode that survives a crash of the process, and only a power
//! loss can lose it, which at worst delivers a callback once more (at-least-once). The next
//! full commit fsyncs the WAL, relaxed frames included.
use std::sync::mpsc;
use std::thread;

use fluxcb_core::ports::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::classify;

/// Jobs beyond this wait for the next transaction, bounding commit latency.
const MAX_JOBS_PER_COMMIT: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Fsync'd before the caller hears back.
    Full,
    /// Survives a process crash; a power loss may lose it.
    Relaxed,
}

/// A write waiting for its group's commit.
trait Job: Send {
    fn durability(&self) -> Durability;
    /// Runs against the open transaction; false when the job failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// The job could not run: there is no transaction.
    fn fail(&mut self, err: StoreError);
    /// Answers the caller once the group's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct TypedJob<R, F> {
    durability: Durability,
    work: F,
    result: Option<Result<R, StoreError>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R, F> Job for TypedJob<R, F>
where
    R: Send,
    F: FnMut(&Connection) -> Result<R, StoreError> + Send,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, err: StoreError) {
        self.result = Some(Err(err));
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (self.result, commit) {
            // A job's own failure is its answer, whatever became of the others.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(e)) => Err(e),
            (Some(Ok(r)), Ok(())) => Ok(r),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::Internal("a write was never run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::SyncSender<Box<dyn Job>>,
}

impl Writer {
    pub fn start(conn: Connection, capacity: usize) -> (Self, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel::<Box<dyn Job>>(capacity);
        let handle = thread::Builder::new()
            .name("fluxcb-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .expect("spawning the writer thread");
        (Self { jobs: tx }, handle)
    }

    /// Runs `f` in the next group transaction and resolves after the commit. `f` may run more
    /// than once (see the module doc) and must only act through the connection.
    pub async fn write<R, F>(&self, durability: Durability, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(TypedJob {
            durability,
            work: f,
            result: None,
            reply,
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(StoreError::Busy("the write queue is full".into()))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable("the store is shut down".into()))
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the writer stopped".into())))
    }
}

fn run(mut conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>) {
    let mut current = Durability::Full;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let wanted = if batch.iter().any(|j| j.durability() == Durability::Full) {
            Durability::Full
        } else {
            Durability::Relaxed
        };
        if wanted != current {
            let level = match wanted {
                Durability::Full => "FULL",
                Durability::Relaxed => "NORMAL",
            };
            match conn.pragma_update(None, "synchronous", level) {
                Ok(()) => current = wanted,
                Err(e) => tracing::error!(error = %e, "cannot change synchronous mode"),
            }
        }
        // A failed switch to FULL must not let a durable write through unsynced.
        if wanted == Durability::Full && current != Durability::Full {
            let err = StoreError::Unavailable("cannot enable synchronous commits".into());
            finish_all(batch, Err(err));
            continue;
        }
        commit_batch(&mut conn, batch);
    }
    tracing::debug!("writer thread stopped");
}

fn finish_all(batch: Vec<Box<dyn Job>>, outcome: Result<(), StoreError>) {
    for job in batch {
        job.finish(outcome.clone());
    }
}

fn commit_batch(conn: &mut Connection, mut batch: Vec<Box<dyn Job>>) {
    match run_group(conn, &mut batch, false) {
        Ok(true) => finish_all(batch, Ok(())),
        Ok(false) => {
            // Somebody failed: the group was rolled back. Again, each job on its own.
            let outcome = run_group(conn, &mut batch, true).map(|_| ());
            finish_all(batch, outcome);
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = batch.len(), "group commit failed");
            finish_all(batch, Err(e));
        }
    }
}

/// Runs the jobs in one transaction. Without isolation, stops at the first failing job, rolls
/// back and answers `Ok(false)`; with isolation, keeps each job's writes only if it succeeded
/// and commits the rest.
fn run_group(
    conn: &mut Connection,
    batch: &mut [Box<dyn Job>],
    isolated: bool,
) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(classify)?;
    for job in batch.iter_mut() {
        if !isolated {
            if !job.run(&tx) {
                return Ok(false); // dropping `tx` rolls back
            }
            continue;
        }
        if let Err(e) = tx.execute_batch("SAVEPOINT job") {
            job.fail(classify(e));
            continue;
        }
        let end = if job.run(&tx) {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        tx.execute_batch(end).map_err(classify)?;
    }
    tx.commit().map_err(classify)?;
    Ok(true)
}
