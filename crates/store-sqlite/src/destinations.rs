//! [`DestinationStore`] on SQLite: one JSON record per registration. Registrations are few and
//! read whole into each node's cache, so the record needs no columns beyond its keys.
use async_trait::async_trait;
use fluxcb_core::destination::{DestinationId, RegisteredDestination};
use fluxcb_core::ports::{DestinationStore, StoreError};
use fluxcb_core::tenant::TenantId;
use rusqlite::{params, OptionalExtension};

use crate::error::sql;
use crate::writer::Durability;
use crate::SqliteStore;

fn decode(text: &str) -> Result<RegisteredDestination, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Internal(format!("stored destination is unreadable: {e}")))
}

fn encode(d: &RegisteredDestination) -> Result<String, StoreError> {
    serde_json::to_string(d).map_err(|e| StoreError::Internal(e.to_string()))
}

fn taken(d: &RegisteredDestination) -> StoreError {
    StoreError::Conflict(format!(
        "tenant `{}` already has a destination matching {}",
        d.tenant,
        d.matcher.key()
    ))
}

#[async_trait]
impl DestinationStore for SqliteStore {
    fn supports_registration(&self) -> bool {
        true
    }

    async fn list_destinations(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<RegisteredDestination>, StoreError> {
        let tenant = tenant.clone();
        let texts = self
            .read(move |c| {
                c.prepare_cached("SELECT record FROM destinations WHERE tenant = ?1 ORDER BY id")?
                    .query_map([tenant.as_str()], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        texts.iter().map(|t| decode(t)).collect()
    }

    async fn get_destination(
        &self,
        id: &DestinationId,
    ) -> Result<Option<RegisteredDestination>, StoreError> {
        let id = id.to_string();
        let text = self
            .read(move |c| {
                c.prepare_cached("SELECT record FROM destinations WHERE id = ?1")?
                    .query_row([id], |r| r.get::<_, String>(0))
                    .optional()
            })
            .await?;
        text.as_deref().map(decode).transpose()
    }

    async fn create_destination(&self, d: &RegisteredDestination) -> Result<(), StoreError> {
        let record = encode(d)?;
        let d = d.clone();
        self.writer()
            .write(Durability::Full, move |c| {
                c.execute(
                    "INSERT INTO destinations (id, tenant, match_key, revision, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        d.id.to_string(),
                        d.tenant.as_str(),
                        d.matcher.key(),
                        d.revision as i64,
                        record
                    ],
                )
                .map_err(|e| match sql(e) {
                    StoreError::Conflict(_) => taken(&d),
                    other => other,
                })?;
                Ok(())
            })
            .await
    }

    async fn update_destination(
        &self,
        d: &RegisteredDestination,
        expected_revision: u64,
    ) -> Result<bool, StoreError> {
        let record = encode(d)?;
        let d = d.clone();
        self.writer()
            .write(Durability::Full, move |c| {
                let current: Option<i64> = c
                    .query_row(
                        "SELECT revision FROM destinations WHERE id = ?1",
                        [d.id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql)?;
                match current {
                    None => return Ok(false),
                    Some(r) if r as u64 != expected_revision => {
                        return Err(StoreError::Conflict(format!(
                            "destination {} changed meanwhile (revision {r}, expected \
                             {expected_revision}); read it again",
                            d.id
                        )))
                    }
                    Some(_) => {}
                }
                c.execute(
                    "UPDATE destinations SET match_key = ?2, revision = ?3, record = ?4 \
                     WHERE id = ?1",
                    params![d.id.to_string(), d.matcher.key(), d.revision as i64, record],
                )
                .map_err(|e| match sql(e) {
                    StoreError::Conflict(_) => taken(&d),
                    other => other,
                })?;
                Ok(true)
            })
            .await
    }

    async fn delete_destination(&self, id: &DestinationId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.writer()
            .write(Durability::Full, move |c| {
                let n = c
                    .execute("DELETE FROM destinations WHERE id = ?1", [&id])
                    .map_err(sql)?;
                Ok(n > 0)
            })
            .await
    }
}
