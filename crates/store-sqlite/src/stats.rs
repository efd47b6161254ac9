//! Read-only aggregates for the console: traffic over a window, dead letters grouped by host
//! and error, and the redrive dry run's count.
//!
//! Every query reads one index range: attempts carry their callback's tenant and host (schema
//! version 4) and `attempts_stats` covers everything aggregated here, so a window costs the
//! attempts in it and nothing else; accepted callbacks come from `callbacks_by_created`.
use std::collections::HashMap;

use fluxcb_core::ports::{
    DeadLetterGroup, DeliveryStats, DestinationStats, LatencyPercentiles, ListFilter, StatsBucket,
    StatsRequest, StoreError,
};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::{Scope, TenantId};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use crate::ops::filter_sql;
use crate::rows::{from_ms, ms};
use crate::SqliteStore;

/// The code part of `last_error` (`"http_status: 503 ..."` → `http_status`).
const ERROR_CODE_SQL: &str = "CASE WHEN last_error IS NULL THEN 'unknown' \
     WHEN instr(last_error, ':') > 0 THEN substr(last_error, 1, instr(last_error, ':') - 1) \
     ELSE last_error END";

/// Groups returned at most: enough for a page, bounded whatever is stored.
const MAX_GROUPS: u32 = 200;

impl SqliteStore {
    pub(crate) async fn stats_query(
        &self,
        scope: &Scope,
        req: &StatsRequest,
    ) -> Result<DeliveryStats, StoreError> {
        let tenant = match scope {
            Scope::Tenant(t) => Some(t.clone()),
            Scope::All => req.tenant.clone(),
        };
        let since = ms(req.since);
        let until = ms(req.until).max(since);
        let bucket = (req.bucket.as_millis() as i64).max(1);
        self.read(move |c| window_stats(c, tenant.as_ref(), since, until, bucket))
            .await
    }

    pub(crate) async fn dead_letter_groups_query(
        &self,
        scope: &Scope,
        filter: &ListFilter,
    ) -> Result<Vec<DeadLetterGroup>, StoreError> {
        let filter = ListFilter {
            status: Some(Status::Failed),
            ..filter.clone()
        };
        let (conds, params) = filter_sql(scope, &filter);
        let query = format!(
            "SELECT host, {ERROR_CODE_SQL} AS code, COUNT(*), MAX(updated_at) FROM callbacks \
             WHERE {} GROUP BY host, code ORDER BY 3 DESC, host, code LIMIT {MAX_GROUPS}",
            conds.join(" AND ")
        );
        self.read(move |c| {
            c.prepare(&query)?
                .query_map(params_from_iter(params), |r| {
                    Ok(DeadLetterGroup {
                        host: r.get(0)?,
                        error: r.get(1)?,
                        count: r.get::<_, i64>(2)? as u64,
                        latest: from_ms(r.get(3)?),
                    })
                })?
                .collect()
        })
        .await
    }

    pub(crate) async fn count_redrivable_query(
        &self,
        scope: &Scope,
        filter: &ListFilter,
    ) -> Result<u64, StoreError> {
        let filter = ListFilter {
            status: Some(Status::Failed),
            ..filter.clone()
        };
        let (conds, params) = filter_sql(scope, &filter);
        // The same rows `redrive` moves: mirrors of legacy rows are left to legacy.
        let query = format!(
            "SELECT COUNT(*) FROM callbacks WHERE {} AND owner = 'fluxcb'",
            conds.join(" AND ")
        );
        self.read(move |c| {
            c.prepare(&query)?
                .query_row(params_from_iter(params), |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
        .await
    }
}

fn window_stats(
    c: &Connection,
    tenant: Option<&TenantId>,
    since: i64,
    until: i64,
    bucket: i64,
) -> rusqlite::Result<DeliveryStats> {
    let count = ((until - since + bucket - 1) / bucket).max(1) as usize;
    let mut buckets: Vec<StatsBucket> = (0..count)
        .map(|i| StatsBucket {
            start: from_ms(since + i as i64 * bucket),
            ..StatsBucket::default()
        })
        .collect();
    let (tenant_sql, mut params): (&str, Vec<Value>) = match tenant {
        Some(t) => (" AND tenant = ?4", vec![t.as_str().to_owned().into()]),
        None => ("", Vec::new()),
    };
    params.splice(0..0, [since.into(), until.into(), bucket.into()]);
    let bucket_of = |b: i64| usize::try_from(b).ok().filter(|b| *b < count);

    let mut accepted = c.prepare_cached(&format!(
        "SELECT (created_at - ?1) / ?3 AS b, COUNT(*) FROM callbacks \
         INDEXED BY callbacks_by_created \
         WHERE created_at >= ?1 AND created_at < ?2{tenant_sql} GROUP BY b"
    ))?;
    let mut rows = accepted.query(params_from_iter(params.iter()))?;
    while let Some(r) = rows.next()? {
        if let Some(i) = bucket_of(r.get(0)?) {
            buckets[i].accepted = r.get::<_, i64>(1)? as u64;
        }
    }

    // One pass over the window's attempts, read from the covering index in time order and
    // aggregated here: buckets, the duration distribution (for exact percentiles) and hosts.
    // `?3 = ?3`: the statement binds the same parameters as the one above.
    let mut attempts = c.prepare_cached(&format!(
        "SELECT started_at, host, error IS NULL, to_status IS 'failed', duration_ms \
         FROM attempts INDEXED BY attempts_stats \
         WHERE started_at >= ?1 AND started_at < ?2{tenant_sql} AND ?3 = ?3"
    ))?;
    let mut durations: Vec<u64> = Vec::new();
    let mut hosts: HashMap<String, DestinationStats> = HashMap::new();
    let mut rows = attempts.query(params_from_iter(params.iter()))?;
    while let Some(r) = rows.next()? {
        let started: i64 = r.get(0)?;
        let ok: bool = r.get(2)?;
        let dead: bool = r.get(3)?;
        let duration = r.get::<_, i64>(4)?.max(0) as u64;
        if let Some(i) = bucket_of((started - since) / bucket) {
            let b = &mut buckets[i];
            if ok {
                b.delivered += 1;
            } else {
                b.failed += 1;
            }
            b.dead_lettered += u64::from(dead);
        }
        durations.push(duration);
        if let Some(host) = r.get_ref(1)?.as_str_or_null()? {
            let d = match hosts.get_mut(host) {
                Some(d) => d,
                None => hosts
                    .entry(host.to_owned())
                    .or_insert_with(|| DestinationStats {
                        host: host.to_owned(),
                        ..DestinationStats::default()
                    }),
            };
            d.attempts += 1;
            d.failed += u64::from(!ok);
            // The running sum; divided below.
            d.avg_ms += duration as f64;
            d.max_ms = d.max_ms.max(duration);
        }
    }
    durations.sort_unstable();
    let mut destinations: Vec<DestinationStats> = hosts
        .into_values()
        .map(|mut d| {
            d.avg_ms /= d.attempts.max(1) as f64;
            d
        })
        .collect();
    destinations.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.host.cmp(&b.host)));

    let dead_letters: i64 = match tenant {
        Some(t) => c
            .prepare_cached(
                "SELECT COUNT(*) FROM callbacks WHERE tenant = ?1 AND status = 'failed'",
            )?
            .query_row([t.as_str()], |r| r.get(0))?,
        // Per tenant, so each count is a range of the (tenant, status, id) index.
        None => c
            .prepare_cached(
                "SELECT COALESCE(SUM((SELECT COUNT(*) FROM callbacks \
                 WHERE tenant = t.name AND status = 'failed')), 0) FROM tenants t",
            )?
            .query_row([], |r| r.get(0))?,
    };

    Ok(DeliveryStats {
        buckets,
        latency: percentiles(&durations),
        dead_letters: dead_letters as u64,
        destinations,
    })
}

/// Nearest-rank percentiles of sorted values: the smallest value with at least p % of all
/// values at or below it.
pub(crate) fn percentiles(sorted: &[u64]) -> Option<LatencyPercentiles> {
    let last = *sorted.last()?;
    let at = |p: usize| sorted[(sorted.len() * p).div_ceil(100).max(1) - 1];
    Some(LatencyPercentiles {
        p50_ms: at(50),
        p90_ms: at(90),
        p99_ms: at(99),
        max_ms: last,
    })
}
