//! Mapping between rows and domain values. Times are stored as Unix milliseconds.
use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, CallbackSpec, Payload};
use fluxcb_core::event::{Event, EventKind};
use fluxcb_core::notify::NotifyOn;
use rusqlite::Row;

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

pub const CALLBACK_COLUMNS: &str = "id, tenant, status, url, method, headers, body_kind, \
    content_type, body, deliver_at, next_attempt_at, attempts_made, max_attempts, \
    max_attempts_override, timeout_ms, timeout_override, metadata, created_at, updated_at, \
    created_by, last_error, wire_format, legacy_id, external_id, url_as_given, \
    last_status_code, owner, ordering_key, kind, source_id, notify_url, notify_on";

fn conversion<E: std::error::Error + Send + Sync + 'static>(i: usize, e: E) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
}

fn text_err(i: usize, msg: String) -> rusqlite::Error {
    conversion(i, std::io::Error::other(msg))
}

/// Reads a row selected with [`CALLBACK_COLUMNS`].
pub fn callback(row: &Row<'_>) -> rusqlite::Result<Callback> {
    let id: String = row.get(0)?;
    let tenant: String = row.get(1)?;
    let status: String = row.get(2)?;
    let url: String = row.get(3)?;
    let method: String = row.get(4)?;
    let headers: String = row.get(5)?;
    let body_kind: String = row.get(6)?;
    let content_type: Option<String> = row.get(7)?;
    let body: Vec<u8> = row.get(8)?;
    let payload = match body_kind.as_str() {
        "json" => Payload::Json(body),
        "raw" => Payload::Raw {
            content_type: content_type.unwrap_or_default(),
            bytes: body,
        },
        _ => Payload::Empty,
    };
    let metadata: String = row.get(16)?;
    Ok(Callback {
        id: id.parse().map_err(|e| conversion(0, e))?,
        tenant: tenant.try_into().map_err(|e| conversion(1, e))?,
        status: status.parse().map_err(|e| conversion(2, e))?,
        spec: CallbackSpec {
            url: url.parse().map_err(|e| conversion(3, e))?,
            method: method
                .parse()
                .map_err(|_| text_err(4, format!("bad method {method}")))?,
            headers: serde_json::from_str(&headers).map_err(|e| conversion(5, e))?,
            payload,
            deliver_at: row.get::<_, Option<i64>>(9)?.map(from_ms),
            max_attempts: row.get(13)?,
            timeout_ms: row.get(15)?,
            metadata: serde_json::from_str(&metadata).map_err(|e| conversion(16, e))?,
            wire_format: row
                .get::<_, String>(21)?
                .parse()
                .map_err(|e: String| text_err(21, e))?,
            ordering_key: row.get(27)?,
            notify_url: row
                .get::<_, Option<String>>(30)?
                .map(|u| u.parse())
                .transpose()
                .map_err(|e| conversion(30, e))?,
            notify_on: row
                .get::<_, Option<String>>(31)?
                .map(|on| NotifyOn::decode(&on)),
        },
        next_attempt_at: row.get::<_, Option<i64>>(10)?.map(from_ms),
        attempts_made: row.get(11)?,
        max_attempts: row.get(12)?,
        timeout_ms: row.get(14)?,
        created_at: from_ms(row.get(17)?),
        updated_at: from_ms(row.get(18)?),
        created_by: row.get(19)?,
        last_error: row.get(20)?,
        legacy_id: row.get(22)?,
        external_id: row.get(23)?,
        url_as_given: row.get(24)?,
        last_status_code: row.get(25)?,
        owner: row
            .get::<_, String>(26)?
            .parse()
            .map_err(|e: String| text_err(26, e))?,
        kind: row
            .get::<_, String>(28)?
            .parse()
            .map_err(|e: String| text_err(28, e))?,
        source_id: row
            .get::<_, Option<String>>(29)?
            .map(|id| id.parse())
            .transpose()
            .map_err(|e| conversion(29, e))?,
    })
}

pub fn payload_columns(p: &Payload) -> (&'static str, Option<&str>, &[u8]) {
    match p {
        Payload::Json(b) => ("json", None, b),
        Payload::Raw {
            content_type,
            bytes,
        } => ("raw", Some(content_type), bytes),
        Payload::Empty => ("empty", None, &[]),
    }
}

pub const ATTEMPT_COLUMNS: &str = "number, started_at, duration_ms, status_code, error, \
    error_detail, response_headers, response_body";

pub fn attempt(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    let error: Option<String> = row.get(4)?;
    let headers: String = row.get(6)?;
    Ok(Attempt {
        number: row.get(0)?,
        started_at: from_ms(row.get(1)?),
        duration_ms: row.get::<_, i64>(2)? as u64,
        status_code: row.get(3)?,
        error: error.and_then(|e| e.parse().ok()),
        error_detail: row.get(5)?,
        response_headers: serde_json::from_str::<BTreeMap<String, String>>(&headers)
            .map_err(|e| conversion(6, e))?,
        response_body: row.get(7)?,
    })
}

pub const EVENT_COLUMNS: &str = "seq, at, kind, actor, from_status, to_status, detail";

pub fn event(row: &Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = row.get(2)?;
    let detail: String = row.get(6)?;
    Ok(Event {
        seq: row.get(0)?,
        at: from_ms(row.get(1)?),
        kind: serde_json::from_value::<EventKind>(serde_json::Value::String(kind))
            .map_err(|e| conversion(2, e))?,
        actor: row.get(3)?,
        from_status: row.get(4)?,
        to_status: row.get(5)?,
        detail: serde_json::from_str(&detail).map_err(|e| conversion(6, e))?,
    })
}
