//! [`CallbackStore`] on DynamoDB. Every state change is an update conditioned on the state it
//! leaves, so two workers (or a worker and an operator) can never both apply one.
use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::Callback;
use fluxcb_core::event::{Event, EventKind};
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{
    ActionResult, CallbackDetail, CallbackPage, CallbackStore, IngestBatch, IngestResult,
    ListFilter, PageRequest, StoreError,
};
use fluxcb_core::retry::Decision;
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::Scope;

use super::items::{
    attempt_from_item, callback_from_item, callback_item, callback_pk, due_shard, due_sort_key,
    expiry, get_n, get_s, history, item_size, ms, n, s, sweep_at, tenant_status, CALLBACK_SK,
};
use super::{
    cancellation_codes, is_conditional_failure, store_error, DynamoStore, Item, DUE_SHARDS,
    INDEX_DUE, MAX_ITEM_BYTES, MAX_TRANSACTION_ITEMS,
};

pub(super) const NOT_EXISTS: &str = "attribute_not_exists(pk)";

pub(super) fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("building a DynamoDB request: {e}"))
}

#[async_trait]
impl CallbackStore for DynamoStore {
    async fn ingest(&self, batch: IngestBatch) -> Result<IngestResult, StoreError> {
        let IngestBatch {
            tenant,
            mut callbacks,
            idempotency,
        } = batch;
        let now = callbacks.first().map_or_else(Utc::now, |c| c.created_at);
        // Everything is checked before anything is written.
        for (i, cb) in callbacks.iter().enumerate() {
            let size = item_size(&callback_item(cb, self.sweep_grace));
            if size > MAX_ITEM_BYTES {
                return Err(StoreError::TooLarge(format!(
                    "callback {i} would take {size} bytes in the callback table; DynamoDB items \
                     are limited to 400 KB (payload, headers and metadata together)"
                )));
            }
        }
        self.register_tenant(&tenant).await?;
        let Some(idem) = idempotency else {
            let items = callbacks
                .iter()
                .map(|c| callback_item(c, self.sweep_grace))
                .collect();
            self.write_chunks(items).await?;
            return Ok(IngestResult::Accepted);
        };
        let idem_pk = format!("idem#{tenant}#{}", idem.key);
        let mut record = Item::new();
        record.insert("pk".into(), s(idem_pk.as_str()));
        record.insert("sk".into(), s("idem"));
        record.insert("fingerprint".into(), s(idem.fingerprint.as_str()));
        record.insert("response_status".into(), n(idem.response_status));
        record.insert(
            "response_body".into(),
            AttributeValue::B(idem.response_body.clone().into()),
        );
        record.insert(
            "ids".into(),
            s(callbacks
                .iter()
                .map(|c| c.id.to_string())
                .collect::<Vec<_>>()
                .join(",")),
        );
        record.insert("created_at".into(), n(ms(now)));
        record.insert(
            "expires_at".into(),
            n(expiry(now, self.retention.idempotency_keys)),
        );

        if callbacks.len() < MAX_TRANSACTION_ITEMS {
            // One transaction: the record and the callbacks appear together or not at all.
            record.insert("complete".into(), AttributeValue::Bool(true));
            let mut actions = vec![self.put(record, Some(NOT_EXISTS))?];
            for cb in &callbacks {
                actions.push(self.put(callback_item(cb, self.sweep_grace), Some(NOT_EXISTS))?);
            }
            match self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await
            {
                Ok(_) => return Ok(IngestResult::Accepted),
                Err(e) => match cancellation_codes(&e) {
                    Some(codes)
                        if codes.first().map(String::as_str) == Some("ConditionalCheckFailed") => {}
                    _ => return Err(store_error("ingesting callbacks", e)),
                },
            }
        } else {
            // Too many for one transaction: the record goes first, marked incomplete and
            // naming the ids, then the callbacks in idempotent chunks. A retry of the same
            // request finds the record and completes the batch with the same ids.
            record.insert("complete".into(), AttributeValue::Bool(false));
            match self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(record))
                .condition_expression(NOT_EXISTS)
                .send()
                .await
            {
                Ok(_) => {
                    self.write_chunks(
                        callbacks
                            .iter()
                            .map(|c| callback_item(c, self.sweep_grace))
                            .collect(),
                    )
                    .await?;
                    self.mark_complete(&idem_pk).await?;
                    return Ok(IngestResult::Accepted);
                }
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error("ingesting callbacks", e)),
            }
        }
        // The key was used before.
        let Some(previous) = self.idempotency_item(&idem_pk).await? else {
            return Err(StoreError::Busy(
                "the idempotency record is being replaced; retry".into(),
            ));
        };
        if get_s(&previous, "fingerprint") != Some(idem.fingerprint.as_str()) {
            return Ok(IngestResult::KeyReused);
        }
        let body = match previous.get("response_body") {
            Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
            _ => Vec::new(),
        };
        let status = get_n(&previous, "response_status").unwrap_or(202) as u16;
        if matches!(previous.get("complete"), Some(AttributeValue::Bool(false))) {
            let ids: Vec<CallbackId> = get_s(&previous, "ids")
                .unwrap_or_default()
                .split(',')
                .filter_map(|i| i.parse().ok())
                .collect();
            if ids.len() != callbacks.len() {
                return Err(StoreError::Internal(
                    "an incomplete batch record does not match its request".into(),
                ));
            }
            let created_at = get_n(&previous, "created_at").map(super::items::from_ms);
            for (cb, id) in callbacks.iter_mut().zip(ids) {
                cb.id = id;
                if let Some(at) = created_at {
                    let shift = at - cb.created_at;
                    cb.created_at = at;
                    cb.updated_at = at;
                    cb.next_attempt_at = cb.next_attempt_at.map(|t| t + shift);
                }
            }
            self.write_chunks(
                callbacks
                    .iter()
                    .map(|c| callback_item(c, self.sweep_grace))
                    .collect(),
            )
            .await?;
            self.mark_complete(&idem_pk).await?;
        }
        Ok(IngestResult::Replayed { status, body })
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
    ) -> Result<u64, StoreError> {
        let filter = ListFilter {
            status: Some(Status::Failed),
            ..filter.clone()
        };
        let mut moved = 0;
        let mut before = None;
        loop {
            let items = self.list_items(scope, &filter, before, 200).await?;
            let Some(last) = items.last() else {
                return Ok(moved);
            };
            before = get_s(last, "id").and_then(|i| i.parse().ok());
            for item in &items {
                let cb = callback_from_item(item)?;
                // Not announced one by one: the sweeper's next run enqueues them.
                if self
                    .operator_transition(&cb, Transition::Retry, EventKind::Redriven, actor, false)
                    .await?
                {
                    moved += 1;
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
    ) -> Result<(), StoreError> {
        self.record_attempt_of(None, id, attempt, decision, now)
            .await
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
                .condition_expression("#st = :delivering")
                .expression_attribute_names("#st", "status")
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
}
