//! [`CallbackStore`] on SQLite.
use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::Callback;
use fluxcb_core::event::{Event, EventKind};
use fluxcb_core::id::CallbackId;
use fluxcb_core::migration::MigrationState;
use fluxcb_core::ports::{
    ActionResult, CallbackDetail, CallbackPage, CallbackStore, DeadLetterGroup, DeliveryStats,
    ImportOutcome, IngestBatch, IngestResult, LegacyListFilter, LegacyPage, ListFilter,
    PageRequest, PolledStore, StatsRequest, StoreError,
};
use fluxcb_core::retry::Decision;
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::{Scope, TenantId};
use rusqlite::{params, params_from_iter, OptionalExtension};

use crate::error::sql;
use crate::ops::{
    append_event, filter_sql, history, insert_callback, load_in_scope, operator_action,
    record_attempt, revive, CallbackRow, NewEvent, DUE,
};
use crate::rows::{self, from_ms, ms, ATTEMPT_COLUMNS, CALLBACK_COLUMNS};
use crate::writer::Durability;
use crate::SqliteStore;

/// Below this much free space the store is not ready: an ingest batch would not fit.
const MIN_FREE_BYTES: u64 = 1024 * 1024;

#[async_trait]
impl CallbackStore for SqliteStore {
    fn supports_ordering_keys(&self) -> bool {
        true
    }

    async fn release_ordering_key(
        &self,
        tenant: &TenantId,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (tenant, key) = (tenant.to_string(), key.to_owned());
        self.writer()
            .write(Durability::Full, move |c| {
                crate::ops::release_key(c, &tenant, &key, now).map_err(sql)
            })
            .await
    }

    async fn ingest(&self, batch: IngestBatch) -> Result<IngestResult, StoreError> {
        let IngestBatch {
            tenant,
            callbacks,
            idempotency,
        } = batch;
        let now = callbacks.first().map_or_else(Utc::now, |c| c.created_at);
        let rows: Vec<CallbackRow> = callbacks.into_iter().map(CallbackRow::new).collect();
        self.writer()
            .write(Durability::Full, move |c| {
                let tenant = tenant.as_str();
                if let Some(idem) = &idempotency {
                    let previous: Option<(String, u16, Vec<u8>)> = c
                        .prepare_cached(
                            "SELECT fingerprint, status, body FROM idempotency \
                             WHERE tenant = ?1 AND key = ?2",
                        )
                        .and_then(|mut s| {
                            s.query_row([tenant, &idem.key], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                            })
                            .optional()
                        })
                        .map_err(sql)?;
                    if let Some((fingerprint, status, body)) = previous {
                        return Ok(if fingerprint == idem.fingerprint {
                            IngestResult::Replayed { status, body }
                        } else {
                            IngestResult::KeyReused
                        });
                    }
                }
                c.prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![tenant, ms(now)]))
                    .map_err(sql)?;
                for row in &rows {
                    insert_callback(c, row).map_err(sql)?;
                }
                if let Some(idem) = &idempotency {
                    c.prepare_cached(
                        "INSERT INTO idempotency (tenant, key, fingerprint, status, body, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            tenant,
                            idem.key,
                            idem.fingerprint,
                            idem.response_status,
                            idem.response_body,
                            ms(now)
                        ])
                    })
                    .map_err(sql)?;
                }
                Ok(IngestResult::Accepted)
            })
            .await
    }

    async fn get(
        &self,
        scope: &Scope,
        id: &CallbackId,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        let (scope, id) = (scope.clone(), *id);
        self.read(move |c| {
            let Some(callback) = load_in_scope(c, &scope, &id)? else {
                return Ok(None);
            };
            let attempts = c
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE callback_id = ?1 ORDER BY rowid"
                ))?
                .query_map([id.to_string()], rows::attempt)?
                .collect::<rusqlite::Result<Vec<Attempt>>>()?;
            Ok(Some(CallbackDetail { callback, attempts }))
        })
        .await
    }

    async fn list(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<CallbackPage, StoreError> {
        // A tag filter walks that tag's callbacks newest first (CROSS JOIN fixes the order), so
        // a rare tag costs its own rows and a common one stops after a page, as the id order
        // does for the other filters.
        let tag = filter.metadata.clone();
        let rest = ListFilter {
            metadata: None,
            ..filter.clone()
        };
        let (mut conds, mut params) = filter_sql(scope, &rest);
        let (from, id_col) = match tag {
            Some((key, value)) => {
                conds.insert(0, "t.key = ? AND t.value = ?".to_owned());
                params.splice(0..0, [key.into(), value.into()]);
                (
                    "callback_tags t CROSS JOIN callbacks ON callbacks.id = t.callback_id",
                    "t.callback_id",
                )
            }
            None => ("callbacks", "id"),
        };
        if let Some(cursor) = page.cursor {
            conds.push(format!("{id_col} < ?"));
            params.push(cursor.to_string().into());
        }
        let limit = page.limit.clamp(1, 500);
        let where_sql = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let query = format!(
            "SELECT {CALLBACK_COLUMNS} FROM {from} {where_sql} ORDER BY {id_col} DESC LIMIT {}",
            limit + 1
        );
        self.read(move |c| {
            let mut items = c
                .prepare(&query)?
                .query_map(params_from_iter(params), rows::callback)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let next_cursor = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|cb| cb.id)
            } else {
                None
            };
            Ok(CallbackPage { items, next_cursor })
        })
        .await
    }

    async fn events(
        &self,
        scope: &Scope,
        id: &CallbackId,
    ) -> Result<Option<Vec<Event>>, StoreError> {
        let (scope, id) = (scope.clone(), *id);
        self.read(move |c| {
            let Some(cb) = load_in_scope(c, &scope, &id)? else {
                return Ok(None);
            };
            history(c, &cb).map(Some)
        })
        .await
    }

    async fn cancel(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
    ) -> Result<ActionResult, StoreError> {
        let (scope, id, actor) = (scope.clone(), *id, actor.to_owned());
        self.writer()
            .write(Durability::Full, move |c| {
                operator_action(c, &scope, &id, &actor, Transition::Cancel, Utc::now()).map_err(sql)
            })
            .await
    }

    async fn retry(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
    ) -> Result<ActionResult, StoreError> {
        let (scope, id, actor) = (scope.clone(), *id, actor.to_owned());
        self.writer()
            .write(Durability::Full, move |c| {
                operator_action(c, &scope, &id, &actor, Transition::Retry, Utc::now()).map_err(sql)
            })
            .await
    }

    async fn redrive(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        actor: &str,
        limit: Option<u32>,
    ) -> Result<u64, StoreError> {
        let filter = ListFilter {
            status: Some(Status::Failed),
            ..filter.clone()
        };
        let (conds, params) = filter_sql(scope, &filter);
        // Mirrors of legacy rows are redriven by legacy, not here.
        let mut query = format!(
            "SELECT id FROM callbacks WHERE {} AND owner = 'fluxcb'",
            conds.join(" AND ")
        );
        if let Some(n) = limit {
            query.push_str(&format!(" LIMIT {n}"));
        }
        let actor = actor.to_owned();
        self.writer()
            .write(Durability::Full, move |c| {
                let now = Utc::now();
                let ids = c
                    .prepare(&query)
                    .and_then(|mut s| {
                        s.query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(sql)?;
                for id in &ids {
                    revive(c, id, now).map_err(sql)?;
                    append_event(
                        c,
                        now,
                        NewEvent {
                            callback_id: id,
                            kind: EventKind::Redriven,
                            actor: Some(&actor),
                            from: Some(Status::Failed),
                            to: Some(Status::Pending),
                            detail: serde_json::json!({}),
                        },
                    )
                    .map_err(sql)?;
                }
                Ok(ids.len() as u64)
            })
            .await
    }

    async fn claim(
        &self,
        id: &CallbackId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Callback>, StoreError> {
        let id = id.to_string();
        self.writer()
            .write(Durability::Relaxed, move |c| {
                c.prepare_cached(&format!(
                    "UPDATE callbacks SET status = 'delivering', lease_until = ?3, updated_at = ?2 \
                     WHERE id = ?1 AND {DUE} AND next_attempt_at <= ?2 \
                     RETURNING {CALLBACK_COLUMNS}"
                ))
                .and_then(|mut s| {
                    s.query_row(params![id, ms(now), ms(lease_until)], rows::callback)
                        .optional()
                })
                .map_err(sql)
            })
            .await
    }

    async fn record_attempt(
        &self,
        id: &CallbackId,
        attempt: Attempt,
        decision: Decision,
        now: DateTime<Utc>,
        follow_ups: &[Callback],
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        let policy = self.after_dead_letter();
        let follow_ups = follow_ups.to_vec();
        self.writer()
            .write(Durability::Relaxed, move |c| {
                record_attempt(c, &id, &attempt, decision, now, policy, &follow_ups).map_err(sql)
            })
            .await
    }

    async fn defer(&self, items: Vec<(CallbackId, DateTime<Utc>)>) -> Result<(), StoreError> {
        self.writer()
            .write(Durability::Relaxed, move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "UPDATE callbacks SET status = 'pending', next_attempt_at = ?2, \
                         lease_until = NULL WHERE id = ?1 AND status = 'delivering'",
                    )
                    .map_err(sql)?;
                for (id, at) in &items {
                    stmt.execute(params![id.to_string(), ms(*at)])
                        .map_err(sql)?;
                }
                Ok(())
            })
            .await
    }

    async fn recover_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.writer()
            .write(Durability::Relaxed, move |c| {
                let at = Utc::now();
                let ids = c
                    .prepare_cached(
                        // A callback handed back to legacy mid-attempt stays off the queue.
                        "UPDATE callbacks SET status = 'pending', lease_until = NULL, \
                         next_attempt_at = CASE WHEN owner = 'legacy' THEN NULL ELSE ?2 END, \
                         updated_at = ?2 \
                         WHERE status = 'delivering' AND lease_until < ?1 RETURNING id",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![ms(now), ms(at)], |r| r.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(sql)?;
                for id in &ids {
                    append_event(
                        c,
                        at,
                        NewEvent {
                            callback_id: id,
                            kind: EventKind::Recovered,
                            actor: None,
                            from: Some(Status::Delivering),
                            to: Some(Status::Pending),
                            detail: serde_json::json!({}),
                        },
                    )
                    .map_err(sql)?;
                }
                Ok(ids.len() as u64)
            })
            .await
    }

    async fn purge(
        &self,
        before: DateTime<Utc>,
        idempotency_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.writer()
            .write(Durability::Relaxed, move |c| {
                let ids = c
                    .prepare_cached(
                        "DELETE FROM callbacks WHERE rowid IN (SELECT rowid FROM callbacks \
                         WHERE status IN ('delivered', 'failed', 'cancelled') AND updated_at < ?1 \
                         LIMIT ?2) RETURNING id",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![ms(before), limit], |r| r.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(sql)?;
                for id in &ids {
                    c.prepare_cached("DELETE FROM attempts WHERE callback_id = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(sql)?;
                    c.prepare_cached("DELETE FROM events WHERE callback_id = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(sql)?;
                    c.prepare_cached("DELETE FROM callback_tags WHERE callback_id = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(sql)?;
                }
                c.prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")
                    .and_then(|mut s| s.execute([ms(idempotency_before)]))
                    .map_err(sql)?;
                Ok(ids.len() as u64)
            })
            .await
    }

    async fn allocate_legacy_ids(&self, count: u32) -> Result<i64, StoreError> {
        self.writer()
            .write(Durability::Full, move |c| {
                // Starts past any id already stored (rows imported from legacy keep theirs).
                c.prepare_cached(
                    "INSERT INTO sequences (name, next) VALUES ('legacy_id', \
                     COALESCE((SELECT MAX(legacy_id) FROM callbacks), 0) + 1 + ?1) \
                     ON CONFLICT (name) DO UPDATE SET next = next + ?1 RETURNING next - ?1",
                )
                .and_then(|mut s| s.query_row([count], |r| r.get(0)))
                .map_err(sql)
            })
            .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.writer()
            .write(Durability::Full, |c| {
                c.prepare_cached("INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?1)")
                    .and_then(|mut s| s.execute([ms(Utc::now())]))
                    .map_err(sql)?;
                Ok(())
            })
            .await?;
        // The heartbeat is one small page, which fits in the WAL file's reused space even when
        // the disk has none left for an ingest: ask the filesystem as well.
        let dir = self.path().parent().unwrap_or(self.path()).to_owned();
        let free = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir))
            .await
            .map_err(|e| StoreError::Internal(format!("statvfs task failed: {e}")))?
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .map_err(|e| StoreError::Internal(format!("cannot read the free space: {e}")))?;
        if free < MIN_FREE_BYTES {
            return Err(StoreError::Unavailable(format!(
                "the disk holding the store has {free} bytes free (less than {MIN_FREE_BYTES})"
            )));
        }
        Ok(())
    }

    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        self.read(|c| {
            let rows = c
                .prepare_cached("SELECT status, COUNT(*) FROM callbacks GROUP BY status")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, n)| Some((s.parse().ok()?, n as u64)))
                .collect())
        })
        .await
    }

    async fn count_redrivable(
        &self,
        scope: &Scope,
        filter: &ListFilter,
    ) -> Result<u64, StoreError> {
        self.count_redrivable_query(scope, filter).await
    }

    async fn stats(
        &self,
        scope: &Scope,
        request: &StatsRequest,
    ) -> Result<DeliveryStats, StoreError> {
        self.stats_query(scope, request).await
    }

    async fn dead_letter_groups(
        &self,
        scope: &Scope,
        filter: &ListFilter,
    ) -> Result<Vec<DeadLetterGroup>, StoreError> {
        self.dead_letter_groups_query(scope, filter).await
    }

    async fn get_by_legacy_id(
        &self,
        scope: &Scope,
        legacy_id: i64,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        self.legacy_get(scope, legacy_id).await
    }

    async fn list_legacy(
        &self,
        scope: &Scope,
        filter: &LegacyListFilter,
        offset: u64,
        limit: u32,
    ) -> Result<LegacyPage, StoreError> {
        self.legacy_list(scope, filter, offset, limit).await
    }

    async fn external_id_exists(
        &self,
        tenant: &TenantId,
        external_id: &str,
    ) -> Result<bool, StoreError> {
        self.legacy_external_id_exists(tenant, external_id).await
    }

    async fn import_legacy(&self, rows: Vec<Callback>) -> Result<Vec<ImportOutcome>, StoreError> {
        self.legacy_import(rows).await
    }

    async fn advance_legacy_ids_past(&self, id: i64) -> Result<(), StoreError> {
        self.legacy_advance_ids_past(id).await
    }

    async fn fence_for_handback(&self, now: DateTime<Utc>) -> Result<Vec<Callback>, StoreError> {
        self.legacy_fence(now).await
    }

    async fn mark_handed_back(
        &self,
        id: &CallbackId,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.legacy_mark_handed_back(id, detail).await
    }

    async fn record_event(
        &self,
        id: &CallbackId,
        kind: EventKind,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.legacy_record_event(id, kind, actor, detail).await
    }

    async fn migration_state(&self) -> Result<Option<MigrationState>, StoreError> {
        self.read_migration_state().await
    }

    async fn set_migration_state(&self, state: MigrationState) -> Result<(), StoreError> {
        self.write_migration_state(state).await
    }

    async fn claim_now(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<ActionResult, StoreError> {
        self.legacy_send_now(scope, id, actor, now, lease_until)
            .await
    }
}

#[async_trait]
impl PolledStore for SqliteStore {
    async fn claim_due(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        limit: u32,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Callback>, StoreError> {
        let tenant = tenant.clone();
        self.writer()
            .write(Durability::Relaxed, move |c| {
                c.prepare_cached(&format!(
                    "UPDATE callbacks SET status = 'delivering', lease_until = ?3, updated_at = ?2 \
                     WHERE rowid IN (SELECT rowid FROM callbacks WHERE tenant = ?1 AND {DUE} \
                     AND next_attempt_at <= ?2 ORDER BY next_attempt_at LIMIT ?4) \
                     RETURNING {CALLBACK_COLUMNS}"
                ))
                .and_then(|mut s| {
                    s.query_map(
                        params![tenant.as_str(), ms(now), ms(lease_until), limit],
                        rows::callback,
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql)
            })
            .await
    }

    async fn tenants_with_due(&self, now: DateTime<Utc>) -> Result<Vec<TenantId>, StoreError> {
        self.read(move |c| {
            let names = c
                .prepare_cached(&format!(
                    "SELECT name FROM tenants t WHERE EXISTS (SELECT 1 FROM callbacks \
                     WHERE tenant = t.name AND {DUE} AND next_attempt_at <= ?1)"
                ))?
                .query_map([ms(now)], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(names
                .into_iter()
                .filter_map(|n| TenantId::parse(&n).ok())
                .collect())
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(move |c| {
            // Per tenant, so each MIN is one seek on the due index rather than a scan of it.
            let next: Option<i64> = c
                .prepare_cached(&format!(
                    "SELECT MIN((SELECT MIN(next_attempt_at) FROM callbacks \
                     WHERE tenant = t.name AND {DUE})) FROM tenants t"
                ))?
                .query_row([], |r| r.get(0))?;
            Ok(next.map(from_ms))
        })
        .await
    }
}
