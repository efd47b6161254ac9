//! [`KeyStore`] and [`SecretStore`] on SQLite.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluxcb_core::auth::ApiKey;
use fluxcb_core::ports::{KeyStore, NewApiKey, SecretStore, StoreError};
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::tenant::TenantId;
use rusqlite::{params, OptionalExtension, Row};
use ulid::Ulid;

use crate::error::sql;
use crate::rows::{from_ms, ms};
use crate::writer::Durability;
use crate::SqliteStore;

const KEY_COLUMNS: &str = "id, name, tenant, role, created_at, revoked_at";

fn api_key(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let tenant: String = row.get(2)?;
    let role: String = row.get(3)?;
    let bad = |i, msg: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            Box::new(std::io::Error::other(msg)),
        )
    };
    Ok(ApiKey {
        id: row.get(0)?,
        name: row.get(1)?,
        tenant: TenantId::parse(&tenant).map_err(|e| bad(2, e.to_string()))?,
        role: role.parse().map_err(|e| bad(3, e))?,
        created_at: from_ms(row.get(4)?),
        revoked_at: row.get::<_, Option<i64>>(5)?.map(from_ms),
    })
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn find_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL"
            ))?
            .query_row([hash], api_key)
            .optional()
        })
        .await
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey, StoreError> {
        self.writer()
            .write(Durability::Full, move |c| {
                let id = format!("key_{}", Ulid::new());
                let now = Utc::now();
                c.execute(
                    "INSERT INTO api_keys (id, name, tenant, role, hash, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        id,
                        key.name,
                        key.tenant.as_str(),
                        key.role.as_str(),
                        key.hash,
                        ms(now)
                    ],
                )
                .map_err(|e| match sql(e) {
                    StoreError::Conflict(_) => {
                        StoreError::Conflict(format!("a key named `{}` already exists", key.name))
                    }
                    other => other,
                })?;
                c.execute(
                    "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)",
                    params![key.tenant.as_str(), ms(now)],
                )
                .map_err(sql)?;
                Ok(ApiKey {
                    id,
                    name: key.name.clone(),
                    tenant: key.tenant.clone(),
                    role: key.role,
                    created_at: now,
                    revoked_at: None,
                })
            })
            .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(|c| {
            c.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at"
            ))?
            .query_map([], api_key)?
            .collect()
        })
        .await
    }

    async fn revoke_key(&self, id_or_name: &str) -> Result<bool, StoreError> {
        let target = id_or_name.to_owned();
        self.writer()
            .write(Durability::Full, move |c| {
                let n = c
                    .execute(
                        "UPDATE api_keys SET revoked_at = ?2 \
                         WHERE (id = ?1 OR name = ?1) AND revoked_at IS NULL",
                        params![target, ms(Utc::now())],
                    )
                    .map_err(sql)?;
                Ok(n > 0)
            })
            .await
    }

    async fn has_admin_key(&self) -> Result<bool, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)",
                [],
                |r| r.get(0),
            )
        })
        .await
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn active_secrets(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SigningSecret>, StoreError> {
        let tenant = tenant.clone();
        let texts = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT secret FROM signing_secrets WHERE tenant = ?1 \
                     AND (retire_at IS NULL OR retire_at > ?2) ORDER BY id DESC",
                )?
                .query_map(params![tenant.as_str(), ms(now)], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        texts
            .iter()
            .map(|t| {
                SigningSecret::parse(t).map_err(|e| {
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
        let (tenant, text) = (tenant.clone(), secret.expose());
        self.writer()
            .write(Durability::Full, move |c| {
                let now = Utc::now();
                c.execute(
                    "UPDATE signing_secrets SET retire_at = ?2 WHERE tenant = ?1 \
                     AND (retire_at IS NULL OR retire_at > ?2)",
                    params![tenant.as_str(), ms(retire_old_at)],
                )
                .map_err(sql)?;
                c.execute(
                    "INSERT INTO signing_secrets (tenant, secret, created_at) VALUES (?1, ?2, ?3)",
                    params![tenant.as_str(), text, ms(now)],
                )
                .map_err(sql)?;
                Ok(())
            })
            .await
    }
}
