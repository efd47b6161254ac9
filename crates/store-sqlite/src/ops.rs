//! The statements behind [`crate::callbacks`]: row writes, operator transitions, attempt
//! records and the audit trail read back.
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::{Event, EventKind};
use fluxcb_core::id::CallbackId;
use fluxcb_core::notify::KindFilter;
use fluxcb_core::ordering::AfterDeadLetter;
use fluxcb_core::ports::{ActionResult, ListFilter};
use fluxcb_core::retry::Decision;
use fluxcb_core::status::{Status, Transition};
use fluxcb_core::tenant::Scope;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{self, from_ms, ms, ATTEMPT_COLUMNS, CALLBACK_COLUMNS, EVENT_COLUMNS};

pub(crate) const DUE: &str = "status IN ('scheduled', 'pending')";

pub(crate) struct NewEvent<'a> {
    pub callback_id: &'a str,
    pub kind: EventKind,
    pub actor: Option<&'a str>,
    pub from: Option<Status>,
    pub to: Option<Status>,
    pub detail: serde_json::Value,
}

pub(crate) fn append_event(
    c: &Connection,
    at: DateTime<Utc>,
    e: NewEvent<'_>,
) -> rusqlite::Result<()> {
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

/// A callback with its text columns rendered, so that the JSON work happens on the caller's
/// thread and the single writer thread only binds values.
pub(crate) struct CallbackRow {
    id: String,
    headers: String,
    metadata: String,
    pub callback: Callback,
}

impl CallbackRow {
    pub fn new(callback: Callback) -> Self {
        Self {
            id: callback.id.to_string(),
            headers: serde_json::to_string(&callback.spec.headers).expect("string map serialises"),
            metadata: serde_json::to_string(&callback.spec.metadata)
                .expect("string map serialises"),
            callback,
        }
    }
}

pub(crate) fn insert_callback(c: &Connection, row: &CallbackRow) -> rusqlite::Result<()> {
    let cb = &row.callback;
    // Behind an unfinished predecessor with its key (or a held key), it waits without a due
    // time; the predecessor's end makes it due (`promote_next`).
    let next_attempt_at = match &cb.spec.ordering_key {
        Some(key) if key_is_busy(c, cb.tenant.as_str(), key)? => None,
        _ => cb.next_attempt_at,
    };
    let (kind, content_type, body) = rows::payload_columns(&cb.spec.payload);
    c.prepare_cached(
        "INSERT INTO callbacks (id, tenant, status, url, host, method, headers, body_kind, \
         content_type, body, deliver_at, next_attempt_at, attempts_made, max_attempts, \
         attempt_budget, max_attempts_override, timeout_ms, timeout_override, metadata, \
         created_at, updated_at, created_by, wire_format, legacy_id, external_id, url_as_given, \
         last_status_code, owner, last_error, ordering_key, kind, source_id, notify_url, \
         notify_on) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, \
         ?15, ?16, ?17, ?18, ?19, ?26, ?20, ?21, ?22, ?23, ?24, ?25, ?27, ?28, ?29, ?30, ?31, ?32, \
         ?33)",
    )?
    .execute(params![
        row.id,
        cb.tenant.as_str(),
        cb.status.as_str(),
        cb.spec.url.as_str(),
        cb.spec.url.host_str().unwrap_or_default(),
        cb.spec.method.as_str(),
        row.headers,
        kind,
        content_type,
        body,
        cb.spec.deliver_at.map(ms),
        next_attempt_at.map(ms),
        cb.attempts_made,
        cb.max_attempts,
        cb.spec.max_attempts,
        cb.timeout_ms,
        cb.spec.timeout_ms,
        row.metadata,
        ms(cb.created_at),
        cb.created_by,
        cb.spec.wire_format.as_str(),
        cb.legacy_id,
        cb.external_id,
        cb.url_as_given,
        cb.last_status_code,
        ms(cb.updated_at),
        cb.owner.as_str(),
        cb.last_error,
        cb.spec.ordering_key,
        cb.kind.as_str(),
        cb.source_id.map(|id| id.to_string()),
        cb.spec.notify_url.as_ref().map(|u| u.as_str()),
        cb.spec.notify_on.map(|on| on.encode()),
    ])?;
    let mut tag = c.prepare_cached(
        "INSERT OR IGNORE INTO callback_tags (key, value, callback_id) VALUES (?1, ?2, ?3)",
    )?;
    for (key, value) in &cb.spec.metadata {
        tag.execute(params![key, value, row.id])?;
    }
    Ok(())
}

fn insert_follow_up(c: &Connection, row: &Callback) -> rusqlite::Result<()> {
    let exists: bool = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM callbacks WHERE id = ?1)")?
        .query_row(params![row.id.to_string()], |r| r.get(0))?;
    if !exists {
        insert_callback(c, &CallbackRow::new(row.clone()))?;
    }
    Ok(())
}

/// Whether a key has an unfinished callback (waiting, due or in flight) or is held.
fn key_is_busy(c: &Connection, tenant: &str, key: &str) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM callbacks WHERE tenant = ?1 AND ordering_key = ?2 \
         AND status IN ('scheduled', 'pending', 'delivering')) \
         OR EXISTS (SELECT 1 FROM ordering_holds WHERE tenant = ?1 AND key = ?2)",
    )?
    .query_row(params![tenant, key], |r| r.get(0))
}

/// Makes the first waiting callback of a key due, unless another of the key is still due or
/// in flight or the key is held. Called in the transaction that ends a callback of the key.
pub(crate) fn promote_next(
    c: &Connection,
    tenant: &str,
    key: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE callbacks SET next_attempt_at = MAX(COALESCE(deliver_at, ?3), ?3), \
         updated_at = ?3 \
         WHERE id = (SELECT id FROM callbacks WHERE tenant = ?1 AND ordering_key = ?2 \
             AND status IN ('scheduled', 'pending') AND next_attempt_at IS NULL \
             AND owner = 'fluxcb' ORDER BY id LIMIT 1) \
         AND NOT EXISTS (SELECT 1 FROM callbacks WHERE tenant = ?1 AND ordering_key = ?2 \
             AND (status = 'delivering' OR (status IN ('scheduled', 'pending') \
             AND next_attempt_at IS NOT NULL))) \
         AND NOT EXISTS (SELECT 1 FROM ordering_holds WHERE tenant = ?1 AND key = ?2)",
    )?
    .execute(params![tenant, key, ms(now)])?;
    Ok(())
}

/// The tenant and key of a callback with one.
fn ordering_of(c: &Connection, id: &str) -> rusqlite::Result<Option<(String, String)>> {
    c.prepare_cached(
        "SELECT tenant, ordering_key FROM callbacks WHERE id = ?1 AND ordering_key IS NOT NULL",
    )?
    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// Releases a held key: its next waiting callback becomes due. Whether it was held.
pub(crate) fn release_key(
    c: &Connection,
    tenant: &str,
    key: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let released = c
        .prepare_cached("DELETE FROM ordering_holds WHERE tenant = ?1 AND key = ?2")?
        .execute(params![tenant, key])?
        > 0;
    promote_next(c, tenant, key, now)?;
    Ok(released)
}

pub(crate) fn load(c: &Connection, id: &str) -> rusqlite::Result<Option<Callback>> {
    c.prepare_cached(&format!(
        "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = ?1"
    ))?
    .query_row([id], rows::callback)
    .optional()
}

pub(crate) fn load_in_scope(
    c: &Connection,
    scope: &Scope,
    id: &CallbackId,
) -> rusqlite::Result<Option<Callback>> {
    Ok(load(c, &id.to_string())?.filter(|cb| scope.permits(&cb.tenant)))
}

/// SQL conditions and parameters for a list filter within a scope.
pub(crate) fn filter_sql(scope: &Scope, filter: &ListFilter) -> (Vec<String>, Vec<Value>) {
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
            "EXISTS (SELECT 1 FROM callback_tags WHERE key = ? AND value = ? \
             AND callback_id = callbacks.id)"
                .to_owned(),
        );
        params.push(k.clone().into());
        params.push(v.clone().into());
    }
    match filter.kind {
        KindFilter::Callbacks => conds.push("kind = 'callback'".to_owned()),
        // Written as the partial index's own term, so the planner can use that index.
        KindFilter::Only(kind) => {
            conds.push("kind <> 'callback' AND kind = ?".to_owned());
            params.push(kind.as_str().to_owned().into());
        }
        KindFilter::All => {}
    }
    (conds, params)
}

/// Claims one callback for an attempt right now (the legacy API's `send`), whatever its due
/// time. A failed one gets exactly one more attempt, as the legacy service gave it: its attempts
/// are already at the maximum, so a failure dead-letters it again.
pub(crate) fn send_now(
    c: &Connection,
    scope: &Scope,
    id: &CallbackId,
    actor: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> rusqlite::Result<ActionResult> {
    let Some(cb) = load_in_scope(c, scope, id)? else {
        return Ok(ActionResult::NotFound);
    };
    if cb.owner == Owner::Legacy {
        return Ok(ActionResult::OwnedByLegacy);
    }
    let Ok(to) = Transition::SendNow.apply(cb.status) else {
        return Ok(ActionResult::WrongState(cb.status));
    };
    let idt = id.to_string();
    c.prepare_cached(
        "UPDATE callbacks SET status = 'delivering', lease_until = ?3, updated_at = ?2 \
         WHERE id = ?1 AND status IN ('scheduled', 'pending', 'failed')",
    )?
    .execute(params![idt, ms(now), ms(lease_until)])?;
    append_event(
        c,
        now,
        NewEvent {
            callback_id: &idt,
            kind: EventKind::SentNow,
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

/// Applies an operator transition (cancel, retry) to one callback.
pub(crate) fn operator_action(
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
    if cb.owner == Owner::Legacy {
        return Ok(ActionResult::OwnedByLegacy);
    }
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
            if let Some((tenant, key)) = ordering_of(c, &idt)? {
                promote_next(c, &tenant, &key, now)?;
            }
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
pub(crate) fn revive(c: &Connection, id: &str, now: DateTime<Utc>) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE callbacks SET status = 'pending', next_attempt_at = ?2, updated_at = ?2, \
         max_attempts = attempts_made + attempt_budget WHERE id = ?1 AND status = 'failed'",
    )?
    .execute(params![id, ms(now)])?;
    // A dead letter holding its key goes first again: the hold is its own turn.
    c.prepare_cached("DELETE FROM ordering_holds WHERE callback_id = ?1")?
        .execute([id])?;
    Ok(())
}

pub(crate) fn record_attempt(
    c: &Connection,
    id: &str,
    attempt: &Attempt,
    decision: Decision,
    now: DateTime<Utc>,
    after_dead_letter: AfterDeadLetter,
    follow_ups: &[Callback],
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
             next_attempt_at = CASE WHEN owner = 'legacy' THEN NULL ELSE ?4 END, \
             lease_until = NULL, last_error = COALESCE(?5, last_error), \
             updated_at = ?6, last_status_code = ?7 \
             WHERE id = ?1 AND status = 'delivering'",
        )?
        .execute(params![
            id,
            to.as_str(),
            attempt.number,
            next_at.map(ms),
            last_error,
            ms(now),
            attempt.status_code,
        ])?;
    if changed == 0 {
        tracing::warn!(
            callback_id = id,
            "attempt finished for a callback no longer in flight"
        );
    } else if to != Status::Pending {
        if let Some((tenant, key)) = ordering_of(c, id)? {
            if to == Status::Failed && after_dead_letter == AfterDeadLetter::Hold {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO ordering_holds (tenant, key, callback_id, held_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![tenant, key, id, ms(now)])?;
            } else {
                promote_next(c, &tenant, &key, now)?;
            }
        }
        // In the transition's own transaction: a crash keeps both or neither, and a rerun of
        // the same transition (same derived ids) adds nothing.
        for row in follow_ups {
            insert_follow_up(c, row)?;
        }
    }
    let reason = match decision {
        Decision::DeadLetter(r) => Some(r.as_str()),
        _ => None,
    };
    c.prepare_cached(&format!(
        "INSERT INTO attempts (callback_id, {ATTEMPT_COLUMNS}, recorded_at, to_status, \
         next_attempt_at, dead_letter_reason, tenant, host) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
         (SELECT tenant FROM callbacks WHERE id = ?1), (SELECT host FROM callbacks WHERE id = ?1))"
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
pub(crate) fn history(c: &Connection, cb: &Callback) -> rusqlite::Result<Vec<Event>> {
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
