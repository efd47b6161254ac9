//! What the legacy caller API needs from the store: rows by integer id, page-number listing
//! with a total, `external_id` lookups and the synchronous `send` claim.
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::EventKind;
use fluxcb_core::id::CallbackId;
use fluxcb_core::migration::MigrationState;
use fluxcb_core::ports::{
    ActionResult, CallbackDetail, ImportOutcome, LegacyListFilter, LegacyPage, StoreError,
};
use fluxcb_core::tenant::{Scope, TenantId};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::error::sql;
use crate::error::sql as sql_err;
use crate::ops::{append_event, insert_callback, CallbackRow, NewEvent};
use crate::rows::{self, ms, ATTEMPT_COLUMNS, CALLBACK_COLUMNS};
use crate::writer::Durability;
use crate::SqliteStore;

impl SqliteStore {
    pub(crate) async fn legacy_get(
        &self,
        scope: &Scope,
        legacy_id: i64,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        let scope = scope.clone();
        self.read(move |c| {
            let callback = c
                .prepare_cached(&format!(
                    "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE legacy_id = ?1"
                ))?
                .query_row([legacy_id], rows::callback)
                .optional()?
                .filter(|cb| scope.permits(&cb.tenant));
            let Some(callback) = callback else {
                return Ok(None);
            };
            let attempts = c
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE callback_id = ?1 ORDER BY rowid"
                ))?
                .query_map([callback.id.to_string()], rows::attempt)?
                .collect::<rusqlite::Result<Vec<Attempt>>>()?;
            Ok(Some(CallbackDetail { callback, attempts }))
        })
        .await
    }

    pub(crate) async fn legacy_list(
        &self,
        scope: &Scope,
        filter: &LegacyListFilter,
        offset: u64,
        limit: u32,
    ) -> Result<LegacyPage, StoreError> {
        let mut conds = vec!["legacy_id IS NOT NULL".to_owned()];
        let mut params: Vec<Value> = Vec::new();
        if let Scope::Tenant(t) = scope {
            conds.push("tenant = ?".into());
            params.push(t.as_str().to_owned().into());
        }
        if let Some(statuses) = &filter.statuses {
            if statuses.is_empty() {
                return Ok(LegacyPage {
                    count: 0,
                    items: Vec::new(),
                });
            }
            let marks = vec!["?"; statuses.len()].join(", ");
            conds.push(format!("status IN ({marks})"));
            params.extend(statuses.iter().map(|s| Value::from(s.as_str().to_owned())));
        }
        if let Some(external_id) = &filter.external_id {
            conds.push("external_id = ?".into());
            params.push(external_id.clone().into());
        }
        if let Some(owner) = filter.owner {
            conds.push("owner = ?".into());
            params.push(owner.as_str().to_owned().into());
        }
        let where_sql = conds.join(" AND ");
        let count_sql = format!("SELECT COUNT(*) FROM callbacks WHERE {where_sql}");
        let page_sql = format!(
            "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE {where_sql} \
             ORDER BY legacy_id DESC LIMIT {limit} OFFSET {offset}"
        );
        self.read(move |c| {
            let count: i64 = c
                .prepare_cached(&count_sql)?
                .query_row(params_from_iter(params.iter()), |r| r.get(0))?;
            let items = c
                .prepare_cached(&page_sql)?
                .query_map(params_from_iter(params.iter()), rows::callback)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(LegacyPage {
                count: count as u64,
                items,
            })
        })
        .await
    }

    pub(crate) async fn legacy_external_id_exists(
        &self,
        tenant: &TenantId,
        external_id: &str,
    ) -> Result<bool, StoreError> {
        let (tenant, external_id) = (tenant.as_str().to_owned(), external_id.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM callbacks WHERE tenant = ?1 AND external_id = ?2")?
                .query_row([&tenant, &external_id], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
        })
        .await
    }

    pub(crate) async fn legacy_send_now(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<ActionResult, StoreError> {
        let (scope, id, actor) = (scope.clone(), *id, actor.to_owned());
        self.writer()
            .write(Durability::Full, move |c| {
                crate::ops::send_now(c, &scope, &id, &actor, now, lease_until).map_err(sql)
            })
            .await
    }

    pub(crate) async fn legacy_import(
        &self,
        rows: Vec<Callback>,
    ) -> Result<Vec<ImportOutcome>, StoreError> {
        let rows: Vec<CallbackRow> = rows.into_iter().map(CallbackRow::new).collect();
        self.writer()
            .write(Durability::Full, move |c| {
                rows.iter()
                    .map(|row| import_one(c, row))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql)
            })
            .await
    }

    pub(crate) async fn legacy_advance_ids_past(&self, id: i64) -> Result<(), StoreError> {
        self.writer()
            .write(Durability::Full, move |c| {
                c.prepare_cached(
                    "INSERT INTO sequences (name, next) VALUES ('legacy_id', \
                     MAX(?1 + 1, COALESCE((SELECT MAX(legacy_id) FROM callbacks), 0) + 1)) \
                     ON CONFLICT (name) DO UPDATE SET next = MAX(next, ?1 + 1)",
                )
                .and_then(|mut s| s.execute([id]))
                .map(|_| ())
                .map_err(sql)
            })
            .await
    }
}

impl SqliteStore {
    pub(crate) async fn legacy_record_event(
        &self,
        id: &CallbackId,
        kind: EventKind,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let (id, actor) = (id.to_string(), actor.to_owned());
        self.writer()
            .write(Durability::Relaxed, move |c| {
                append_event(
                    c,
                    Utc::now(),
                    NewEvent {
                        callback_id: &id,
                        kind,
                        actor: Some(&actor),
                        from: None,
                        to: None,
                        detail: detail.clone(),
                    },
                )
                .map_err(sql)
            })
            .await
    }

    pub(crate) async fn legacy_fence(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<Callback>, StoreError> {
        self.writer()
            .write(Durability::Full, move |c| {
                let load = |sql: &str| {
                    c.prepare_cached(sql)
                        .and_then(|mut s| {
                            s.query_map([], rows::callback)?
                                .collect::<rusqlite::Result<Vec<Callback>>>()
                        })
                        .map_err(sql_err)
                };
                let mut waiting = load(&format!(
                    "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE handback_pending = 1"
                ))?;
                let unfinished = "owner = 'fluxcb' AND legacy_id IS NOT NULL \
                    AND status IN ('scheduled', 'pending', 'delivering')";
                waiting.extend(load(&format!(
                    "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE {unfinished}"
                ))?);
                c.prepare_cached(&format!(
                    "UPDATE callbacks SET owner = 'legacy', next_attempt_at = NULL, \
                     handback_pending = 1, updated_at = ?1 WHERE {unfinished}"
                ))
                .and_then(|mut s| s.execute([ms(now)]))
                .map_err(sql_err)?;
                Ok(waiting)
            })
            .await
    }

    pub(crate) async fn legacy_mark_handed_back(
        &self,
        id: &CallbackId,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writer()
            .write(Durability::Full, move |c| {
                c.prepare_cached("UPDATE callbacks SET handback_pending = 0 WHERE id = ?1")
                    .and_then(|mut s| s.execute([&id]))
                    .map_err(sql_err)?;
                append_event(
                    c,
                    Utc::now(),
                    NewEvent {
                        callback_id: &id,
                        kind: EventKind::HandedBack,
                        actor: Some("fluxcb migrate export"),
                        from: None,
                        to: None,
                        detail: detail.clone(),
                    },
                )
                .map_err(sql_err)
            })
            .await
    }

    pub(crate) async fn read_migration_state(&self) -> Result<Option<MigrationState>, StoreError> {
        self.read(|c| {
            let value: Option<String> = c
                .prepare_cached("SELECT value FROM settings WHERE name = 'migration'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
        })
        .await
    }

    pub(crate) async fn write_migration_state(
        &self,
        state: MigrationState,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_string(&state).expect("the state serialises");
        self.writer()
            .write(Durability::Full, move |c| {
                c.prepare_cached(
                    "INSERT INTO settings (name, value, updated_at) VALUES ('migration', ?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET value = ?1, updated_at = ?2",
                )
                .and_then(|mut s| s.execute(params![value, ms(state.updated_at)]))
                .map(|_| ())
                .map_err(sql)
            })
            .await
    }
}

/// The parts of a mirror that change as legacy works on the row.
type MirrorState = (
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
);

fn import_one(c: &Connection, row: &CallbackRow) -> rusqlite::Result<ImportOutcome> {
    let cb = &row.callback;
    let Some(legacy_id) = cb.legacy_id else {
        return Ok(ImportOutcome::Skipped("no legacy id".into()));
    };
    let existing: Option<(String, String, MirrorState)> = c
        .prepare_cached(
            "SELECT id, owner, status, attempts_made, max_attempts, last_status_code, \
             last_error, updated_at, deliver_at FROM callbacks WHERE legacy_id = ?1",
        )?
        .query_row([legacy_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                (
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ),
            ))
        })
        .optional()?;
    let now = Utc::now();
    let Some((id, owner, state)) = existing else {
        if let Some(ext) = &cb.external_id {
            let holder: Option<Option<i64>> = c
                .prepare_cached(
                    "SELECT legacy_id FROM callbacks WHERE tenant = ?1 AND external_id = ?2",
                )?
                .query_row(params![cb.tenant.as_str(), ext], |r| r.get(0))
                .optional()?;
            if let Some(holder) = holder {
                let who = holder.map_or("a callback created through /v1".to_owned(), |h| {
                    format!("callback {h}")
                });
                return Ok(ImportOutcome::Skipped(format!(
                    "external_id {ext:?} already belongs to {who}"
                )));
            }
        }
        c.prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")?
            .execute(params![cb.tenant.as_str(), ms(now)])?;
        insert_callback(c, row)?;
        imported_event(c, cb, "inserted", now)?;
        return Ok(ImportOutcome::Inserted);
    };
    if owner == Owner::Fluxcb.as_str() {
        return Ok(ImportOutcome::OwnedHere);
    }
    let incoming: MirrorState = (
        cb.status.as_str().to_owned(),
        i64::from(cb.attempts_made),
        i64::from(cb.max_attempts),
        cb.last_status_code.map(i64::from),
        cb.last_error.clone(),
        ms(cb.updated_at),
        cb.spec.deliver_at.map(ms),
    );
    if cb.owner == Owner::Legacy && incoming == state {
        return Ok(ImportOutcome::Unchanged);
    }
    c.prepare_cached(
        "UPDATE callbacks SET status = ?2, attempts_made = ?3, max_attempts = ?4, \
         attempt_budget = ?4, last_status_code = ?5, last_error = ?6, updated_at = ?7, \
         deliver_at = ?8, next_attempt_at = ?9, owner = ?10, lease_until = NULL WHERE id = ?1",
    )?
    .execute(params![
        id,
        cb.status.as_str(),
        cb.attempts_made,
        cb.max_attempts,
        cb.last_status_code,
        cb.last_error,
        ms(cb.updated_at),
        cb.spec.deliver_at.map(ms),
        cb.next_attempt_at.map(ms),
        cb.owner.as_str(),
    ])?;
    if cb.owner == Owner::Fluxcb {
        c.prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")?
            .execute(params![cb.tenant.as_str(), ms(now)])?;
    }
    let what = if cb.owner == Owner::Fluxcb {
        "taken over"
    } else {
        "refreshed"
    };
    imported_event(c, cb, what, now)?;
    Ok(ImportOutcome::Updated)
}

fn imported_event(
    c: &Connection,
    cb: &Callback,
    what: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    append_event(
        c,
        now,
        NewEvent {
            callback_id: &cb.id.to_string(),
            kind: EventKind::Imported,
            actor: Some("fluxcb migrate import"),
            from: None,
            to: Some(cb.status),
            detail: serde_json::json!({
                "legacy_id": cb.legacy_id,
                "owner": cb.owner.as_str(),
                "what": what,
            }),
        },
    )
}
