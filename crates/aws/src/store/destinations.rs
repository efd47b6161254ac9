//! Registered destinations on DynamoDB, in the callback table:
//!
//! - `dests#<tenant>` / `dst#<id>`: the registration (its JSON record and revision), so one
//!   query reads a tenant's registrations whole, as every node's cache does;
//! - `dests#<tenant>` / `match#<match key>`: a guard that keeps a tenant's matches unique;
//! - `dst#<id>` / `dst`: which tenant an id belongs to, for reads by id.
//!
//! Every write is one transaction over the items it touches, conditioned on what it expects
//! (no registration yet, the revision it read, a free match).
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
use fluxcb_core::destination::{DestinationId, RegisteredDestination};
use fluxcb_core::ports::{DestinationStore, StoreError};
use fluxcb_core::tenant::TenantId;

use super::callbacks::build_err;
use super::items::{get_s, n, s};
use super::{cancellation_codes, store_error, DynamoStore, Item};

fn tenant_pk(tenant: &TenantId) -> String {
    format!("dests#{tenant}")
}

fn record_sk(id: &DestinationId) -> String {
    format!("dst#{id}")
}

fn guard_sk(match_key: &str) -> String {
    format!("match#{match_key}")
}

fn pointer_pk(id: &DestinationId) -> String {
    format!("dst#{id}")
}

fn decode(item: &Item) -> Result<RegisteredDestination, StoreError> {
    serde_json::from_str(get_s(item, "record").unwrap_or_default())
        .map_err(|e| StoreError::Internal(format!("stored destination is unreadable: {e}")))
}

fn taken(d: &RegisteredDestination) -> StoreError {
    StoreError::Conflict(format!(
        "tenant `{}` already has a destination matching {}",
        d.tenant,
        d.matcher.key()
    ))
}

impl DynamoStore {
    fn record_item(&self, d: &RegisteredDestination) -> Result<Item, StoreError> {
        let record = serde_json::to_string(d).map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(Item::from([
            ("pk".to_owned(), s(tenant_pk(&d.tenant))),
            ("sk".to_owned(), s(record_sk(&d.id))),
            ("record".to_owned(), s(record)),
            ("revision".to_owned(), n(d.revision)),
            ("match_key".to_owned(), s(d.matcher.key())),
        ]))
    }

    fn put_action(&self, item: Item, condition: &str) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(self.table())
            .set_item(Some(item))
            .condition_expression(condition)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn delete_action(
        &self,
        pk: String,
        sk: String,
        condition: Option<(&str, &str, u64)>,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut delete = Delete::builder()
            .table_name(self.table())
            .key("pk", s(pk))
            .key("sk", s(sk));
        if let Some((expr, name, value)) = condition {
            delete = delete
                .condition_expression(expr)
                .expression_attribute_values(name, n(value));
        }
        Ok(TransactWriteItem::builder()
            .delete(delete.build().map_err(build_err)?)
            .build())
    }

    async fn record_of(
        &self,
        id: &DestinationId,
    ) -> Result<Option<RegisteredDestination>, StoreError> {
        let pointer = self
            .client()
            .get_item()
            .table_name(self.table())
            .key("pk", s(pointer_pk(id)))
            .key("sk", s("dst"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading a destination", e))?;
        let Some(tenant) = pointer.item.as_ref().and_then(|i| get_s(i, "tenant")) else {
            return Ok(None);
        };
        let tenant = TenantId::parse(tenant)
            .map_err(|e| StoreError::Internal(format!("stored destination tenant: {e}")))?;
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .key("pk", s(tenant_pk(&tenant)))
            .key("sk", s(record_sk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading a destination", e))?;
        out.item.as_ref().map(decode).transpose()
    }
}

#[async_trait]
impl DestinationStore for DynamoStore {
    fn supports_registration(&self) -> bool {
        true
    }

    async fn list_destinations(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<RegisteredDestination>, StoreError> {
        let items: Vec<Item> = self
            .client()
            .query()
            .table_name(self.table())
            .key_condition_expression("pk = :pk AND begins_with(sk, :dst)")
            .expression_attribute_values(":pk", s(tenant_pk(tenant)))
            .expression_attribute_values(":dst", s("dst#"))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("listing destinations", e))?;
        items.iter().map(decode).collect()
    }

    async fn get_destination(
        &self,
        id: &DestinationId,
    ) -> Result<Option<RegisteredDestination>, StoreError> {
        self.record_of(id).await
    }

    async fn create_destination(&self, d: &RegisteredDestination) -> Result<(), StoreError> {
        let pk = tenant_pk(&d.tenant);
        let actions = vec![
            self.put_action(self.record_item(d)?, "attribute_not_exists(pk)")?,
            self.put_action(
                Item::from([
                    ("pk".to_owned(), s(pk.as_str())),
                    ("sk".to_owned(), s(guard_sk(&d.matcher.key()))),
                    ("id".to_owned(), s(d.id.to_string())),
                ]),
                "attribute_not_exists(pk)",
            )?,
            self.put_action(
                Item::from([
                    ("pk".to_owned(), s(pointer_pk(&d.id))),
                    ("sk".to_owned(), s("dst")),
                    ("tenant".to_owned(), s(d.tenant.as_str())),
                ]),
                "attribute_not_exists(pk)",
            )?,
        ];
        match self
            .client()
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match cancellation_codes(&e) {
                Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => Err(taken(d)),
                _ => Err(store_error("registering a destination", e)),
            },
        }
    }

    async fn update_destination(
        &self,
        d: &RegisteredDestination,
        expected_revision: u64,
    ) -> Result<bool, StoreError> {
        let Some(current) = self.record_of(&d.id).await? else {
            return Ok(false);
        };
        let pk = tenant_pk(&d.tenant);
        let mut actions = vec![self.put_revision_checked(d, expected_revision)?];
        let old_key = current.matcher.key();
        let new_key = d.matcher.key();
        if old_key != new_key {
            actions.push(self.delete_action(pk.clone(), guard_sk(&old_key), None)?);
            actions.push(self.put_action(
                Item::from([
                    ("pk".to_owned(), s(pk.as_str())),
                    ("sk".to_owned(), s(guard_sk(&new_key))),
                    ("id".to_owned(), s(d.id.to_string())),
                ]),
                "attribute_not_exists(pk)",
            )?);
        }
        match self
            .client()
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
                    match self.record_of(&d.id).await? {
                        None => Ok(false),
                        Some(now) => Err(StoreError::Conflict(format!(
                            "destination {} changed meanwhile (revision {}, expected \
                             {expected_revision}); read it again",
                            d.id, now.revision
                        ))),
                    }
                }
                Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => Err(taken(d)),
                _ => Err(store_error("updating a destination", e)),
            },
        }
    }

    async fn delete_destination(&self, id: &DestinationId) -> Result<bool, StoreError> {
        let Some(current) = self.record_of(id).await? else {
            return Ok(false);
        };
        let pk = tenant_pk(&current.tenant);
        let actions = vec![
            self.delete_action(
                pk.clone(),
                record_sk(id),
                Some(("revision = :rev", ":rev", current.revision)),
            )?,
            self.delete_action(pk, guard_sk(&current.matcher.key()), None)?,
            self.delete_action(pointer_pk(id), "dst".to_owned(), None)?,
        ];
        match self
            .client()
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match cancellation_codes(&e) {
                // Changed or deleted meanwhile: whoever came first decides; say what is now.
                Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => {
                    Err(StoreError::Conflict(format!(
                        "destination {id} changed while it was being deleted; try again"
                    )))
                }
                _ => Err(store_error("deleting a destination", e)),
            },
        }
    }
}

impl DynamoStore {
    fn put_revision_checked(
        &self,
        d: &RegisteredDestination,
        expected_revision: u64,
    ) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(self.table())
            .set_item(Some(self.record_item(d)?))
            .condition_expression("revision = :expected")
            .expression_attribute_values(":expected", n(expected_revision))
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}
