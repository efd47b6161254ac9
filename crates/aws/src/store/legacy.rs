//! What the legacy caller API asks of the table: a callback by its integer id, `external_id`
//! lookups, page-number listing with a total count, and the synchronous `send` claim.
//!
//! A callback with a legacy id has a pointer item (`legacy#<id>`) and, with an `external_id`,
//! a guard item (`external#<tenant>#<external_id>`), both written in the callback's own
//! transaction and conditional on not existing: they answer lookups with one strongly
//! consistent `GetItem` and keep legacy ids (globally) and `external_id`s (per tenant) unique.
//! Neither has a TTL: a pointer or guard whose callback retention has removed is stale, reads
//! ignore it, and a new callback that needs its key deletes it first (see `reclaim_or_conflict`).
//!
//! Listing uses the `by_legacy` index (`tenant_status`, `legacy_id`; keys, `expires_at` and
//! `owner` only: retention and the owner filter are filter expressions on the index). What a page costs, in read request units (RRU; eventually consistent index reads, an
//! index entry ~200 bytes, so ~40 entries per RRU):
//!
//! - the total count is one pass over every matching entry: ~M/40 RRU for M matching callbacks
//!   of the tenant (all six status partitions without `?status=`, one or two with it). Page-number
//!   pagination needs it on every request; the first `offset + limit` entries of each partition
//!   are read as keys in the same pass, so the keys cost nothing extra;
//! - the page itself, one `BatchGetItem` of up to 50 callbacks: 0.5 RRU per callback and 4 KB;
//! - `?external_id=` skips the index: the guard (1 RRU) and the callback it names (0.5 RRU per
//!   4 KB), per tenant in scope.
//!
//! The legacy API asks for page 1 first (to know how many pages exist) and then for page n, so a
//! request for page n > 1 pays the count twice. An admin (`Scope::All`) lists across tenants
//! with the same queries per registered tenant, merged by legacy id: no scan, but a cost that
//! grows with the number of tenants.
use std::collections::HashMap;

use aws_sdk_dynamodb::types::{KeysAndAttributes, Select, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::EventKind;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{
    ActionResult, CallbackDetail, CallbackStore, LegacyListFilter, LegacyPage, StoreError,
};
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::{Scope, TenantId};

use super::callbacks::{build_err, NOT_EXISTS};
use super::items::{
    callback_from_item, callback_pk, due_shard, due_sort_key, event_item, get_n, get_s, guard_pk,
    is_expired, ms, n, pointer_pk, s, tenant_status, NewEvent, CALLBACK_SK, GUARD_SK, HOLDER,
    POINTER_SK,
};
use super::{store_error, DynamoStore, Item, INDEX_BY_LEGACY};

/// Keys per `BatchGetItem` call.
const BATCH_GET_KEYS: usize = 100;

impl DynamoStore {
    /// The callback a pointer or guard item names, or `None` when there is no such item.
    async fn holder_of(&self, pk: &str, sk: &str) -> Result<Option<CallbackId>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading a legacy lookup item", e))?;
        Ok(out
            .item
            .as_ref()
            .and_then(|i| get_s(i, HOLDER))
            .and_then(|h| h.parse().ok()))
    }

    pub(super) async fn legacy_get(
        &self,
        scope: &Scope,
        legacy_id: i64,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        let Some(id) = self.holder_of(&pointer_pk(legacy_id), POINTER_SK).await? else {
            return Ok(None);
        };
        Ok(CallbackStore::get(self, scope, &id)
            .await?
            .filter(|d| d.callback.legacy_id == Some(legacy_id)))
    }

    /// The live callback of `tenant` that carries `external_id` (a guard whose callback
    /// retention has removed is ignored).
    pub(super) async fn external_holder(
        &self,
        tenant: &TenantId,
        external_id: &str,
    ) -> Result<Option<Callback>, StoreError> {
        let Some(id) = self
            .holder_of(&guard_pk(tenant, external_id), GUARD_SK)
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .load(&id)
            .await?
            .filter(|cb| &cb.tenant == tenant && cb.external_id.as_deref() == Some(external_id)))
    }

    pub(super) async fn legacy_list(
        &self,
        scope: &Scope,
        filter: &LegacyListFilter,
        offset: u64,
        limit: u32,
    ) -> Result<LegacyPage, StoreError> {
        let statuses: Vec<Status> = match &filter.statuses {
            Some(list) => list.clone(),
            None => Status::ALL.to_vec(),
        };
        if statuses.is_empty() {
            return Ok(LegacyPage {
                count: 0,
                items: Vec::new(),
            });
        }
        let tenants = match scope {
            Scope::Tenant(t) => vec![t.clone()],
            Scope::All => self.tenants().await?,
        };
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let limit = limit as usize;
        if let Some(external_id) = &filter.external_id {
            let mut found = Vec::new();
            for tenant in &tenants {
                if let Some(cb) = self.external_holder(tenant, external_id).await? {
                    if cb.legacy_id.is_some()
                        && statuses.contains(&cb.status)
                        && filter.owner.is_none_or(|o| o == cb.owner)
                    {
                        found.push(cb);
                    }
                }
            }
            found.sort_by_key(|cb| std::cmp::Reverse(cb.legacy_id));
            return Ok(LegacyPage {
                count: found.len() as u64,
                items: found.into_iter().skip(offset).take(limit).collect(),
            });
        }
        let need = offset.saturating_add(limit);
        let now = Utc::now();
        let mut count = 0;
        let mut keys: Vec<(i64, String)> = Vec::new();
        for tenant in &tenants {
            for status in &statuses {
                let partition = tenant_status(tenant, *status);
                count += self
                    .legacy_partition(&partition, filter.owner, need, now, &mut keys)
                    .await?;
            }
        }
        if offset >= keys.len() {
            return Ok(LegacyPage {
                count,
                items: Vec::new(),
            });
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.0));
        let page: Vec<String> = keys
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, pk)| pk)
            .collect();
        let items = self
            .batch_get_callbacks(&page, false)
            .await?
            .into_iter()
            // The index trails the table: keep what still matches.
            .filter(|cb| {
                cb.legacy_id.is_some()
                    && statuses.contains(&cb.status)
                    && filter.owner.is_none_or(|o| o == cb.owner)
            })
            .collect();
        Ok(LegacyPage { count, items })
    }

    /// One pass over one `by_legacy` partition, newest legacy id first: the keys of the first
    /// `need` live entries go to `keys`, the rest are only counted. Returns the live entries.
    async fn legacy_partition(
        &self,
        partition: &str,
        owner: Option<Owner>,
        need: usize,
        now: DateTime<Utc>,
        keys: &mut Vec<(i64, String)>,
    ) -> Result<u64, StoreError> {
        let mut taken = 0;
        let mut counted = 0u64;
        let mut start = None;
        loop {
            let reading_keys = taken < need;
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX_BY_LEGACY)
                .key_condition_expression("tenant_status = :p")
                .filter_expression(match owner {
                    None => "attribute_not_exists(expires_at) OR expires_at > :now",
                    Some(Owner::Fluxcb) => {
                        "(attribute_not_exists(expires_at) OR expires_at > :now) \
                         AND attribute_not_exists(#ow)"
                    }
                    Some(Owner::Legacy) => {
                        "(attribute_not_exists(expires_at) OR expires_at > :now) AND #ow = :legacy"
                    }
                })
                .set_expression_attribute_names(
                    owner.map(|_| HashMap::from([("#ow".to_owned(), "owner".to_owned())])),
                )
                .expression_attribute_values(":p", s(partition))
                .expression_attribute_values(":now", n(now.timestamp()))
                .scan_index_forward(false)
                .set_exclusive_start_key(start);
            if owner == Some(Owner::Legacy) {
                query = query.expression_attribute_values(":legacy", s(Owner::Legacy.as_str()));
            }
            query = if reading_keys {
                query
                    .projection_expression("pk, legacy_id")
                    .limit((need - taken).min(1000) as i32)
            } else {
                query.select(Select::Count)
            };
            let page = query
                .send()
                .await
                .map_err(|e| store_error("listing legacy callbacks", e))?;
            if reading_keys {
                for item in page.items.unwrap_or_default() {
                    if let (Some(id), Some(pk)) = (get_n(&item, "legacy_id"), get_s(&item, "pk")) {
                        keys.push((id, pk.to_owned()));
                        taken += 1;
                    }
                    counted += 1;
                }
            } else {
                counted += page.count.max(0) as u64;
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(counted);
            }
        }
    }

    /// Items by key, in any order; what does not exist is left out. Up to 100 keys per call,
    /// unprocessed keys retried with a growing pause.
    pub(super) async fn batch_get(
        &self,
        keys: Vec<(String, String)>,
        consistent: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_KEYS) {
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(
                        chunk
                            .iter()
                            .map(|(pk, sk)| {
                                HashMap::from([("pk".into(), s(pk)), ("sk".into(), s(sk))])
                            })
                            .collect(),
                    ))
                    .consistent_read(consistent)
                    .build()
                    .map_err(build_err)?,
            );
            let mut pause = std::time::Duration::from_millis(20);
            for round in 0.. {
                let Some(keys) = request.take() else { break };
                if round == 8 {
                    return Err(StoreError::Busy(
                        "reading callbacks: keys kept coming back unprocessed".into(),
                    ));
                }
                if round > 0 {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                let result = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(|e| store_error("reading callbacks", e))?;
                if let Some(mut responses) = result.responses {
                    out.extend(responses.remove(&self.table).unwrap_or_default());
                }
                request = result
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
            }
        }
        Ok(out)
    }

    /// Callback items by partition key, in the order asked; missing and expired ones left out.
    pub(super) async fn batch_get_callbacks(
        &self,
        pks: &[String],
        consistent: bool,
    ) -> Result<Vec<Callback>, StoreError> {
        let keys = pks
            .iter()
            .map(|pk| (pk.clone(), CALLBACK_SK.to_owned()))
            .collect();
        let mut by_pk: HashMap<String, Item> = self
            .batch_get(keys, consistent)
            .await?
            .into_iter()
            .filter_map(|i| get_s(&i, "pk").map(str::to_owned).map(|pk| (pk, i)))
            .collect();
        let now = Utc::now();
        pks.iter()
            .filter_map(|pk| by_pk.remove(pk))
            .filter(|i| !is_expired(i, now))
            .map(|i| callback_from_item(&i))
            .collect()
    }

    pub(super) async fn legacy_claim_now(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<ActionResult, StoreError> {
        for _ in 0..5 {
            let Some(cb) = self.load(id).await?.filter(|cb| scope.permits(&cb.tenant)) else {
                return Ok(ActionResult::NotFound);
            };
            if cb.owner == Owner::Legacy {
                return Ok(ActionResult::OwnedByLegacy);
            }
            let Ok(to) = Transition::SendNow.apply(cb.status) else {
                return Ok(ActionResult::WrongState(cb.status));
            };
            // In flight under a lease, like a claim: in the `due` index at the lease end, so
            // that the sweeper recovers it if this process dies during the attempt. A failed
            // callback loses its expiry while in flight.
            let update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(callback_pk(id)))
                .key("sk", s(CALLBACK_SK))
                .update_expression(
                    "SET #st = :to, tenant_status = :ts, lease_until = :lease, updated_at = :now, \
                     due_pk = :due_pk, due_sk = :due_sk REMOVE enqueued_at, expires_at",
                )
                .condition_expression("#st = :from AND attribute_not_exists(#ow)")
                .expression_attribute_names("#st", "status")
                .expression_attribute_names("#ow", "owner")
                .expression_attribute_values(":to", s(to.as_str()))
                .expression_attribute_values(":from", s(cb.status.as_str()))
                .expression_attribute_values(":ts", s(tenant_status(&cb.tenant, to)))
                .expression_attribute_values(":lease", n(ms(lease_until)))
                .expression_attribute_values(":now", n(ms(now)))
                .expression_attribute_values(":due_pk", s(due_shard(id)))
                .expression_attribute_values(":due_sk", s(due_sort_key(lease_until, id)))
                .build()
                .map_err(build_err)?;
            let event = event_item(
                id,
                now,
                &NewEvent {
                    kind: EventKind::SentNow,
                    actor: Some(actor),
                    from: Some(cb.status),
                    to: Some(to),
                },
                self.finished_expiry(now) + 30 * 86_400,
            );
            let actions = vec![
                TransactWriteItem::builder().update(update).build(),
                self.put(event, Some(NOT_EXISTS))?,
            ];
            if self
                .transact_if_current(actions, "claiming a callback to send now")
                .await?
            {
                return Ok(self.load(id).await?.map_or(ActionResult::NotFound, |cb| {
                    ActionResult::Done(Box::new(cb))
                }));
            }
        }
        Err(StoreError::Busy(
            "the callback kept changing while it was claimed".into(),
        ))
    }

    /// An event with its detail (a shadow run's would-be request, say) in the callback's
    /// partition.
    pub(super) async fn put_event(
        &self,
        id: &CallbackId,
        kind: EventKind,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut item = event_item(
            id,
            now,
            &NewEvent {
                kind,
                actor: Some(actor),
                from: None,
                to: None,
            },
            self.finished_expiry(now) + 30 * 86_400,
        );
        item.insert("detail".into(), s(detail.to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("recording an event", e))
    }
}
