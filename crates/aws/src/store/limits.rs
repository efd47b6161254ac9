//! A registration's rate and concurrency limits kept in the table, so that they hold across
//! every worker (each Lambda instance, each container) rather than per worker. Two items per
//! limited destination, under the SHA-256 of its limits key:
//!
//! - `rate`: a GCRA clock, `tat` (the next free slot, µs since the epoch). A worker takes the
//!   next slot with one conditioned update and waits for it in-process when it is near
//!   ([`RATE_HORIZON`]); further out, it takes a *turn* (`turn`, the same kind of clock spaced
//!   by the rate's interval) and the callback is deferred to it, so a backlog comes back spread
//!   at the rate instead of all at once, and no slot is reserved for a callback that is not
//!   there to use it.
//! - `conc`: the holders of the destination's slots, each with its claim's lease end (a worker
//!   that dies holding one frees it when the lease ends), under a `version` every change bumps;
//!   a full destination hands out turns spaced by the last attempt's duration divided by the
//!   limit (how often a slot frees).
//!
//! Both are best-effort smooth, exact in the bound: the receiver never sees more than the limit
//! in flight, nor more than one request per interval on average plus the horizon's burst.
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, Utc};
use fluxcb_core::ports::StoreError;
use fluxcb_delivery::routes::RegisteredLimits;

use super::items::{get_n, n, s};
use super::{is_conditional_failure, store_error, DynamoStore, Item};

/// How far ahead a worker takes a rate slot and waits for it holding its claim; later slots
/// are turns the callback is deferred to.
pub const RATE_HORIZON: Duration = Duration::from_millis(500);
/// How long an idle destination's items are kept (DynamoDB's TTL).
const KEEP_SECONDS: i64 = 86_400;
/// Conditioned writes lost to other workers before a worker gives up and defers briefly.
const MAX_TRIES: u32 = 8;
/// The spacing of turns at a full destination before any attempt there has ended.
const DEFAULT_ATTEMPT: Duration = Duration::from_millis(100);

/// What a destination's shared limits say to one attempt.
#[derive(Debug)]
pub enum Admission {
    /// Go after `wait` (a rate slot a little ahead); `slot` is held until released.
    Go {
        wait: Duration,
        slot: Option<ConcurrencySlot>,
    },
    /// Not now: come back at this time, which is this callback's own turn.
    Later(DateTime<Utc>),
}

/// A slot of a destination's concurrency limit, held until [`DynamoStore::release_slot`] or
/// its lease end.
#[derive(Debug)]
pub struct ConcurrencySlot {
    pk: String,
    holder: String,
    taken: std::time::Instant,
}

fn limits_pk(key: &str) -> String {
    format!("dlim#{}", fluxcb_core::auth::hash_key(key))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

impl DynamoStore {
    /// Admits one attempt of `holder` (a callback id) to the destination under `key`, or says
    /// when to come back. A concurrency slot is taken first (a rate slot taken for an attempt
    /// that then cannot go would be lost to everyone), and given back if the rate says later.
    pub async fn admit(
        &self,
        key: &str,
        limits: RegisteredLimits,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Admission, StoreError> {
        let pk = limits_pk(key);
        let slot = match limits.max_in_flight {
            Some(max) => match self.take_slot(&pk, max, holder, lease_until, now).await? {
                Ok(slot) => Some(slot),
                Err(at) => return Ok(Admission::Later(at)),
            },
            None => None,
        };
        let wait = match limits.rate_per_second {
            Some(rate) => match self.take_rate_slot(&pk, rate, now).await {
                Ok(Ok(wait)) => wait,
                Ok(Err(at)) => {
                    if let Some(slot) = slot {
                        self.release_slot(slot).await;
                    }
                    return Ok(Admission::Later(at));
                }
                Err(e) => {
                    if let Some(slot) = slot {
                        self.release_slot(slot).await;
                    }
                    return Err(e);
                }
            },
            None => Duration::ZERO,
        };
        Ok(Admission::Go { wait, slot })
    }

    /// The next rate slot if it is within [`RATE_HORIZON`] (the wait for it), else a turn.
    async fn take_rate_slot(
        &self,
        pk: &str,
        rate: f64,
        now: DateTime<Utc>,
    ) -> Result<Result<Duration, DateTime<Utc>>, StoreError> {
        let interval = ((1e6 / rate.max(1e-6)) as i64).max(1);
        let now_us = micros(now);
        let horizon = RATE_HORIZON.as_micros() as i64;
        for _ in 0..MAX_TRIES {
            // Busy: the next slot is ahead, within the horizon.
            let taken = self
                .update(pk, "rate", now)
                .update_expression("SET tat = tat + :i, expires_at = :exp")
                .condition_expression("tat > :now AND tat <= :limit")
                .expression_attribute_values(":i", n(interval))
                .expression_attribute_values(":now", n(now_us))
                .expression_attribute_values(":limit", n(now_us + horizon))
                .return_values(ReturnValue::UpdatedNew)
                .send()
                .await;
            match taken {
                Ok(out) => {
                    let tat = out
                        .attributes
                        .as_ref()
                        .and_then(|a| get_n(a, "tat"))
                        .unwrap_or(now_us + interval);
                    let wait = (tat - interval - now_us).max(0);
                    return Ok(Ok(Duration::from_micros(wait as u64)));
                }
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error("taking a rate slot", e)),
            }
            // Idle: the slot is now.
            let idle = self
                .update(pk, "rate", now)
                .update_expression("SET tat = :next, expires_at = :exp")
                .condition_expression("attribute_not_exists(tat) OR tat <= :now")
                .expression_attribute_values(":next", n(now_us + interval))
                .expression_attribute_values(":now", n(now_us))
                .send()
                .await;
            match idle {
                Ok(_) => return Ok(Ok(Duration::ZERO)),
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error("taking a rate slot", e)),
            }
            // Neither: past the horizon (or another worker moved it between the two).
            let probe = self.read(pk, "rate").await?;
            if let Some(tat) = probe
                .as_ref()
                .and_then(|i| get_n(i, "tat"))
                .filter(|tat| *tat > now_us + horizon)
            {
                // Back when that slot is within the horizon, behind the turns given out.
                return self
                    .take_turn(pk, "rate", interval, tat - horizon, now)
                    .await
                    .map(Err);
            }
        }
        self.take_turn(pk, "rate", interval, now_us + interval, now)
            .await
            .map(Err)
    }

    /// A concurrency slot for `holder` until `lease_until`, or the turn to come back at.
    async fn take_slot(
        &self,
        pk: &str,
        max: u32,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Result<ConcurrencySlot, DateTime<Utc>>, StoreError> {
        let now_us = micros(now);
        for _ in 0..MAX_TRIES {
            let current = self.read(pk, "conc").await?;
            let version = current.as_ref().and_then(|i| get_n(i, "version"));
            let mut live: std::collections::HashMap<String, AttributeValue> = current
                .as_ref()
                .and_then(|i| i.get("holders"))
                .and_then(|h| h.as_m().ok())
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| {
                            v.as_n()
                                .ok()
                                .and_then(|t| t.parse::<i64>().ok())
                                .is_some_and(|t| t > now_us)
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if !live.contains_key(holder) && live.len() >= max as usize {
                let last = current
                    .as_ref()
                    .and_then(|i| get_n(i, "last_attempt_us"))
                    .map_or(
                        DEFAULT_ATTEMPT,
                        |us| Duration::from_micros(us.max(0) as u64),
                    );
                let spacing =
                    (last.as_micros() as i64 / i64::from(max.max(1))).clamp(1_000, 60_000_000);
                return self
                    .take_turn(pk, "conc", spacing, now_us + spacing, now)
                    .await
                    .map(Err);
            }
            live.insert(holder.to_owned(), n(micros(lease_until)));
            let write = self
                .update(pk, "conc", now)
                .update_expression("SET holders = :holders, version = :next, expires_at = :exp")
                .expression_attribute_values(":holders", AttributeValue::M(live))
                .expression_attribute_values(":next", n(version.unwrap_or(0) + 1));
            let write = match version {
                Some(v) => write
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", n(v)),
                None => write.condition_expression("attribute_not_exists(version)"),
            };
            match write.send().await {
                Ok(_) => {
                    return Ok(Ok(ConcurrencySlot {
                        pk: pk.to_owned(),
                        holder: holder.to_owned(),
                        taken: std::time::Instant::now(),
                    }))
                }
                Err(e) if is_conditional_failure(&e) => continue,
                Err(e) => return Err(store_error("taking a concurrency slot", e)),
            }
        }
        // Lost every race: a busy destination; come back shortly.
        Ok(Err(now
            + chrono::Duration::from_std(DEFAULT_ATTEMPT)
                .unwrap_or_default()
            + jitter()))
    }

    /// Gives a concurrency slot back and records how long it was held (the spacing of turns
    /// while the destination is full). A failure is logged only: the slot's lease ends anyway.
    pub async fn release_slot(&self, slot: ConcurrencySlot) {
        let held = slot.taken.elapsed().as_micros() as i64;
        let released = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&slot.pk))
            .key("sk", s("conc"))
            .update_expression(
                "SET version = version + :one, last_attempt_us = :held REMOVE holders.#h",
            )
            .condition_expression("attribute_exists(holders)")
            .expression_attribute_names("#h", &slot.holder)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":held", n(held))
            .send()
            .await;
        match released {
            Ok(_) => {}
            Err(e) if is_conditional_failure(&e) => {}
            Err(e) => {
                let e = store_error("giving a concurrency slot back", e);
                tracing::warn!(holder = %slot.holder, error = %e, "concurrency slot not given back; it frees at its lease end");
            }
        }
    }

    /// The next turn on item `sk`'s turn clock: `step` after the last one handed out, and
    /// not before `earliest` (µs).
    async fn take_turn(
        &self,
        pk: &str,
        sk: &str,
        step: i64,
        earliest: i64,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        for _ in 0..MAX_TRIES {
            let behind = self
                .update(pk, sk, now)
                .update_expression("SET turn = turn + :step, expires_at = :exp")
                .condition_expression("turn >= :floor")
                .expression_attribute_values(":step", n(step))
                .expression_attribute_values(":floor", n(earliest - step))
                .return_values(ReturnValue::UpdatedNew)
                .send()
                .await;
            match behind {
                Ok(out) => {
                    let turn = out
                        .attributes
                        .as_ref()
                        .and_then(|a| get_n(a, "turn"))
                        .unwrap_or(earliest);
                    return Ok(from_micros(turn));
                }
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error("taking a turn", e)),
            }
            let first = self
                .update(pk, sk, now)
                .update_expression("SET turn = :earliest, expires_at = :exp")
                .condition_expression("attribute_not_exists(turn) OR turn < :floor")
                .expression_attribute_values(":earliest", n(earliest))
                .expression_attribute_values(":floor", n(earliest - step))
                .send()
                .await;
            match first {
                Ok(_) => return Ok(from_micros(earliest)),
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error("taking a turn", e)),
            }
        }
        Ok(from_micros(earliest) + jitter())
    }

    fn update(
        &self,
        pk: &str,
        sk: &str,
        now: DateTime<Utc>,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .expression_attribute_values(":exp", n(now.timestamp() + KEEP_SECONDS))
    }

    async fn read(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map(|out| out.item)
            .map_err(|e| store_error("reading a destination's limits", e))
    }
}

/// Up to 100 ms, so that workers that lost the same races do not come back together.
fn jitter() -> chrono::Duration {
    chrono::Duration::microseconds((rand::random::<u32>() % 100_000).into())
}
