//! Bearer API keys. Lookups are cached for a few seconds, so a key revoked from another
//! process (`fluxcb keys revoke`) stops working within [`KEY_CACHE_TTL`].
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use fluxcb_core::auth::{hash_key, ApiKey, Role};
use fluxcb_core::tenant::Scope;

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
    let hash = hash_key(token);
    if let Some(cached) = state.key_cache.get(&hash) {
        return cached.ok_or(ApiError::Unauthorized);
    }
    let found = state.keys.find_key(&hash).await?;
    state.key_cache.put(hash, found.clone());
    found.ok_or(ApiError::Unauthorized)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        authenticate(state, token).await.map(Caller)
    }
}
