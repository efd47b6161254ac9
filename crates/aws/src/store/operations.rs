//! The inherent half of the callback store that reads and writes on behalf of the API:
//! transactions conditioned on the current state, partition reads, idempotent chunked ingest,
//! operator transitions (cancel, retry, redrive) and index-served listings.

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::EventKind;
use fluxcb_core::id::CallbackId;
use fluxcb_core::notify::{Kind, KindFilter};
use fluxcb_core::ports::{ActionResult, ListFilter, StoreError};
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::{Scope, TenantId};

use super::callbacks::{build_err, NOT_EXISTS};
use super::ingest::{is_transaction_conflict, CONDITION_FAILED};
use super::items::{
    callback_from_item, callback_pk, due_shard, due_sort_key, event_item, expiry, get_s,
    is_expired, matches_host_and_tag, ms, n, s, sweep_at, tenant_status, NewEvent, CALLBACK_SK,
};
use super::ordering::{busy_key, contention_pause, seq_of, ORDERED_ROUNDS};
use super::{cancellation_codes, store_error, DynamoStore, Item, INDEX_BY_STATUS, INDEX_BY_TENANT};

impl DynamoStore {
    /// Runs a transaction whose first action is conditioned on the callback's current state:
    /// `false` when that condition failed (the callback changed meanwhile), an error otherwise.
    pub(super) async fn transact_if_current(
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

    pub(super) fn put(
        &self,
        item: Item,
        condition: Option<&str>,
    ) -> Result<TransactWriteItem, StoreError> {
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
    pub(super) async fn partition(
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

    pub(super) async fn load(&self, id: &CallbackId) -> Result<Option<Callback>, StoreError> {
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

    pub(super) fn finished_expiry(&self, now: DateTime<Utc>) -> i64 {
        expiry(now, self.retention.callbacks)
    }

    pub(super) async fn idempotency_item(&self, pk: &str) -> Result<Option<Item>, StoreError> {
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
    pub(super) async fn operator_transition(
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
        // A callback waiting behind its key's turn leaves the line with its cancel; one holding
        // the turn passes it on; a dead letter holding its key (`hold`) takes the turn back.
        let key = cb.spec.ordering_key.as_deref();
        let waiting = key.is_some()
            && transition == Transition::Cancel
            && cb.next_attempt_at.is_none()
            && matches!(cb.status, Status::Scheduled | Status::Pending);
        let condition = if waiting {
            "#st = :from AND attribute_not_exists(#ow) AND attribute_not_exists(next_attempt_at)"
        } else {
            "#st = :from AND attribute_not_exists(#ow)"
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&cb.id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(expression)
            .condition_expression(condition)
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner");
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
        let base = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_err)?)
                .build(),
            self.put(event, Some(NOT_EXISTS))?,
        ];
        let Some(key) = key else {
            return self.transact_if_current(base, "updating a callback").await;
        };
        let seq = match waiting {
            true => self.ordering_seq(&cb.id).await?,
            false => None,
        };
        for round in 0..ORDERED_ROUNDS {
            let change = match (transition, seq) {
                (Transition::Cancel, Some(seq)) => self.leave_queue(&cb.tenant, key, seq)?,
                (Transition::Cancel, None) => {
                    self.turn_end(&cb.tenant, key, &cb.id, false, now, false)
                        .await?
                }
                _ => self.unhold(&cb.tenant, key, &cb.id).await?,
            };
            let mut actions = base.clone();
            actions.extend(change.actions);
            let e = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            match cancellation_codes(&e) {
                Some(codes) if codes.first().is_some_and(|c| c == CONDITION_FAILED) => {
                    return Ok(false)
                }
                // A waiting callback promoted meanwhile: the caller reads it again.
                Some(_) if seq.is_some() => return Ok(false),
                Some(codes)
                    if codes.iter().any(|c| c == CONDITION_FAILED)
                        || is_transaction_conflict(&codes) =>
                {
                    contention_pause(round).await
                }
                _ => return Err(store_error("updating a callback", e)),
            }
        }
        Err(busy_key(key))
    }

    /// The place of a callback in its key's line (`okey_seq`).
    async fn ordering_seq(&self, id: &CallbackId) -> Result<Option<u64>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(callback_pk(id)))
            .key("sk", s(CALLBACK_SK))
            .projection_expression("okey_seq")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading a callback", e))?
            .item;
        Ok(item.as_ref().and_then(seq_of))
    }

    pub(super) async fn operator_action(
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
            if cb.owner == Owner::Legacy {
                return Ok(ActionResult::OwnedByLegacy);
            }
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
    pub(super) async fn list_items(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        before: Option<CallbackId>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        // Dead letters are few (retention bounds them) and read from their own index
        // partition, so those filters are applied as they are read; elsewhere they would read
        // a tenant's every callback.
        if (filter.host.is_some() || filter.metadata.is_some())
            && filter.status != Some(Status::Failed)
        {
            return Err(StoreError::Unsupported(
                "filtering by destination host or metadata is not served by an index on the \
                 AWS backend except for dead letters (status=failed); filter by status and \
                 creation time instead"
                    .into(),
            ));
        }
        if matches!(filter.kind, KindFilter::Only(_)) && filter.status != Some(Status::Failed) {
            return Err(StoreError::Unsupported(
                "listing notifications by kind is not served by an index on the AWS backend \
                 except for dead letters (status=failed); use kind=all, or read a notification \
                 by its id (the webhook-id its receiver got)"
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

    pub(super) async fn list_tenant_items(
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
                if !matches_host_and_tag(&item, filter) || !matches_kind(&item, filter.kind) {
                    continue;
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

/// Callers' callbacks have no `kind` attribute; the engine's rows name theirs.
fn matches_kind(item: &Item, filter: KindFilter) -> bool {
    let kind = get_s(item, "kind").unwrap_or(Kind::Callback.as_str());
    match filter {
        KindFilter::Callbacks => kind == Kind::Callback.as_str(),
        KindFilter::Only(k) => kind == k.as_str(),
        KindFilter::All => true,
    }
}
