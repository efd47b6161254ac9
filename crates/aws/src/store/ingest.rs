//! Ingest on DynamoDB: a callback with its legacy id pointer and `external_id` guard (its
//! entries) is written in one transaction, with the idempotency record when the batch fits in
//! one; bigger batches go in idempotent chunks after an incomplete idempotency record.
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use fluxcb_core::callback::Callback;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{IngestBatch, IngestResult, StoreError};

use super::callbacks::NOT_EXISTS;
use super::items::{
    callback_entries, callback_item, expiry, get_n, get_s, item_size, ms, n, s, GUARD_SK, HOLDER,
    POINTER_SK,
};
use super::ordering::split_runs;
use super::{
    cancellation_codes, is_conditional_failure, store_error, DynamoStore, Item, MAX_ITEM_BYTES,
    MAX_TRANSACTION_ITEMS,
};

pub(super) const CONDITION_FAILED: &str = "ConditionalCheckFailed";
/// How long to wait before retrying a transaction cancelled by a concurrent one.
const CONFLICT_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// A transaction cancelled because another one was working on the same items (two callers
/// creating the same `external_id` at once, say): worth another try.
pub(super) fn is_transaction_conflict(codes: &[String]) -> bool {
    codes.iter().any(|c| c == "TransactionConflict")
}

/// Packs groups of items into transactions of at most [`MAX_TRANSACTION_ITEMS`], never
/// splitting a group.
pub(super) fn chunk_groups<T>(groups: Vec<Vec<T>>) -> Vec<Vec<Vec<T>>> {
    let mut chunks: Vec<Vec<Vec<T>>> = Vec::new();
    let mut size = 0;
    for group in groups {
        if chunks.is_empty() || size + group.len() > MAX_TRANSACTION_ITEMS {
            chunks.push(Vec::new());
            size = 0;
        }
        size += group.len();
        chunks.last_mut().expect("just pushed").push(group);
    }
    chunks
}

impl DynamoStore {
    fn entries(&self, callbacks: &[Callback]) -> Vec<Vec<Item>> {
        callbacks
            .iter()
            .map(|c| callback_entries(c, self.sweep_grace))
            .collect()
    }

    pub(super) async fn ingest_batch(
        &self,
        batch: IngestBatch,
    ) -> Result<IngestResult, StoreError> {
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
            self.write_all(&tenant, &callbacks).await?;
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

        let entries = self.entries(&callbacks);
        let (plain, runs) = split_runs(&callbacks);
        // The record and every entry must fit.
        if runs.is_empty() && entries.iter().map(Vec::len).sum::<usize>() < MAX_TRANSACTION_ITEMS {
            // One transaction: the record and the callbacks appear together or not at all.
            record.insert("complete".into(), AttributeValue::Bool(true));
            if self.write_with_record(record, entries).await? {
                return Ok(IngestResult::Accepted);
            }
        } else if let ([], [(key, run)]) = (plain.as_slice(), runs.as_slice()) {
            // One key's callbacks (a single ordered POST): the record goes in the run's
            // transaction, with the key's head.
            record.insert("complete".into(), AttributeValue::Bool(true));
            if self.write_run(Some(&record), &tenant, key, run).await? {
                return Ok(IngestResult::Accepted);
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
                    self.write_all(&tenant, &callbacks).await?;
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
            self.write_all(&tenant, &callbacks).await?;
            self.mark_complete(&idem_pk).await?;
        }
        Ok(IngestResult::Replayed { status, body })
    }

    /// Writes a batch's callbacks: those without an ordering key in chunks, each key's in runs
    /// behind its head (see [`super::ordering`]). Idempotent per callback and per run, so a
    /// retry of a half-written batch writes only what is missing.
    async fn write_all(
        &self,
        tenant: &fluxcb_core::tenant::TenantId,
        callbacks: &[Callback],
    ) -> Result<(), StoreError> {
        let (plain, runs) = split_runs(callbacks);
        self.write_chunks(self.entries(&plain)).await?;
        for (key, run) in &runs {
            self.write_run(None, tenant, key, run).await?;
        }
        Ok(())
    }

    /// The idempotency record and every entry in one transaction: `false` when the record
    /// exists already (the key was used before), a [`StoreError::Conflict`] when a legacy id or
    /// `external_id` belongs to another callback.
    async fn write_with_record(
        &self,
        record: Item,
        groups: Vec<Vec<Item>>,
    ) -> Result<bool, StoreError> {
        for _ in 0..3 {
            let mut actions = vec![self.put(record.clone(), Some(NOT_EXISTS))?];
            for item in groups.iter().flatten() {
                actions.push(self.put(item.clone(), Some(NOT_EXISTS))?);
            }
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
            let Some(codes) = cancellation_codes(&e) else {
                return Err(store_error("ingesting callbacks", e));
            };
            if codes.first().map(String::as_str) == Some(CONDITION_FAILED) {
                return Ok(false);
            }
            if !codes.iter().any(|c| c == CONDITION_FAILED) {
                if is_transaction_conflict(&codes) {
                    // A concurrent transaction on the same items: the next try sees its result.
                    tokio::time::sleep(CONFLICT_PAUSE).await;
                    continue;
                }
                return Err(store_error("ingesting callbacks", e));
            }
            let mut codes = codes.into_iter().skip(1);
            for group in &groups {
                let failed: Vec<bool> = codes
                    .by_ref()
                    .take(group.len())
                    .map(|c| c == CONDITION_FAILED)
                    .collect();
                if failed.first() == Some(&true) {
                    return Err(StoreError::Conflict(format!(
                        "callback {} exists already",
                        get_s(&group[0], "id").unwrap_or_default()
                    )));
                }
                for (item, _) in group.iter().zip(&failed).filter(|(_, f)| **f) {
                    self.reclaim_or_conflict(&group[0], item).await?;
                }
            }
        }
        Err(StoreError::Busy(
            "ingesting callbacks: transactions kept conflicting".into(),
        ))
    }

    /// Writes callbacks in transactions of at most [`MAX_TRANSACTION_ITEMS`] items. Each group
    /// is one callback's entries (see [`super::items::callback_entries`]), callback item first,
    /// and never split across transactions; every put is conditional on the item not existing.
    /// A group whose callback item exists already was written by an earlier try (a retried,
    /// half-written batch) and is left out; a group whose legacy id or `external_id` belongs to
    /// another callback is a [`StoreError::Conflict`] (nothing of that transaction is written).
    pub(super) async fn write_chunks(&self, groups: Vec<Vec<Item>>) -> Result<(), StoreError> {
        for chunk in chunk_groups(groups) {
            let mut pending = chunk;
            for _ in 0..3 {
                if pending.is_empty() {
                    break;
                }
                let actions = pending
                    .iter()
                    .flatten()
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
                        Some(codes) if codes.iter().any(|c| c == CONDITION_FAILED) => {
                            let mut codes = codes.into_iter();
                            let mut keep = Vec::new();
                            for group in pending {
                                let failed: Vec<bool> = codes
                                    .by_ref()
                                    .take(group.len())
                                    .map(|c| c == CONDITION_FAILED)
                                    .collect();
                                if failed.first() == Some(&true) {
                                    continue;
                                }
                                for (item, _) in group.iter().zip(&failed).filter(|(_, f)| **f) {
                                    self.reclaim_or_conflict(&group[0], item).await?;
                                }
                                keep.push(group);
                            }
                            pending = keep;
                        }
                        Some(codes) if is_transaction_conflict(&codes) => {
                            tokio::time::sleep(CONFLICT_PAUSE).await;
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

    /// A legacy id pointer or `external_id` guard was in the way of a new callback's: a
    /// [`StoreError::Conflict`] when the callback it names is alive, otherwise (retention
    /// removed that callback) it is deleted so the write can be tried again.
    pub(super) async fn reclaim_or_conflict(
        &self,
        ours: &Item,
        taken: &Item,
    ) -> Result<(), StoreError> {
        let (Some(pk), Some(sk)) = (get_s(taken, "pk"), get_s(taken, "sk")) else {
            return Err(StoreError::Internal("an entry without a key".into()));
        };
        let what = if sk == GUARD_SK {
            format!(
                "external_id {:?}",
                get_s(ours, "external_id").unwrap_or_default()
            )
        } else if sk == POINTER_SK {
            format!("legacy id {}", pk.trim_start_matches("legacy#"))
        } else {
            return Err(StoreError::Conflict(format!("{pk} exists already")));
        };
        let current = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading a uniqueness guard", e))?
            .item;
        let Some(holder) = current.as_ref().and_then(|i| get_s(i, HOLDER)) else {
            return Ok(()); // gone meanwhile: try again
        };
        let holder_id: Option<CallbackId> = holder.parse().ok();
        if let Some(id) = holder_id {
            if get_s(ours, "id") != Some(holder) && self.load(&id).await?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "{what} already belongs to callback {holder}"
                )));
            }
        }
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .condition_expression("#h = :h")
            .expression_attribute_names("#h", HOLDER)
            .expression_attribute_values(":h", s(holder))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(store_error("removing a stale uniqueness guard", e)),
        }
    }
}
