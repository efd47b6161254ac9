//! [`KeyStore`] and [`SecretStore`] on DynamoDB. Keys live in one partition (`keys`, sorted
//! by hash, so a lookup is one `GetItem`); a name item per key keeps names unique. Signing
//! secrets live in one partition per tenant, sorted by creation.
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use chrono::{DateTime, Utc};
use fluxcb_core::auth::ApiKey;
use fluxcb_core::ports::{KeyStore, NewApiKey, SecretStore, StoreError};
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::tenant::TenantId;

use super::items::{from_ms, get_n, get_s, ms, n, s};
use super::{cancellation_codes, store_error, DynamoStore, Item};

const KEYS_PK: &str = "keys";

fn key_from_item(item: &Item) -> Result<ApiKey, StoreError> {
    let bad = |f: &str| StoreError::Internal(format!("malformed API key item: {f}"));
    Ok(ApiKey {
        id: get_s(item, "id").ok_or_else(|| bad("id"))?.to_owned(),
        name: get_s(item, "name").ok_or_else(|| bad("name"))?.to_owned(),
        tenant: TenantId::parse(get_s(item, "tenant").unwrap_or_default())
            .map_err(|_| bad("tenant"))?,
        role: get_s(item, "role")
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad("role"))?,
        created_at: from_ms(get_n(item, "created_at").ok_or_else(|| bad("created_at"))?),
        revoked_at: get_n(item, "revoked_at").map(from_ms),
    })
}

impl DynamoStore {
    async fn key_items(&self) -> Result<Vec<Item>, StoreError> {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(KEYS_PK))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("listing API keys", e))
    }
}

#[async_trait]
impl KeyStore for DynamoStore {
    async fn find_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(KEYS_PK))
            .key("sk", s(hash))
            .send()
            .await
            .map_err(|e| store_error("looking up an API key", e))?;
        match out.item {
            Some(item) if !item.contains_key("revoked_at") => Ok(Some(key_from_item(&item)?)),
            _ => Ok(None),
        }
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey, StoreError> {
        let now = Utc::now();
        let created = ApiKey {
            id: format!("key_{}", ulid::Ulid::new()),
            name: key.name.clone(),
            tenant: key.tenant.clone(),
            role: key.role,
            created_at: now,
            revoked_at: None,
        };
        let mut item = Item::new();
        item.insert("pk".into(), s(KEYS_PK));
        item.insert("sk".into(), s(&key.hash));
        item.insert("id".into(), s(&created.id));
        item.insert("name".into(), s(&key.name));
        item.insert("tenant".into(), s(key.tenant.as_str()));
        item.insert("role".into(), s(key.role.as_str()));
        item.insert("created_at".into(), n(ms(now)));
        let mut name = Item::new();
        name.insert("pk".into(), s(format!("keyname#{}", key.name)));
        name.insert("sk".into(), s("keyname"));
        name.insert("hash".into(), s(&key.hash));
        let put = |item: Item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map(|p| TransactWriteItem::builder().put(p).build())
                .map_err(|e| StoreError::Internal(e.to_string()))
        };
        let result = self
            .client
            .transact_write_items()
            .transact_items(put(name)?)
            .transact_items(put(item)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(created),
            Err(e) => match cancellation_codes(&e) {
                Some(codes)
                    if codes.first().map(String::as_str) == Some("ConditionalCheckFailed") =>
                {
                    Err(StoreError::Conflict(format!(
                        "a key named `{}` already exists",
                        key.name
                    )))
                }
                Some(codes)
                    if codes.get(1).map(String::as_str) == Some("ConditionalCheckFailed") =>
                {
                    Err(StoreError::Conflict("this key already exists".into()))
                }
                _ => Err(store_error("creating an API key", e)),
            },
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys = self
            .key_items()
            .await?
            .iter()
            .map(key_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    async fn revoke_key(&self, id_or_name: &str) -> Result<bool, StoreError> {
        let mut revoked = false;
        for item in self.key_items().await? {
            let matches =
                get_s(&item, "id") == Some(id_or_name) || get_s(&item, "name") == Some(id_or_name);
            if !matches || item.contains_key("revoked_at") {
                continue;
            }
            let hash = get_s(&item, "sk").unwrap_or_default().to_owned();
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(KEYS_PK))
                .key("sk", s(hash))
                .update_expression("SET revoked_at = :now")
                .expression_attribute_values(":now", n(ms(Utc::now())))
                .send()
                .await
                .map_err(|e| store_error("revoking an API key", e))?;
            revoked = true;
        }
        Ok(revoked)
    }

    async fn has_admin_key(&self) -> Result<bool, StoreError> {
        Ok(self
            .key_items()
            .await?
            .iter()
            .any(|i| get_s(i, "role") == Some("admin") && !i.contains_key("revoked_at")))
    }
}

#[async_trait]
impl SecretStore for DynamoStore {
    async fn active_secrets(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SigningSecret>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(format!("secrets#{tenant}")))
            .scan_index_forward(false)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading signing secrets", e))?;
        out.items
            .unwrap_or_default()
            .iter()
            .filter(|i| get_n(i, "retire_at").is_none_or(|at| at > ms(now)))
            .map(|i| {
                SigningSecret::parse(get_s(i, "secret").unwrap_or_default()).map_err(|e| {
                    StoreError::Internal(format!("stored signing secret is invalid: {e}"))
                })
            })
            .collect()
    }

    async fn add_secret(
        &self,
        tenant: &TenantId,
        secret: &SigningSecret,
        retire_old_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let pk = format!("secrets#{tenant}");
        let now = Utc::now();
        let existing = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading signing secrets", e))?;
        for item in existing.items.unwrap_or_default() {
            let live = get_n(&item, "retire_at").is_none_or(|at| at > ms(retire_old_at));
            if !live {
                continue;
            }
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(pk.as_str()))
                .key("sk", s(get_s(&item, "sk").unwrap_or_default()))
                .update_expression("SET retire_at = :at")
                .expression_attribute_values(":at", n(ms(retire_old_at)))
                .send()
                .await
                .map_err(|e| store_error("retiring a signing secret", e))?;
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk.as_str()))
            .item("sk", s(ulid::Ulid::new().to_string()))
            .item("secret", s(secret.expose()))
            .item("created_at", n(ms(now)))
            .send()
            .await
            .map_err(|e| store_error("adding a signing secret", e))?;
        Ok(())
    }
}

const TENANTS_PK: &str = "tenants";

impl DynamoStore {
    /// Records that a tenant has callbacks, once per tenant and process, so that an admin
    /// listing across tenants knows whom to ask. An unconditional put of the same item, so
    /// concurrent writers never conflict.
    pub(crate) async fn register_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        if self
            .known_tenants
            .lock()
            .expect("tenant cache poisoned")
            .contains(tenant)
        {
            return Ok(());
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(TENANTS_PK))
            .item("sk", s(tenant.as_str()))
            .send()
            .await
            .map_err(|e| store_error("registering a tenant", e))?;
        self.known_tenants
            .lock()
            .expect("tenant cache poisoned")
            .insert(tenant.clone());
        Ok(())
    }

    /// Every tenant that has ever had a callback.
    pub(crate) async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(TENANTS_PK))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("listing tenants", e))?;
        Ok(items
            .iter()
            .filter_map(|i| get_s(i, "sk").and_then(|t| TenantId::parse(t).ok()))
            .collect())
    }
}

const MIGRATION_PK: &str = "settings#migration";

impl DynamoStore {
    /// The migration switch: one item, read strongly consistent (each node re-reads it every
    /// few seconds: one read unit each time).
    pub(crate) async fn read_migration_state(
        &self,
    ) -> Result<Option<fluxcb_core::migration::MigrationState>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(MIGRATION_PK))
            .key("sk", s("settings"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading the migration mode", e))?;
        Ok(out
            .item
            .as_ref()
            .and_then(|i| get_s(i, "value"))
            .and_then(|v| serde_json::from_str(v).ok()))
    }

    pub(crate) async fn write_migration_state(
        &self,
        state: fluxcb_core::migration::MigrationState,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_string(&state).expect("the state serialises");
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(MIGRATION_PK))
            .item("sk", s("settings"))
            .item("value", s(value))
            .item("updated_at", n(ms(state.updated_at)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("setting the migration mode", e))
    }
}
