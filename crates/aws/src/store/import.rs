//! `fluxcb migrate import` on DynamoDB: legacy rows keyed on their legacy id (through the
//! `legacy#<id>` pointer), with the same outcomes as the embedded store: new rows inserted,
//! mirrors refreshed or taken over, what fluxcb owns left alone, an `external_id` another
//! callback holds skipped.
//!
//! Rows go in segments of up to 100 (no legacy id, callback id or `external_id` twice in one, so
//! a segment's reads see every earlier row's writes): a strongly consistent `BatchGetItem` each
//! for the pointers, the callbacks they name, the guards of new rows' `external_id`s and the
//! callbacks those name; then one transaction per ~25 rows, each row's writes conditional on
//! what was read (a concurrent change makes that row be read and decided again).
//!
//! A mirror is never due: it has no `due` index attributes and is never claimed (claims and
//! operator actions are conditional on `owner` being absent). A row taken over becomes due with
//! no queue message: its `due_sk` is its due time less the sweeper's reach, so the sweeper's
//! next run sends its message once it is due within 14 minutes, as for any long wait.
use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use chrono::Utc;
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::EventKind;
use fluxcb_core::ports::{ImportOutcome, StoreError};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::TenantId;

use super::callbacks::{build_err, NOT_EXISTS};
use super::ingest::{is_transaction_conflict, CONDITION_FAILED};
use super::items::{
    callback_entries, callback_pk, due_shard, due_sort_key, event_item, expiry, get_n, get_s,
    guard_pk, is_expired, ms, n, pointer_pk, s, sweep_at, tenant_status, NewEvent, CALLBACK_SK,
    GUARD_SK, HOLDER, POINTER_SK,
};
use super::{is_conditional_failure, store_error, DynamoStore, Item, MAX_TRANSACTION_ITEMS};

const SEGMENT: usize = 100;
const IMPORT_ACTOR: &str = "fluxcb migrate import";

/// One row's writes, all in one transaction, and what they mean.
struct Plan {
    row: usize,
    actions: Vec<TransactWriteItem>,
    outcome: ImportOutcome,
}

/// Consecutive runs of at most [`SEGMENT`] rows in which no legacy id, callback id or
/// `external_id` repeats.
fn segments(rows: &[Callback]) -> Vec<&[Callback]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen: HashSet<String> = HashSet::new();
    for (i, cb) in rows.iter().enumerate() {
        let mut keys = vec![cb.id.to_string()];
        keys.extend(cb.legacy_id.map(pointer_pk));
        keys.extend(cb.external_id.as_deref().map(|e| guard_pk(&cb.tenant, e)));
        if i - start >= SEGMENT || keys.iter().any(|k| seen.contains(k)) {
            out.push(&rows[start..i]);
            start = i;
            seen.clear();
        }
        seen.extend(keys);
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// `<holder attribute> = :value` when an item was seen there, else "no item yet".
fn holder_condition(seen: Option<&str>) -> (String, Option<AttributeValue>) {
    match seen {
        Some(holder) => ("#h = :h".to_owned(), Some(s(holder))),
        None => (NOT_EXISTS.to_owned(), None),
    }
}

/// A mirror's fields that legacy changes as it works on the row, as stored and as imported.
type MirrorState = (
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
);

fn stored_state(item: &Item) -> MirrorState {
    (
        get_s(item, "status").unwrap_or_default().to_owned(),
        get_n(item, "attempts_made").unwrap_or(-1),
        get_n(item, "max_attempts").unwrap_or(-1),
        get_n(item, "last_status_code"),
        get_s(item, "last_error").map(str::to_owned),
        get_n(item, "updated_at").unwrap_or(-1),
        get_n(item, "deliver_at"),
    )
}

fn incoming_state(cb: &Callback) -> MirrorState {
    (
        cb.status.as_str().to_owned(),
        i64::from(cb.attempts_made),
        i64::from(cb.max_attempts),
        cb.last_status_code.map(i64::from),
        cb.last_error.clone(),
        ms(cb.updated_at),
        cb.spec.deliver_at.map(ms),
    )
}

/// Whether an imported callback waits for an attempt here.
fn is_due_here(cb: &Callback) -> bool {
    cb.owner == Owner::Fluxcb
        && matches!(cb.status, Status::Scheduled | Status::Pending)
        && cb.next_attempt_at.is_some()
}

impl DynamoStore {
    pub(super) async fn legacy_import(
        &self,
        rows: Vec<Callback>,
    ) -> Result<Vec<ImportOutcome>, StoreError> {
        let tenants: HashSet<&TenantId> = rows.iter().map(|c| &c.tenant).collect();
        for tenant in tenants {
            self.register_tenant(tenant).await?;
        }
        let mut outcomes = Vec::with_capacity(rows.len());
        for segment in segments(&rows) {
            outcomes.extend(self.import_segment(segment).await?);
            // Should the import stop later, ids handed out meanwhile still miss these.
            if let Some(max) = segment.iter().filter_map(|c| c.legacy_id).max() {
                self.advance_legacy_ids(max).await?;
            }
        }
        Ok(outcomes)
    }

    /// Moves the `sequence#legacy_id` counter (the last id handed out) up to `id`, never back.
    pub(super) async fn advance_legacy_ids(&self, id: i64) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s("sequence#legacy_id"))
            .key("sk", s("sequence"))
            .update_expression("SET next_value = :id")
            .condition_expression("attribute_not_exists(next_value) OR next_value < :id")
            .expression_attribute_values(":id", n(id))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(store_error("advancing the legacy id sequence", e)),
        }
    }

    async fn import_segment(&self, rows: &[Callback]) -> Result<Vec<ImportOutcome>, StoreError> {
        let mut outcomes: Vec<Option<ImportOutcome>> = vec![None; rows.len()];
        let mut todo: Vec<usize> = (0..rows.len()).collect();
        for _ in 0..4 {
            let plans = self.plan_imports(rows, &todo, &mut outcomes).await?;
            todo = self.write_plans(plans, &mut outcomes).await?;
            if todo.is_empty() {
                break;
            }
        }
        if !todo.is_empty() {
            return Err(StoreError::Busy(
                "importing legacy rows: the rows kept changing while they were written".into(),
            ));
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| ImportOutcome::Skipped("not decided".into())))
            .collect())
    }

    /// Reads what the rows in `todo` touch and decides each: an outcome now (skipped,
    /// unchanged, owned here) or a plan of writes.
    async fn plan_imports(
        &self,
        rows: &[Callback],
        todo: &[usize],
        outcomes: &mut [Option<ImportOutcome>],
    ) -> Result<Vec<Plan>, StoreError> {
        let holders = |items: Vec<Item>| -> HashMap<String, String> {
            items
                .iter()
                .filter_map(|i| Some((get_s(i, "pk")?.to_owned(), get_s(i, HOLDER)?.to_owned())))
                .collect()
        };
        let by_pk = |items: Vec<Item>| -> HashMap<String, Item> {
            items
                .into_iter()
                .filter_map(|i| Some((get_s(&i, "pk")?.to_owned(), i)))
                .collect()
        };
        let mut todo: Vec<usize> = todo.to_vec();
        todo.retain(|&i| {
            let keep = rows[i].legacy_id.is_some();
            if !keep {
                outcomes[i] = Some(ImportOutcome::Skipped("no legacy id".into()));
            }
            keep
        });
        let legacy_id = |i: usize| rows[i].legacy_id.unwrap_or_default();
        let pointer_keys = todo
            .iter()
            .map(|&i| (pointer_pk(legacy_id(i)), POINTER_SK.to_owned()))
            .collect();
        let pointers = holders(self.batch_get(pointer_keys, true).await?);
        let existing_keys = pointers
            .values()
            .map(|h| (format!("cb#{h}"), CALLBACK_SK.to_owned()))
            .collect();
        let existing = by_pk(self.batch_get(existing_keys, true).await?);
        let existing_of = |i: usize| {
            pointers
                .get(&pointer_pk(legacy_id(i)))
                .and_then(|h| existing.get(&format!("cb#{h}")))
        };
        let guard_keys = todo
            .iter()
            .filter(|&&i| existing_of(i).is_none())
            .filter_map(|&i| rows[i].external_id.as_deref().map(|e| (i, e)))
            .map(|(i, e)| (guard_pk(&rows[i].tenant, e), GUARD_SK.to_owned()))
            .collect();
        let guards = holders(self.batch_get(guard_keys, true).await?);
        let guard_holder_keys = guards
            .values()
            .map(|h| (format!("cb#{h}"), CALLBACK_SK.to_owned()))
            .collect();
        let now = Utc::now();
        let guard_holders: HashMap<String, Item> =
            by_pk(self.batch_get(guard_holder_keys, true).await?)
                .into_iter()
                .filter(|(_, i)| !is_expired(i, now))
                .collect();

        let mut plans = Vec::new();
        for i in todo {
            let cb = &rows[i];
            let pointer = pointers.get(&pointer_pk(legacy_id(i))).map(String::as_str);
            let plan = match existing_of(i) {
                Some(item) => self.plan_existing(cb, item)?,
                None => {
                    let guard = cb
                        .external_id
                        .as_deref()
                        .and_then(|e| guards.get(&guard_pk(&cb.tenant, e)))
                        .map(String::as_str);
                    let holder = guard
                        .filter(|h| *h != cb.id.to_string().as_str())
                        .and_then(|h| guard_holders.get(&format!("cb#{h}")));
                    match holder {
                        Some(item) => {
                            let who = get_n(item, "legacy_id")
                                .map_or("a callback created through /v1".to_owned(), |h| {
                                    format!("callback {h}")
                                });
                            Err(ImportOutcome::Skipped(format!(
                                "external_id {:?} already belongs to {who}",
                                cb.external_id.as_deref().unwrap_or_default()
                            )))
                        }
                        None => Ok(self.plan_insert(cb, pointer, guard)?),
                    }
                }
            };
            match plan {
                Ok((actions, outcome)) => plans.push(Plan {
                    row: i,
                    actions,
                    outcome,
                }),
                Err(outcome) => outcomes[i] = Some(outcome),
            }
        }
        Ok(plans)
    }

    /// A new callback with its pointer and guard (replacing stale ones that were read), and an
    /// `imported` event.
    fn plan_insert(
        &self,
        cb: &Callback,
        pointer: Option<&str>,
        guard: Option<&str>,
    ) -> Result<(Vec<TransactWriteItem>, ImportOutcome), StoreError> {
        let mut entries = callback_entries(cb, self.sweep_grace).into_iter();
        let mut item = entries.next().expect("the callback item comes first");
        if is_due_here(cb) {
            // No message is sent: the sweeper sends one when it comes within the queue's reach.
            let at = cb.next_attempt_at.expect("checked by is_due_here");
            item.remove("enqueued_at");
            item.insert(
                "due_sk".into(),
                s(due_sort_key(sweep_at(at, None, self.sweep_grace), &cb.id)),
            );
        } else {
            item.remove("due_pk");
            item.remove("due_sk");
            item.remove("enqueued_at");
        }
        if cb.status.is_final() {
            // As the embedded store purges by `updated_at`.
            item.insert(
                "expires_at".into(),
                n(expiry(cb.updated_at, self.retention.callbacks)),
            );
        }
        let mut actions = vec![self.put(item, Some(NOT_EXISTS))?];
        for entry in entries {
            let seen = if get_s(&entry, "sk") == Some(POINTER_SK) {
                pointer
            } else {
                guard
            };
            let (condition, value) = holder_condition(seen);
            let mut put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(entry))
                .condition_expression(condition);
            if let Some(v) = value {
                put = put
                    .expression_attribute_names("#h", HOLDER)
                    .expression_attribute_values(":h", v);
            }
            actions.push(
                TransactWriteItem::builder()
                    .put(put.build().map_err(build_err)?)
                    .build(),
            );
        }
        actions.push(self.imported_event(cb)?);
        Ok((actions, ImportOutcome::Inserted))
    }

    /// An existing callback: left alone when fluxcb owns it, unchanged when the mirror already
    /// shows the row, else refreshed (or taken over) in place.
    #[allow(clippy::type_complexity)]
    fn plan_existing(
        &self,
        cb: &Callback,
        item: &Item,
    ) -> Result<Result<(Vec<TransactWriteItem>, ImportOutcome), ImportOutcome>, StoreError> {
        if get_s(item, "owner") != Some(Owner::Legacy.as_str()) {
            return Ok(Err(ImportOutcome::OwnedHere));
        }
        if cb.owner == Owner::Legacy && stored_state(item) == incoming_state(cb) {
            return Ok(Err(ImportOutcome::Unchanged));
        }
        let Some(id) = get_s(item, "id").and_then(|i| i.parse().ok()) else {
            return Err(StoreError::Internal(
                "a callback item without its id".into(),
            ));
        };
        let mut set = vec![
            "#st = :st",
            "tenant_status = :ts",
            "attempts_made = :am",
            "max_attempts = :ma",
            "attempt_budget = :ma",
            "updated_at = :up",
        ];
        let mut remove = vec!["lease_until", "enqueued_at"];
        let mut values = vec![
            (":st", s(cb.status.as_str())),
            (":ts", s(tenant_status(&cb.tenant, cb.status))),
            (":am", n(cb.attempts_made)),
            (":ma", n(cb.max_attempts)),
            (":up", n(ms(cb.updated_at))),
            (":legacy", s(Owner::Legacy.as_str())),
            (":seen", n(get_n(item, "updated_at").unwrap_or(-1))),
        ];
        let mut optional = |attr: &'static str,
                            set_expr: &'static str,
                            key: &'static str,
                            v: Option<AttributeValue>| match v {
            Some(v) => {
                set.push(set_expr);
                values.push((key, v));
            }
            None => remove.push(attr),
        };
        optional(
            "last_status_code",
            "last_status_code = :code",
            ":code",
            cb.last_status_code.map(n),
        );
        optional(
            "last_error",
            "last_error = :err",
            ":err",
            cb.last_error.as_deref().map(s),
        );
        optional(
            "deliver_at",
            "deliver_at = :da",
            ":da",
            cb.spec.deliver_at.map(|t| n(ms(t))),
        );
        optional(
            "next_attempt_at",
            "next_attempt_at = :next",
            ":next",
            cb.next_attempt_at.map(|t| n(ms(t))),
        );
        optional(
            "expires_at",
            "expires_at = :exp",
            ":exp",
            cb.status
                .is_final()
                .then(|| n(expiry(cb.updated_at, self.retention.callbacks))),
        );
        if cb.owner == Owner::Legacy {
            set.push("#ow = :legacy");
        } else {
            remove.push("#ow");
        }
        match cb.next_attempt_at.filter(|_| is_due_here(cb)) {
            Some(at) => {
                set.extend(["due_pk = :dp", "due_sk = :ds"]);
                values.push((":dp", s(due_shard(&id))));
                values.push((
                    ":ds",
                    s(due_sort_key(sweep_at(at, None, self.sweep_grace), &id)),
                ));
            }
            None => remove.extend(["due_pk", "due_sk"]),
        }
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(callback_pk(&id)))
            .key("sk", s(CALLBACK_SK))
            .update_expression(format!(
                "SET {} REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .condition_expression("#ow = :legacy AND updated_at = :seen")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner");
        for (k, v) in values {
            update = update.expression_attribute_values(k, v);
        }
        let mut event_cb = cb.clone();
        event_cb.id = id;
        let actions = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_err)?)
                .build(),
            self.imported_event(&event_cb)?,
        ];
        Ok(Ok((actions, ImportOutcome::Updated)))
    }

    fn imported_event(&self, cb: &Callback) -> Result<TransactWriteItem, StoreError> {
        let now = Utc::now();
        let event = event_item(
            &cb.id,
            now,
            &NewEvent {
                kind: EventKind::Imported,
                actor: Some(IMPORT_ACTOR),
                from: None,
                to: Some(cb.status),
            },
            self.finished_expiry(now) + 30 * 86_400,
        );
        self.put(event, Some(NOT_EXISTS))
    }

    /// Writes the plans in transactions of whole rows. Returns the rows whose conditions failed
    /// (something changed since they were read): they are read and decided again.
    async fn write_plans(
        &self,
        plans: Vec<Plan>,
        outcomes: &mut [Option<ImportOutcome>],
    ) -> Result<Vec<usize>, StoreError> {
        let mut chunks: Vec<Vec<Plan>> = Vec::new();
        let mut size = 0;
        for plan in plans {
            if chunks.is_empty() || size + plan.actions.len() > MAX_TRANSACTION_ITEMS {
                chunks.push(Vec::new());
                size = 0;
            }
            size += plan.actions.len();
            chunks.last_mut().expect("just pushed").push(plan);
        }
        let mut again = Vec::new();
        for mut pending in chunks {
            for _ in 0..3 {
                if pending.is_empty() {
                    break;
                }
                let actions: Vec<TransactWriteItem> = pending
                    .iter()
                    .flat_map(|p| p.actions.iter().cloned())
                    .collect();
                match self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(actions))
                    .send()
                    .await
                {
                    Ok(_) => {
                        for plan in pending.drain(..) {
                            outcomes[plan.row] = Some(plan.outcome);
                        }
                    }
                    Err(e) => match super::cancellation_codes(&e) {
                        Some(codes) if codes.iter().any(|c| c == CONDITION_FAILED) => {
                            let mut codes = codes.into_iter();
                            let mut keep = Vec::new();
                            for plan in pending {
                                let failed = codes
                                    .by_ref()
                                    .take(plan.actions.len())
                                    .any(|c| c == CONDITION_FAILED);
                                if failed {
                                    again.push(plan.row);
                                } else {
                                    keep.push(plan);
                                }
                            }
                            pending = keep;
                        }
                        // Another writer on the same items: read and decide them again.
                        Some(codes) if is_transaction_conflict(&codes) => {
                            again.extend(pending.drain(..).map(|p| p.row));
                        }
                        _ => return Err(store_error("importing legacy rows", e)),
                    },
                }
            }
            again.extend(pending.iter().map(|p| p.row));
        }
        Ok(again)
    }
}
