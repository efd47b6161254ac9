//! Group commit: one thread owns the only writing connection. Each write is a job; the thread
//! takes every job waiting, runs each in its own savepoint inside one transaction, commits once
//! (one fsync for all of them), and only then answers each job. So a caller hears "done" only
//! after its rows are on disk, and concurrent callers share the fsync instead of queueing for
//! one each.
use std::sync::mpsc;
use std::thread;

use fluxcb_core::ports::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::classify;

/// Jobs beyond this wait for the next transaction, bounding commit latency.
const MAX_JOBS_PER_COMMIT: usize = 1024;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs against the open transaction, or learns why there is none.
type Work = Box<dyn FnOnce(Result<&Connection, StoreError>) -> (bool, Completion) + Send>;

struct Job {
    durability: Durability,
    work: Work,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Fsync'd before the caller hears back.
    Full,
    /// Survives a process crash; a power loss may lose it.
    Relaxed,
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::SyncSender<Job>,
}

impl Writer {
    pub fn start(conn: Connection, capacity: usize) -> (Self, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel::<Job>(capacity);
        let handle = thread::Builder::new()
            .name("fluxcb-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .expect("spawning the writer thread");
        (Self { jobs: tx }, handle)
    }

    /// Runs `f` in the next group transaction and resolves after the commit.
    pub async fn write<R, F>(&self, durability: Durability, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let result = conn.and_then(f);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            });
            (ok, completion)
        });
        let job = Job { durability, work };
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

fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    let mut current = Durability::Full;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let wanted = if batch.iter().any(|j| j.durability == Durability::Full) {
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
            for job in batch {
                let (_, completion) = (job.work)(Err(err.clone()));
                completion(Err(err.clone()));
            }
            continue;
        }
        commit_batch(&mut conn, batch);
    }
    tracing::debug!("writer thread stopped");
}

fn commit_batch(conn: &mut Connection, batch: Vec<Job>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let err = classify(e);
            tracing::warn!(error = %err, jobs = batch.len(), "cannot begin a write transaction");
            for job in batch {
                let (_, completion) = (job.work)(Err(err.clone()));
                completion(Err(err.clone()));
            }
            return;
        }
    };
    let mut completions = Vec::with_capacity(batch.len());
    for job in batch {
        // A savepoint per job: one job's failure must not undo the others' writes.
        let (ok, completion) = match tx.execute_batch("SAVEPOINT job") {
            Ok(()) => (job.work)(Ok(&tx)),
            Err(e) => (job.work)(Err(classify(e))),
        };
        let end = if ok {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        if let Err(e) = tx.execute_batch(end) {
            tracing::error!(error = %classify(e), "cannot close a savepoint");
        }
        completions.push(completion);
    }
    let committed = tx.commit().map_err(classify);
    if let Err(e) = &committed {
        tracing::warn!(error = %e, jobs = completions.len(), "group commit failed");
    }
    for completion in completions {
        completion(committed.clone());
    }
}
