//! The rollback's fence on DynamoDB (`fluxcb migrate export`), with the embedded store's
//! semantics: every unfinished (scheduled, pending, delivering) callback fluxcb owns that has a
//! legacy id becomes a mirror (`owner` legacy), leaves the `due` index and is flagged as
//! awaiting hand-back; the export writes it into the legacy table and then clears the flag.
//!
//! **Finding them without a scan.** The `by_legacy` index (`tenant_status`, `legacy_id`; keys,
//! `expires_at` and `owner`) has one partition per tenant and status, so three queries per
//! registered tenant (`<tenant>#scheduled`, `#pending`, `#delivering`, filtered on `owner`
//! being absent) read exactly the unfinished callbacks with a legacy id, mirrors included (a
//! filter expression does not save the read). An entry is ~200 bytes, so this costs about
//! **U/40 RRU** for U unfinished legacy-id callbacks of both owners. The `due` index would have
//! served too (mirrors are never in it), but its entries are whole callbacks (~1 KB) and it
//! holds every unfinished `/v1` callback as well: ~N/8 RRU for N unfinished callbacks of any
//! kind.
//!
//! The index trails the table by a moment: a callback created just before the fence may be
//! missed. It then stays fluxcb's and is delivered here, exactly as one created just after the
//! fence would be: nothing is lost or sent twice. Each fence is a transaction conditioned on
//! the callback as read strongly consistent (status, `updated_at`, no owner), so the index's
//! lag cannot fence a callback that finished meanwhile, and "as it was before" is exact.
//!
//! **The flag** is a marker item per callback (`handback` / `<callback id>`), put in the fence's
//! own transaction and deleted in `mark_handed_back`'s (with the `handed_back` event). An
//! interrupted export's fenced-but-unwritten callbacks are one strongly consistent query of that
//! partition away; a flag attribute on the callback item would need an index (eventually
//! consistent) or a scan to be found again.
//!
//! **Costs** per fenced callback of 1 KB: 1 RRU (the strongly consistent read), 4 WRU for the
//! transaction (callback and marker, transactional writes cost double), and about 4 WRU of
//! index upkeep (`by_tenant` and `by_status` project whole items, `by_legacy` projects `owner`,
//! `due` loses the entry); `mark_handed_back` is 4 WRU (marker deleted, event put, in one
//! transaction).
//!
//! A fenced callback still `delivering` keeps its `due` entry at its lease end, so that the
//! sweeper can recover it if its worker died; the attempt record, the lease recovery, a deferral
//! and the sweeper's enqueue all leave a callback whose owner is legacy out of the `due` index
//! and out of the queue (see `work.rs`, `sweep.rs`).
use aws_sdk_dynamodb::types::{Delete, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::EventKind;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::StoreError;
use fluxcb_core::status::Status;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::callbacks::build_err;
use super::ingest::{is_transaction_conflict, CONDITION_FAILED};
use super::items::{
    callback_pk, event_item, get_s, ms, n, s, tenant_status, NewEvent, CALLBACK_SK, HOLDER,
};
use super::{cancellation_codes, store_error, DynamoStore, Item, INDEX_BY_LEGACY};

/// The partition of the hand-back markers: one item per callback awaiting hand-back.
pub(crate) const HANDBACK_PK: &str = "handback";
const EXPORT_ACTOR: &str = "fluxcb migrate export";
/// The statuses of an unfinished callback.
const UNFINISHED: [Status; 3] = [Status::Scheduled, Status::Pending, Status::Delivering];
/// Fences in flight at once (each is one transaction on its own partition).
const CONCURRENCY: usize = 8;

/// What became of one fence.
enum Fence {
    /// Fenced now; the callback as it was before.
    Fenced(Box<Callback>),
    /// Nothing to fence: finished, a mirror already, or gone.
    Nothing,
    /// It changed since it was read: read it again.
    Changed,
}

impl DynamoStore {
    /// [`fluxcb_core::ports::CallbackStore::fence_for_handback`].
    pub(super) async fn handback_fence(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<Callback>, StoreError> {
        // An earlier run's: fenced but not marked handed back.
        let mut out = self.awaiting_handback().await?;
        let flagged: std::collections::HashSet<String> =
            out.iter().map(|cb| callback_pk(&cb.id)).collect();
        let mut candidates: Vec<String> = Vec::new();
        for tenant in self.tenants().await? {
            for status in UNFINISHED {
                self.owned_unfinished(&tenant_status(&tenant, status), now, &mut candidates)
                    .await?;
            }
        }
        candidates.retain(|pk| !flagged.contains(pk));
        candidates.sort();
        candidates.dedup();
        // Read strongly consistent in batches; each fence is conditioned on what was read.
        let read = self.batch_get_callbacks(&candidates, true).await?;
        let fenced: Vec<Option<Callback>> = stream::iter(read)
            .map(|cb| self.fence_until_done(cb, now))
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        out.extend(fenced.into_iter().flatten());
        Ok(out)
    }

    /// Callbacks fenced by an earlier run and not yet marked handed back, as they are now. A
    /// marker whose callback retention has removed is deleted.
    async fn awaiting_handback(&self) -> Result<Vec<Callback>, StoreError> {
        let markers: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(HANDBACK_PK))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("reading the hand-back markers", e))?;
        let pks: Vec<String> = markers
            .iter()
            .filter_map(|m| get_s(m, HOLDER))
            .map(|id| format!("cb#{id}"))
            .collect();
        let found = self.batch_get_callbacks(&pks, true).await?;
        for marker in &markers {
            let Some(id) = get_s(marker, HOLDER) else {
                continue;
            };
            if !found.iter().any(|cb| cb.id.to_string() == id) {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", s(HANDBACK_PK))
                    .key("sk", s(id))
                    .send()
                    .await
                    .map_err(|e| store_error("deleting a stale hand-back marker", e))?;
            }
        }
        Ok(found)
    }

    /// The keys of one `by_legacy` partition's live, fluxcb-owned entries.
    async fn owned_unfinished(
        &self,
        partition: &str,
        now: DateTime<Utc>,
        out: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(INDEX_BY_LEGACY)
            .key_condition_expression("tenant_status = :p")
            .filter_expression(
                "attribute_not_exists(#ow) AND \
                 (attribute_not_exists(expires_at) OR expires_at > :now)",
            )
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":p", s(partition))
            .expression_attribute_values(":now", n(now.timestamp()))
            .projection_expression("pk")
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("finding unfinished legacy callbacks", e))?;
        out.extend(
            items
                .iter()
                .filter_map(|i| get_s(i, "pk"))
                .map(str::to_owned),
        );
        Ok(())
    }

    /// Fences one callback, reading it again whenever it changed under the fence.
    async fn fence_until_done(
        &self,
        read: Callback,
        now: DateTime<Utc>,
    ) -> Result<Option<Callback>, StoreError> {
        let mut current = Some(read);
        for round in 0..8 {
            let Some(cb) = current.take() else {
                return Ok(None);
            };
            match self.fence_one(&cb, now).await? {
                Fence::Fenced(before) => return Ok(Some(*before)),
                Fence::Nothing => return Ok(None),
                Fence::Changed => {
                    if round > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(20 << round)).await;
                    }
                    current = self.load(&cb.id).await?;
                }
            }
        }
        Err(StoreError::Busy(
            "fencing callbacks for hand-back: a callback kept changing".into(),
        ))
    }

    async fn fence_one(&self, cb: &Callback, now: DateTime<Utc>) -> Result<Fence, StoreError> {
        if cb.owner == Owner::Legacy || cb.legacy_id.is_none() || !UNFINISHED.contains(&cb.status) {
            return Ok(Fence::Nothing);
        }
        // In flight: the `due` entry at the lease end stays, so that the sweeper recovers the
        // callback (as a mirror, off the queue) should its worker have died.
        let remove = if cb.status == Status::Delivering {
            "next_attempt_at, enqueued_at"
        } else {
            "next_attempt_at, enqueued_at, due_pk, due_sk"
        };
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&cb.id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(format!(
                "SET #ow = :legacy, updated_at = :now REMOVE {remove}"
            ))
            .condition_expression("attribute_not_exists(#ow) AND #st = :st AND updated_at = :seen")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":legacy", s(Owner::Legacy.as_str()))
            .expression_attribute_values(":now", n(ms(now)))
            .expression_attribute_values(":st", s(cb.status.as_str()))
            .expression_attribute_values(":seen", n(ms(cb.updated_at)))
            .build()
            .map_err(build_err)?;
        let mut marker = Item::new();
        let id = cb.id.to_string();
        marker.insert("pk".into(), s(HANDBACK_PK));
        marker.insert("sk".into(), s(&id));
        marker.insert(HOLDER.into(), s(&id));
        marker.insert("fenced_at".into(), n(ms(now)));
        if let Some(legacy_id) = cb.legacy_id {
            marker.insert("legacy_id".into(), n(legacy_id));
        }
        let actions = vec![
            TransactWriteItem::builder().update(update).build(),
            self.put(marker, None)?,
        ];
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(Fence::Fenced(Box::new(cb.clone()))),
            Err(e) => match cancellation_codes(&e) {
                Some(codes)
                    if codes.first().map(String::as_str) == Some(CONDITION_FAILED)
                        || is_transaction_conflict(&codes) =>
                {
                    Ok(Fence::Changed)
                }
                _ => Err(store_error("fencing a callback for hand-back", e)),
            },
        }
    }

    /// [`fluxcb_core::ports::CallbackStore::mark_handed_back`]: the marker goes and the
    /// `handed_back` event comes, in one transaction.
    pub(super) async fn handback_done(
        &self,
        id: &CallbackId,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut event = event_item(
            id,
            now,
            &NewEvent {
                kind: EventKind::HandedBack,
                actor: Some(EXPORT_ACTOR),
                from: None,
                to: None,
            },
            self.finished_expiry(now) + 30 * 86_400,
        );
        event.insert("detail".into(), s(detail.to_string()));
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(HANDBACK_PK))
            .key("sk", s(id.to_string()))
            .build()
            .map_err(build_err)?;
        let actions = vec![
            TransactWriteItem::builder().delete(delete).build(),
            self.put(event, None)?,
        ];
        self.client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("marking a callback handed back", e))
    }
}
