//! What goes over the wire in `/v1`: request bodies and response shapes, with their OpenAPI
//! schemas.
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, NewCallback, Payload};
use fluxcb_core::event::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A callback to deliver.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateCallback {
    /// http(s) URL without credentials, at most 2,048 characters.
    pub url: String,
    /// POST (default), PUT or PATCH.
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    /// Any JSON value, sent as compact JSON with `Content-Type: application/json`.
    pub payload: Option<serde_json::Value>,
    /// A raw body, sent with `content_type`. Exclusive with `payload`.
    pub body: Option<String>,
    pub content_type: Option<String>,
    /// RFC 3339 time of the first attempt (up to a year ahead). Omitted: now.
    pub deliver_at: Option<DateTime<Utc>>,
    /// Attempts in all, the first included (1-50).
    pub max_attempts: Option<u32>,
    /// Total timeout of one attempt in milliseconds (100-60000).
    pub timeout_ms: Option<u32>,
    /// Free-form tags to filter on.
    pub metadata: Option<BTreeMap<String, String>>,
    /// `standard_webhooks` (default), `legacy` (the legacy services' headers and signature,
    /// for receivers not yet moved; needs the legacy signing secret configured) or `both`.
    pub wire_format: Option<String>,
    /// Callbacks of a tenant with the same key are delivered one at a time, in the order they
    /// were accepted (1-256 bytes). One waiting for its predecessor has no `next_attempt_at`.
    pub ordering_key: Option<String>,
    /// Receives a signed `callback.failed` notification when this callback is dead-lettered
    /// (and `callback.delivered` if `notify_on` asks). Omitted: the registrations' (the
    /// tenant's `any` registration is the tenant's default).
    pub notify_url: Option<String>,
    /// `dead_lettered` (the default) and/or `delivered`; `[]` switches notifications off, an
    /// inherited default included.
    pub notify_on: Option<Vec<String>>,
}

impl From<CreateCallback> for NewCallback {
    fn from(c: CreateCallback) -> Self {
        NewCallback {
            url: c.url,
            method: c.method,
            headers: c.headers.unwrap_or_default(),
            payload: c.payload,
            body: c.body,
            content_type: c.content_type,
            deliver_at: c.deliver_at,
            max_attempts: c.max_attempts,
            timeout_ms: c.timeout_ms,
            metadata: c.metadata.unwrap_or_default(),
            wire_format: c.wire_format,
            ordering_key: c.ordering_key,
            notify_url: c.notify_url,
            notify_on: c.notify_on,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// Up to 1,000 callbacks, accepted all together or not at all.
    pub callbacks: Vec<CreateCallback>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    pub status: String,
    pub next_attempt_at: Option<String>,
    /// The integer id legacy receivers will see (legacy wire format only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_id: Option<i64>,
}

impl Accepted {
    pub fn of(cb: &Callback) -> Self {
        Self {
            id: cb.id.to_string(),
            status: cb.status.to_string(),
            next_attempt_at: cb.next_attempt_at.map(rfc3339),
            legacy_id: cb.legacy_id,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BatchAccepted {
    pub callbacks: Vec<Accepted>,
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Header values that look like credentials are masked in every view.
fn mask_headers(headers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            let secret = [
                "authorization",
                "cookie",
                "api-key",
                "apikey",
                "token",
                "secret",
                "password",
                "signature",
            ]
            .iter()
            .any(|s| lower.contains(s));
            (k.clone(), if secret { "***".to_owned() } else { v.clone() })
        })
        .collect()
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub number: u32,
    pub started_at: String,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    /// Stable code: timeout, connect, dns, tls, blocked_target, http_status, protocol.
    pub error: Option<String>,
    pub error_detail: Option<String>,
    pub response_headers: BTreeMap<String, String>,
    /// The first 4 KiB of the response body.
    pub response_body: Option<String>,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        Self {
            number: a.number,
            started_at: rfc3339(a.started_at),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error.map(|e| e.as_str().to_owned()),
            error_detail: a.error_detail.clone(),
            response_headers: a.response_headers.clone(),
            response_body: a.response_body.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CallbackView {
    pub id: String,
    pub tenant: String,
    pub status: String,
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub deliver_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub attempts_made: u32,
    pub max_attempts: u32,
    pub timeout_ms: u32,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: String,
    pub last_error: Option<String>,
    pub wire_format: String,
    /// The integer id legacy receivers see as `X-Flux-Callback-Id` (legacy wire format only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_id: Option<i64>,
    /// The legacy API's `external_id` (callbacks created through it or imported from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_on: Option<Vec<String>>,
    /// `callback` (a caller's), `notification` (about `source_id`, to its tenant's notify URL)
    /// or `operational` (the installation's event stream).
    pub kind: String,
    /// The callback a notification is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// Oldest first. Present on single-callback reads, omitted in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
}

impl CallbackView {
    pub fn of(cb: &Callback, attempts: Option<&[Attempt]>, with_body: bool) -> Self {
        let (payload, body, content_type) = match (&cb.spec.payload, with_body) {
            (_, false) | (Payload::Empty, _) => (None, None, None),
            (Payload::Json(bytes), true) => (serde_json::from_slice(bytes).ok(), None, None),
            (
                Payload::Raw {
                    content_type,
                    bytes,
                },
                true,
            ) => (
                None,
                Some(String::from_utf8_lossy(bytes).into_owned()),
                Some(content_type.clone()),
            ),
        };
        Self {
            id: cb.id.to_string(),
            tenant: cb.tenant.to_string(),
            status: cb.status.to_string(),
            url: cb.spec.url.to_string(),
            method: cb.spec.method.as_str().to_owned(),
            headers: mask_headers(&cb.spec.headers),
            payload,
            body,
            content_type,
            deliver_at: cb.spec.deliver_at.map(rfc3339),
            next_attempt_at: cb.next_attempt_at.map(rfc3339),
            attempts_made: cb.attempts_made,
            max_attempts: cb.max_attempts,
            timeout_ms: cb.timeout_ms,
            metadata: cb.spec.metadata.clone(),
            created_at: rfc3339(cb.created_at),
            updated_at: rfc3339(cb.updated_at),
            created_by: cb.created_by.clone(),
            last_error: cb.last_error.clone(),
            wire_format: cb.spec.wire_format.as_str().to_owned(),
            legacy_id: cb.legacy_id,
            external_id: cb.external_id.clone(),
            ordering_key: cb.spec.ordering_key.clone(),
            notify_url: cb.spec.notify_url.as_ref().map(|u| u.to_string()),
            notify_on: cb
                .spec
                .notify_on
                .map(|on| on.names().into_iter().map(str::to_owned).collect()),
            kind: cb.kind.as_str().to_owned(),
            source_id: cb.source_id.map(|id| id.to_string()),
            attempts: attempts.map(|a| a.iter().map(AttemptView::from).collect()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CallbackList {
    pub data: Vec<CallbackView>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub actor: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        Self {
            seq: e.seq,
            at: rfc3339(e.at),
            kind: e.kind.as_str().to_owned(),
            actor: e.actor.clone(),
            from_status: e.from_status.clone(),
            to_status: e.to_status.clone(),
            detail: e.detail.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<EventView>,
}

/// Which dead letters to send back.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    pub host: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// `key=value`: only callbacks with this metadata tag.
    pub metadata: Option<String>,
    /// Admin keys only: one tenant.
    pub tenant: Option<String>,
    /// callback (default), notification, operational, or all.
    pub kind: Option<String>,
    /// Move nothing; answer how many would move (`matched`).
    pub dry_run: Option<bool>,
    /// Move at most this many (1-10000) and answer how many moved; repeat while `moved`
    /// equals `limit` to move them all in short steps. Omitted: every match in one request.
    #[schema(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RedriveResult {
    pub moved: u64,
    /// Present on a dry run: how many dead letters the same request would move now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
}
