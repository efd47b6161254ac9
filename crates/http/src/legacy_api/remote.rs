//! Calls that go to the legacy services (every call in shadow mode, the legacy-owned ones in
//! split mode): the answer is legacy's, passed through unchanged, and fluxcb records a mirror of
//! the callback it names — on creation with the request fluxcb would have sent, and when.
//! Recording happens after legacy answered; if it fails the caller still gets legacy's answer
//! (legacy is the system of record) and `fluxcb migrate compare` reports the missing mirror.
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, Method, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{SubsecRound, Utc};
use fluxcb_core::callback::{Callback, CallbackDefaults, Owner};
use fluxcb_core::engine::{build_request, SigningKeys};
use fluxcb_core::event::EventKind;
use fluxcb_core::legacy::row::{callback_from_row, LegacyRow};

use super::error::LegacyError;
use super::upstream::{Forward, Service, UpstreamError};
use crate::AppState;

/// Headers passed on to legacy: what its API reads. Not `Host` (the upstream's own) or
/// hop-by-hop headers.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::USER_AGENT,
];
/// Headers of legacy's answer the caller may rely on.
const FORWARDED_RESPONSE_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::LOCATION,
    header::WWW_AUTHENTICATE,
    header::ALLOW,
    header::RETRY_AFTER,
];

/// What fluxcb does with legacy's answer besides passing it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Nothing,
    /// A created row: mirror it, with the request fluxcb would have sent.
    Created,
    /// A row after an action (cancel, send): refresh its mirror.
    Changed,
}

pub async fn forward(
    state: &AppState,
    service: Service,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    record: Record,
) -> Result<Response, LegacyError> {
    let Some(upstream) = &state.legacy_upstream else {
        return Err(LegacyError::Unsupported(
            "the legacy service is not configured (FLUXCB_LEGACY_UPSTREAM)".into(),
        ));
    };
    let mut forwarded_headers = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in headers.get_all(name) {
            forwarded_headers.append(name.clone(), value.clone());
        }
    }
    let answer = upstream
        .forward(Forward {
            service,
            method,
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
            headers: forwarded_headers,
            body,
        })
        .await
        .map_err(|e| match e {
            UpstreamError::Unreachable(why) => {
                tracing::warn!(error = %why, "legacy service unreachable");
                LegacyError::Unavailable {
                    detail: "The legacy service is unavailable; try again later.".into(),
                    retry_after: 5,
                }
            }
            UpstreamError::BadAnswer(why) => LegacyError::BadGateway(why),
        })?;
    let recorded = match record {
        Record::Created if answer.status.as_u16() == 201 => true,
        Record::Changed if answer.status.as_u16() == 200 => true,
        _ => false,
    };
    if recorded {
        mirror(state, &answer.body, record == Record::Created).await;
    }
    let mut response = (answer.status, answer.body).into_response();
    for name in FORWARDED_RESPONSE_HEADERS {
        if let Some(v) = answer.headers.get(name) {
            response.headers_mut().insert(name.clone(), v.clone());
        }
    }
    Ok(response)
}

/// Records (or refreshes) the mirror of the row in legacy's answer.
async fn mirror(state: &AppState, body: &[u8], created: bool) {
    let row: LegacyRow = match serde_json::from_slice(body) {
        Ok(row) => row,
        Err(e) => {
            tracing::warn!(error = %e, "legacy answered with a row fluxcb cannot read; no mirror recorded");
            return;
        }
    };
    let now = Utc::now().trunc_subsecs(3);
    let defaults = CallbackDefaults {
        max_attempts: state.defaults.max_attempts,
        timeout_ms: state.defaults.timeout_ms,
    };
    let callback = match callback_from_row(&row, Owner::Legacy, &defaults, now) {
        Ok(cb) => cb,
        Err(why) => {
            tracing::warn!(legacy_id = row.id, reason = %why, "no mirror recorded for a legacy row");
            return;
        }
    };
    if let Err(e) = state.callbacks.import_legacy(vec![callback.clone()]).await {
        tracing::warn!(legacy_id = row.id, error = %e, "could not record the mirror of a legacy row");
        return;
    }
    if created {
        record_would_send(state, &callback, now).await;
    }
}

/// The request fluxcb would have sent for a new callback, and when: its schedule, or now.
async fn record_would_send(state: &AppState, callback: &Callback, now: chrono::DateTime<Utc>) {
    let at = callback.spec.deliver_at.map_or(now, |d| d.max(now));
    let standard = state
        .secrets
        .active_secrets(&callback.tenant, now)
        .await
        .unwrap_or_default();
    let request = build_request(
        callback,
        SigningKeys {
            standard: &standard,
            legacy: state.legacy_secret.as_deref(),
        },
        at.timestamp(),
    );
    let detail = serde_json::json!({
        "would_send_at": at,
        "method": request.method.as_str(),
        "url": request.url.as_str(),
        "headers": request.headers,
        "body": String::from_utf8_lossy(&request.body),
    });
    if let Err(e) = state
        .callbacks
        .record_event(&callback.id, EventKind::Shadowed, "shadow", detail)
        .await
    {
        tracing::warn!(callback_id = %callback.id, error = %e, "could not record the shadow request");
    }
}
