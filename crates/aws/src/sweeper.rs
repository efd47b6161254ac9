//! The sweeper, run every minute (an EventBridge schedule on Lambda, a timer in container
//! mode). It closes every gap between the table and the queue: callbacks scheduled or retried
//! beyond SQS's 15-minute delay get their message when they come within reach, a message lost
//! between a table write and `SendMessage` is sent again once its callback is overdue, and
//! callbacks held by a worker that died go back to waiting when their lease ends.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use fluxcb_core::metric_names as names;
use fluxcb_core::ports::{Due, StoreError};

use futures_util::StreamExt;

use crate::queue::{QueueDepths, SqsQueue};
use crate::store::{DynamoStore, SweepCandidate, SweepKind};

pub struct Sweeper {
    pub store: Arc<DynamoStore>,
    pub queue: SqsQueue,
    /// Candidates handled per run, so that one run stays within the function's timeout.
    pub limit: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub enqueued: u64,
    pub recovered: u64,
    pub depths: Option<QueueDepths>,
}

/// Candidates marked, then sent, at a time (two `SendMessageBatch` calls). A sweep cut short
/// (a crash, the function's timeout, a failed send) leaves at most this many marked as sent
/// with no message, and those wait another grace period; the rest were sent, or are still
/// candidates for the next sweep.
pub const CHUNK: usize = 20;
/// Table writes in flight at once within a chunk.
const CONCURRENT_WRITES: usize = 10;

impl Sweeper {
    pub async fn sweep_once(&self, now: DateTime<Utc>) -> Result<SweepReport, StoreError> {
        let candidates = self.store.sweep_candidates(now, self.limit).await?;
        let mut report = SweepReport::default();
        let mut outcome = Ok(());
        // Each chunk's messages go out as soon as it is marked: marking every candidate first
        // and sending at the end left a sweep that was cut short (or that took longer than the
        // function's timeout, with a big backlog) with everything marked and nothing sent.
        for chunk in candidates.chunks(CHUNK) {
            let work: Vec<_> = chunk.iter().map(|c| self.sweep_one(c, now)).collect();
            let swept: Vec<Result<Swept, StoreError>> = futures_util::stream::iter(work)
                .buffered(CONCURRENT_WRITES)
                .collect()
                .await;
            let mut due = Vec::new();
            let mut failure = None;
            for one in swept {
                match one {
                    Ok(one) => {
                        report.recovered += u64::from(one.recovered);
                        due.extend(one.due);
                    }
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            // What was marked is sent even when another candidate failed.
            if let Err(e) = self.queue.send_due(&due, now).await {
                outcome = Err(e);
                break;
            }
            report.enqueued += due.len() as u64;
            if let Some(e) = failure {
                outcome = Err(e);
                break;
            }
        }
        metrics::counter!(names::SWEEPER_ENQUEUED).increment(report.enqueued);
        metrics::counter!(names::LEASES_RECOVERED).increment(report.recovered);
        outcome?;
        match self.queue.depths().await {
            Ok(d) => {
                for (queue, state, value) in [
                    ("work", "visible", d.visible),
                    ("work", "delayed", d.delayed),
                    ("work", "in_flight", d.in_flight),
                    ("dead_letter", "visible", d.dead_letter),
                ] {
                    metrics::gauge!(names::QUEUE_MESSAGES, "queue" => queue, "state" => state)
                        .set(value as f64);
                }
                report.depths = Some(d);
            }
            Err(e) => tracing::warn!(error = %e, "could not read queue depths"),
        }
        Ok(report)
    }

    /// One candidate: an expired lease returned to waiting, or a waiting callback marked as
    /// sent; the message to send for it, if this sweep is the one to send it.
    async fn sweep_one(&self, c: &SweepCandidate, now: DateTime<Utc>) -> Result<Swept, StoreError> {
        match c.kind {
            SweepKind::ExpiredLease => {
                let Some(cb) = &c.callback else {
                    return Ok(Swept::default());
                };
                if !self.store.recover(cb, now).await? {
                    return Ok(Swept::default());
                }
                tracing::warn!(callback_id = %c.id, tenant = %cb.tenant, "lease expired: returned to waiting");
                let mut fresh = c.clone();
                fresh.enqueued_at = None;
                let marked = self.store.mark_enqueued(&fresh, now).await?;
                Ok(Swept {
                    recovered: true,
                    due: marked.then(|| Due {
                        id: c.id,
                        tenant: c.tenant.clone(),
                        at: now,
                    }),
                })
            }
            // Marked before sending, so two sweepers never both send; a send that fails after
            // the mark is retried once the grace period has passed.
            SweepKind::Enqueue => {
                let marked = self.store.mark_enqueued(c, now).await?;
                Ok(Swept {
                    recovered: false,
                    due: marked.then(|| Due {
                        id: c.id,
                        tenant: c.tenant.clone(),
                        at: c.due_at,
                    }),
                })
            }
        }
    }
}

#[derive(Default)]
struct Swept {
    recovered: bool,
    due: Option<Due>,
}
