//! Bearer API keys, and the console's session cookie standing for one. Lookups are cached for
//! a few seconds, so a key revoked from another process (`fluxcb keys revoke`) stops working
//! within [`KEY_CACHE_TTL`], and so do the console sessions opened with it.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use fluxcb_core::auth::{hash_key, ApiKey, Role};
use fluxcb_core::tenant::Scope;

use crate::console::sessions;
use crate::error::ApiError;
use crate::AppState;

pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
const KEY_CACHE_MAX: usize = 10_000;

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller(pub ApiKey);

impl Caller {
    pub fn scope(&self) -> Scope {
        self.0.scope()
    }

    pub fn actor(&self) -> &str {
        &self.0.name
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.0.role {
            Role::Admin => Ok(()),
            Role::Tenant => Err(ApiError::Forbidden),
        }
    }
}

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Instant, Option<ApiKey>)>>,
}

impl KeyCache {
    fn get(&self, hash: &str) -> Option<Option<ApiKey>> {
        let entries = self.entries.lock().expect("key cache poisoned");
        entries
            .get(hash)
            .filter(|(at, _)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(_, k)| k.clone())
    }

    fn put(&self, hash: String, key: Option<ApiKey>) {
        let mut entries = self.entries.lock().expect("key cache poisoned");
        if entries.len() >= KEY_CACHE_MAX {
            entries.retain(|_, (at, _)| at.elapsed() < KEY_CACHE_TTL);
            if entries.len() >= KEY_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (Instant::now(), key));
    }
}

pub async fn authenticate(state: &AppState, token: &str) -> Result<ApiKey, ApiError> {
    authenticate_hash(state, &hash_key(token)).await
}

/// The live key with this hash (a console session keeps the hash of the key it was opened with).
pub async fn authenticate_hash(state: &AppState, hash: &str) -> Result<ApiKey, ApiError> {
    let key = match state.key_cache.get(hash) {
        Some(cached) => cached.ok_or(ApiError::Unauthorized)?,
        None => {
            let found = state.keys.find_key(hash).await?;
            state.key_cache.put(hash.to_owned(), found.clone());
            found.ok_or(ApiError::Unauthorized)?
        }
    };
    state
        .rate_limit
        .check(&key.id, Instant::now())
        .map_err(|wait| ApiError::RateLimited {
            retry_after: u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX),
        })?;
    Ok(key)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// A Bearer key when the request has an `Authorization` header (exactly as before the
    /// console existed); otherwise the console's session cookie, which for any method but GET,
    /// HEAD and OPTIONS must come with the session's token in `X-CSRF-Token`. The cookie is
    /// `SameSite=Strict` as well: two independent defences against cross-site requests.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(header) = parts.headers.get(AUTHORIZATION) {
            let token = header
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(ApiError::Unauthorized)?;
            return authenticate(state, token).await.map(Caller);
        }
        let id = sessions::cookie_value(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let session = state
            .console
            .sessions
            .get(id, state.clock.now())
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if !parts.method.is_safe() {
            let token = parts
                .headers
                .get(sessions::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !sessions::same_token(token, &session.csrf_token) {
                return Err(ApiError::CsrfRejected);
            }
        }
        match authenticate_hash(state, &session.key_hash).await {
            Err(ApiError::Unauthorized) => {
                state.console.sessions.remove(id).await?;
                Err(ApiError::Unauthorized)
            }
            other => other.map(Caller),
        }
    }
}
