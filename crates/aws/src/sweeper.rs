//! The sweeper, run every minute (an EventBridge schedule on Lambda, a timer in container
//! mode). It closes every gap between the table and the queue: callbacks scheduled or retried
//! beyond SQS's 15-minute delay get their message when they come within reach, a message lost
//! between a table write and `SendMessage` is sent again once its callback is overdue, and
//! callbacks held by a worker that died go back to waiting when their lease ends.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use fluxcb_core::metric_names as names;
use fluxcb_core::ports::{Due, StoreError};

use crate::queue::{QueueDepths, SqsQueue};
use crate::store::{DynamoStore, SweepKind};

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

impl Sweeper {
    pub async fn sweep_once(&self, now: DateTime<Utc>) -> Result<SweepReport, StoreError> {
        let candidates = self.store.sweep_candidates(now, self.limit).await?;
        let mut report = SweepReport::default();
        let mut due = Vec::new();
        for c in &candidates {
            match c.kind {
                SweepKind::ExpiredLease => {
                    let Some(cb) = &c.callback else { continue };
                    if self.store.recover(cb, now).await? {
                        tracing::warn!(callback_id = %c.id, tenant = %cb.tenant, "lease expired: returned to waiting");
                        report.recovered += 1;
                        let mut fresh = c.clone();
                        fresh.enqueued_at = None;
                        if self.store.mark_enqueued(&fresh, now).await? {
                            due.push(Due {
                                id: c.id,
                                tenant: c.tenant.clone(),
                                at: now,
                            });
                        }
                    }
                }
                // Marked before sending, so two sweepers never both send; a send that fails
                // after the mark is retried once the grace period has passed.
                SweepKind::Enqueue => {
                    if self.store.mark_enqueued(c, now).await? {
                        due.push(Due {
                            id: c.id,
                            tenant: c.tenant.clone(),
                            at: c.due_at,
                        });
                    }
                }
            }
        }
        self.queue.send_due(&due, now).await?;
        report.enqueued = due.len() as u64;
        metrics::counter!(names::SWEEPER_ENQUEUED).increment(report.enqueued);
        metrics::counter!(names::LEASES_RECOVERED).increment(report.recovered);
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
}
