//! [`CallbackStore`] on DynamoDB. Every state change is an update conditioned on the state it
//! leaves, so two workers (or a worker and an operator) can never both apply one.
use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::{Event, EventKind};
use fluxcb_core::id::CallbackId;
use fluxcb_core::migration::MigrationState;
use fluxcb_core::ports::{
    ActionResult, CallbackDetail, CallbackPage, CallbackStore, DeadLetterGroup, DeliveryStats,
    ImportOutcome, IngestBatch, IngestResult, LegacyListFilter, LegacyPage, ListFilter,
    PageRequest, StatsRequest, StoreError,
};
use fluxcb_core::retry::Decision;
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::{Scope, TenantId};

use super::items::{
    attempt_from_item, callback_from_item, callback_pk, due_shard, due_sort_key, get_n, get_s,
    history, ms, n, s, sweep_at, tenant_status, CALLBACK_SK,
};
use super::{is_conditional_failure, store_error, DynamoStore, DUE_SHARDS, INDEX_DUE};

pub(super) const NOT_EXISTS: &str = "attribute_not_exists(pk)";

pub(super) fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("building a DynamoDB request: {e}"))
}

#[async_trait]
impl CallbackStore for DynamoStore {
    fn supports_ordering_keys(&self) -> bool {
        true
    }

    async fn release_ordering_key(
        &self,
        tenant: &TenantId,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.release_key(tenant, key, now).await
    }

    async fn ingest(&self, batch: IngestBatch) -> Result<IngestResult, StoreError> {
        let tenant = batch.tenant.clone();
        let count = batch.callbacks.len();
        let at = batch.callbacks.first().map(|c| c.created_at);
        let result = self.ingest_batch(batch).await?;
        // A replay was counted when it was first accepted.
        if let (IngestResult::Accepted, Some(at)) = (&result, at) {
            self.count_accepted(&tenant, at, count).await;
        }
        Ok(result)
    }

    async fn get(
        &self,
        scope: &Scope,
        id: &CallbackId,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        let Some((callback, items)) = self.partition(id).await? else {
            return Ok(None);
        };
        if !scope.permits(&callback.tenant) {
            return Ok(None);
        }
        let mut attempts = items
            .iter()
            .filter(|i| get_s(i, "sk").is_some_and(|sk| sk.starts_with("at#")))
            .map(|i| Ok((get_n(i, "recorded_at").unwrap_or(0), attempt_from_item(i)?)))
            .collect::<Result<Vec<(i64, Attempt)>, StoreError>>()?;
        attempts.sort_by_key(|(at, a)| (a.number, *at));
        Ok(Some(CallbackDetail {
            callback,
            attempts: attempts.into_iter().map(|(_, a)| a).collect(),
        }))
    }

    async fn list(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<CallbackPage, StoreError> {
        let limit = page.limit.clamp(1, 500) as usize;
        let items = self
            .list_items(scope, filter, page.cursor, limit + 1)
            .await?;
        let mut callbacks = items
            .iter()
            .map(callback_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if callbacks.len() > limit {
            callbacks.truncate(limit);
            callbacks.last().map(|c| c.id)
        } else {
            None
        };
        Ok(CallbackPage {
            items: callbacks,
            next_cursor,
        })
    }

    async fn events(
        &self,
        scope: &Scope,
        id: &CallbackId,
    ) -> Result<Option<Vec<Event>>, StoreError> {
        match self.partition(id).await? {
            Some((cb, items)) if scope.permits(&cb.tenant) => Ok(Some(history(&cb, &items)?)),
            _ => Ok(None),
        }
    }

    async fn cancel(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
    ) -> Result<ActionResult, StoreError> {
        self.operator_action(scope, id, actor, Transition::Cancel)
            .await
    }

    async fn retry(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
    ) -> Result<ActionResult, StoreError> {
        self.operator_action(scope, id, actor, Transition::Retry)
            .await
    }

    async fn redrive(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        actor: &str,
        limit: Option<u32>,
    ) -> Result<u64, StoreError> {
        let filter = ListFilter {
            status: Some(Status::Failed),
            ..filter.clone()
        };
        let limit = limit.map_or(u64::MAX, u64::from);
        let mut moved = 0;
        if limit == 0 {
            return Ok(moved);
        }
        let mut before = None;
        loop {
            let items = self.list_items(scope, &filter, before, 200).await?;
            let Some(last) = items.last() else {
                return Ok(moved);
            };
            before = get_s(last, "id").and_then(|i| i.parse().ok());
            for item in &items {
                let cb = callback_from_item(item)?;
                // Mirrors of legacy rows are redriven by legacy, not here.
                if cb.owner == Owner::Legacy {
                    continue;
                }
                // Not announced one by one: the sweeper's next run enqueues them.
                if self
                    .operator_transition(&cb, Transition::Retry, EventKind::Redriven, actor, false)
                    .await?
                {
                    moved += 1;
                    if moved == limit {
                        return Ok(moved);
                    }
                }
            }
            if before.is_none() {
                return Ok(moved);
            }
        }
    }

    async fn claim(
        &self,
        id: &CallbackId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Callback>, StoreError> {
        self.claim_in(id, None, now, lease_until).await
    }

    async fn record_attempt(
        &self,
        id: &CallbackId,
        attempt: Attempt,
        decision: Decision,
        now: DateTime<Utc>,
        follow_ups: &[Callback],
    ) -> Result<(), StoreError> {
        // The follow-ups' messages are the sweeper's: it sends each once it is `sweep_grace`
        // overdue (the SQS deliverer, which has the queue, sends them at once).
        self.record_attempt_of(None, id, attempt, decision, now, follow_ups)
            .await
            .map(|_| ())
    }

    async fn stats(
        &self,
        scope: &Scope,
        request: &StatsRequest,
    ) -> Result<DeliveryStats, StoreError> {
        self.stats_window(scope, request).await
    }

    async fn dead_letter_groups(
        &self,
        scope: &Scope,
        filter: &ListFilter,
    ) -> Result<Vec<DeadLetterGroup>, StoreError> {
        self.group_dead_letters(scope, filter).await
    }

    async fn defer(&self, items: Vec<(CallbackId, DateTime<Utc>)>) -> Result<(), StoreError> {
        for (id, at) in items {
            let Some(cb) = self.load(&id).await? else {
                continue;
            };
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(callback_pk(&id)))
                .key("sk", s(CALLBACK_SK))
                .update_expression(
                    "SET #st = :pending, tenant_status = :ts, next_attempt_at = :at, \
                     due_pk = :due_pk, due_sk = :due_sk, enqueued_at = :now, updated_at = :now \
                     REMOVE lease_until",
                )
                // One handed back to legacy meanwhile stays in flight until its lease ends;
                // the sweeper then recovers it outside the `due` index.
                .condition_expression("#st = :delivering AND attribute_not_exists(#ow)")
                .expression_attribute_names("#st", "status")
                .expression_attribute_names("#ow", "owner")
                .expression_attribute_values(":pending", s(Status::Pending.as_str()))
                .expression_attribute_values(":delivering", s(Status::Delivering.as_str()))
                .expression_attribute_values(":ts", s(tenant_status(&cb.tenant, Status::Pending)))
                .expression_attribute_values(":at", n(ms(at)))
                .expression_attribute_values(":due_pk", s(due_shard(&id)))
                .expression_attribute_values(
                    ":due_sk",
                    s(due_sort_key(
                        sweep_at(at, Some(Utc::now()), self.sweep_grace),
                        &id,
                    )),
                )
                .expression_attribute_values(":now", n(ms(Utc::now())))
                .send()
                .await;
            match result {
                Ok(_) => {}
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error("deferring a callback", e)),
            }
        }
        Ok(())
    }

    async fn recover_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut recovered = 0;
        for shard in 0..DUE_SHARDS {
            let mut start = None;
            loop {
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_DUE)
                    .key_condition_expression("due_pk = :p AND due_sk <= :now")
                    .filter_expression("#st = :delivering")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":p", s(format!("due#{shard}")))
                    .expression_attribute_values(":now", s(format!("{:013}~", ms(now).max(0))))
                    .expression_attribute_values(":delivering", s(Status::Delivering.as_str()))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| store_error("finding expired leases", e))?;
                for item in page.items.unwrap_or_default() {
                    let cb = callback_from_item(&item)?;
                    if self.recover(&cb, now).await? {
                        recovered += 1;
                    }
                }
                start = page.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(recovered)
    }

    /// Retention is DynamoDB's TTL: finished callbacks, their attempts and events, and
    /// idempotency records carry `expires_at` when written, and reads hide expired items that
    /// DynamoDB has not deleted yet. Nothing is left for a purge to do.
    async fn purge(
        &self,
        _before: DateTime<Utc>,
        _idempotency_before: DateTime<Utc>,
        _limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// An atomic counter item: one `UpdateItem ADD` reserves the whole range.
    async fn allocate_legacy_ids(&self, count: u32) -> Result<i64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s("sequence#legacy_id"))
            .key("sk", s("sequence"))
            .update_expression("ADD next_value :n")
            .expression_attribute_values(":n", n(count))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| store_error("allocating legacy ids", e))?;
        let last = out
            .attributes
            .as_ref()
            .and_then(|a| get_n(a, "next_value"))
            .ok_or_else(|| StoreError::Internal("the legacy id counter returned nothing".into()))?;
        Ok(last - i64::from(count) + 1)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s("heartbeat"))
            .item("sk", s("heartbeat"))
            .item("at", n(ms(Utc::now())))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("checking the table", e))
    }

    /// Callbacks waiting or in flight, from the `due` index. Finished states are not counted
    /// on DynamoDB: that would be a scan of the table.
    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        let mut counts = BTreeMap::new();
        for shard in 0..DUE_SHARDS {
            let mut start = None;
            loop {
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_DUE)
                    .key_condition_expression("due_pk = :p")
                    .expression_attribute_values(":p", s(format!("due#{shard}")))
                    .projection_expression("#st")
                    .expression_attribute_names("#st", "status")
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| store_error("counting callbacks", e))?;
                for item in page.items.unwrap_or_default() {
                    if let Some(st) = get_s(&item, "status").and_then(|v| v.parse().ok()) {
                        *counts.entry(st).or_insert(0) += 1;
                    }
                }
                start = page.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(counts)
    }

    /// A pointer item (`legacy#<id>`, strongly consistent) names the callback; then the
    /// callback's partition as [`CallbackStore::get`] reads it.
    async fn get_by_legacy_id(
        &self,
        scope: &Scope,
        legacy_id: i64,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        self.legacy_get(scope, legacy_id).await
    }

    async fn list_legacy(
        &self,
        scope: &Scope,
        filter: &LegacyListFilter,
        offset: u64,
        limit: u32,
    ) -> Result<LegacyPage, StoreError> {
        self.legacy_list(scope, filter, offset, limit).await
    }

    async fn external_id_exists(
        &self,
        tenant: &TenantId,
        external_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.external_holder(tenant, external_id).await?.is_some())
    }

    async fn import_legacy(&self, rows: Vec<Callback>) -> Result<Vec<ImportOutcome>, StoreError> {
        self.legacy_import(rows).await
    }

    async fn advance_legacy_ids_past(&self, id: i64) -> Result<(), StoreError> {
        self.advance_legacy_ids(id).await
    }

    async fn fence_for_handback(&self, now: DateTime<Utc>) -> Result<Vec<Callback>, StoreError> {
        self.handback_fence(now).await
    }

    async fn mark_handed_back(
        &self,
        id: &CallbackId,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.handback_done(id, detail).await
    }

    async fn record_event(
        &self,
        id: &CallbackId,
        kind: EventKind,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.put_event(id, kind, actor, detail).await
    }

    async fn migration_state(&self) -> Result<Option<MigrationState>, StoreError> {
        self.read_migration_state().await
    }

    async fn set_migration_state(&self, state: MigrationState) -> Result<(), StoreError> {
        self.write_migration_state(state).await
    }

    async fn claim_now(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<ActionResult, StoreError> {
        self.legacy_claim_now(scope, id, actor, now, lease_until)
            .await
    }
}
