//! A callback as the legacy API shows it: the legacy serializer's fields, in its order, with
//! DRF's timestamp rendering.
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use super::api::legacy_status;
use crate::callback::{Callback, Payload};
use crate::status::Status;

/// DRF's rendering of an aware datetime: ISO 8601, microseconds only when not zero, `Z`.
pub fn render_datetime(at: DateTime<Utc>) -> String {
    if at.timestamp_subsec_micros() == 0 {
        at.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        at.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// A callback as the legacy API shows it (the legacy serializer's fields, in its order).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowView {
    pub id: i64,
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub payload: Value,
    pub external_id: Option<String>,
    pub callback_time: String,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub last_response_code: Option<u16>,
    pub last_error: String,
    pub sent_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl RowView {
    /// `None` for a callback without a legacy id (created through `/v1`).
    pub fn of(cb: &Callback) -> Option<Self> {
        let id = cb.legacy_id?;
        let payload = match &cb.spec.payload {
            Payload::Json(bytes) => serde_json::from_slice(bytes).unwrap_or(Value::Null),
            Payload::Raw { bytes, .. } => Value::String(String::from_utf8_lossy(bytes).into()),
            Payload::Empty => Value::Null,
        };
        // The legacy row's callback_time moved to each retry's time and then stayed. Ours is
        // the schedule asked for until a retry was set, the next attempt's time while one is
        // due, and (approximately) the last change once a retried callback has finished.
        let asked = cb.spec.deliver_at.unwrap_or(cb.created_at);
        let callback_time = match cb.next_attempt_at {
            Some(at) if cb.attempts_made > 0 => at,
            Some(_) => asked,
            None if cb.attempts_made > 1 => cb.updated_at,
            None => asked,
        };
        Some(Self {
            id,
            url: cb
                .url_as_given
                .clone()
                .unwrap_or_else(|| cb.spec.url.to_string()),
            method: cb.spec.method.as_str().to_owned(),
            headers: cb.spec.headers.clone(),
            payload,
            external_id: cb.external_id.clone(),
            callback_time: render_datetime(callback_time),
            status: legacy_status(cb.status).to_owned(),
            attempts: cb.attempts_made,
            max_attempts: cb.max_attempts,
            last_response_code: cb.last_status_code,
            last_error: legacy_error(cb),
            sent_at: (cb.status == Status::Delivered).then(|| render_datetime(cb.updated_at)),
            created_at: render_datetime(cb.created_at),
            updated_at: render_datetime(cb.updated_at),
        })
    }
}

impl RowView {
    /// A row of the legacy table as the legacy API showed it.
    pub fn of_legacy_row(row: &crate::legacy::row::LegacyRow) -> Self {
        let headers = match &row.headers {
            Value::Object(map) => map
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect(),
            _ => BTreeMap::new(),
        };
        Self {
            id: row.id,
            url: row.url.clone(),
            method: row.method.clone(),
            headers,
            payload: row.payload.clone().unwrap_or(Value::Null),
            external_id: row.external_id.clone(),
            callback_time: render_datetime(row.callback_time),
            status: row.status.clone(),
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
            last_response_code: row.last_response_code.and_then(|c| u16::try_from(c).ok()),
            last_error: row.last_error.clone(),
            sent_at: row.sent_at.map(render_datetime),
            created_at: render_datetime(row.created_at),
            updated_at: render_datetime(row.updated_at),
        }
    }
}

/// The legacy sender wrote `HTTP <code>` for an answer that was not 2xx, an exception text for
/// a network failure, and cleared it on success.
fn legacy_error(cb: &Callback) -> String {
    if cb.status == Status::Delivered {
        return String::new();
    }
    match (cb.last_status_code, &cb.last_error) {
        (Some(code), _) if !(200..300).contains(&code) => format!("HTTP {code}"),
        (_, Some(error)) => error.clone(),
        _ => String::new(),
    }
}
