//! `fluxcb migrate compare`: reconciles the legacy table with fluxcb's records, to gate a
//! cutover.
//!
//! The legacy table is read in id order, a batch at a time, and each row is looked up in
//! fluxcb's store by its legacy id. Then fluxcb's callbacks are read once (keyset pages over the
//! whole store) for the other direction. What is counted:
//!
//! | category | what | a difference? |
//! |---|---|---|
//! | `missing` | a legacy row fluxcb has no callback for (with why: not imported yet, or not importable) | yes |
//! | `extra` | a mirror (owner legacy) whose legacy row is gone. fluxcb's own callbacks are not expected in the legacy table (split mode) | yes |
//! | `field_mismatches` | rows whose url, method, headers, payload, external_id, max_attempts, or callback_time (before any attempt) differ (`compare/fields.rs`) | yes, per row |
//! | `request_differences` | rows for which the request fluxcb would send differs from the one the legacy sender would: wire format, URL, method, headers, body bytes, signature (`compare/request.rs`) | yes, per row |
//! | `unreadable` | legacy rows that cannot be decoded (see the crate docs), so cannot be checked | yes |
//! | `receivers.blocked` | hosts in the legacy table that resolve to an address fluxcb's SSRF policy refuses | yes, per host |
//! | `stale_mirrors` | mirrors whose status or attempt count lags their row; a re-import refreshes them | no |
//! | `receivers.redirecting`, `.unsupported_scheme`, `.unresolvable` | hosts that answered fluxcb with a 3xx (legacy followed redirects); non-http(s) URLs; hosts that do not resolve here | no |
//! | `schedule`, `outcomes` | timing and outcome distributions | no |
//!
//! The exit code gate is `differences > threshold`.
//!
//! Schedule: `legacy_send_delay` is `sent_at - callback_time` over rows that succeeded at their
//! first attempt (legacy's poll delay, its queue and the send itself: the bar fluxcb's own
//! delivery delay is held to); `deliver_at_drift` is `|deliver_at - callback_time|` over matched
//! rows with no legacy attempt yet (afterwards legacy moves callback_time to the next retry).
//! Outcomes: the legacy table's status counts beside those of the callbacks with a legacy id
//! that fluxcb delivers, with each side's succeeded / (succeeded + failed).
//!
//! Memory: 8 bytes per legacy row (the ids read, to find extras) and per first-attempt
//! success (the delays), plus one entry per distinct receiver host. fluxcb's side is read with
//! the keyset-paged `list`, not `list_legacy`, whose offset pages (and a count per page) would
//! make the pass quadratic in the number of mirrors.
//!
//! Not detectable here: what receivers actually do with a request (compare checks what would
//! be sent, not what answers); URL normalisation differences between Python's `requests` and
//! the `url` crate beyond what parsing shows; payload integers beyond 64 bits (the legacy
//! database reader already rounds them, see the crate docs, for both sides); fluxcb callbacks
//! created through its legacy API in split mode, which by design are not in the legacy table;
//! and rows inserted or changed while the comparison runs.
mod fields;
mod human;
mod receivers;
mod report;
mod request;

use std::time::{Duration, Instant};

use chrono::Utc;
use fluxcb_core::callback::{Callback, CallbackDefaults, Owner};
use fluxcb_core::legacy::api::legacy_status;
use fluxcb_core::legacy::row::callback_from_row;
use fluxcb_core::ports::{CallbackDetail, CallbackStore, ListFilter, PageRequest, StoreError};
use fluxcb_core::target::TargetPolicy;
use fluxcb_core::tenant::Scope;
use futures_util::stream::{self, StreamExt, TryStreamExt};

pub use fields::FieldMismatch;
pub use receivers::{
    BlockedAddress, BlockedHost, ReceiversReport, RedirectingHost, UnresolvableHost,
    UnsupportedScheme, BLOCKED_HINT, REDIRECT_NOTE,
};
use report::distribution;
pub use report::{
    Category, CompareReport, Distribution, Drift, ExtraCallback, FieldMismatches, MissingRow,
    Outcomes, RequestDifferences, RowFields, RowRequest, Schedule, StatusCounts, UnreadableRow,
};
pub use request::RequestDifference;

use crate::import::Progress;
use crate::{LegacyDb, LegacyDbError, LegacyRow};

/// fluxcb lookups in flight at once while a batch is compared.
const LOOKUPS: usize = 16;

#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Legacy rows per read.
    pub batch: u32,
    /// The legacy shared signing secret; without it signatures are not compared.
    pub legacy_secret: Option<Vec<u8>>,
    /// fluxcb's SSRF policy, with the installation's allow-list.
    pub policy: TargetPolicy,
    /// Differences allowed before the comparison fails.
    pub threshold: u64,
    /// Examples kept per category.
    pub samples: usize,
    /// Per host name.
    pub resolve_timeout: Duration,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            batch: 500,
            legacy_secret: None,
            policy: TargetPolicy::public_only(),
            threshold: 0,
            samples: 20,
            resolve_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("the comparison stopped after legacy id {after}: {source}")]
    Legacy { after: i64, source: LegacyDbError },
    #[error("the comparison stopped after legacy id {after}: the store failed: {source}")]
    Store { after: i64, source: StoreError },
}

/// Reads the legacy table and fluxcb's store (both read-only), resolves the receivers' hosts,
/// and reports what differs; `progress` is told after each batch of legacy rows.
pub async fn compare(
    db: &LegacyDb,
    store: &dyn CallbackStore,
    options: &CompareOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<CompareReport, CompareError> {
    let started = Instant::now();
    let legacy_err = |after: i64| move |source| CompareError::Legacy { after, source };
    let legacy_counts = db.count_by_status().await.map_err(legacy_err(0))?;
    let mut state = State::new(options);
    state.report.legacy_rows = legacy_counts.values().sum();
    state.report.outcomes.legacy.counts = legacy_counts;

    let mut after = 0;
    loop {
        let (rows, unreadable) = next_rows(db, after, options.batch.max(1))
            .await
            .map_err(legacy_err(after))?;
        let last = rows.last().map(|r| r.id);
        let found: Vec<(LegacyRow, Option<CallbackDetail>)> = stream::iter(rows)
            .map(|row| async move {
                let found = store.get_by_legacy_id(&Scope::All, row.id).await?;
                Ok::<_, StoreError>((row, found))
            })
            .buffered(LOOKUPS)
            .try_collect()
            .await
            .map_err(|source| CompareError::Store { after, source })?;
        for (row, found) in found {
            state.row(row, found.map(|d| d.callback));
        }
        after = match (unreadable, last) {
            (Some((id, error)), _) => {
                state.unreadable(id, error);
                id
            }
            (None, Some(last)) => last,
            (None, None) => break,
        };
        progress(Progress {
            done: state.seen.len() as u64,
            total: state.report.legacy_rows,
            last_id: after,
        });
    }

    // fluxcb's side: mirrors without a row, and what fluxcb itself delivered.
    let mut cursor = None;
    let mut candidates: Vec<Callback> = Vec::new();
    loop {
        let page = store
            .list(
                &Scope::All,
                &ListFilter::default(),
                &PageRequest { cursor, limit: 500 },
            )
            .await
            .map_err(|source| CompareError::Store { after, source })?;
        for cb in page.items {
            if let Some(extra) = state.fluxcb(cb) {
                candidates.push(extra);
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let last_seen = state.seen.last().copied().unwrap_or(0);
    for cb in candidates {
        let legacy_id = cb.legacy_id.unwrap_or_default();
        // A row inserted after the table was read is not an extra.
        if legacy_id > last_seen
            && db
                .row(legacy_id)
                .await
                .map_err(legacy_err(after))?
                .is_some()
        {
            continue;
        }
        state.report.extra.add(
            ExtraCallback {
                legacy_id,
                callback_id: cb.id.to_string(),
                status: cb.status.as_str().to_owned(),
            },
            options.samples,
        );
    }

    let receivers = std::mem::take(&mut state.receivers);
    state.report.receivers = receivers
        .check(&options.policy, options.resolve_timeout)
        .await;
    let mut report = state.finish(options);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Rows after `after`; when one cannot be decoded, the rows before it and its id with the error.
async fn next_rows(
    db: &LegacyDb,
    after: i64,
    batch: u32,
) -> Result<(Vec<LegacyRow>, Option<(i64, String)>), LegacyDbError> {
    match db.rows_after(after, batch).await {
        Ok(rows) => Ok((rows, None)),
        Err(LegacyDbError::Decode { id, message, .. }) => {
            let mut rows: Vec<LegacyRow> = Vec::new();
            loop {
                let from = rows.last().map_or(after, |r| r.id);
                match db.rows_after(from, 1).await {
                    Ok(mut next) => match next.pop() {
                        Some(row) if row.id < id => rows.push(row),
                        _ => break,
                    },
                    Err(LegacyDbError::Decode { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
            Ok((rows, Some((id, message))))
        }
        Err(e) => Err(e),
    }
}

/// The comparison as it goes.
struct State {
    report: CompareReport,
    /// Legacy ids read, ascending (the table is read in id order): 8 bytes a row.
    seen: Vec<i64>,
    receivers: receivers::Receivers,
    legacy_delays: Vec<i64>,
    secret: Option<Vec<u8>>,
    samples: usize,
    /// Every request is built at this one time, so the two sides can be compared.
    timestamp: i64,
    now: chrono::DateTime<Utc>,
}

impl State {
    fn new(options: &CompareOptions) -> Self {
        let now = Utc::now();
        Self {
            report: CompareReport {
                request_differences: RequestDifferences {
                    signatures_compared: options.legacy_secret.is_some(),
                    ..RequestDifferences::default()
                },
                ..CompareReport::default()
            },
            seen: Vec::new(),
            receivers: receivers::Receivers::default(),
            legacy_delays: Vec::new(),
            secret: options.legacy_secret.clone(),
            samples: options.samples,
            timestamp: now.timestamp(),
            now,
        }
    }

    fn row(&mut self, row: LegacyRow, found: Option<Callback>) {
        let samples = self.samples;
        let report = &mut self.report;
        self.seen.push(row.id);
        self.receivers.observe_row(row.id, &row.url);
        if row.status == "succeeded" && row.attempts == 1 {
            if let Some(sent) = row.sent_at {
                self.legacy_delays
                    .push((sent - row.callback_time).num_milliseconds());
            }
        }
        let Some(cb) = found else {
            // Only a dummy default is needed to learn whether the import could take the row.
            let defaults = CallbackDefaults {
                max_attempts: 1,
                timeout_ms: 1,
            };
            let reason = match callback_from_row(&row, Owner::Legacy, &defaults, self.now) {
                Ok(_) => "not imported yet: run `fluxcb migrate import`".to_owned(),
                Err(why) => format!("not importable: {why}"),
            };
            report.missing.add(
                MissingRow {
                    legacy_id: row.id,
                    status: row.status.clone(),
                    url: row.url.clone(),
                    reason,
                },
                samples,
            );
            return;
        };
        report.matched += 1;
        match cb.owner {
            Owner::Legacy => {
                let attempts = u32::try_from(row.attempts).unwrap_or(0);
                if legacy_status(cb.status) != row.status || cb.attempts_made != attempts {
                    report.stale_mirrors += 1;
                }
            }
            Owner::Fluxcb => report.owned_here += 1,
        }
        if row.attempts == 0 {
            if let Some(at) = cb.spec.deliver_at {
                let drift = &mut report.schedule.deliver_at_drift;
                let ms = (at.timestamp_millis() - row.callback_time.timestamp_millis()).abs();
                drift.rows_compared += 1;
                drift.rows_differing += u64::from(ms > 0);
                drift.max_ms = drift.max_ms.max(ms);
            }
        }
        let fields = fields::mismatches(&row, &cb);
        if !fields.is_empty() {
            let m = &mut report.field_mismatches;
            m.count += 1;
            for f in &fields {
                *m.by_field.entry(f.field).or_default() += 1;
            }
            if m.sample.len() < samples {
                m.sample.push(RowFields {
                    legacy_id: row.id,
                    callback_id: cb.id.to_string(),
                    fields,
                });
            }
        }
        let differences = request::differences(&row, &cb, self.secret.as_deref(), self.timestamp);
        if !differences.is_empty() {
            let r = &mut report.request_differences;
            r.count += 1;
            for d in &differences {
                *r.by_aspect.entry(d.aspect).or_default() += 1;
            }
            if r.sample.len() < samples {
                r.sample.push(RowRequest {
                    legacy_id: row.id,
                    callback_id: cb.id.to_string(),
                    differences,
                });
            }
        }
    }

    fn unreadable(&mut self, legacy_id: i64, error: String) {
        self.seen.push(legacy_id);
        self.report
            .unreadable
            .add(UnreadableRow { legacy_id, error }, self.samples);
    }

    /// One of fluxcb's callbacks; returns it when it is a mirror whose legacy row was not read.
    fn fluxcb(&mut self, cb: Callback) -> Option<Callback> {
        let legacy_id = cb.legacy_id?;
        self.report.fluxcb_callbacks += 1;
        match cb.owner {
            Owner::Legacy => {
                self.report.fluxcb_mirrors += 1;
                return self.seen.binary_search(&legacy_id).is_err().then_some(cb);
            }
            Owner::Fluxcb => {
                self.report.fluxcb_owned += 1;
                *self
                    .report
                    .outcomes
                    .fluxcb
                    .counts
                    .entry(legacy_status(cb.status).to_owned())
                    .or_default() += 1;
                if let Some(code @ 300..=399) = cb.last_status_code {
                    self.receivers
                        .observe_redirect(legacy_id, &cb.spec.url, code);
                }
            }
        }
        None
    }

    fn finish(mut self, options: &CompareOptions) -> CompareReport {
        let mut report = std::mem::take(&mut self.report);
        report.schedule.legacy_send_delay = distribution(&mut self.legacy_delays);
        report.outcomes.legacy = std::mem::take(&mut report.outcomes.legacy).finish();
        report.outcomes.fluxcb = std::mem::take(&mut report.outcomes.fluxcb).finish();
        report.differences = report.missing.count
            + report.extra.count
            + report.field_mismatches.count
            + report.request_differences.count
            + report.unreadable.count
            + report.receivers.blocked.len() as u64;
        report.threshold = options.threshold;
        report.passed = report.differences <= options.threshold;
        if options.legacy_secret.is_none() {
            report.notes.push(
                "no legacy signing secret (--legacy-secret or FLUXCB_LEGACY_SIGNING_SECRET): \
                 bodies and headers were compared, signature values were not; and a fluxcb \
                 serving without it sends legacy-format callbacks with Standard Webhooks headers \
                 instead"
                    .into(),
            );
        }
        if report.legacy_rows > 0 && report.fluxcb_callbacks == 0 {
            report.notes.push(
                "fluxcb has no callback with a legacy id: run `fluxcb migrate import` first".into(),
            );
        }
        report
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone};
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(123)
    }

    pub(crate) fn row(id: i64) -> LegacyRow {
        LegacyRow {
            id,
            url: "http://Hooks.receiver.invalid/cb?x=1".into(),
            method: "POST".into(),
            headers: json!({"X-A": "1"}),
            payload: Some(json!({"order": id, "name": "Zoë", "amount": 12.5})),
            external_id: Some(format!("ext-{id}")),
            callback_time: at(),
            status: "pending".into(),
            attempts: 0,
            max_attempts: 5,
            last_response_code: None,
            last_error: String::new(),
            sent_at: None,
            created_at: at() - chrono::Duration::hours(1),
            updated_at: at() - chrono::Duration::hours(1),
        }
    }

    /// The row as the import stores it, read back (times to the millisecond).
    pub(crate) fn mirror(row: &LegacyRow) -> Callback {
        let defaults = CallbackDefaults {
            max_attempts: 10,
            timeout_ms: 15_000,
        };
        let mut cb = callback_from_row(row, Owner::Legacy, &defaults, at()).unwrap();
        cb.spec.deliver_at = cb
            .spec
            .deliver_at
            .map(|t| Utc.timestamp_millis_opt(t.timestamp_millis()).unwrap());
        cb
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(
            distribution(&mut v),
            Some(Distribution {
                rows: 100,
                p50_ms: 50,
                p99_ms: 99,
                max_ms: 100
            })
        );
        assert_eq!(distribution(&mut []), None);
    }

    #[test]
    fn rows_are_sorted_into_their_categories() {
        let options = CompareOptions::default();
        let mut state = State::new(&options);
        let r1 = row(1);
        state.row(r1.clone(), Some(mirror(&r1)));
        // Legacy sent it meanwhile: a stale mirror, not a difference.
        let mut r2 = row(2);
        let m2 = mirror(&r2);
        r2.status = "succeeded".into();
        r2.attempts = 1;
        r2.sent_at = Some(r2.callback_time + chrono::Duration::milliseconds(1500));
        state.row(r2, Some(m2));
        // Not imported, and not importable.
        state.row(row(3), None);
        let mut r4 = row(4);
        r4.method = "GET".into();
        state.row(r4, None);
        // Edited after the import.
        let r5 = row(5);
        let m5 = mirror(&r5);
        let mut r5 = r5;
        r5.payload = Some(json!({"order": 55}));
        state.row(r5, Some(m5));
        // A mirror of a row that is gone, one that is there, and one of fluxcb's own that
        // answered with a redirect.
        let gone = mirror(&row(9));
        assert!(state.fluxcb(gone).is_some());
        assert!(state.fluxcb(mirror(&row(1))).is_none());
        let mut own = mirror(&row(10));
        own.owner = Owner::Fluxcb;
        own.status = fluxcb_core::status::Status::Failed;
        own.last_status_code = Some(302);
        assert!(state.fluxcb(own).is_none());

        let report = state.finish(&options);
        assert_eq!(
            (report.matched, report.stale_mirrors, report.missing.count),
            (3, 1, 2)
        );
        assert!(report.missing.sample[0].reason.contains("not imported yet"));
        assert!(report.missing.sample[1].reason.contains("not importable"));
        assert_eq!(report.field_mismatches.by_field.get("payload"), Some(&1));
        assert_eq!(report.request_differences.by_aspect.get("body"), Some(&1));
        assert!(!report.request_differences.signatures_compared);
        assert_eq!(
            report.schedule.legacy_send_delay.as_ref().map(|d| d.max_ms),
            Some(1500)
        );
        assert_eq!(report.outcomes.fluxcb.counts.get("failed"), Some(&1));
        assert_eq!(report.outcomes.fluxcb.success_ratio, Some(0.0));
        // missing 2 + field 1 + request 1 (extras are added by `compare` after a re-check).
        assert_eq!((report.differences, report.passed), (4, false));
        assert!(report.notes[0].contains("no legacy signing secret"));
    }
}
