//! A row of the legacy table (`callme_callback`), and the callback it becomes: the mapping the
//! import and the shadow run apply.
//!
//! - Status: `pending` → pending (scheduled when its time is ahead), `sending` → delivering for
//!   a mirror and pending for a row fluxcb takes over (its attempt may or may not have reached
//!   the receiver: a duplicate with the same id is possible, a loss is not), `succeeded` →
//!   delivered, `failed` and `cancelled` as they are.
//! - Ownership: without `--take-ownership` every row is a mirror ([`Owner::Legacy`]: never due
//!   here; legacy keeps sending it). With it, every row is fluxcb's, and unfinished rows are due
//!   at their `callback_time`.
//! - Legacy receivers see the same thing: the legacy wire format, the row's integer id.
use std::collections::BTreeMap;

use crate::callback::{
    Callback, CallbackDefaults, CallbackSpec, Method, Owner, Payload, WireFormat,
};
use crate::id::CallbackId;
use crate::status::Status;
use crate::tenant::TenantId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

/// One `callme_callback` row as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegacyRow {
    pub id: i64,
    pub url: String,
    pub method: String,
    pub headers: Value,
    /// `None` for SQL `NULL`, `Some(Value::Null)` for a JSON `null`: the legacy sender sends
    /// `null` for both, but an import should be able to tell them apart.
    pub payload: Option<Value>,
    pub external_id: Option<String>,
    pub callback_time: DateTime<Utc>,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_response_code: Option<i32>,
    pub last_error: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The tenant every legacy row and token belongs to: the legacy service had no tenants, and
/// every token saw every row.
pub const LEGACY_TENANT: &str = "legacy";
/// The actor named on imported callbacks and in their audit trail.
pub const IMPORT_ACTOR: &str = "fluxcb migrate import";

/// Why a row cannot be imported; the report lists it with the row's id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unimportable {
    #[error("url {0:?} is not a URL fluxcb can parse: {1}")]
    Url(String, String),
    #[error("method {0:?} is not POST, PUT or PATCH")]
    Method(String),
    #[error("headers are not an object of string values")]
    Headers,
    #[error("unknown status {0:?}")]
    Status(String),
}

pub fn legacy_tenant() -> TenantId {
    TenantId::parse(LEGACY_TENANT).expect("`legacy` is a valid tenant name")
}

/// The callback a legacy row becomes, owned by `owner`.
pub fn callback_from_row(
    row: &LegacyRow,
    owner: Owner,
    defaults: &CallbackDefaults,
    now: DateTime<Utc>,
) -> Result<Callback, Unimportable> {
    let url =
        Url::parse(&row.url).map_err(|e| Unimportable::Url(row.url.clone(), e.to_string()))?;
    let method = match row.method.as_str() {
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        other => return Err(Unimportable::Method(other.to_owned())),
    };
    let headers: BTreeMap<String, String> = match &row.headers {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect::<Option<_>>()
            .ok_or(Unimportable::Headers)?,
        Value::Null => BTreeMap::new(),
        _ => return Err(Unimportable::Headers),
    };
    let payload = match &row.payload {
        None | Some(Value::Null) => Payload::Empty,
        Some(v) => Payload::Json(serde_json::to_vec(v).expect("a Value serialises")),
    };
    let finished = matches!(row.status.as_str(), "succeeded" | "failed" | "cancelled");
    let status = match (row.status.as_str(), owner) {
        ("pending", _) | ("sending", Owner::Fluxcb) if row.callback_time > now => Status::Scheduled,
        ("pending", _) | ("sending", Owner::Fluxcb) => Status::Pending,
        ("sending", Owner::Legacy) => Status::Delivering,
        ("succeeded", _) => Status::Delivered,
        ("failed", _) => Status::Failed,
        ("cancelled", _) => Status::Cancelled,
        (other, _) => return Err(Unimportable::Status(other.to_owned())),
    };
    let next_attempt_at = (owner == Owner::Fluxcb && !finished).then_some(row.callback_time);
    let max_attempts = u32::try_from(row.max_attempts).unwrap_or(1).max(1);
    let url_as_given = (url.as_str() != row.url).then(|| row.url.clone());
    Ok(Callback {
        id: CallbackId::for_legacy_row(row.created_at, row.id),
        tenant: legacy_tenant(),
        spec: CallbackSpec {
            url,
            method,
            headers,
            payload,
            deliver_at: Some(row.callback_time),
            max_attempts: Some(max_attempts),
            timeout_ms: None,
            metadata: BTreeMap::new(),
            wire_format: WireFormat::Legacy,
            ordering_key: None,
            notify_url: None,
            notify_on: None,
        },
        status,
        attempts_made: u32::try_from(row.attempts).unwrap_or(0),
        max_attempts,
        timeout_ms: defaults.timeout_ms,
        next_attempt_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
        created_by: IMPORT_ACTOR.to_owned(),
        last_error: (!row.last_error.is_empty()).then(|| row.last_error.clone()),
        legacy_id: Some(row.id),
        external_id: row.external_id.clone(),
        url_as_given,
        last_status_code: row.last_response_code.and_then(|c| u16::try_from(c).ok()),
        owner,
        kind: crate::notify::Kind::Callback,
        source_id: None,
    })
}

/// The legacy row a callback becomes when a rollback hands it back to legacy, due at
/// `callback_time`. `None` without a legacy id.
pub fn row_from_callback(cb: &Callback, callback_time: DateTime<Utc>) -> Option<LegacyRow> {
    let id = cb.legacy_id?;
    let view = crate::legacy::api::RowView::of(cb)?;
    let status = match cb.status {
        // An attempt cut short by the hand-back is sent again by legacy: a duplicate with the
        // same id is possible, a loss is not.
        Status::Scheduled | Status::Pending | Status::Delivering => "pending",
        Status::Delivered => "succeeded",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    };
    Some(LegacyRow {
        id,
        url: view.url,
        method: view.method,
        headers: Value::Object(
            cb.spec
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
        payload: match &cb.spec.payload {
            Payload::Empty => None,
            _ => Some(view.payload),
        },
        external_id: cb.external_id.clone(),
        callback_time,
        status: status.to_owned(),
        attempts: i32::try_from(cb.attempts_made).unwrap_or(i32::MAX),
        max_attempts: i32::try_from(cb.max_attempts).unwrap_or(i32::MAX),
        last_response_code: cb.last_status_code.map(i32::from),
        last_error: view.last_error,
        sent_at: (cb.status == Status::Delivered).then_some(cb.updated_at),
        created_at: cb.created_at,
        updated_at: cb.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    fn row(status: &str) -> LegacyRow {
        let now = Utc::now();
        LegacyRow {
            id: 7,
            url: "http://Example.com/hook".into(),
            method: "PUT".into(),
            headers: json!({"X-A": "1"}),
            payload: Some(json!({"a": 1})),
            external_id: Some("e-7".into()),
            callback_time: now - Duration::minutes(1),
            status: status.into(),
            attempts: 2,
            max_attempts: 5,
            last_response_code: Some(500),
            last_error: "HTTP 500".into(),
            sent_at: None,
            created_at: now - Duration::hours(1),
            updated_at: now - Duration::minutes(2),
        }
    }

    fn defaults() -> CallbackDefaults {
        CallbackDefaults {
            max_attempts: 10,
            timeout_ms: 15_000,
        }
    }

    #[test]
    fn mirrors_are_never_due_and_keep_the_legacy_state() {
        let cb =
            callback_from_row(&row("sending"), Owner::Legacy, &defaults(), Utc::now()).unwrap();
        assert_eq!(cb.status, Status::Delivering);
        assert_eq!(cb.next_attempt_at, None);
        assert_eq!(cb.owner, Owner::Legacy);
        assert_eq!((cb.attempts_made, cb.max_attempts), (2, 5));
        assert_eq!(cb.url_as_given.as_deref(), Some("http://Example.com/hook"));
        assert_eq!(cb.spec.wire_format, WireFormat::Legacy);
        assert_eq!(cb.legacy_id, Some(7));
    }

    #[test]
    fn taking_over_makes_unfinished_rows_due_and_sending_ones_pending() {
        let now = Utc::now();
        let cb = callback_from_row(&row("sending"), Owner::Fluxcb, &defaults(), now).unwrap();
        assert_eq!(cb.status, Status::Pending);
        assert!(cb.next_attempt_at.is_some_and(|t| t <= now));
        let done = callback_from_row(&row("succeeded"), Owner::Fluxcb, &defaults(), now).unwrap();
        assert_eq!(
            (done.status, done.next_attempt_at),
            (Status::Delivered, None)
        );
    }

    #[test]
    fn a_handed_back_callback_is_the_row_it_came_from() {
        let r = row("pending");
        let cb = callback_from_row(&r, Owner::Fluxcb, &defaults(), Utc::now()).unwrap();
        let back = row_from_callback(&cb, r.callback_time).unwrap();
        assert_eq!(
            (
                back.id,
                back.url.as_str(),
                back.method.as_str(),
                back.status.as_str()
            ),
            (r.id, r.url.as_str(), "PUT", "pending")
        );
        assert_eq!((back.headers, back.payload), (r.headers, r.payload));
        assert_eq!((back.attempts, back.max_attempts), (2, 5));
        assert_eq!(back.external_id, r.external_id);
    }

    #[test]
    fn the_same_row_always_gets_the_same_id() {
        let r = row("pending");
        let a = callback_from_row(&r, Owner::Legacy, &defaults(), Utc::now()).unwrap();
        let b = callback_from_row(&r, Owner::Fluxcb, &defaults(), Utc::now()).unwrap();
        assert_eq!(a.id, b.id);
    }

    #[test]
    fn rows_fluxcb_cannot_represent_are_refused_with_a_reason() {
        let mut bad = row("pending");
        bad.url = "not a url".into();
        assert!(matches!(
            callback_from_row(&bad, Owner::Legacy, &defaults(), Utc::now()),
            Err(Unimportable::Url(..))
        ));
        let mut bad = row("pending");
        bad.headers = json!({"a": 1});
        assert_eq!(
            callback_from_row(&bad, Owner::Legacy, &defaults(), Utc::now()).unwrap_err(),
            Unimportable::Headers
        );
    }
}
