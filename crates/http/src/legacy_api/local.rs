//! The legacy API served by fluxcb itself: the callbacks it owns (all of them in mode `off`).
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use fluxcb_core::auth::ApiKey;
use fluxcb_core::callback::{Callback, WireFormat};
use fluxcb_core::id::CallbackId;
use fluxcb_core::legacy::api::{self as rules, FieldErrors, LegacyCreate, RowView, PAGE_SIZE};
use fluxcb_core::ports::{ActionResult, Due, IngestBatch, IngestResult, StoreError};
use fluxcb_core::tenant::Scope;
use serde::Serialize;
use serde_json::Value;

use super::error::LegacyError;
use super::{json, page};
use crate::AppState;

/// The synchronous `send` answers within this, under API Gateway's 30-second limit; an attempt
/// still running then finishes in the background and the answer shows it as `sending`.
const SEND_WAIT: Duration = Duration::from_secs(25);

#[derive(Serialize)]
pub(super) struct Page {
    pub(super) count: u64,
    pub(super) next: Option<String>,
    pub(super) previous: Option<String>,
    pub(super) results: Vec<RowView>,
}

pub(super) async fn list(
    state: &AppState,
    caller: &ApiKey,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, LegacyError> {
    let query = page::ListQuery::of(uri);
    let filter = query.filter();
    let scope = caller.scope();
    let size = u64::from(PAGE_SIZE);
    // The count decides which pages exist; a page past the end is an error, as in DRF.
    let first = state
        .callbacks
        .list_legacy(&scope, &filter, 0, PAGE_SIZE)
        .await?;
    let pages = page::pages(first.count, size);
    let n = page::page_number(query.page.as_deref(), pages)?;
    let listing = if n == 1 {
        first
    } else {
        state
            .callbacks
            .list_legacy(&scope, &filter, (n - 1) * size, PAGE_SIZE)
            .await?
    };
    let body = Page {
        count: listing.count,
        next: (n < pages).then(|| page::link(headers, uri, Some(n + 1))),
        previous: (n > 1).then(|| page::link(headers, uri, (n > 2).then_some(n - 1))),
        results: listing.items.iter().filter_map(RowView::of).collect(),
    };
    Ok(json(StatusCode::OK, &body))
}

/// What DRF's parsers make of the body: JSON, a form, or nothing (no content type).
pub(crate) fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, LegacyError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.is_empty() || body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match media.as_str() {
        "application/json" => serde_json::from_slice(body)
            .map_err(|e| LegacyError::ParseError(format!("JSON parse error - {e}"))),
        "application/x-www-form-urlencoded" => {
            // Form values are strings; DRF's JSONField reads its form value as JSON text.
            let mut object = serde_json::Map::new();
            for (k, v) in url::form_urlencoded::parse(body) {
                let value = if k == "headers" || k == "payload" {
                    serde_json::from_str(&v).unwrap_or(Value::String(v.into_owned()))
                } else {
                    Value::String(v.into_owned())
                };
                object.insert(k.into_owned(), value);
            }
            Ok(Value::Object(object))
        }
        _ => Err(LegacyError::UnsupportedMediaType(format!(
            "Unsupported media type \"{content_type}\" in request."
        ))),
    }
}

pub(super) async fn create(
    state: &AppState,
    caller: &ApiKey,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, LegacyError> {
    let input = parse_body(headers, body)?;
    let validated = rules::validate_create(&input);
    // DRF runs the uniqueness check with the other field checks and reports them together.
    let external_id = match &validated {
        Ok(ok) => ok.external_id.clone(),
        Err(_) => input
            .get("external_id")
            .and_then(Value::as_str)
            .map(|s| s.trim().to_owned()),
    };
    let taken = match &external_id {
        Some(ext) => external_id_taken(state, caller, ext).await?,
        None => false,
    };
    let create = match (validated, taken) {
        (Ok(create), false) => create,
        (Ok(_), true) => {
            let mut errors = FieldErrors::new();
            rules::add_external_id_taken(&mut errors);
            return Err(LegacyError::Validation(errors));
        }
        (Err(mut errors), taken) => {
            if taken && !errors.iter().any(|(f, _)| f == "external_id") {
                rules::add_external_id_taken(&mut errors);
            }
            return Err(LegacyError::Validation(errors));
        }
    };
    let callback = accept(state, caller, create).await?;
    let row = RowView::of(&callback).expect("legacy API callbacks have a legacy id");
    let due = Due {
        id: callback.id,
        tenant: callback.tenant.clone(),
        at: callback.next_attempt_at.unwrap_or(callback.created_at),
    };
    let result = state
        .callbacks
        .ingest(IngestBatch {
            tenant: callback.tenant.clone(),
            callbacks: vec![callback],
            idempotency: None,
        })
        .await;
    match result {
        Ok(IngestResult::Accepted) => {}
        Ok(other) => {
            return Err(LegacyError::Internal(format!(
                "unexpected ingest result {other:?}"
            )))
        }
        // The unique index caught a concurrent insert of the same external_id.
        Err(StoreError::Conflict(_)) => {
            let mut errors = FieldErrors::new();
            rules::add_external_id_taken(&mut errors);
            return Err(LegacyError::Validation(errors));
        }
        Err(e) => return Err(e.into()),
    }
    metrics::counter!(fluxcb_core::metric_names::ACCEPTED).increment(1);
    state.notify_queue(&[due]).await;
    let mut response = json(StatusCode::CREATED, &row);
    // DRF's CreateModelMixin sends the `url` field as Location (the callback's own URL).
    if let Ok(v) = HeaderValue::from_str(&row.url) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

pub(super) async fn external_id_taken(
    state: &AppState,
    caller: &ApiKey,
    external_id: &str,
) -> Result<bool, LegacyError> {
    if state
        .callbacks
        .external_id_exists(&caller.tenant, external_id)
        .await?
    {
        return Ok(true);
    }
    match &state.legacy_table {
        Some(table) => Ok(table.external_id_exists(external_id).await?),
        None => Ok(false),
    }
}

/// Builds the stored callback: an integer id from the legacy sequence (or ours), the legacy
/// wire format when the legacy secret is configured.
pub(super) async fn accept(
    state: &AppState,
    caller: &ApiKey,
    create: LegacyCreate,
) -> Result<Callback, LegacyError> {
    // Stores keep milliseconds; the answer must show what a later read will.
    let now = chrono::SubsecRound::trunc_subsecs(state.clock.now(), 3);
    let mut spec = create.spec();
    let destination = fluxcb_core::callback::Destination::of(&spec.url);
    if let Some((_, format)) = state
        .legacy_receiver_formats
        .iter()
        .find(|(d, _)| *d == destination)
    {
        spec.wire_format = *format;
    }
    if state.legacy_secret.is_none() {
        // Without the legacy secret there is nothing to sign the legacy way with; receivers
        // get Standard Webhooks headers (the runbook has the secret set before cutover).
        spec.wire_format = WireFormat::StandardWebhooks;
    }
    let legacy_id = match &state.legacy_table {
        Some(table) => table
            .next_ids(1)
            .await?
            .first()
            .copied()
            .ok_or_else(|| LegacyError::Internal("the legacy sequence gave no id".into()))?,
        None => state.callbacks.allocate_legacy_ids(1).await?,
    };
    let mut callback = Callback::accept(
        CallbackId::generate(),
        caller.tenant.clone(),
        spec,
        &state.defaults,
        caller.name.clone(),
        now,
    );
    callback.legacy_id = Some(legacy_id);
    callback.external_id = create.external_id;
    if callback.spec.url.as_str() != create.url_as_given {
        callback.url_as_given = Some(create.url_as_given);
    }
    Ok(callback)
}

/// DRF's format suffixes (`/api/callbacks/7.json/`): `json` is the one renderer the service
/// had; any other suffix is a 404 from content negotiation.
pub(super) fn without_format_suffix(id: &str) -> Result<&str, LegacyError> {
    match id.split_once('.') {
        None => Ok(id),
        Some((id, "json")) if !id.is_empty() => Ok(id),
        Some(_) => Err(LegacyError::BadLookup),
    }
}

/// The `id` path segment as Django's integer lookup reads it; `None` when no row can match.
pub(super) fn legacy_id(raw: &str) -> Option<i64> {
    raw.trim()
        .strip_prefix('+')
        .unwrap_or(raw.trim())
        .parse()
        .ok()
}

pub(super) async fn find(
    state: &AppState,
    scope: &Scope,
    raw_id: &str,
) -> Result<Callback, LegacyError> {
    let id = legacy_id(raw_id).ok_or(LegacyError::BadLookup)?;
    state
        .callbacks
        .get_by_legacy_id(scope, id)
        .await?
        .map(|d| d.callback)
        .ok_or(LegacyError::NotFound)
}

pub(super) fn row_response(status: StatusCode, cb: &Callback) -> Result<Response, LegacyError> {
    RowView::of(cb)
        .map(|row| json(status, &row))
        .ok_or(LegacyError::NotFound)
}

pub(super) async fn show(
    state: &AppState,
    caller: &ApiKey,
    id: &str,
) -> Result<Response, LegacyError> {
    let cb = find(state, &caller.scope(), without_format_suffix(id)?).await?;
    row_response(StatusCode::OK, &cb)
}

pub(super) async fn cancel(
    state: &AppState,
    caller: &ApiKey,
    id: &str,
) -> Result<Response, LegacyError> {
    let scope = caller.scope();
    let cb = find(state, &scope, without_format_suffix(id)?).await?;
    match state.callbacks.cancel(&scope, &cb.id, &caller.name).await? {
        ActionResult::Done(cb) => row_response(StatusCode::OK, &cb),
        ActionResult::NotFound => Err(LegacyError::NotFound),
        ActionResult::WrongState(status) => Err(LegacyError::Conflict(format!(
            "Only pending callbacks can be cancelled; this one is {}.",
            rules::legacy_status(status)
        ))),
        ActionResult::OwnedByLegacy => Err(LegacyError::Conflict(
            "This callback is handled by the legacy service.".into(),
        )),
    }
}

/// `flux-callback-service`'s send-now: one attempt right away, answered with the row after it.
pub(super) async fn send_now(
    state: &AppState,
    caller: &ApiKey,
    id: &str,
) -> Result<Response, LegacyError> {
    let Some(sender) = state.send_now.clone() else {
        return Err(LegacyError::Unsupported(
            "sending now is not available in this deployment".into(),
        ));
    };
    let scope = caller.scope();
    let current = find(state, &scope, id).await?;
    let now = state.clock.now();
    let lease = chrono::Duration::milliseconds(i64::from(current.timeout_ms))
        + chrono::Duration::seconds(30);
    let claimed = match state
        .callbacks
        .claim_now(&scope, &current.id, &caller.name, now, now + lease)
        .await?
    {
        ActionResult::Done(cb) => *cb,
        ActionResult::NotFound => return Err(LegacyError::NotFound),
        ActionResult::OwnedByLegacy => {
            return Err(LegacyError::Conflict(
                "This callback is handled by the legacy service.".into(),
            ))
        }
        ActionResult::WrongState(status) => {
            return Err(LegacyError::Conflict(format!(
                "Callback is {}; only pending or failed callbacks can be sent.",
                rules::legacy_status(status)
            )))
        }
    };
    let attempt = tokio::spawn(async move { sender.send_claimed(&claimed).await });
    match tokio::time::timeout(SEND_WAIT, attempt).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(join)) => return Err(LegacyError::Internal(format!("send task failed: {join}"))),
        Err(_) => {
            tracing::warn!(callback_id = %current.id, "send-now attempt still running; answering with the row as it is")
        }
    }
    let after = state
        .callbacks
        .get(&scope, &current.id)
        .await?
        .ok_or(LegacyError::NotFound)?;
    row_response(StatusCode::OK, &after.callback)
}
