//! What the sweeper asks of the table: callbacks that need a queue message (never had one,
//! or theirs seems lost) and in-flight callbacks whose lease ended.
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::StoreError;
use fluxcb_core::status::Status;
use fluxcb_core::tenant::TenantId;

use super::items::{
    callback_from_item, callback_pk, due_sort_key, from_ms, get_n, get_s, ms, n, s, sweep_at,
    CALLBACK_SK, SWEEP_REACH,
};
use super::{is_conditional_failure, store_error, DynamoStore, DUE_SHARDS, INDEX_DUE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepKind {
    /// Waiting and due within the queue's delay horizon, with no message sent for it yet (a
    /// long wait), or with its last message sent long enough ago to count as lost.
    Enqueue,
    /// In flight past its lease: its worker died.
    ExpiredLease,
}

#[derive(Clone, Debug)]
pub struct SweepCandidate {
    pub id: CallbackId,
    pub tenant: TenantId,
    pub due_at: DateTime<Utc>,
    pub kind: SweepKind,
    /// `enqueued_at` as read, so that marking it is conditional on nobody else having sent one.
    pub enqueued_at: Option<i64>,
    pub callback: Option<fluxcb_core::callback::Callback>,
}

impl DynamoStore {
    /// Callbacks that need the sweeper now: waiting ones without a message whose due time came
    /// within the queue's reach, waiting ones whose message is overdue by the grace period, and
    /// in-flight ones whose lease ended. The `due` index is keyed by exactly that moment
    /// ([`super::items::sweep_at`]), so the query reads only these. At most `limit` per call.
    pub async fn sweep_candidates(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SweepCandidate>, StoreError> {
        let grace = self.sweep_grace;
        let mut out = Vec::new();
        // Each run starts at the next shard, so that when `limit` cuts a run short no shard
        // waits behind the others run after run.
        let first = self
            .sweep_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for turn in 0..DUE_SHARDS {
            let shard = (first + turn) % DUE_SHARDS;
            let mut start = None;
            loop {
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_DUE)
                    .key_condition_expression("due_pk = :p AND due_sk <= :h")
                    .expression_attribute_values(":p", s(format!("due#{shard}")))
                    .expression_attribute_values(":h", s(format!("{:013}~", ms(now).max(0))))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| store_error("sweeping the due index", e))?;
                for item in page.items.unwrap_or_default() {
                    let Some(status) = get_s(&item, "status").and_then(|v| v.parse().ok()) else {
                        continue;
                    };
                    let Some(id) = get_s(&item, "id").and_then(|v| v.parse().ok()) else {
                        continue;
                    };
                    let Some(tenant) = get_s(&item, "tenant").and_then(|t| TenantId::parse(t).ok())
                    else {
                        continue;
                    };
                    let enqueued_at = get_n(&item, "enqueued_at");
                    match status {
                        Status::Delivering => {
                            let lease = get_n(&item, "lease_until").map(from_ms);
                            if lease.is_some_and(|l| l < now) {
                                out.push(SweepCandidate {
                                    id,
                                    tenant: tenant.clone(),
                                    due_at: now,
                                    kind: SweepKind::ExpiredLease,
                                    enqueued_at,
                                    callback: Some(callback_from_item(&item)?),
                                });
                            }
                        }
                        Status::Pending | Status::Scheduled => {
                            let Some(due) = get_n(&item, "next_attempt_at").map(from_ms) else {
                                continue;
                            };
                            // Checked again here: the index trails the table.
                            let needs = match enqueued_at.map(from_ms) {
                                None => due - SWEEP_REACH <= now,
                                // Sent, and overdue by more than `grace` since it became
                                // visible: the message is presumed lost.
                                Some(sent) => now - due.max(sent) > grace,
                            };
                            if needs {
                                out.push(SweepCandidate {
                                    id,
                                    tenant: tenant.clone(),
                                    due_at: due,
                                    kind: SweepKind::Enqueue,
                                    enqueued_at,
                                    callback: None,
                                });
                            }
                        }
                        _ => {}
                    }
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
                start = page.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Records that a message was sent for a waiting callback, unless someone else did first.
    pub async fn mark_enqueued(
        &self,
        candidate: &SweepCandidate,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&candidate.id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression("SET enqueued_at = :now, due_sk = :due_sk")
            .expression_attribute_values(
                ":due_sk",
                s(due_sort_key(
                    sweep_at(candidate.due_at, Some(now), self.sweep_grace),
                    &candidate.id,
                )),
            )
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":now", n(ms(now)))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":scheduled", s(Status::Scheduled.as_str()));
        // Never for a callback handed back to legacy (`owner` set): it is not due here.
        update = match candidate.enqueued_at {
            Some(previous) => update
                .condition_expression(
                    "#st IN (:pending, :scheduled) AND enqueued_at = :prev \
                     AND attribute_not_exists(#ow)",
                )
                .expression_attribute_values(":prev", AttributeValue::N(previous.to_string())),
            None => update.condition_expression(
                "#st IN (:pending, :scheduled) AND attribute_not_exists(enqueued_at) \
                 AND attribute_not_exists(#ow)",
            ),
        };
        match update.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(store_error("marking a callback enqueued", e)),
        }
    }
}
