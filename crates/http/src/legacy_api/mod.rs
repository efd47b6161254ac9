//! The legacy caller API, `/api/callbacks/`, served next to `/v1` so that callers of
//! `flux-callme-service` and `flux-callback-service` can point at fluxcb without changing a line:
//! DRF token auth, DRF request rules and error shapes, integer ids, page-number pagination,
//! and the `cancel` and `send` actions. The field rules and the row view live in
//! [`fluxcb_core::legacy::api`]; this module is the HTTP side.
//!
//! Rows created here take their integer ids from the legacy table's sequence while the legacy
//! database is configured ([`fluxcb_core::ports::LegacyTable`]), else from the store's own, and
//! an `external_id` must be unused on both sides.
mod control;
mod error;
mod local;
mod merged;
mod page;
mod remote;
mod upstream;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use fluxcb_core::auth::ApiKey;
use fluxcb_core::callback::Owner;
use fluxcb_core::legacy::api::{self as rules, FieldErrors};
use fluxcb_core::legacy::row::legacy_tenant;
use fluxcb_core::migration::MigrationMode;
use fluxcb_core::tenant::Scope;
use serde::Serialize;
use serde_json::Value;

pub use control::{MigrationControl, REFRESH as MIGRATION_REFRESH};
pub use error::LegacyError;
#[cfg(fuzzing)]
pub(crate) use local::parse_body;
pub use upstream::{Forward, Forwarded, LegacyUpstream, Service, UpstreamError};

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::AppState;
use remote::Record;

/// Django's `DATA_UPLOAD_MAX_MEMORY_SIZE`, the largest body the legacy service read.
pub const BODY_LIMIT: usize = 2_621_440;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/", any(api_root))
        .route("/api/callbacks/", any(collection))
        .route("/api/callbacks/{id}/", any(item))
        .route("/api/callbacks/{id}/cancel/", any(cancel))
        .route("/api/callbacks/{id}/send/", any(send))
        .route("/api", any(append_slash))
        .route("/api/callbacks", any(append_slash))
        .route("/api/callbacks/{id}", any(append_slash))
        .route("/api/callbacks/{id}/cancel", any(append_slash))
        .route("/api/callbacks/{id}/send", any(append_slash))
        .route("/api/{*rest}", any(no_route))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
}

pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("legacy responses serialise");
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// DRF `TokenAuthentication`: `Authorization: Token <key>`, with its messages for each way the
/// header can be wrong. Keys are fluxcb API keys; tokens imported from legacy are keys of the
/// `legacy` tenant.
async fn authenticate_token(state: &AppState, headers: &HeaderMap) -> Result<ApiKey, LegacyError> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let parts: Vec<&[u8]> = raw
        .split(|b| b.is_ascii_whitespace())
        .filter(|p| !p.is_empty())
        .collect();
    if parts
        .first()
        .is_none_or(|k| !k.eq_ignore_ascii_case(b"token"))
    {
        return Err(LegacyError::Unauthenticated(
            "Authentication credentials were not provided.",
        ));
    }
    let token = match parts.as_slice() {
        [_] => {
            return Err(LegacyError::Unauthenticated(
                "Invalid token header. No credentials provided.",
            ))
        }
        [_, token] => std::str::from_utf8(token).map_err(|_| {
            LegacyError::Unauthenticated(
                "Invalid token header. Token string should not contain invalid characters.",
            )
        })?,
        _ => {
            return Err(LegacyError::Unauthenticated(
                "Invalid token header. Token string should not contain spaces.",
            ))
        }
    };
    authenticate(state, token).await.map_err(|e| match e {
        ApiError::Unauthorized => LegacyError::Unauthenticated("Invalid token."),
        ApiError::Overloaded { retry_after, .. } => LegacyError::Unavailable {
            detail: "Service temporarily unavailable, try again later.".into(),
            retry_after,
        },
        ApiError::RateLimited { retry_after } => LegacyError::Throttled { retry_after },
        other => LegacyError::Internal(other.to_string()),
    })
}

fn not_allowed(method: &Method) -> LegacyError {
    LegacyError::MethodNotAllowed(method.as_str().to_owned())
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

async fn api_root(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, LegacyError> {
    authenticate_token(&state, &headers).await?;
    if !is_read(&method) {
        return Err(not_allowed(&method));
    }
    let callbacks = page::link(&headers, &uri, None).replace("/api/", "/api/callbacks/");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "callbacks": callbacks }),
    ))
}

/// Django's `APPEND_SLASH`: a path without its trailing slash is redirected to the one with it.
async fn append_slash(uri: Uri) -> Response {
    let target = match uri.query() {
        Some(q) => format!("{}/?{q}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&target) {
        headers.insert(header::LOCATION, v);
    }
    r
}

async fn no_route() -> LegacyError {
    LegacyError::NoRoute
}

/// What decides which side takes a new callback in split mode: the caller's `external_id`, so
/// that a retried insert lands on the same side; else the request itself.
fn routing_key(body: &[u8]) -> Vec<u8> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("external_id")?.as_str().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .map_or_else(|| body.to_vec(), String::into_bytes)
}

async fn collection(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, LegacyError> {
    let switch = state.migration.current(state.callbacks.as_ref()).await;
    let record = if method == Method::POST {
        Record::Created
    } else {
        Record::Nothing
    };
    match switch.mode {
        MigrationMode::Shadow => {
            return remote::forward(
                &state,
                Service::Insert,
                method,
                &uri,
                &headers,
                body,
                record,
            )
            .await
        }
        MigrationMode::Split
            if method == Method::POST && !switch.fluxcb_owns(&routing_key(&body)) =>
        {
            // An external_id stays unique across both sides: one fluxcb took before the
            // percentage changed is refused here, as legacy would refuse its own.
            let input = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            if let Some(ext) = input.get("external_id").and_then(Value::as_str) {
                if state
                    .callbacks
                    .external_id_exists(&legacy_tenant(), ext.trim())
                    .await?
                {
                    let mut errors = FieldErrors::new();
                    rules::add_external_id_taken(&mut errors);
                    return Err(LegacyError::Validation(errors));
                }
            }
            return remote::forward(
                &state,
                Service::Insert,
                method,
                &uri,
                &headers,
                body,
                record,
            )
            .await;
        }
        _ => {}
    }
    let caller = authenticate_token(&state, &headers).await?;
    if is_read(&method) {
        if switch.mode == MigrationMode::Split {
            merged::list(&state, &caller, &headers, &uri).await
        } else {
            local::list(&state, &caller, &headers, &uri).await
        }
    } else if method == Method::POST {
        local::create(&state, &caller, &headers, &body).await
    } else {
        Err(not_allowed(&method))
    }
}

/// In shadow mode legacy answers for every id; in split mode, for the ids fluxcb does not own.
async fn legacy_owns(state: &AppState, raw_id: &str) -> Result<bool, LegacyError> {
    let switch = state.migration.current(state.callbacks.as_ref()).await;
    match switch.mode {
        MigrationMode::Off => Ok(false),
        MigrationMode::Shadow => Ok(true),
        MigrationMode::Split => {
            let id = raw_id
                .split('.')
                .next()
                .and_then(|i| i.trim().parse::<i64>().ok());
            let Some(id) = id else { return Ok(false) };
            let here = state.callbacks.get_by_legacy_id(&Scope::All, id).await?;
            Ok(here.is_none_or(|d| d.callback.owner == Owner::Legacy))
        }
    }
}

async fn item(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, LegacyError> {
    if legacy_owns(&state, &id).await? {
        return remote::forward(
            &state,
            Service::Insert,
            method,
            &uri,
            &headers,
            Bytes::new(),
            Record::Nothing,
        )
        .await;
    }
    let caller = authenticate_token(&state, &headers).await?;
    if !is_read(&method) {
        return Err(not_allowed(&method));
    }
    local::show(&state, &caller, &id).await
}

async fn cancel(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, LegacyError> {
    act(&state, Action::Cancel, method, &headers, &uri, &id, body).await
}

async fn send(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, LegacyError> {
    // Django's `<int:pk>` converter: digits only, or no route.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LegacyError::NoRoute);
    }
    act(&state, Action::Send, method, &headers, &uri, &id, body).await
}

/// The two actions on one callback: `cancel` (the insert service's) and `send` (the sending
/// service's).
#[derive(Clone, Copy)]
enum Action {
    Cancel,
    Send,
}

/// An action goes to the side that owns the callback; legacy's answer refreshes the mirror.
async fn act(
    state: &AppState,
    action: Action,
    method: Method,
    headers: &HeaderMap,
    uri: &Uri,
    id: &str,
    body: Bytes,
) -> Result<Response, LegacyError> {
    if legacy_owns(state, id).await? {
        let service = match action {
            Action::Cancel => Service::Insert,
            Action::Send => Service::Send,
        };
        return remote::forward(state, service, method, uri, headers, body, Record::Changed).await;
    }
    let caller = authenticate_token(state, headers).await?;
    if method != Method::POST {
        return Err(not_allowed(&method));
    }
    match action {
        Action::Cancel => local::cancel(state, &caller, id).await,
        Action::Send => local::send_now(state, &caller, id).await,
    }
}
