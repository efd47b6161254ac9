//! `fluxcb migrate export`: the rollback. Hands every unfinished callback fluxcb owns back to
//! the legacy table, after which `cutover_percent = 0` returns the whole flow to legacy.
//!
//! 1. Fence: those callbacks become mirrors in fluxcb, so no new attempt starts.
//! 2. Wait for attempts already in flight to finish (and be recorded).
//! 3. Write each into the legacy table with its own id, schedule and attempts.
//! 4. Move the legacy sequence past every id fluxcb has used.
//! 5. Mark each handed back in its audit trail.
//!
//! Nothing is lost: a callback is fenced before it is written, and writing is idempotent, so a
//! failed export is rerun. A duplicate is possible only for an attempt still in flight when the
//! wait ran out; it carries the same id.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use fluxcb_core::callback::Callback;
use fluxcb_core::legacy::row::row_from_callback;
use fluxcb_core::ports::{CallbackStore, LegacyListFilter, StoreError};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::Scope;
use serde::Serialize;

use crate::{LegacyDb, LegacyDbError};

#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    /// Callbacks handed back by this run (an earlier, interrupted run's included).
    pub fenced: u64,
    /// Of those, in flight when fenced; `still_in_flight` had not finished when the wait ran out.
    pub in_flight: u64,
    pub still_in_flight: u64,
    pub written: u64,
    /// Written rows by legacy status.
    pub by_status: BTreeMap<String, u64>,
    /// The legacy sequence now continues after this id.
    pub sequence_past: i64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the legacy database failed: {0}; nothing is lost (fenced callbacks wait in fluxcb), rerun the export")]
    Legacy(#[from] LegacyDbError),
    #[error("the store failed: {0}; rerun the export")]
    Store(#[from] StoreError),
}

pub async fn export(
    db: &LegacyDb,
    store: &dyn CallbackStore,
    wait: Duration,
) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    let mut report = ExportReport::default();
    // Includes callbacks an interrupted earlier run fenced but did not write.
    let todo: Vec<Callback> = store.fence_for_handback(Utc::now()).await?;
    report.fenced = todo.len() as u64;
    let in_flight: Vec<&Callback> = todo
        .iter()
        .filter(|c| c.status == Status::Delivering)
        .collect();
    report.in_flight = in_flight.len() as u64;
    let deadline = Instant::now() + wait;
    for cb in &in_flight {
        while Instant::now() < deadline {
            match store.get(&Scope::All, &cb.id).await? {
                Some(d) if d.callback.status == Status::Delivering => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => break,
            }
        }
    }
    let mut highest = 0;
    for before in &todo {
        let Some(now) = store.get(&Scope::All, &before.id).await? else {
            continue;
        };
        let cb = now.callback;
        if cb.status == Status::Delivering {
            report.still_in_flight += 1;
        }
        // Due when it was due here; an attempt that ended during the hand-back is due again now.
        let callback_time = match (before.status, cb.status) {
            (Status::Scheduled | Status::Pending, _) => {
                before.next_attempt_at.unwrap_or(cb.updated_at)
            }
            (_, Status::Pending | Status::Delivering) => Utc::now(),
            _ => cb.spec.deliver_at.unwrap_or(cb.created_at),
        };
        let Some(row) = row_from_callback(&cb, callback_time) else {
            continue;
        };
        db.write_back(&row).await?;
        highest = highest.max(row.id);
        *report.by_status.entry(row.status.clone()).or_default() += 1;
        report.written += 1;
        store
            .mark_handed_back(
                &cb.id,
                serde_json::json!({"legacy_id": row.id, "status": row.status}),
            )
            .await?;
    }
    // Past every id fluxcb ever gave out, handed back or not, so legacy never reuses one.
    let newest = store
        .list_legacy(&Scope::All, &LegacyListFilter::default(), 0, 1)
        .await?;
    let past = newest
        .items
        .first()
        .and_then(|c| c.legacy_id)
        .unwrap_or(0)
        .max(highest);
    db.advance_sequence_past(past).await?;
    report.sequence_past = past;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
