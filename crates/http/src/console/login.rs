//! `GET`/`POST /console/login` and `POST /console/logout`.
//!
//! The login form posts the key (`application/x-www-form-urlencoded`, so it works without
//! JavaScript); a good key gets a session cookie and a redirect to the console, a wrong one the
//! form again with a message, and an address with too many recent failures a `429` with
//! `Retry-After`. Nothing from the request is ever written into the page: the messages are
//! fixed strings.
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fluxcb_core::auth::hash_key;

use super::sessions::{self, CSRF_HEADER};
use super::{assets, html, limiter, redirect, session_of};
use crate::auth::authenticate;
use crate::error::ApiError;
use crate::AppState;

const MESSAGE_SLOT: &str = "<!--message-->";

pub const WRONG_KEY: &str =
    "That API key was not accepted: it is wrong, or it has been revoked. Check it and try again.";
pub const NO_KEY: &str = "Enter an API key.";
pub const TOO_MANY: &str =
    "Too many failed attempts from your address. Wait a minute, then try again.";
pub const CROSS_SITE: &str = "This login came from another site and was refused.";
pub const UNAVAILABLE: &str = "The service cannot check keys right now. Try again shortly.";
pub const LOGGED_OUT: &str = "You have logged out.";

fn login_page(status: StatusCode, message: Option<&'static str>) -> Response {
    let slot = message.map_or_else(String::new, |m| {
        format!("<p class=\"message error\" id=\"login-message\" role=\"alert\">{m}</p>")
    });
    html(status, assets::LOGIN_HTML.replace(MESSAGE_SLOT, &slot))
}

pub async fn page(State(state): State<AppState>, request: Request) -> Response {
    // A store that cannot answer shows the form: logging in again says what is wrong.
    if let Ok(Some(_)) = session_of(&state, request.headers()).await {
        return redirect("/console/");
    }
    if request.uri().query() == Some("logged-out=1") {
        // Not an error: a status message.
        let body = assets::LOGIN_HTML.replace(
            MESSAGE_SLOT,
            &format!("<p class=\"message\" id=\"login-message\" role=\"status\">{LOGGED_OUT}</p>"),
        );
        return html(StatusCode::OK, body);
    }
    login_page(StatusCode::OK, None)
}

/// A login posted from another site (a form on a hostile page) is refused: otherwise that page
/// could log a browser into the attacker's own key. Browsers say where a request comes from in
/// `Sec-Fetch-Site`; older ones in `Origin` (which is `null` under this page's `no-referrer`
/// policy, so `null` alone decides nothing). Clients that send neither are not browsers.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if origin == "null" {
        return false;
    }
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host)
}

pub async fn login(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if cross_site(&parts.headers) {
        return login_page(StatusCode::FORBIDDEN, Some(CROSS_SITE));
    }
    let addr = limiter::client_address(&parts);
    let now = Instant::now();
    if let Err(wait) = state.console.limiter.check(&addr, now) {
        tracing::warn!(client = %addr, "console logins refused: too many failures");
        let mut r = login_page(StatusCode::TOO_MANY_REQUESTS, Some(TOO_MANY));
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(wait.as_secs()));
        return r;
    }
    let raw = match axum::body::to_bytes(Body::new(body), 8 * 1024).await {
        Ok(b) => b,
        Err(_) => return login_page(StatusCode::BAD_REQUEST, Some(NO_KEY)),
    };
    let key = url::form_urlencoded::parse(&raw)
        .find(|(name, _)| name == "key")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    if key.is_empty() {
        return login_page(StatusCode::BAD_REQUEST, Some(NO_KEY));
    }
    match authenticate(&state, &key).await {
        Ok(api_key) => {
            state.console.limiter.succeeded(&addr);
            let id = match state
                .console
                .sessions
                .create(hash_key(&key), state.clock.now())
                .await
            {
                Ok((id, _)) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "console login could not store the session");
                    return login_page(StatusCode::SERVICE_UNAVAILABLE, Some(UNAVAILABLE));
                }
            };
            tracing::info!(key = %api_key.name, tenant = %api_key.tenant, "console login");
            let mut r = redirect("/console/");
            sessions::set_cookie(
                r.headers_mut(),
                &id,
                sessions::is_https(&parts.headers, &parts.uri),
            );
            r
        }
        Err(ApiError::Unauthorized) => {
            state.console.limiter.failed(&addr, now);
            tracing::info!(client = %addr, "console login with a wrong key");
            login_page(StatusCode::UNAUTHORIZED, Some(WRONG_KEY))
        }
        Err(e) => {
            tracing::warn!(error = %e, "console login could not check the key");
            login_page(StatusCode::SERVICE_UNAVAILABLE, Some(UNAVAILABLE))
        }
    }
}

/// Ends the session (the cookie's CSRF token required, as for every state change) and clears
/// the cookie.
pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers();
    let secure = sessions::is_https(headers, request.uri());
    if let Some(id) = sessions::cookie_value(headers) {
        let session = match state.console.sessions.get(id, state.clock.now()).await {
            Ok(s) => s,
            Err(e) => return ApiError::from(e).into_response(),
        };
        if let Some(session) = session {
            let token = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !sessions::same_token(token, &session.csrf_token) {
                return ApiError::CsrfRejected.into_response();
            }
            if let Err(e) = state.console.sessions.remove(id).await {
                return ApiError::from(e).into_response();
            }
        }
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    sessions::clear_cookie(r.headers_mut(), secure);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_match_the_host() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            !cross_site(&h),
            "no Origin: a plain form post or a non-browser client"
        );
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(!cross_site(&h));
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(cross_site(&h));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(!cross_site(&h), "null: this page's own no-referrer posts");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!cross_site(&h));
    }

    #[test]
    fn messages_are_fixed_text() {
        let page = login_page(StatusCode::UNAUTHORIZED, Some(WRONG_KEY));
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
        for m in [
            WRONG_KEY,
            NO_KEY,
            TOO_MANY,
            CROSS_SITE,
            UNAVAILABLE,
            LOGGED_OUT,
        ] {
            assert!(!m.contains('<') && !m.contains('&'));
        }
        assert!(assets::LOGIN_HTML.contains(MESSAGE_SLOT));
    }
}
