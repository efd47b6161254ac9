//! Read-only views for the console (and anyone else): traffic over a window, destination
//! health, dead letters grouped by host and error.
use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, DurationRound, Utc};
use fluxcb_core::callback::FieldError;
use fluxcb_core::ports::{DeliveryStats, DestinationStats, StatsRequest};
use fluxcb_core::tenant::{Scope, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::callbacks::{filter_of, ListQuery};
use crate::console::DestinationLoad;
use crate::dto::rfc3339;
use crate::error::{ApiError, Problem};
use crate::AppState;

/// Destinations listed at most in `destinations`; the two rankings show [`TOP`] each.
const MAX_DESTINATIONS: usize = 100;
const TOP: usize = 5;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/destinations/health", get(destinations))
        .route("/v1/dead-letters/groups", get(dead_letter_groups))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// `1h` (1-minute buckets, default) or `1d` (hourly buckets).
    pub window: Option<String>,
    /// Admin keys only: one tenant.
    pub tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BucketView {
    pub start: String,
    /// Callbacks accepted (created).
    pub accepted: u64,
    /// Attempts that got a 2xx.
    pub delivered: u64,
    /// Attempts that did not.
    pub failed: u64,
    /// Failed attempts that dead-lettered their callback.
    pub dead_lettered: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Totals {
    pub accepted: u64,
    pub attempts: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Latency {
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

#[derive(Serialize, ToSchema, Clone)]
pub struct DestinationView {
    pub host: String,
    pub attempts: u64,
    pub failed: u64,
    /// Attempts that got a 2xx, over all attempts.
    pub success_ratio: f64,
    pub avg_ms: f64,
    pub max_ms: u64,
}

impl From<&DestinationStats> for DestinationView {
    fn from(d: &DestinationStats) -> Self {
        Self {
            host: d.host.clone(),
            attempts: d.attempts,
            failed: d.failed,
            success_ratio: ratio(d.attempts - d.failed.min(d.attempts), d.attempts).unwrap_or(0.0),
            avg_ms: (d.avg_ms * 10.0).round() / 10.0,
            max_ms: d.max_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct StatsView {
    pub window: String,
    pub since: String,
    pub until: String,
    pub bucket_seconds: u64,
    pub totals: Totals,
    /// Delivered attempts over all attempts in the window; absent without attempts.
    pub success_ratio: Option<f64>,
    /// Attempt duration percentiles over the window; absent without attempts.
    pub latency_ms: Option<Latency>,
    /// Callbacks dead-lettered now (whenever they failed).
    pub dead_letters: u64,
    pub buckets: Vec<BucketView>,
    /// Highest average attempt duration first.
    pub slowest_destinations: Vec<DestinationView>,
    /// Most failed attempts first (hosts with failures only).
    pub most_failing_destinations: Vec<DestinationView>,
    /// Most attempted first, at most 100.
    pub destinations: Vec<DestinationView>,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0)
}

/// The window ending with the current (partial) bucket: `[since, since + span)`.
pub fn window_bounds(
    window: &str,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, Duration, u32), ApiError> {
    let (bucket, count) = match window {
        "1h" => (chrono::Duration::minutes(1), 60),
        "1d" => (chrono::Duration::hours(1), 24),
        _ => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "window",
                "must be 1h or 1d",
            )]))
        }
    };
    let current = now.duration_trunc(bucket).unwrap_or(now);
    let since = current - bucket * (count - 1);
    Ok((since, bucket.to_std().unwrap_or_default(), count as u32))
}

fn narrow(caller: &Caller, tenant: Option<&str>) -> Result<Option<TenantId>, ApiError> {
    match tenant {
        None => Ok(None),
        Some(_) if !matches!(caller.scope(), Scope::All) => {
            Err(ApiError::Validation(vec![FieldError::new(
                "tenant",
                "only admin keys may choose a tenant",
            )]))
        }
        Some(t) => TenantId::parse(t)
            .map(Some)
            .map_err(|e| ApiError::Validation(vec![FieldError::new("tenant", e.to_string())])),
    }
}

async fn window_stats(
    state: &AppState,
    caller: &Caller,
    window: &str,
    tenant: Option<TenantId>,
) -> Result<(DeliveryStats, DateTime<Utc>, Duration, u32), ApiError> {
    let (since, bucket, count) = window_bounds(window, state.clock.now())?;
    let request = StatsRequest {
        since,
        until: since + chrono::Duration::from_std(bucket * count).unwrap_or_default(),
        bucket,
        tenant,
    };
    let stats = state.callbacks.stats(&caller.scope(), &request).await?;
    Ok((stats, since, bucket, count))
}

#[utoipa::path(get, path = "/v1/stats", tag = "stats", params(StatsQuery),
    responses((status = 200, body = StatsView), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let window = q.window.as_deref().unwrap_or("1h");
    let tenant = narrow(&caller, q.tenant.as_deref())?;
    let (s, since, bucket, count) = window_stats(&state, &caller, window, tenant).await?;
    let sum = |f: fn(&fluxcb_core::ports::StatsBucket) -> u64| s.buckets.iter().map(f).sum::<u64>();
    let totals = Totals {
        accepted: sum(|b| b.accepted),
        delivered: sum(|b| b.delivered),
        failed: sum(|b| b.failed),
        dead_lettered: sum(|b| b.dead_lettered),
        attempts: sum(|b| b.delivered + b.failed),
    };
    let views: Vec<DestinationView> = s.destinations.iter().map(DestinationView::from).collect();
    let mut slowest = views.clone();
    slowest.sort_by(|a, b| b.avg_ms.total_cmp(&a.avg_ms).then(a.host.cmp(&b.host)));
    slowest.truncate(TOP);
    let mut failing: Vec<DestinationView> =
        views.iter().filter(|d| d.failed > 0).cloned().collect();
    failing.sort_by(|a, b| {
        b.failed
            .cmp(&a.failed)
            .then(a.success_ratio.total_cmp(&b.success_ratio))
            .then(a.host.cmp(&b.host))
    });
    failing.truncate(TOP);
    Ok(Json(StatsView {
        window: window.to_owned(),
        since: rfc3339(since),
        until: rfc3339(since + chrono::Duration::from_std(bucket * count).unwrap_or_default()),
        bucket_seconds: bucket.as_secs(),
        success_ratio: ratio(totals.delivered, totals.attempts),
        totals,
        latency_ms: s.latency.as_ref().map(|l| Latency {
            p50_ms: l.p50_ms,
            p90_ms: l.p90_ms,
            p99_ms: l.p99_ms,
            max_ms: l.max_ms,
        }),
        dead_letters: s.dead_letters,
        buckets: s
            .buckets
            .iter()
            .map(|b| BucketView {
                start: rfc3339(b.start),
                accepted: b.accepted,
                delivered: b.delivered,
                failed: b.failed,
                dead_lettered: b.dead_lettered,
            })
            .collect(),
        slowest_destinations: slowest,
        most_failing_destinations: failing,
        destinations: views.into_iter().take(MAX_DESTINATIONS).collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct DestinationsView {
    /// Whether this process runs the delivery engine and can tell (false on Lambda's API).
    pub available: bool,
    /// Whether destinations can be registered (and so paused) on this backend.
    pub pause_supported: bool,
    /// Destinations with anything to report (in flight, failing or open) right now.
    pub destinations: Vec<DestinationLoad>,
}

fn host_of(destination: &str) -> &str {
    let rest = destination
        .split_once("://")
        .map_or(destination, |(_, r)| r);
    match rest.rsplit_once(':') {
        // IPv6 hosts keep their brackets, as the URL parser (and the host column) writes them.
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => rest,
    }
}

#[utoipa::path(get, path = "/v1/destinations/health", tag = "destinations",
    responses((status = 200, body = DestinationsView)), security(("bearer" = [])))]
pub async fn destinations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<DestinationsView>, ApiError> {
    let Some(read) = state.console.destination_health.get() else {
        return Ok(Json(DestinationsView {
            available: false,
            pause_supported: state.destinations.store().supports_registration(),
            destinations: Vec::new(),
        }));
    };
    let mut loads = read.loads().await?;
    if let Scope::Tenant(_) = caller.scope() {
        // Destinations are shared; a tenant sees the ones it sent to in the last day.
        let hosts: BTreeSet<String> = match window_stats(&state, &caller, "1d", None).await {
            Ok((s, ..)) => s.destinations.into_iter().map(|d| d.host).collect(),
            Err(ApiError::Unsupported(_)) => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        loads.retain(|d| hosts.contains(host_of(&d.destination)));
    }
    Ok(Json(DestinationsView {
        available: true,
        pause_supported: state.destinations.store().supports_registration(),
        destinations: loads,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterGroupView {
    pub host: String,
    /// The code of the last error (`http_status`, `timeout`, ...), or `unknown`.
    pub error: String,
    pub count: u64,
    /// When the newest of them was dead-lettered.
    pub latest: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterGroups {
    /// Largest groups first, at most 200.
    pub data: Vec<DeadLetterGroupView>,
}

#[utoipa::path(get, path = "/v1/dead-letters/groups", tag = "dead letters", params(ListQuery),
    responses((status = 200, body = DeadLetterGroups), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn dead_letter_groups(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<DeadLetterGroups>, ApiError> {
    let filter = filter_of(&caller, &q)?;
    let groups = state
        .callbacks
        .dead_letter_groups(&caller.scope(), &filter)
        .await?;
    Ok(Json(DeadLetterGroups {
        data: groups
            .iter()
            .map(|g| DeadLetterGroupView {
                host: g.host.clone(),
                error: g.error.clone(),
                count: g.count,
                latest: rfc3339(g.latest),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_end_with_the_current_bucket() {
        let now: DateTime<Utc> = "2026-11-26T10:17:42Z".parse().unwrap();
        let (since, bucket, count) = window_bounds("1h", now).unwrap();
        assert_eq!(rfc3339(since), "2026-11-26T09:18:00.000Z");
        assert_eq!((bucket.as_secs(), count), (60, 60));
        let (since, bucket, count) = window_bounds("1d", now).unwrap();
        assert_eq!(rfc3339(since), "2026-11-25T11:00:00.000Z");
        assert_eq!((bucket.as_secs(), count), (3600, 24));
        assert!(window_bounds("1w", now).is_err());
    }

    #[test]
    fn hosts_of_destinations() {
        assert_eq!(host_of("https://example.com:443"), "example.com");
        assert_eq!(host_of("http://127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_of("http://[::1]:80"), "[::1]");
    }
}
