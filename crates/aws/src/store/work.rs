//! The inherent half of the callback store that workers use: claims, attempt records and lease
//! recovery, with the tenant passed in when the caller knows it (so no read comes first).

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::EventKind;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{Due, StoreError};
use fluxcb_core::retry::Decision;
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::TenantId;

use super::callbacks::{build_err, NOT_EXISTS};
use super::ingest::{is_transaction_conflict, CONDITION_FAILED};
use super::items::{
    attempt_item, callback_from_item, callback_item, callback_pk, due_shard, due_sort_key,
    event_item, ms, n, s, sweep_at, tenant_status, AttemptRecord, NewEvent, CALLBACK_SK,
};
use super::ordering::{contention_pause, KeyChange, ORDERED_ROUNDS};
use super::{
    cancellation_codes, is_conditional_failure, store_error, DynamoStore, MAX_QUEUE_DELAY,
};

/// What recording an attempt did (see [`DynamoStore::record_attempt_of`]).
#[derive(Debug, Default)]
pub struct Recorded {
    /// The callback waits here for another attempt: the caller sends its message.
    pub waits_here: bool,
    /// The next callback of its ordering key, due now that this one's turn ended: the caller
    /// sends its message (a lost send is the sweeper's).
    pub promoted: Option<Due>,
}

enum Written {
    /// The callback was not in flight (or not as expected): nothing was written.
    Stale,
    Applied(Option<Due>),
}

impl DynamoStore {
    /// [`fluxcb_core::ports::CallbackStore::claim`], with the callback's tenant when the caller knows it (the
    /// queue message carries it). An update expression cannot build `tenant_status` from the
    /// item's own tenant, so without the hint the item is read first; with it, the write is
    /// also conditioned on the tenant, so a wrong hint claims nothing.
    pub async fn claim_in(
        &self,
        id: &CallbackId,
        tenant: Option<&TenantId>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Callback>, StoreError> {
        let tenant = match tenant {
            Some(t) => t.clone(),
            None => {
                let Some(current) = self.load(id).await? else {
                    return Ok(None);
                };
                if !matches!(current.status, Status::Scheduled | Status::Pending) {
                    return Ok(None);
                }
                current.tenant
            }
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(callback_pk(id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(
                "SET #st = :delivering, tenant_status = :ts, lease_until = :lease, \
                 updated_at = :now, due_sk = :due_sk REMOVE enqueued_at",
            )
            // A mirror of a legacy row (`owner` set) is never claimed here.
            .condition_expression(
                "#st IN (:scheduled, :pending) AND next_attempt_at <= :now AND tenant = :tenant \
                 AND attribute_not_exists(#ow)",
            )
            .expression_attribute_values(":tenant", s(tenant.as_str()))
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":delivering", s(Status::Delivering.as_str()))
            .expression_attribute_values(":scheduled", s(Status::Scheduled.as_str()))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":ts", s(tenant_status(&tenant, Status::Delivering)))
            .expression_attribute_values(":lease", n(ms(lease_until)))
            .expression_attribute_values(":now", n(ms(now)))
            .expression_attribute_values(":due_sk", s(due_sort_key(lease_until, id)))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => out.attributes.as_ref().map(callback_from_item).transpose(),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(store_error("claiming a callback", e)),
        }
    }

    /// [`fluxcb_core::ports::CallbackStore::record_attempt`], with the claimed callback when
    /// the caller has it (the worker that claimed it does), which saves a read: its tenant
    /// builds the index keys, its host is counted in the statistics. Says whether the callback
    /// now waits here for another attempt (a retry: the caller sends its message; not when it
    /// finished, was handed back to legacy during the attempt, or was no longer in flight) and
    /// which callback of its ordering key its end made due (the caller sends that message).
    pub async fn record_attempt_of(
        &self,
        claimed: Option<&Callback>,
        id: &CallbackId,
        attempt: Attempt,
        decision: Decision,
        now: DateTime<Utc>,
        follow_ups: &[Callback],
    ) -> Result<Recorded, StoreError> {
        let loaded;
        let callback = match claimed {
            Some(cb) => Some(cb),
            None => {
                loaded = self.load(id).await?;
                loaded.as_ref()
            }
        };
        let tenant = callback.map(|cb| cb.tenant.clone());
        let retry = matches!(decision, Decision::RetryAt(_));
        let made = &attempt;
        let count = |dead_lettered: bool| async move {
            if let Some(cb) = callback {
                let host = cb.spec.url.host_str().unwrap_or_default();
                self.count_attempt(&cb.tenant, host, made, dead_lettered)
                    .await;
            }
        };
        for row in follow_ups {
            self.register_tenant(&row.tenant).await?;
        }
        let ordering_key = callback.and_then(|cb| cb.spec.ordering_key.as_deref());
        if let Written::Applied(promoted) = self
            .write_attempt(
                tenant.as_ref(),
                ordering_key,
                id,
                &attempt,
                decision,
                now,
                Owner::Fluxcb,
                follow_ups,
            )
            .await?
        {
            count(matches!(decision, Decision::DeadLetter(_))).await;
            return Ok(Recorded {
                waits_here: retry,
                promoted,
            });
        }
        // A retry is conditioned on fluxcb still owning the callback. If the rollback's fence
        // made it a mirror during the attempt, record the attempt without making it due.
        if retry {
            let fenced = self
                .load(id)
                .await?
                .is_some_and(|cb| cb.status == Status::Delivering && cb.owner == Owner::Legacy);
            if fenced
                && matches!(
                    self.write_attempt(
                        tenant.as_ref(),
                        None,
                        id,
                        &attempt,
                        decision,
                        now,
                        Owner::Legacy,
                        &[],
                    )
                    .await?,
                    Written::Applied(_)
                )
            {
                count(false).await;
                return Ok(Recorded::default());
            }
        }
        tracing::warn!(
            callback_id = %id,
            "attempt finished for a callback no longer in flight"
        );
        // The attempt still happened: keep it in the audit trail.
        let record = self.attempt_record(&attempt, decision, now, None);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attempt_item(id, &record)))
            .send()
            .await
            .map_err(|e| store_error("recording an attempt", e))?;
        count(false).await;
        Ok(Recorded::default())
    }

    fn attempt_record<'a>(
        &self,
        attempt: &'a Attempt,
        decision: Decision,
        now: DateTime<Utc>,
        to_status: Option<Status>,
    ) -> AttemptRecord<'a> {
        AttemptRecord {
            attempt,
            recorded_at: now,
            to_status,
            next_attempt_at: match decision {
                Decision::RetryAt(at) => Some(at),
                _ => None,
            },
            dead_letter_reason: match decision {
                Decision::DeadLetter(r) => Some(r.as_str()),
                _ => None,
            },
            // Attempts outlive their callback's own retention by the longest retry wait.
            expires_at: self.finished_expiry(now) + 2 * 86_400,
        }
    }

    /// The attempt and the transition it calls for, in one transaction conditioned on the
    /// callback being in flight. For a retry, also on who owns it: `owner` fluxcb makes it due
    /// again, `owner` legacy (handed back mid-attempt) leaves it pending outside the `due` index.
    /// `follow_ups` are put in the same transaction, each only if its id is new (at most two,
    /// so the transaction stays far below its 100 items), and so is the end of its turn when
    /// it has an `ordering_key` and finished. [`Written::Stale`] when the callback's condition
    /// failed.
    #[allow(clippy::too_many_arguments)]
    async fn write_attempt(
        &self,
        tenant: Option<&TenantId>,
        ordering_key: Option<&str>,
        id: &CallbackId,
        attempt: &Attempt,
        decision: Decision,
        now: DateTime<Utc>,
        owner: Owner,
        follow_ups: &[Callback],
    ) -> Result<Written, StoreError> {
        let (transition, next_at) = match decision {
            Decision::Delivered => (Transition::Succeed, None),
            Decision::RetryAt(at) => (Transition::Reschedule, Some(at)),
            Decision::DeadLetter(_) => (Transition::DeadLetter, None),
        };
        let to = transition.target();
        let last_error = match (&attempt.error, &attempt.error_detail) {
            (Some(code), Some(detail)) => Some(format!("{code}: {detail}")),
            (Some(code), None) => Some(code.to_string()),
            _ => None,
        };
        let mut set = vec!["#st = :to", "attempts_made = :n", "updated_at = :now"];
        let mut remove = vec!["lease_until"];
        let mut values: Vec<(&str, AttributeValue)> = vec![
            (":to", s(to.as_str())),
            (":n", n(attempt.number)),
            (":now", n(ms(now))),
            (":delivering", s(Status::Delivering.as_str())),
        ];
        if let Some(t) = tenant {
            set.push("tenant_status = :ts");
            values.push((":ts", s(tenant_status(t, to))));
        }
        if let Some(err) = last_error {
            set.push("last_error = :err");
            values.push((":err", s(err)));
        }
        match attempt.status_code {
            Some(code) => {
                set.push("last_status_code = :code");
                values.push((":code", n(code)));
            }
            None => remove.push("last_status_code"),
        }
        let mut condition = "#st = :delivering";
        match (next_at, owner) {
            (Some(at), Owner::Fluxcb) => {
                condition = "#st = :delivering AND attribute_not_exists(#ow)";
                set.extend([
                    "next_attempt_at = :next",
                    "due_pk = :due_pk",
                    "due_sk = :due_sk",
                ]);
                values.push((":next", n(ms(at))));
                values.push((":due_pk", s(due_shard(id))));
                let enqueued = (at - now <= MAX_QUEUE_DELAY).then_some(now);
                values.push((
                    ":due_sk",
                    s(due_sort_key(sweep_at(at, enqueued, self.sweep_grace), id)),
                ));
                // The deliverer sends a delayed message for retries within the queue's reach.
                if enqueued.is_some() {
                    set.push("enqueued_at = :now");
                } else {
                    remove.push("enqueued_at");
                }
            }
            // Handed back to legacy: waiting, but legacy's to send.
            (Some(_), Owner::Legacy) => {
                condition = "#st = :delivering AND #ow = :legacy";
                values.push((":legacy", s(Owner::Legacy.as_str())));
                remove.extend(["next_attempt_at", "due_pk", "due_sk", "enqueued_at"]);
            }
            (None, _) => {
                set.push("expires_at = :exp");
                values.push((":exp", n(self.finished_expiry(now))));
                remove.extend(["next_attempt_at", "due_pk", "due_sk", "enqueued_at"]);
            }
        }
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(format!(
                "SET {} REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .condition_expression(condition)
            .expression_attribute_names("#st", "status");
        if next_at.is_some() {
            update = update.expression_attribute_names("#ow", "owner");
        }
        for (k, v) in values {
            update = update.expression_attribute_values(k, v);
        }
        let record = self.attempt_record(attempt, decision, now, Some(to));
        let base = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_err)?)
                .build(),
            self.put(attempt_item(id, &record), None)?,
        ];
        // The end of an ordered callback's turn goes in the same transaction: the next of its
        // key becomes due exactly when this one stops being in flight.
        let key_end = match (ordering_key, tenant, next_at) {
            (Some(key), Some(t), None) => Some((t, key)),
            _ => None,
        };
        let mut rows = follow_ups
            .iter()
            .map(|row| self.put(callback_item(row, self.sweep_grace), Some(NOT_EXISTS)))
            .collect::<Result<Vec<_>, _>>()?;
        for round in 0..ORDERED_ROUNDS {
            let change = match key_end {
                Some((t, key)) => {
                    let dead = matches!(decision, Decision::DeadLetter(_));
                    self.turn_end(t, key, id, dead, now, true).await?
                }
                None => KeyChange::default(),
            };
            let mut actions = base.clone();
            let rows_at = actions.len();
            // In the same transaction: a stale record (item 0's condition fails) writes none.
            actions.extend(rows.iter().cloned());
            let change_at = actions.len();
            actions.extend(change.actions);
            let e = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await
            {
                Ok(_) => return Ok(Written::Applied(change.promoted)),
                Err(e) => e,
            };
            let Some(codes) = cancellation_codes(&e) else {
                return Err(store_error("recording an attempt", e));
            };
            let failed = |range: std::ops::Range<usize>| {
                codes
                    .get(range)
                    .is_some_and(|c| c.iter().any(|c| c == CONDITION_FAILED))
            };
            if failed(0..1) {
                return Ok(Written::Stale);
            }
            if failed(rows_at..change_at) {
                // A follow-up exists already: this transition was written before (its answer
                // was lost) or raced; the rows are there, so write the rest without them.
                rows.clear();
                continue;
            }
            if failed(change_at..codes.len()) || is_transaction_conflict(&codes) {
                // Another change of the key came first: read it again.
                contention_pause(round).await;
                continue;
            }
            return Err(store_error("recording an attempt", e));
        }
        Err(StoreError::Busy(
            "recording an attempt: its ordering key kept changing".into(),
        ))
    }

    pub(super) async fn mark_complete(&self, idem_pk: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(idem_pk))
            .key("sk", s("idem"))
            .update_expression("SET complete = :t")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("completing a batch", e))
    }

    /// Returns one callback whose lease ended to pending, with a `recovered` event. One handed
    /// back to legacy during the attempt (`owner` legacy) goes to pending outside the `due`
    /// index: it is legacy's to send. `cb` may trail the table (it comes from the index): when
    /// the owner it shows has changed, the callback is read again.
    pub(crate) async fn recover(
        &self,
        cb: &Callback,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if self.recover_as(cb, cb.owner, now).await? {
            return Ok(true);
        }
        match self.load(&cb.id).await? {
            Some(current) if current.status == Status::Delivering && current.owner != cb.owner => {
                self.recover_as(cb, current.owner, now).await
            }
            _ => Ok(false),
        }
    }

    async fn recover_as(
        &self,
        cb: &Callback,
        owner: Owner,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let at = Utc::now();
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&cb.id)))
            .key("sk", s(CALLBACK_SK))
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":delivering", s(Status::Delivering.as_str()))
            .expression_attribute_values(":ts", s(tenant_status(&cb.tenant, Status::Pending)))
            .expression_attribute_values(":at", n(ms(at)))
            .expression_attribute_values(":now", n(ms(now)));
        let update = match owner {
            Owner::Fluxcb => update
                .update_expression(
                    "SET #st = :pending, tenant_status = :ts, next_attempt_at = :at, \
                     due_sk = :due_sk, updated_at = :at REMOVE lease_until, enqueued_at",
                )
                .condition_expression(
                    "#st = :delivering AND lease_until < :now AND attribute_not_exists(#ow)",
                )
                .expression_attribute_values(
                    ":due_sk",
                    s(due_sort_key(sweep_at(at, None, self.sweep_grace), &cb.id)),
                ),
            Owner::Legacy => update
                .update_expression(
                    "SET #st = :pending, tenant_status = :ts, updated_at = :at \
                     REMOVE lease_until, enqueued_at, next_attempt_at, due_pk, due_sk",
                )
                .condition_expression("#st = :delivering AND lease_until < :now AND #ow = :legacy")
                .expression_attribute_values(":legacy", s(Owner::Legacy.as_str())),
        }
        .build()
        .map_err(build_err)?;
        let event = event_item(
            &cb.id,
            at,
            &NewEvent {
                kind: EventKind::Recovered,
                actor: None,
                from: Some(Status::Delivering),
                to: Some(Status::Pending),
            },
            self.finished_expiry(at) + 30 * 86_400,
        );
        let actions = vec![
            TransactWriteItem::builder().update(update).build(),
            self.put(event, Some(NOT_EXISTS))?,
        ];
        self.transact_if_current(actions, "recovering a callback")
            .await
    }
}
