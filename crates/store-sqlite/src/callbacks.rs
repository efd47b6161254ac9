//! [`CallbackStore`] on SQLite.
use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::Callback;
use fluxcb_core::event::{Event, EventKind};
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{
    ActionResult, CallbackDetail, CallbackPage, CallbackStore, IngestBatch, IngestResult,
    ListFilter, PageRequest, StoreError,
};
use fluxcb_core::retry::Decision;
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::{Scope, TenantId};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::error::sql;
use crate::rows::{self, from_ms, ms, ATTEMPT_COLUMNS, CALLBACK_COLUMNS, EVENT_COLUMNS};
use crate::writer::Durability;
use crate::SqliteStore;

const DUE: &str = "status IN ('scheduled', 'pending')";

struct NewEvent<'a> {
    callback_id: &'a str,
    kind: EventKind,
    actor: Option<&'a str>,
    from: Option<Status>,
    to: Option<Status>,
    detail: serde_json::Value,
}

fn append_event(c: &Connection, at: DateTime<Utc>, e: NewEvent<'_>) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO events (callback_id, at, kind, actor, from_status, to_status, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        e.callback_id,
        ms(at),
        e.kind.as_str(),
        e.actor,
        e.from.map(|s| s.as_str()),
        e.to.map(|s| s.as_str()),
        e.detail.to_string(),
    ])?;
    Ok(())
}

fn insert_callback(c: &Connection, cb: &Callback) -> rusqlite::Result<()> {
    let (kind, content_type, body) = rows::payload_columns(&cb.spec.payload);
    c.prepare_cached(
        "INSERT INTO callbacks (id, tenant, status, url, host, method, headers, body_kind, \
         content_type, body, deliver_at, next_attempt_at, attempts_made, max_attempts, \
         attempt_budget, max_attempts_override, timeout_ms, timeout_override, metadata, \
         created_at, updated_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
         ?11, ?12, ?13, ?14, ?14, ?15, ?16, ?17, ?18, ?19, ?19, ?20)",
    )?
    .execute(params![
        cb.id.to_string(),
        cb.tenant.as_str(),
        cb.status.as_str(),
        cb.spec.url.as_str(),
        cb.spec.url.host_str().unwrap_or_default(),
        cb.spec.method.as_str(),
        serde_json::to_string(&cb.spec.headers).expect("string map serialises"),
        kind,
        content_type,
        body,
        cb.spec.deliver_at.map(ms),
        cb.next_attempt_at.map(ms),
        cb.attempts_made,
        cb.max_attempts,
        cb.spec.max_attempts,
        cb.timeout_ms,
        cb.spec.timeout_ms,
        serde_json::to_string(&cb.spec.metadata).expect("string map serialises"),
        ms(cb.created_at),
        cb.created_by,
    ])?;
    Ok(())
}

fn load(c: &Connection, id: &str) -> rusqlite::Result<Option<Callback>> {
    c.prepare_cached(&format!(
        "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = ?1"
    ))?
    .query_row([id], rows::callback)
    .optional()
}

fn load_in_scope(
    c: &Connection,
    scope: &Scope,
    id: &CallbackId,
) -> rusqlite::Result<Option<Callback>> {
    Ok(load(c, &id.to_string())?.filter(|cb| scope.permits(&cb.tenant)))
}

/// SQL conditions and parameters for a list filter within a scope.
fn filter_sql(scope: &Scope, filter: &ListFilter) -> (Vec<String>, Vec<Value>) {
    let mut conds = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    let tenant = match scope {
        Scope::Tenant(t) => Some(t),
        Scope::All => filter.tenant.as_ref(),
    };
    if let Some(t) = tenant {
        conds.push("tenant = ?".to_owned());
        params.push(t.as_str().to_owned().into());
    }
    if let Some(s) = filter.status {
        conds.push("status = ?".to_owned());
        params.push(s.as_str().to_owned().into());
    }
    if let Some(h) = &filter.host {
        conds.push("host = ?".to_owned());
        params.push(h.to_ascii_lowercase().into());
    }
    if let Some(t) = filter.created_after {
        conds.push("created_at >= ?".to_owned());
        params.push(ms(t).into());
    }
    if let Some(t) = filter.created_before {
        conds.push("created_at < ?".to_owned());
        params.push(ms(t).into());
    }
    if let Some((k, v)) = &filter.metadata {
        conds.push(
            "EXISTS (SELECT 1 FROM json_each(callbacks.metadata) WHERE key = ? AND value = ?)"
                .to_owned(),
        );
        params.push(k.clone().into());
        params.push(v.clone().into());
    }
    (conds, params)
}

/// Applies an operator transition (cancel, retry) to one callback.
fn operator_action(
    c: &Connection,
    scope: &Scope,
    id: &CallbackId,
    actor: &str,
    transition: Transition,
    now: DateTime<Utc>,
) -> rusqlite::Result<ActionResult> {
    let Some(cb) = load_in_scope(c, scope, id)? else {
        return Ok(ActionResult::NotFound);
    };
    let Ok(to) = transition.apply(cb.status) else {
        return Ok(ActionResult::WrongState(cb.status));
    };
    let idt = id.to_string();
    let kind = match transition {
        Transition::Cancel => {
            c.prepare_cached(
                "UPDATE callbacks SET status = 'cancelled', next_attempt_at = NULL, \
                 updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![idt, ms(now)])?;
            EventKind::Cancelled
        }
        _ => {
            revive(c, &idt, now)?;
            EventKind::Retried
        }
    };
    append_event(
        c,
        now,
        NewEvent {
            callback_id: &idt,
            kind,
            actor: Some(actor),
            from: Some(cb.status),
            to: Some(to),
            detail: serde_json::json!({}),
        },
    )?;
    Ok(load(c, &idt)?.map_or(ActionResult::NotFound, |cb| {
        ActionResult::Done(Box::new(cb))
    }))
}

/// Sends a dead letter back to pending with a fresh allowance of attempts.
fn revive(c: &Connection, id: &str, now: DateTime<Utc>) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE callbacks SET status = 'pending', next_attempt_at = ?2, updated_at = ?2, \
         max_attempts = attempts_made + attempt_budget WHERE id = ?1 AND status = 'failed'",
    )?
    .execute(params![id, ms(now)])?;
    Ok(())
}

#[async_trait]
impl CallbackStore for SqliteStore {
    async fn ingest(&self, batch: IngestBatch) -> Result<IngestResult, StoreError> {
        self.writer()
            .write(Durability::Full, move |c| {
                let tenant = batch.tenant.as_str();
                if let Some(idem) = &batch.idempotency {
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
                let now = batch.callbacks.first().map_or_else(Utc::now, |c| c.created_at);
                c.prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![tenant, ms(now)]))
                    .map_err(sql)?;
                for cb in &batch.callbacks {
                    insert_callback(c, cb).map_err(sql)?;
                }
                if let Some(idem) = &batch.idempotency {
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
        let (mut conds, mut params) = filter_sql(scope, filter);
        if let Some(cursor) = page.cursor {
            conds.push("id < ?".to_owned());
            params.push(cursor.to_string().into());
        }
        let limit = page.limit.clamp(1, 500);
        let where_sql = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let query = format!(
            "SELECT {CALLBACK_COLUMNS} FROM callbacks {where_sql} ORDER BY id DESC LIMIT {}",
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
    ) -> Result<u64, StoreError> {
        let filter = ListFilter {
            status: Some(Status::Failed),
            ..filter.clone()
        };
        let (conds, params) = filter_sql(scope, &filter);
        let query = format!("SELECT id FROM callbacks WHERE {}", conds.join(" AND "));
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

    async fn record_attempt(
        &self,
        id: &CallbackId,
        attempt: Attempt,
        decision: Decision,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writer()
            .write(Durability::Relaxed, move |c| {
                record_attempt(c, &id, &attempt, decision, now).map_err(sql)
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
                        "UPDATE callbacks SET status = 'pending', lease_until = NULL, \
                         next_attempt_at = ?2, updated_at = ?2 \
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
                }
                c.prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")
                    .and_then(|mut s| s.execute([ms(idempotency_before)]))
                    .map_err(sql)?;
                Ok(ids.len() as u64)
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
            .await
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
}

fn record_attempt(
    c: &Connection,
    id: &str,
    attempt: &Attempt,
    decision: Decision,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let (transition, next_at) = match decision {
        Decision::Delivered => (Transition::Succeed, None),
        Decision::RetryAt(at) => (Transition::Reschedule, Some(at)),
        Decision::DeadLetter(_) => (Transition::DeadLetter, None),
    };
    let to = transition.target();
    let last_error = match (&attempt.error, &attempt.error_detail) {
        (Some(code), Some(detail)) => Some(format!("{code}: {detail}")),
        (Some(code), None) => Some(code.to_string()),
        _ => None,
    };
    let changed = c
        .prepare_cached(
            "UPDATE callbacks SET status = ?2, attempts_made = MAX(attempts_made, ?3), \
             next_attempt_at = ?4, lease_until = NULL, last_error = COALESCE(?5, last_error), \
             updated_at = ?6 WHERE id = ?1 AND status = 'delivering'",
        )?
        .execute(params![
            id,
            to.as_str(),
            attempt.number,
            next_at.map(ms),
            last_error,
            ms(now)
        ])?;
    if changed == 0 {
        tracing::warn!(
            callback_id = id,
            "attempt finished for a callback no longer in flight"
        );
    }
    let reason = match decision {
        Decision::DeadLetter(r) => Some(r.as_str()),
        _ => None,
    };
    c.prepare_cached(&format!(
        "INSERT INTO attempts (callback_id, {ATTEMPT_COLUMNS}, recorded_at, to_status, \
         next_attempt_at, dead_letter_reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?
    .execute(params![
        id,
        attempt.number,
        ms(attempt.started_at),
        attempt.duration_ms as i64,
        attempt.status_code,
        attempt.error.map(|e| e.as_str()),
        attempt.error_detail,
        serde_json::to_string(&attempt.response_headers).expect("string map serialises"),
        attempt.response_body,
        ms(now),
        (changed > 0).then_some(to.as_str()),
        next_at.map(ms),
        reason,
    ])?;
    Ok(())
}

/// The audit trail of one callback: its creation (from the callback row), every attempt (from
/// the attempt rows) and every operator action or recovery (from `events`), in time order.
fn history(c: &Connection, cb: &Callback) -> rusqlite::Result<Vec<Event>> {
    let id = cb.id.to_string();
    let initial = match cb.spec.deliver_at {
        Some(at) if at > cb.created_at => Status::Scheduled,
        _ => Status::Pending,
    };
    let mut events = vec![Event {
        seq: 0,
        at: cb.created_at,
        kind: EventKind::Created,
        actor: Some(cb.created_by.clone()),
        from_status: None,
        to_status: Some(initial.as_str().to_owned()),
        detail: serde_json::json!({ "tenant": cb.tenant.as_str() }),
    }];
    let attempts = c
        .prepare_cached(
            "SELECT number, status_code, error, duration_ms, recorded_at, to_status, \
             next_attempt_at, dead_letter_reason FROM attempts WHERE callback_id = ?1 \
             ORDER BY rowid",
        )?
        .query_map([&id], |r| {
            let next: Option<i64> = r.get(6)?;
            Ok(Event {
                seq: 0,
                at: from_ms(r.get(4)?),
                kind: EventKind::Attempted,
                actor: None,
                from_status: Some(Status::Delivering.as_str().to_owned()),
                to_status: r.get(5)?,
                detail: serde_json::json!({
                    "number": r.get::<_, u32>(0)?,
                    "status_code": r.get::<_, Option<u16>>(1)?,
                    "error": r.get::<_, Option<String>>(2)?,
                    "duration_ms": r.get::<_, i64>(3)?,
                    "next_attempt_at": next.map(from_ms),
                    "dead_letter_reason": r.get::<_, Option<String>>(7)?,
                }),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let recorded = c
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE callback_id = ?1 ORDER BY seq"
        ))?
        .query_map([&id], rows::event)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    events.extend(attempts);
    events.extend(recorded);
    // A stable sort: within one millisecond, creation, attempts and actions keep this order.
    events.sort_by_key(|e| e.at);
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as i64 + 1;
    }
    Ok(events)
}
