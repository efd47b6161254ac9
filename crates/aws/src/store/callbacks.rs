//! [`CallbackStore`] on DynamoDB. Every state change is an update conditioned on the state it
//! leaves, so two workers (or a worker and an operator) can never both apply one.
use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem, Update};
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
use fluxcb_core::tenant::{Scope, TenantId};

use super::items::{
    attempt_from_item, attempt_item, callback_from_item, callback_item, callback_pk, due_shard,
    due_sort_key, event_item, expiry, get_n, get_s, history, is_expired, item_size, ms, n, s,
    sweep_at, tenant_status, AttemptRecord, NewEvent, CALLBACK_SK,
};
use super::{
    cancellation_codes, is_conditional_failure, store_error, DynamoStore, Item, DUE_SHARDS,
    INDEX_BY_STATUS, INDEX_BY_TENANT, INDEX_DUE, MAX_ITEM_BYTES, MAX_QUEUE_DELAY,
    MAX_TRANSACTION_ITEMS,
};

const NOT_EXISTS: &str = "attribute_not_exists(pk)";

fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("building a DynamoDB request: {e}"))
}

impl DynamoStore {
    /// Runs a transaction whose first action is conditioned on the callback's current state:
    /// `false` when that condition failed (the callback changed meanwhile), an error otherwise.
    async fn transact_if_current(
        &self,
        actions: Vec<TransactWriteItem>,
        op: &str,
    ) -> Result<bool, StoreError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match cancellation_codes(&e) {
                Some(codes)
                    if codes.first().map(String::as_str) == Some("ConditionalCheckFailed") =>
                {
                    Ok(false)
                }
                _ => Err(store_error(op, e)),
            },
        }
    }

    fn put(&self, item: Item, condition: Option<&str>) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned))
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Reads a callback's whole partition (the callback, its attempts and events), strongly
    /// consistent. `None` when it does not exist or retention has expired it.
    async fn partition(
        &self,
        id: &CallbackId,
    ) -> Result<Option<(Callback, Vec<Item>)>, StoreError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(callback_pk(id)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("reading a callback", e))?;
        let Some(cb_item) = items.iter().find(|i| get_s(i, "sk") == Some(CALLBACK_SK)) else {
            return Ok(None);
        };
        if is_expired(cb_item, Utc::now()) {
            return Ok(None);
        }
        let cb = callback_from_item(cb_item)?;
        Ok(Some((cb, items)))
    }

    async fn load(&self, id: &CallbackId) -> Result<Option<Callback>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(callback_pk(id)))
            .key("sk", s(CALLBACK_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading a callback", e))?;
        match out.item {
            Some(item) if !is_expired(&item, Utc::now()) => Ok(Some(callback_from_item(&item)?)),
            _ => Ok(None),
        }
    }

    fn finished_expiry(&self, now: DateTime<Utc>) -> i64 {
        expiry(now, self.retention.callbacks)
    }

    /// Writes callbacks in transactions of at most [`MAX_TRANSACTION_ITEMS`], each put
    /// conditional on the callback not existing yet; a chunk that finds some already written
    /// (a retried, half-written batch) is written again without them.
    async fn write_chunks(&self, items: Vec<Item>) -> Result<(), StoreError> {
        for chunk in items.chunks(MAX_TRANSACTION_ITEMS) {
            let mut pending: Vec<Item> = chunk.to_vec();
            for _ in 0..3 {
                if pending.is_empty() {
                    break;
                }
                let actions = pending
                    .iter()
                    .map(|i| self.put(i.clone(), Some(NOT_EXISTS)))
                    .collect::<Result<Vec<_>, _>>()?;
                match self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(actions))
                    .send()
                    .await
                {
                    Ok(_) => pending.clear(),
                    Err(e) => match cancellation_codes(&e) {
                        Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => {
                            pending = pending
                                .into_iter()
                                .zip(codes)
                                .filter(|(_, c)| c != "ConditionalCheckFailed")
                                .map(|(i, _)| i)
                                .collect();
                        }
                        _ => return Err(store_error("writing callbacks", e)),
                    },
                }
            }
            if !pending.is_empty() {
                return Err(StoreError::Busy(
                    "writing callbacks: transactions kept conflicting".into(),
                ));
            }
        }
        Ok(())
    }

    async fn idempotency_item(&self, pk: &str) -> Result<Option<Item>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s("idem"))
            .consistent_read(true)
            .send()
            .await
            .map(|o| o.item.filter(|i| !is_expired(i, Utc::now())))
            .map_err(|e| store_error("reading an idempotency record", e))
    }

    /// Applies an operator transition (cancel, retry, redrive) with its history event.
    /// `None` when the callback changed state under us (the caller reloads).
    async fn operator_transition(
        &self,
        cb: &Callback,
        transition: Transition,
        kind: EventKind,
        actor: &str,
        enqueue_now: bool,
    ) -> Result<bool, StoreError> {
        let now = Utc::now();
        let to = transition.target();
        let mut values: Vec<(&str, AttributeValue)> = vec![
            (":from", s(cb.status.as_str())),
            (":to", s(to.as_str())),
            (":ts", s(tenant_status(&cb.tenant, to))),
            (":now", n(ms(now))),
        ];
        let expression = match transition {
            Transition::Cancel => {
                values.push((":exp", n(self.finished_expiry(now))));
                "SET #st = :to, tenant_status = :ts, updated_at = :now, expires_at = :exp \
                 REMOVE next_attempt_at, due_pk, due_sk, enqueued_at"
                    .to_owned()
            }
            _ => {
                values.push((":due_pk", s(due_shard(&cb.id))));
                let sweep = sweep_at(now, enqueue_now.then_some(now), self.sweep_grace);
                values.push((":due_sk", s(due_sort_key(sweep, &cb.id))));
                let enqueued = if enqueue_now {
                    ", enqueued_at = :now"
                } else {
                    ""
                };
                format!(
                    "SET #st = :to, tenant_status = :ts, updated_at = :now, \
                     next_attempt_at = :now, due_pk = :due_pk, due_sk = :due_sk, \
                     max_attempts = attempts_made + attempt_budget{enqueued} \
                     REMOVE expires_at{}",
                    if enqueue_now { "" } else { ", enqueued_at" }
                )
            }
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&cb.id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(expression)
            .condition_expression("#st = :from")
            .expression_attribute_names("#st", "status");
        for (k, v) in values {
            update = update.expression_attribute_values(k, v);
        }
        let event = event_item(
            &cb.id,
            now,
            &NewEvent {
                kind,
                actor: Some(actor),
                from: Some(cb.status),
                to: Some(to),
            },
            self.finished_expiry(now) + 30 * 86_400,
        );
        let actions = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_err)?)
                .build(),
            self.put(event, Some(NOT_EXISTS))?,
        ];
        self.transact_if_current(actions, "updating a callback")
            .await
    }

    async fn operator_action(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
        transition: Transition,
    ) -> Result<ActionResult, StoreError> {
        for _ in 0..5 {
            let Some(cb) = self.load(id).await?.filter(|cb| scope.permits(&cb.tenant)) else {
                return Ok(ActionResult::NotFound);
            };
            if transition.apply(cb.status).is_err() {
                return Ok(ActionResult::WrongState(cb.status));
            }
            let kind = match transition {
                Transition::Cancel => EventKind::Cancelled,
                _ => EventKind::Retried,
            };
            // A single retry is announced to the queue by the API right after this write.
            if self
                .operator_transition(&cb, transition, kind, actor, true)
                .await?
            {
                return Ok(self.load(id).await?.map_or(ActionResult::NotFound, |cb| {
                    ActionResult::Done(Box::new(cb))
                }));
            }
        }
        Err(StoreError::Busy(
            "the callback kept changing while the action was applied".into(),
        ))
    }

    /// Items newest first within the filter, `limit` at most, strictly older than `before`.
    /// One index query per tenant in scope: an admin listing without `tenant` merges the
    /// tenants' pages (an index across tenants would be one hot partition).
    async fn list_items(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        before: Option<CallbackId>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        if filter.host.is_some() || filter.metadata.is_some() {
            return Err(StoreError::Unsupported(
                "filtering by destination host or metadata is not served by an index on the \
                 AWS backend; filter by status and creation time instead"
                    .into(),
            ));
        }
        let tenants = match scope {
            Scope::Tenant(t) => vec![t.clone()],
            Scope::All => match &filter.tenant {
                Some(t) => vec![t.clone()],
                None => self.tenants().await?,
            },
        };
        let mut merged = Vec::new();
        for tenant in &tenants {
            merged.extend(
                self.list_tenant_items(tenant, filter, before, limit)
                    .await?,
            );
        }
        if tenants.len() > 1 {
            merged.sort_by(|a, b| get_s(b, "id").cmp(&get_s(a, "id")));
            merged.truncate(limit);
        }
        Ok(merged)
    }

    async fn list_tenant_items(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        before: Option<CallbackId>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let (index, key_attr, key_value) = match filter.status {
            Some(st) => (INDEX_BY_STATUS, "tenant_status", tenant_status(tenant, st)),
            None => (INDEX_BY_TENANT, "tenant", tenant.as_str().to_owned()),
        };
        // Ids are ULIDs: creation time bounds are id bounds.
        let id_bound = |t: DateTime<Utc>| {
            CallbackId::from_ulid(ulid::Ulid::from_parts(ms(t).max(0) as u64, 0)).to_string()
        };
        let low = filter
            .created_after
            .map(id_bound)
            .unwrap_or_else(|| "cb_".into());
        let mut high = filter
            .created_before
            .map(id_bound)
            .unwrap_or_else(|| "cb_~".into());
        if let Some(c) = before {
            high = high.min(c.to_string());
        }
        let now = Utc::now();
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#k = :k AND id BETWEEN :lo AND :hi")
                .expression_attribute_names("#k", key_attr)
                .expression_attribute_values(":k", s(key_value.as_str()))
                .expression_attribute_values(":lo", s(low.as_str()))
                .expression_attribute_values(":hi", s(high.as_str()))
                .scan_index_forward(false)
                .limit((limit as i32 + 1).min(1000))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| store_error("listing callbacks", e))?;
            for item in page.items.unwrap_or_default() {
                // The bounds are inclusive: drop the exclusive ends themselves.
                if get_s(&item, "id") == Some(high.as_str()) || is_expired(&item, now) {
                    continue;
                }
                // The index is eventually consistent: a status index entry may trail the item.
                if let Some(st) = filter.status {
                    if get_s(&item, "status") != Some(st.as_str()) {
                        continue;
                    }
                }
                out.push(item);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }
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

impl DynamoStore {
    /// [`CallbackStore::claim`], with the callback's tenant when the caller knows it (the
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
            .condition_expression(
                "#st IN (:scheduled, :pending) AND next_attempt_at <= :now AND tenant = :tenant",
            )
            .expression_attribute_values(":tenant", s(tenant.as_str()))
            .expression_attribute_names("#st", "status")
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

    /// [`CallbackStore::record_attempt`], with the tenant when the caller knows it (the worker
    /// that claimed the callback does), which saves a read.
    pub async fn record_attempt_of(
        &self,
        tenant: Option<&TenantId>,
        id: &CallbackId,
        attempt: Attempt,
        decision: Decision,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
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
        let tenant = match tenant {
            Some(t) => Some(t.clone()),
            None => self.load(id).await?.map(|cb| cb.tenant),
        };
        let mut set = vec!["#st = :to", "attempts_made = :n", "updated_at = :now"];
        let mut remove = vec!["lease_until"];
        let mut values: Vec<(&str, AttributeValue)> = vec![
            (":to", s(to.as_str())),
            (":n", n(attempt.number)),
            (":now", n(ms(now))),
            (":delivering", s(Status::Delivering.as_str())),
        ];
        if let Some(t) = &tenant {
            set.push("tenant_status = :ts");
            values.push((":ts", s(tenant_status(t, to))));
        }
        if let Some(err) = last_error {
            set.push("last_error = :err");
            values.push((":err", s(err)));
        }
        match next_at {
            Some(at) => {
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
            None => {
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
            .condition_expression("#st = :delivering")
            .expression_attribute_names("#st", "status");
        for (k, v) in values {
            update = update.expression_attribute_values(k, v);
        }
        let record = |to_status| AttemptRecord {
            attempt: &attempt,
            recorded_at: now,
            to_status,
            next_attempt_at: next_at,
            dead_letter_reason: match decision {
                Decision::DeadLetter(r) => Some(r.as_str()),
                _ => None,
            },
            // Attempts outlive their callback's own retention by the longest retry wait.
            expires_at: self.finished_expiry(now) + 2 * 86_400,
        };
        let actions = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_err)?)
                .build(),
            self.put(attempt_item(id, &record(Some(to))), None)?,
        ];
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match cancellation_codes(&e) {
                Some(codes)
                    if codes.first().map(String::as_str) == Some("ConditionalCheckFailed") =>
                {
                    tracing::warn!(
                        callback_id = %id,
                        "attempt finished for a callback no longer in flight"
                    );
                    // The attempt still happened: keep it in the audit trail.
                    self.client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(attempt_item(id, &record(None))))
                        .send()
                        .await
                        .map_err(|e| store_error("recording an attempt", e))?;
                    Ok(())
                }
                _ => Err(store_error("recording an attempt", e)),
            },
        }
    }

    async fn mark_complete(&self, idem_pk: &str) -> Result<(), StoreError> {
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

    /// Returns one callback whose lease ended to pending, with a `recovered` event.
    pub(crate) async fn recover(
        &self,
        cb: &Callback,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let at = Utc::now();
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&cb.id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(
                "SET #st = :pending, tenant_status = :ts, next_attempt_at = :at, \
                 due_sk = :due_sk, updated_at = :at REMOVE lease_until, enqueued_at",
            )
            .condition_expression("#st = :delivering AND lease_until < :now")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":delivering", s(Status::Delivering.as_str()))
            .expression_attribute_values(":ts", s(tenant_status(&cb.tenant, Status::Pending)))
            .expression_attribute_values(":at", n(ms(at)))
            .expression_attribute_values(
                ":due_sk",
                s(due_sort_key(sweep_at(at, None, self.sweep_grace), &cb.id)),
            )
            .expression_attribute_values(":now", n(ms(now)))
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
