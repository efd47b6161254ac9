//! Ordered delivery per key on DynamoDB (decision 0003): each key has a head item that names
//! the callback whose turn it is (`busy`: due, in flight, or a dead letter holding the key) and
//! a `version` every change of the key bumps under a condition, so that concurrent ingests and
//! turn ends on one key apply one at a time, in the order the table accepts them. The callbacks
//! waiting behind it are member items in acceptance order; a waiting callback has no due time
//! and no `due` entry, so neither a stale message nor the sweeper can send it early.
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | key head | `okey#<tenant>#<key>` | `head` | `version`, `busy` (callback id), `held` (callback id) |
//! | waiting member | `okey#<tenant>#<key>` | `m#<20-digit seq>` | `callback`, `deliver_at` |
//!
//! Invariant: members exist only while `busy` is set; the end of the busy callback's turn
//! moves the first member into `busy` (making its callback due) in the same transaction.
use aws_sdk_dynamodb::types::{AttributeValue, Delete, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use fluxcb_core::callback::Callback;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ordering::AfterDeadLetter;
use fluxcb_core::ports::{Due, StoreError};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::TenantId;

use super::callbacks::{build_err, NOT_EXISTS};
use super::ingest::{is_transaction_conflict, CONDITION_FAILED};
use super::items::{
    callback_entries, callback_pk, due_shard, due_sort_key, from_ms, get_n, get_s, ms, n, s,
    sweep_at, CALLBACK_SK, HOLDER,
};
use super::{cancellation_codes, store_error, DynamoStore, Item, MAX_QUEUE_DELAY};

const HEAD_SK: &str = "head";
/// Callbacks of one key written per transaction: with their legacy id pointer, `external_id`
/// guard and member item (4 items each) and the head and an idempotency record, 24 fit in
/// DynamoDB's 100 actions.
pub(super) const RUN_LEN: usize = 24;
/// Tries of one change of a key before the caller is told to come back (503): every try lost
/// to another change of the same key, which is progress for that key.
pub(super) const ORDERED_ROUNDS: u32 = 12;

pub(super) fn head_pk(tenant: &TenantId, key: &str) -> String {
    format!("okey#{tenant}#{key}")
}

fn member_sk(seq: u64) -> String {
    format!("m#{seq:020}")
}

/// A key's head as last read. A key nobody has used (or whose idle head retention removed)
/// reads as version 0 with nothing busy.
#[derive(Debug, Default)]
pub(super) struct Head {
    exists: bool,
    version: u64,
    busy: Option<String>,
    held: Option<String>,
}

impl Head {
    pub(super) fn is_busy_with(&self, id: &CallbackId) -> bool {
        self.busy.as_deref() == Some(id.to_string().as_str())
    }

    pub(super) fn is_held_by(&self, id: &CallbackId) -> bool {
        self.held.as_deref() == Some(id.to_string().as_str())
    }
}

/// What a change of a key adds to the transaction that makes it, and the callback it makes due
/// (whose message the caller sends after the commit, if it said it would).
#[derive(Default)]
pub(super) struct KeyChange {
    pub actions: Vec<TransactWriteItem>,
    pub promoted: Option<Due>,
}

/// Pauses a little before another try on a contended key, spread so that two contenders do
/// not meet again at once.
pub(super) async fn contention_pause(round: u32) {
    let base = 5 + 5 * u64::from(round.min(6));
    let jitter = rand::random::<u64>() % 10;
    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
}

impl DynamoStore {
    pub(super) async fn read_head(&self, tenant: &TenantId, key: &str) -> Result<Head, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(head_pk(tenant, key)))
            .key("sk", s(HEAD_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading an ordering key", e))?
            .item;
        Ok(match item {
            None => Head::default(),
            Some(item) => Head {
                exists: true,
                version: get_n(&item, "version").unwrap_or(0) as u64,
                busy: get_s(&item, "busy").map(str::to_owned),
                held: get_s(&item, "held").map(str::to_owned),
            },
        })
    }

    /// The head update of a change from `head`: `SET`/`REMOVE` clauses with their values,
    /// conditioned on the version read (or on the head not existing yet).
    fn head_update(
        &self,
        tenant: &TenantId,
        key: &str,
        head: &Head,
        bump: u64,
        set: &[(&str, AttributeValue)],
        remove: &[&str],
    ) -> Result<TransactWriteItem, StoreError> {
        let mut sets = vec!["version = :v1".to_owned()];
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(head_pk(tenant, key)))
            .key("sk", s(HEAD_SK))
            .expression_attribute_values(":v1", n(head.version + bump));
        for (name, value) in set {
            sets.push(format!("{name} = :{name}"));
            update = update.expression_attribute_values(format!(":{name}"), value.clone());
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        update = update.update_expression(expression);
        update = if head.exists {
            update
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(head.version))
        } else {
            update.condition_expression(NOT_EXISTS)
        };
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(build_err)?)
            .build())
    }

    /// Ends the turn of `head.busy`: its first waiting member (if any) becomes busy and due,
    /// otherwise the key goes idle (and its head expires with retention unless used again).
    /// Clears a hold. `announce`: the caller sends the promoted callback's message after the
    /// commit; otherwise the sweeper sends it on its next run.
    async fn advance(
        &self,
        tenant: &TenantId,
        key: &str,
        head: &Head,
        now: DateTime<Utc>,
        announce: bool,
    ) -> Result<KeyChange, StoreError> {
        let first = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :m)")
            .expression_attribute_values(":pk", s(head_pk(tenant, key)))
            .expression_attribute_values(":m", s("m#"))
            .consistent_read(true)
            .limit(1)
            .send()
            .await
            .map_err(|e| store_error("reading an ordering key's next callback", e))?
            .items
            .unwrap_or_default()
            .into_iter()
            .next();
        let Some(member) = first else {
            let idle = self.head_update(
                tenant,
                key,
                head,
                1,
                &[("expires_at", n(self.finished_expiry(now)))],
                &["busy", "held"],
            )?;
            return Ok(KeyChange {
                actions: vec![idle],
                promoted: None,
            });
        };
        let (Some(sk), Some(next)) = (
            get_s(&member, "sk"),
            get_s(&member, HOLDER).and_then(|i| i.parse::<CallbackId>().ok()),
        ) else {
            return Err(StoreError::Internal(format!(
                "an unreadable member of ordering key {key:?}"
            )));
        };
        let at = get_n(&member, "deliver_at")
            .map(from_ms)
            .map_or(now, |d| d.max(now));
        let head_item = self.head_update(
            tenant,
            key,
            head,
            1,
            &[("busy", s(next.to_string()))],
            &["held", "expires_at"],
        )?;
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(head_pk(tenant, key)))
            .key("sk", s(sk))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(build_err)?;
        let enqueued = (announce && at - now <= MAX_QUEUE_DELAY).then_some(now);
        let mut set = "next_attempt_at = :at, due_pk = :due_pk, due_sk = :due_sk, \
                       updated_at = :now"
            .to_owned();
        if enqueued.is_some() {
            set.push_str(", enqueued_at = :now");
        }
        let promote = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&next)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(format!("SET {set}"))
            .condition_expression(
                "#st IN (:scheduled, :pending) AND attribute_not_exists(next_attempt_at)",
            )
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":scheduled", s(Status::Scheduled.as_str()))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":at", n(ms(at)))
            .expression_attribute_values(":now", n(ms(now)))
            .expression_attribute_values(":due_pk", s(due_shard(&next)))
            .expression_attribute_values(
                ":due_sk",
                s(due_sort_key(
                    sweep_at(at, enqueued, self.sweep_grace),
                    &next,
                )),
            )
            .build()
            .map_err(build_err)?;
        Ok(KeyChange {
            actions: vec![
                head_item,
                TransactWriteItem::builder().delete(delete).build(),
                TransactWriteItem::builder().update(promote).build(),
            ],
            promoted: enqueued.map(|_| Due {
                id: next,
                tenant: tenant.clone(),
                at,
            }),
        })
    }

    /// What ends the turn of callback `id` (delivered, dead-lettered or cancelled): nothing when
    /// it does not hold its key's turn (a redriven dead letter under `continue` runs beside
    /// the key), a hold when `dead_letter` and the policy is `hold`, otherwise the next
    /// callback's turn.
    pub(super) async fn turn_end(
        &self,
        tenant: &TenantId,
        key: &str,
        id: &CallbackId,
        dead_letter: bool,
        now: DateTime<Utc>,
        announce: bool,
    ) -> Result<KeyChange, StoreError> {
        let head = self.read_head(tenant, key).await?;
        if !head.is_busy_with(id) {
            return Ok(KeyChange::default());
        }
        if dead_letter && self.after_dead_letter == AfterDeadLetter::Hold {
            return Ok(KeyChange {
                actions: vec![self.head_update(
                    tenant,
                    key,
                    &head,
                    1,
                    &[("held", s(id.to_string()))],
                    &[],
                )?],
                promoted: None,
            });
        }
        self.advance(tenant, key, &head, now, announce).await
    }

    /// What a retry of dead letter `id` adds: when it holds its key, the hold goes and it is
    /// the key's turn again (first, before the callbacks that waited).
    pub(super) async fn unhold(
        &self,
        tenant: &TenantId,
        key: &str,
        id: &CallbackId,
    ) -> Result<KeyChange, StoreError> {
        let head = self.read_head(tenant, key).await?;
        if !head.is_held_by(id) {
            return Ok(KeyChange::default());
        }
        Ok(KeyChange {
            actions: vec![self.head_update(tenant, key, &head, 1, &[], &["held"])?],
            promoted: None,
        })
    }

    /// What a cancel of waiting callback `id` adds: its member item goes (conditioned on
    /// still being there: a promotion meanwhile makes the caller read again).
    pub(super) fn leave_queue(
        &self,
        tenant: &TenantId,
        key: &str,
        seq: u64,
    ) -> Result<KeyChange, StoreError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(head_pk(tenant, key)))
            .key("sk", s(member_sk(seq)))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(build_err)?;
        Ok(KeyChange {
            actions: vec![TransactWriteItem::builder().delete(delete).build()],
            promoted: None,
        })
    }

    /// [`fluxcb_core::ports::CallbackStore::release_ordering_key`]: a held key's next callback
    /// becomes due (its message is the sweeper's). Whether it was held.
    pub(super) async fn release_key(
        &self,
        tenant: &TenantId,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        for round in 0..ORDERED_ROUNDS {
            let head = self.read_head(tenant, key).await?;
            if head.held.is_none() {
                return Ok(false);
            }
            let change = self.advance(tenant, key, &head, now, false).await?;
            match self
                .client
                .transact_write_items()
                .set_transact_items(Some(change.actions))
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => match cancellation_codes(&e) {
                    Some(codes)
                        if codes.iter().any(|c| c == CONDITION_FAILED)
                            || is_transaction_conflict(&codes) =>
                    {
                        contention_pause(round).await
                    }
                    _ => return Err(store_error("releasing an ordering key", e)),
                },
            }
        }
        Err(busy_key(key))
    }

    /// Writes callbacks of one key (at most [`RUN_LEN`], in acceptance order) with the head
    /// update that puts them at the end of the key's line: the first is due at once when the
    /// key is idle, the rest wait as members. With `record` (an idempotency record, written
    /// only if new) in the same transaction: `Ok(false)` when the record exists already.
    /// Without it, a run whose first callback exists already was written by an earlier try of
    /// the same batch (runs are written whole) and is left as it is.
    pub(super) async fn write_run(
        &self,
        record: Option<&Item>,
        tenant: &TenantId,
        key: &str,
        run: &[Callback],
    ) -> Result<bool, StoreError> {
        for round in 0..ORDERED_ROUNDS {
            let head = self.read_head(tenant, key).await?;
            let idle = head.busy.is_none();
            let mut actions = Vec::new();
            if let Some(record) = record {
                actions.push(self.put(record.clone(), Some(NOT_EXISTS))?);
            }
            let mut set = Vec::new();
            if idle {
                if let Some(first) = run.first() {
                    set.push(("busy", s(first.id.to_string())));
                }
            }
            let head_at = actions.len();
            actions.push(self.head_update(
                tenant,
                key,
                &head,
                run.len() as u64,
                &set,
                &["expires_at"],
            )?);
            // Per callback: where its entries start, and the entries (callback item first).
            let mut groups = Vec::new();
            for (i, cb) in run.iter().enumerate() {
                let seq = head.version + 1 + i as u64;
                let mut entries = callback_entries(cb, self.sweep_grace);
                entries[0].insert("okey_seq".into(), n(seq));
                if !(idle && i == 0) {
                    for waiting in ["next_attempt_at", "due_pk", "due_sk", "enqueued_at"] {
                        entries[0].remove(waiting);
                    }
                    let mut member = Item::new();
                    member.insert("pk".into(), s(head_pk(tenant, key)));
                    member.insert("sk".into(), s(member_sk(seq)));
                    member.insert(HOLDER.into(), s(cb.id.to_string()));
                    if let Some(at) = cb.spec.deliver_at {
                        member.insert("deliver_at".into(), n(ms(at)));
                    }
                    entries.push(member);
                }
                groups.push((actions.len(), entries.clone()));
                for entry in entries {
                    actions.push(self.put(entry, Some(NOT_EXISTS))?);
                }
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
                return Err(store_error("ingesting ordered callbacks", e));
            };
            let failed = |i: usize| codes.get(i).is_some_and(|c| c == CONDITION_FAILED);
            if record.is_some() && failed(0) {
                return Ok(false);
            }
            if let Some((first_at, _)) = groups.first() {
                if failed(*first_at) {
                    if record.is_some() {
                        return Err(StoreError::Conflict(format!(
                            "callback {} exists already",
                            run[0].id
                        )));
                    }
                    return Ok(true);
                }
            }
            // A legacy id or `external_id` in the way: a conflict, or a stale one removed.
            for (start, entries) in &groups {
                for (offset, entry) in entries.iter().enumerate().skip(1) {
                    // A member slot taken means the head moved: the next round reads it again.
                    let member = get_s(entry, "pk").is_some_and(|pk| pk.starts_with("okey#"));
                    if failed(start + offset) && !member {
                        self.reclaim_or_conflict(&entries[0], entry).await?;
                    }
                }
            }
            if failed(head_at)
                || is_transaction_conflict(&codes)
                || codes.iter().any(|c| c == CONDITION_FAILED)
            {
                contention_pause(round).await;
                continue;
            }
            return Err(store_error("ingesting ordered callbacks", e));
        }
        Err(busy_key(key))
    }
}

pub(super) fn busy_key(key: &str) -> StoreError {
    StoreError::Busy(format!(
        "ordering key {key:?} kept changing under concurrent writes; retry"
    ))
}

/// Splits a batch into the callbacks without an ordering key and runs of one key (in the
/// batch's order per key, at most [`RUN_LEN`] each).
pub(super) fn split_runs(callbacks: &[Callback]) -> (Vec<Callback>, Vec<(String, Vec<Callback>)>) {
    let mut plain = Vec::new();
    let mut keys: Vec<(String, Vec<Callback>)> = Vec::new();
    for cb in callbacks {
        match &cb.spec.ordering_key {
            None => plain.push(cb.clone()),
            Some(key) => match keys.iter_mut().find(|(k, _)| k == key) {
                Some((_, list)) => list.push(cb.clone()),
                None => keys.push((key.clone(), vec![cb.clone()])),
            },
        }
    }
    let runs = keys
        .into_iter()
        .flat_map(|(key, list)| {
            list.chunks(RUN_LEN)
                .map(|c| (key.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    (plain, runs)
}

/// The `okey_seq` of a callback item (its place in its key's line).
pub(super) fn seq_of(item: &Item) -> Option<u64> {
    get_n(item, "okey_seq").map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys_sort_in_acceptance_order() {
        let mut keys: Vec<String> = [10u64, 9, 100, 1].iter().map(|s| member_sk(*s)).collect();
        keys.sort();
        assert_eq!(
            keys,
            [member_sk(1), member_sk(9), member_sk(10), member_sk(100)]
        );
    }
}
