//! What `compare` reports: serialised as the JSON report, rendered by `human.rs`.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{FieldMismatch, ReceiversReport, RequestDifference};

/// A count and the first few examples.
#[derive(Clone, Debug, Serialize)]
pub struct Category<T> {
    pub count: u64,
    pub sample: Vec<T>,
}

impl<T> Default for Category<T> {
    fn default() -> Self {
        Self {
            count: 0,
            sample: Vec::new(),
        }
    }
}

impl<T> Category<T> {
    pub(super) fn add(&mut self, item: T, samples: usize) {
        self.count += 1;
        if self.sample.len() < samples {
            self.sample.push(item);
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MissingRow {
    pub legacy_id: i64,
    pub status: String,
    pub url: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExtraCallback {
    pub legacy_id: i64,
    pub callback_id: String,
    pub status: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct UnreadableRow {
    pub legacy_id: i64,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RowFields {
    pub legacy_id: i64,
    pub callback_id: String,
    pub fields: Vec<FieldMismatch>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FieldMismatches {
    /// Rows with at least one mismatching field.
    pub count: u64,
    /// Rows per field.
    pub by_field: BTreeMap<&'static str, u64>,
    pub sample: Vec<RowFields>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RowRequest {
    pub legacy_id: i64,
    pub callback_id: String,
    pub differences: Vec<RequestDifference>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestDifferences {
    /// Rows whose requests differ in at least one aspect.
    pub count: u64,
    /// Rows per aspect.
    pub by_aspect: BTreeMap<&'static str, u64>,
    /// Whether signature values were compared (a legacy secret was given).
    pub signatures_compared: bool,
    pub sample: Vec<RowRequest>,
}

/// Milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub rows: u64,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Drift {
    /// Matched rows without a legacy attempt yet (their callback_time is the requested time).
    pub rows_compared: u64,
    pub rows_differing: u64,
    pub max_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Schedule {
    /// `sent_at - callback_time` of legacy rows that succeeded at their first attempt: legacy's
    /// poll delay, its queueing behind other rows, and the send itself. `None` without such rows.
    pub legacy_send_delay: Option<Distribution>,
    /// `|fluxcb deliver_at - legacy callback_time|` where it is still the requested time.
    pub deliver_at_drift: Drift,
}

/// Outcomes by legacy status name.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusCounts {
    pub counts: BTreeMap<String, u64>,
    /// succeeded / (succeeded + failed); `None` when neither happened.
    pub success_ratio: Option<f64>,
}

impl StatusCounts {
    pub(super) fn finish(mut self) -> Self {
        let get = |s: &str| self.counts.get(s).copied().unwrap_or(0);
        let (ok, failed) = (get("succeeded"), get("failed"));
        self.success_ratio = (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64);
        self
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcomes {
    /// Every row of the legacy table.
    pub legacy: StatusCounts,
    /// The callbacks with a legacy id that fluxcb delivers (imported with --take-ownership, or
    /// created through the legacy API in split mode).
    pub fluxcb: StatusCounts,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CompareReport {
    pub legacy_rows: u64,
    /// fluxcb's callbacks with a legacy id: mirrors plus its own.
    pub fluxcb_callbacks: u64,
    pub fluxcb_mirrors: u64,
    pub fluxcb_owned: u64,
    /// Legacy rows found in fluxcb.
    pub matched: u64,
    pub missing: Category<MissingRow>,
    pub extra: Category<ExtraCallback>,
    pub field_mismatches: FieldMismatches,
    pub request_differences: RequestDifferences,
    pub unreadable: Category<UnreadableRow>,
    /// Mirrors whose status or attempts lag their legacy row (informational: re-import).
    pub stale_mirrors: u64,
    /// Matched rows fluxcb owns already: their legacy row is stale by design.
    pub owned_here: u64,
    pub schedule: Schedule,
    pub outcomes: Outcomes,
    pub receivers: ReceiversReport,
    /// missing + extra + field mismatches + request differences + unreadable + blocked hosts.
    pub differences: u64,
    pub threshold: u64,
    pub passed: bool,
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl CompareReport {
    /// The human-readable summary, with up to `samples` examples per category.
    pub fn human(&self, samples: usize) -> String {
        super::human::render(self, samples)
    }

    /// The non-zero parts of [`Self::differences`], e.g. `2 missing, 1 blocked receiver`.
    pub fn breakdown(&self) -> String {
        let parts = [
            (self.missing.count, "missing"),
            (self.extra.count, "extra"),
            (self.field_mismatches.count, "with field mismatches"),
            (self.request_differences.count, "with request differences"),
            (self.unreadable.count, "unreadable"),
            (self.receivers.blocked.len() as u64, "blocked receivers"),
        ];
        let shown: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        if shown.is_empty() {
            "none".into()
        } else {
            shown.join(", ")
        }
    }
}

/// Nearest-rank percentiles.
pub(super) fn distribution(values: &mut [i64]) -> Option<Distribution> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = |p: f64| {
        let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[i - 1]
    };
    Some(Distribution {
        rows: values.len() as u64,
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        max_ms: values[values.len() - 1],
    })
}
