//! The console's statistics on DynamoDB, from counters kept as the system works rather than
//! from scans: a page view reads a few hundred small items whatever the traffic.
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | a tenant's traffic in one minute | `stats#<tenant>#<shard>` | `m#<minute start, ms>` |
//! | ... to one host | `stats#<tenant>#<shard>` | `m#<minute start, ms>#<host>` |
//! | the same for one hour | `stats#<tenant>#<shard>` | `h#<hour start, ms>[#<host>]` |
//!
//! Ingest adds the batch's size to `acc` (once per batch); each recorded attempt adds to `ok`
//! or `fail` (and `dead` when it dead-lettered its callback) and to its latency bucket `l<n>`
//! (see [`super::latency`]), and to its host's item `n`, `f` (failed) and `ms` (summed
//! duration). Maxima (`lmax`, a host's `max`) cannot be `ADD`ed: the update returns the item,
//! and a second, conditional update raises a maximum only when this attempt beat it (rare after
//! a bucket's first few attempts). Every update picks one of [`STATS_SHARDS`] partitions at
//! random, so a busy tenant's counters spread over several partitions instead of one hot item;
//! a read sums the shards. Minute items serve windows in whole minutes (the console's hour),
//! hour items windows in whole hours (its day), so a day costs 24 items per shard and host
//! instead of 1,440. A host's items sort right after their bucket's totals, so one key range
//! reads both. Items expire (TTL) after [`STATS_KEEP`].
//!
//! Why a host has items of its own rather than attributes in the totals' item: an update costs
//! 1 WRU per KB of the item it changes, and the totals' item would grow by about 100 bytes per
//! host, so a tenant sending to a hundred hosts would pay 10 WRU per counter update. Apart, every
//! item stays small (an attempt costs 4 WRU: totals and host, minute and hour); a view reads
//! more items instead, and views are rare next to attempts.
//!
//! Counting is best effort: a failed update is logged and counted in
//! `fluxcb_stats_updates_failed_total`, never returned, because the callback or attempt it
//! counts is already committed, and failing its caller would make a client retry an accepted
//! request or a worker send an attempt again to fix a figure on a chart. Each update is one
//! request of its own after the commit (not part of the transaction), so a crash between the two
//! loses a count, never a callback.
//!
//! Dead letters are read from the `by_status` index (`<tenant>#failed`): their count with
//! `Select COUNT`, their groups from the newest [`MAX_GROUPED`] per request.
use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, Select};
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::id::CallbackId;
use fluxcb_core::metric_names;
use fluxcb_core::ports::{
    DeadLetterGroup, DeliveryStats, DestinationStats, ListFilter, StatsBucket, StatsRequest,
    StoreError,
};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::{Scope, TenantId};
use futures_util::{StreamExt, TryStreamExt};

use super::items::{
    from_ms, get_n, get_s, host_of, is_expired, matches_host_and_tag, ms, n, s, tenant_status,
};
use super::latency;
use super::{is_conditional_failure, store_error, DynamoStore, Item, INDEX_BY_STATUS};

/// Partitions each tenant's counters are spread over.
pub const STATS_SHARDS: u32 = 4;
/// How long counters are kept: the console looks back a day; a week more for anyone who asks.
pub const STATS_KEEP: chrono::TimeDelta = chrono::TimeDelta::days(8);
/// Dead letters read per grouping request at most (newest first).
pub const MAX_GROUPED: usize = 10_000;
/// Groups returned at most (as on the embedded store).
const MAX_GROUPS: usize = 200;
/// Counter partitions queried at once.
const READ_CONCURRENCY: usize = 8;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grain {
    Minute,
    Hour,
}

impl Grain {
    fn span_ms(self) -> i64 {
        match self {
            Grain::Minute => MINUTE_MS,
            Grain::Hour => HOUR_MS,
        }
    }

    fn sort_key(self, start_ms: i64) -> String {
        let prefix = match self {
            Grain::Minute => "m",
            Grain::Hour => "h",
        };
        format!("{prefix}#{:013}", start_ms.max(0))
    }

    fn start_of(self, at_ms: i64) -> i64 {
        at_ms - at_ms.rem_euclid(self.span_ms())
    }
}

fn stats_pk(tenant: &TenantId, shard: u32) -> String {
    format!("stats#{tenant}#{shard}")
}

/// One attempt (or one accepted batch) as increments of one item per grain.
struct Increment<'a> {
    /// The host's items rather than the totals'.
    host: Option<&'a str>,
    adds: Vec<(String, u64)>,
    /// Maxima this event may raise: attribute names and the value.
    maxima: Vec<String>,
    value: u64,
    tenant: &'a TenantId,
    at: DateTime<Utc>,
}

/// The code part of a callback's `last_error` (`"http_status: 503 ..."` → `http_status`).
fn error_code(last_error: Option<&str>) -> String {
    match last_error {
        None => "unknown".into(),
        Some(e) => e
            .split_once(':')
            .map_or(e, |(code, _)| code)
            .trim()
            .to_owned(),
    }
}

impl DynamoStore {
    /// Counts an accepted batch (best effort: see the module's comment).
    pub(super) async fn count_accepted(&self, tenant: &TenantId, at: DateTime<Utc>, count: usize) {
        if count == 0 {
            return;
        }
        self.count(Increment {
            host: None,
            adds: vec![("acc".into(), count as u64)],
            maxima: Vec::new(),
            value: 0,
            tenant,
            at,
        })
        .await;
    }

    /// Counts a recorded attempt to `host` (best effort: see the module's comment).
    pub(super) async fn count_attempt(
        &self,
        tenant: &TenantId,
        host: &str,
        attempt: &Attempt,
        dead_lettered: bool,
    ) {
        let ok = attempt.succeeded();
        let duration = attempt.duration_ms;
        let mut totals = vec![
            ((if ok { "ok" } else { "fail" }).to_owned(), 1),
            (format!("l{}", latency::bucket_of(duration)), 1),
        ];
        if dead_lettered {
            totals.push(("dead".into(), 1));
        }
        let mut by_host = vec![("n".to_owned(), 1), ("ms".to_owned(), duration)];
        if !ok {
            by_host.push(("f".into(), 1));
        }
        tokio::join!(
            self.count(Increment {
                host: None,
                adds: totals,
                maxima: vec!["lmax".into()],
                value: duration,
                tenant,
                at: attempt.started_at,
            }),
            self.count(Increment {
                host: Some(host),
                adds: by_host,
                maxima: vec!["max".into()],
                value: duration,
                tenant,
                at: attempt.started_at,
            }),
        );
    }

    async fn count(&self, inc: Increment<'_>) {
        let shard = rand::random::<u32>() % STATS_SHARDS;
        let (minute, hour) = tokio::join!(
            self.add_counters(&inc, Grain::Minute, shard),
            self.add_counters(&inc, Grain::Hour, shard),
        );
        for result in [minute, hour] {
            if let Err(e) = result {
                metrics::counter!(metric_names::STATS_UPDATES_FAILED).increment(1);
                tracing::warn!(error = %e, tenant = %inc.tenant, "a statistics counter was not updated; the console's figures are short by it");
            }
        }
    }

    async fn add_counters(
        &self,
        inc: &Increment<'_>,
        grain: Grain,
        shard: u32,
    ) -> Result<(), StoreError> {
        let start = grain.start_of(ms(inc.at));
        let pk = stats_pk(inc.tenant, shard);
        let sk = match inc.host {
            Some(host) => format!("{}#{host}", grain.sort_key(start)),
            None => grain.sort_key(start),
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .expression_attribute_values(":exp", n((start / 1000) + STATS_KEEP.num_seconds()));
        let mut adds = Vec::new();
        for (i, (attr, value)) in inc.adds.iter().enumerate() {
            adds.push(format!("#a{i} :a{i}"));
            update = update
                .expression_attribute_names(format!("#a{i}"), attr)
                .expression_attribute_values(format!(":a{i}"), n(value));
        }
        let out = update
            .update_expression(format!("SET expires_at = :exp ADD {}", adds.join(", ")))
            .return_values(if inc.maxima.is_empty() {
                ReturnValue::None
            } else {
                ReturnValue::AllNew
            })
            .send()
            .await
            .map_err(|e| store_error("counting for the statistics", e))?;
        let item = out.attributes.unwrap_or_default();
        for attr in &inc.maxima {
            if get_n(&item, attr).is_some_and(|m| m >= inc.value as i64) {
                continue;
            }
            let raised = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(&pk))
                .key("sk", s(&sk))
                .update_expression("SET #m = :v")
                .condition_expression("attribute_not_exists(#m) OR #m < :v")
                .expression_attribute_names("#m", attr)
                .expression_attribute_values(":v", n(inc.value))
                .send()
                .await;
            match raised {
                Ok(_) => {}
                // Another attempt raised it further meanwhile.
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error("raising a statistics maximum", e)),
            }
        }
        Ok(())
    }

    /// The tenants a request covers: the caller's own, the one an admin names, or every one.
    async fn tenants_in(
        &self,
        scope: &Scope,
        narrowed: Option<&TenantId>,
    ) -> Result<Vec<TenantId>, StoreError> {
        Ok(match scope {
            Scope::Tenant(t) => vec![t.clone()],
            Scope::All => match narrowed {
                Some(t) => vec![t.clone()],
                None => self.tenants().await?,
            },
        })
    }

    pub(super) async fn stats_window(
        &self,
        scope: &Scope,
        req: &StatsRequest,
    ) -> Result<DeliveryStats, StoreError> {
        let since = ms(req.since);
        let until = ms(req.until).max(since);
        let bucket = (req.bucket.as_millis() as i64).max(1);
        let grain = if bucket % HOUR_MS == 0 && since % HOUR_MS == 0 {
            Grain::Hour
        } else if bucket % MINUTE_MS == 0 && since % MINUTE_MS == 0 {
            Grain::Minute
        } else {
            return Err(StoreError::Unsupported(
                "statistics on the AWS backend are counted per minute: ask for buckets of \
                 whole minutes starting on a minute"
                    .into(),
            ));
        };
        let count = ((until - since + bucket - 1) / bucket).max(1) as usize;
        let mut buckets: Vec<StatsBucket> = (0..count)
            .map(|i| StatsBucket {
                start: from_ms(since + i as i64 * bucket),
                ..StatsBucket::default()
            })
            .collect();
        let tenants = self.tenants_in(scope, req.tenant.as_ref()).await?;
        let partitions: Vec<String> = tenants
            .iter()
            .flat_map(|t| (0..STATS_SHARDS).map(move |shard| stats_pk(t, shard)))
            .collect();
        // `~` sorts after `#` and every digit: the last bucket's host items are in the range.
        let (low, high) = (
            grain.sort_key(since),
            format!("{}~", grain.sort_key(until - 1)),
        );
        let pages: Vec<Vec<Item>> = futures_util::stream::iter(partitions)
            .map(|pk| self.counter_items(pk, &low, &high))
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;

        let mut latency: BTreeMap<u32, u64> = BTreeMap::new();
        let mut max_ms = 0u64;
        let mut hosts: HashMap<String, DestinationStats> = HashMap::new();
        for item in pages.iter().flatten() {
            let Some((start, host)) = get_s(item, "sk").and_then(parse_sort_key) else {
                continue;
            };
            let Some(b) = usize::try_from((start - since) / bucket)
                .ok()
                .and_then(|i| buckets.get_mut(i))
            else {
                continue;
            };
            let count_of = |attr: &str| get_n(item, attr).unwrap_or(0).max(0) as u64;
            if let Some(host) = host {
                let d = hosts
                    .entry(host.to_owned())
                    .or_insert_with(|| DestinationStats {
                        host: host.to_owned(),
                        ..DestinationStats::default()
                    });
                d.attempts += count_of("n");
                d.failed += count_of("f");
                // The running sum; divided below.
                d.avg_ms += count_of("ms") as f64;
                d.max_ms = d.max_ms.max(count_of("max"));
                continue;
            }
            b.accepted += count_of("acc");
            b.delivered += count_of("ok");
            b.failed += count_of("fail");
            b.dead_lettered += count_of("dead");
            max_ms = max_ms.max(count_of("lmax"));
            for (attr, value) in item {
                let (Some(bucket), AttributeValue::N(value)) = (
                    attr.strip_prefix('l').and_then(|b| b.parse::<u32>().ok()),
                    value,
                ) else {
                    continue;
                };
                *latency.entry(bucket).or_insert(0) += value.parse::<u64>().unwrap_or(0);
            }
        }
        let latency: Vec<(u32, u64)> = latency.into_iter().collect();
        let mut destinations: Vec<DestinationStats> = hosts
            .into_values()
            .filter(|d| d.attempts > 0)
            .map(|mut d| {
                d.avg_ms /= d.attempts as f64;
                d
            })
            .collect();
        destinations.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.host.cmp(&b.host)));
        let mut dead_letters = 0;
        for tenant in &tenants {
            dead_letters += self.count_dead_letters(tenant).await?;
        }
        Ok(DeliveryStats {
            buckets,
            latency: latency::percentiles(&latency, max_ms),
            dead_letters,
            destinations,
        })
    }

    /// One counter partition's items with sort keys in `[low, high]`.
    async fn counter_items(
        &self,
        pk: String,
        low: &str,
        high: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":lo", s(low))
            .expression_attribute_values(":hi", s(high))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("reading the statistics", e))
    }

    /// Dead letters of a tenant now, from the `by_status` index (counted there, not returned).
    async fn count_dead_letters(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX_BY_STATUS)
                .key_condition_expression("tenant_status = :ts")
                // Retention has expired these; DynamoDB deletes them lazily.
                .filter_expression("attribute_not_exists(expires_at) OR expires_at > :now")
                .expression_attribute_values(":ts", s(tenant_status(tenant, Status::Failed)))
                .expression_attribute_values(":now", n(Utc::now().timestamp()))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| store_error("counting dead letters", e))?;
            count += page.count.max(0) as u64;
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    /// Dead letters in scope grouped by host and error code, from the newest [`MAX_GROUPED`].
    pub(super) async fn group_dead_letters(
        &self,
        scope: &Scope,
        filter: &ListFilter,
    ) -> Result<Vec<DeadLetterGroup>, StoreError> {
        let tenants = self.tenants_in(scope, filter.tenant.as_ref()).await?;
        let id_bound = |t: DateTime<Utc>| {
            CallbackId::from_ulid(ulid::Ulid::from_parts(ms(t).max(0) as u64, 0)).to_string()
        };
        let low = filter
            .created_after
            .map(id_bound)
            .unwrap_or_else(|| "cb_".into());
        let high = filter
            .created_before
            .map(id_bound)
            .unwrap_or_else(|| "cb_~".into());
        let now = Utc::now();
        let mut groups: HashMap<(String, String), (u64, i64)> = HashMap::new();
        let mut read = 0usize;
        'tenants: for tenant in &tenants {
            let mut start = None;
            loop {
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_BY_STATUS)
                    .key_condition_expression("tenant_status = :ts AND id BETWEEN :lo AND :hi")
                    .expression_attribute_values(":ts", s(tenant_status(tenant, Status::Failed)))
                    .expression_attribute_values(":lo", s(low.as_str()))
                    .expression_attribute_values(":hi", s(high.as_str()))
                    .projection_expression("#i, #st, #u, #le, #ua, #ex, #md")
                    .expression_attribute_names("#i", "id")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_names("#u", "url")
                    .expression_attribute_names("#le", "last_error")
                    .expression_attribute_names("#ua", "updated_at")
                    .expression_attribute_names("#ex", "expires_at")
                    .expression_attribute_names("#md", "metadata")
                    .scan_index_forward(false)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| store_error("grouping dead letters", e))?;
                for item in page.items.unwrap_or_default() {
                    read += 1;
                    if read > MAX_GROUPED {
                        tracing::warn!(
                            limit = MAX_GROUPED,
                            "dead letter groups cover the newest dead letters only"
                        );
                        break 'tenants;
                    }
                    if let Some(group) = dead_letter_key(&item, filter, &high, now) {
                        let updated = get_n(&item, "updated_at").unwrap_or(0);
                        let entry = groups.entry(group).or_insert((0, updated));
                        entry.0 += 1;
                        entry.1 = entry.1.max(updated);
                    }
                }
                start = page.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        let mut groups: Vec<DeadLetterGroup> = groups
            .into_iter()
            .map(|((host, error), (count, latest))| DeadLetterGroup {
                host,
                error,
                count,
                latest: from_ms(latest),
            })
            .collect();
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.host.cmp(&b.host))
                .then_with(|| a.error.cmp(&b.error))
        });
        groups.truncate(MAX_GROUPS);
        Ok(groups)
    }
}

/// A counter item's bucket start and, for a host's item, the host.
fn parse_sort_key(sk: &str) -> Option<(i64, Option<&str>)> {
    let rest = sk.get(2..)?;
    let (start, host) = match rest.split_once('#') {
        Some((start, host)) => (start, Some(host)),
        None => (rest, None),
    };
    Some((start.parse().ok()?, host))
}

/// The (host, error code) group of a dead letter from the index, or `None` when the filter
/// leaves it out (or the index trails the item, or retention has expired it).
fn dead_letter_key(
    item: &Item,
    filter: &ListFilter,
    exclusive_high: &str,
    now: DateTime<Utc>,
) -> Option<(String, String)> {
    if get_s(item, "status") != Some(Status::Failed.as_str())
        || get_s(item, "id") == Some(exclusive_high)
        || is_expired(item, now)
    {
        return None;
    }
    if !matches_host_and_tag(item, filter) {
        return None;
    }
    Some((host_of(item), error_code(get_s(item, "last_error"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_and_sort_keys() {
        assert_eq!(
            error_code(Some("http_status: 503 Service Unavailable")),
            "http_status"
        );
        assert_eq!(error_code(Some("timeout")), "timeout");
        assert_eq!(error_code(None), "unknown");
        assert_eq!(Grain::Minute.sort_key(60_000), "m#0000000060000");
        assert_eq!(Grain::Hour.start_of(3_600_000 * 5 + 42), 3_600_000 * 5);
        assert!(Grain::Minute.sort_key(9 * MINUTE_MS) < Grain::Minute.sort_key(10 * MINUTE_MS));
        let host_item = format!("{}#a.example", Grain::Minute.sort_key(9 * MINUTE_MS));
        assert!(host_item < format!("{}~", Grain::Minute.sort_key(9 * MINUTE_MS)));
        assert!(host_item < Grain::Minute.sort_key(10 * MINUTE_MS));
        assert_eq!(
            parse_sort_key(&host_item),
            Some((9 * MINUTE_MS, Some("a.example")))
        );
        assert_eq!(parse_sort_key("h#0000000060000"), Some((60_000, None)));
    }
}
