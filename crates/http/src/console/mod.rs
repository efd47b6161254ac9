//! The operator console at `/console`: a login form that exchanges an API key for a session,
//! and a single page (hand-written HTML, CSS and JavaScript modules compiled into the binary)
//! that reads and acts through the `/v1` API with the session cookie.
//!
//! - [`sessions`]: the session cookie and the server-side sessions behind it, CSRF tokens.
//! - [`limiter`]: failed logins per client address.
//! - [`login`]: the login and logout handlers and the login page.
//! - [`assets`]: the embedded files.
//!
//! Every console response carries a strict Content-Security-Policy (scripts and styles from
//! this origin only, no inline code, no framing), `nosniff` and `no-referrer`; the page builds
//! its DOM with `textContent`, so callback data (URLs, headers, bodies, responses: all chosen
//! by callers and receivers) can never become markup.
pub mod assets;
pub mod limiter;
pub mod login;
pub mod sessions;

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fluxcb_core::auth::ApiKey;
use fluxcb_core::ports::SessionStore;
use serde::Serialize;

use crate::auth::authenticate_hash;
use crate::error::ApiError;
use crate::AppState;

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One destination as the delivery engine sees it right now (on AWS: its circuit breaker as
/// the workers last recorded it, beside the answering process's own engine where one runs).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DestinationLoad {
    /// The key its limits and breaker are kept under: `<tenant> <origin or prefix>` for a
    /// registration, `scheme://host:port` otherwise.
    pub destination: String,
    /// Requests on the wire from the answering process (0 on Lambda's API function, which
    /// sends none).
    pub in_flight: usize,
    pub consecutive_failures: u32,
    pub circuit_open: bool,
}

/// Where the destinations' live state is read: the delivery engine in this process, the
/// table the AWS workers record their circuit breakers in, or both (set by the composition
/// root).
#[async_trait::async_trait]
pub trait DestinationHealthSource: Send + Sync {
    /// The destinations with something to report.
    async fn loads(&self) -> Result<Vec<DestinationLoad>, fluxcb_core::ports::StoreError>;
}

pub type DestinationHealthFn = Arc<dyn DestinationHealthSource>;

/// What the console keeps per process (its sessions live where the composition root says).
#[derive(Default)]
pub struct ConsoleState {
    pub sessions: sessions::Sessions,
    pub limiter: limiter::LoginLimiter,
    pub destination_health: OnceLock<DestinationHealthFn>,
}

impl ConsoleState {
    /// Sessions kept in `store` (shared by every API instance on AWS) instead of this
    /// process's memory.
    pub fn with_sessions(store: Arc<dyn SessionStore>) -> Self {
        Self {
            sessions: sessions::Sessions::new(store),
            ..Self::default()
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(shell))
        .route("/console/", get(shell))
        .route("/console/login", get(login::page).post(login::login))
        .route("/console/logout", post(login::logout))
        .route("/console/session", get(session_info))
        .route("/console/assets/{name}", get(assets::serve))
        .layer(axum::middleware::map_response(security_headers))
}

/// The headers every console response carries.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The session named by the request's cookie and the live key behind it; `Ok(None)` without
/// one. An error when the session store cannot answer (a 503 where it is returned).
pub async fn session_of(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(String, sessions::Session, ApiKey)>, ApiError> {
    let Some(id) = sessions::cookie_value(headers) else {
        return Ok(None);
    };
    let Some(session) = state.console.sessions.get(id, state.clock.now()).await? else {
        return Ok(None);
    };
    match authenticate_hash(state, &session.key_hash).await {
        Ok(key) => Ok(Some((id.to_owned(), session, key))),
        Err(ApiError::Unauthorized) => {
            // The key was revoked: its sessions end with it.
            state.console.sessions.remove(id).await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub fn redirect(to: &'static str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    r
}

pub fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

async fn shell(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session_of(&state, &headers).await {
        Ok(Some(_)) => html(StatusCode::OK, assets::INDEX_HTML.to_owned()),
        Ok(None) => redirect("/console/login"),
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct SessionView {
    name: String,
    tenant: String,
    role: String,
    /// Send as `X-CSRF-Token` with every POST, PUT, PATCH and DELETE made with the cookie.
    csrf_token: String,
    expires_at: String,
    /// Whether this process knows its delivery engine's destinations (not on Lambda).
    destination_health: bool,
}

async fn session_info(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let (_, session, key) = session_of(&state, &headers)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(SessionView {
        name: key.name.clone(),
        tenant: key.tenant.to_string(),
        role: key.role.to_string(),
        csrf_token: session.csrf_token,
        expires_at: crate::dto::rfc3339(session.expires_at),
        destination_health: state.console.destination_health.get().is_some(),
    }))
}
