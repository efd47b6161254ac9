//! Console sessions: a login exchanges an API key for a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie (and `Secure` over https), mapped in a [`SessionStore`] to the key's
//! hash and a CSRF token, for [`SESSION_TTL`].
//!
//! Why server-side ids rather than signed tokens: a signed token needs a secret shared by every
//! process that checks it, and fluxcb has none to give (the webhook signing secrets are known to
//! receivers, so they must not sign anything else). A random id needs no secret, logout really
//! ends the session, and since every request re-checks the key behind the session (through the
//! key cache), revoking the key ends its sessions within [`crate::auth::KEY_CACHE_TTL`].
//!
//! Where they live is the composition root's choice: [`MemorySessions`] for `fluxcb serve` on
//! the embedded store (one process per data directory, so that is exact; a restart logs everyone
//! out), the callback table on AWS (`fluxcb_aws`'s `DynamoStore`), so that a session opened
//! through one Lambda instance works on every other. Stores only ever see the SHA-256 of an id.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use chrono::{DateTime, Utc};
pub use fluxcb_core::ports::ConsoleSession as Session;
use fluxcb_core::ports::{SessionStore, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a session lasts from login, whatever it does meanwhile.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
pub const COOKIE_NAME: &str = "fluxcb_session";
/// The header a cookie-authenticated POST, PUT, PATCH or DELETE must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions held at most in memory; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;

/// The console's sessions: makes ids and tokens, and keeps them in a [`SessionStore`] under
/// the ids' hashes.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(Arc::new(MemorySessions::default()))
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a store keeps a session under: the SHA-256 of its id, in hex.
pub fn id_hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equal-length comparison that does not stop at the first difference.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self { store }
    }

    /// Starts a session for the key with this hash; returns the session id for the cookie.
    pub async fn create(
        &self,
        key_hash: String,
        now: DateTime<Utc>,
    ) -> Result<(String, Session), StoreError> {
        let id = random_token();
        let session = Session {
            key_hash,
            csrf_token: random_token(),
            expires_at: now + chrono::Duration::from_std(SESSION_TTL).unwrap_or_default(),
        };
        self.store.put_session(&id_hash(&id), &session).await?;
        Ok((id, session))
    }

    /// The live session with this id.
    pub async fn get(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Session>, StoreError> {
        self.store.session(&id_hash(id), now).await
    }

    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_session(&id_hash(id)).await
    }
}

/// Sessions in this process's memory, bounded by [`MAX_SESSIONS`].
#[derive(Default)]
pub struct MemorySessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl MemorySessions {
    pub fn len(&self) -> usize {
        self.by_hash.lock().expect("sessions poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn put_session(&self, id_hash: &str, session: &Session) -> Result<(), StoreError> {
        let mut map = self.by_hash.lock().expect("sessions poisoned");
        if map.len() >= MAX_SESSIONS {
            let now = Utc::now();
            map.retain(|_, s| s.expires_at > now);
            while map.len() >= MAX_SESSIONS {
                let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.expires_at)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        map.insert(id_hash.to_owned(), session.clone());
        Ok(())
    }

    /// An expired session is forgotten when asked for.
    async fn session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Session>, StoreError> {
        let mut map = self.by_hash.lock().expect("sessions poisoned");
        match map.get(id_hash) {
            Some(s) if s.expires_at > now => Ok(Some(s.clone())),
            Some(_) => {
                map.remove(id_hash);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.by_hash
            .lock()
            .expect("sessions poisoned")
            .remove(id_hash);
        Ok(())
    }
}

/// The session id from the request's cookies, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached us over https (directly, or through a proxy or API Gateway that
/// says so): the cookie is then `Secure`.
pub fn is_https(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').next().unwrap_or("").trim() == "https")
}

pub fn set_cookie(headers: &mut HeaderMap, id: &str, secure: bool) {
    let value = format!(
        "{COOKIE_NAME}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.append(SET_COOKIE, v);
    }
}

pub fn clear_cookie(headers: &mut HeaderMap, secure: bool) {
    let value = format!(
        "{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.append(SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> (Arc<MemorySessions>, Sessions) {
        let store = Arc::new(MemorySessions::default());
        (store.clone(), Sessions::new(store))
    }

    #[tokio::test]
    async fn a_session_lives_twelve_hours_and_logout_ends_it() {
        let (store, sessions) = memory();
        let t0 = Utc::now();
        let ttl = chrono::Duration::from_std(SESSION_TTL).unwrap();
        let (id, s) = sessions.create("hash".into(), t0).await.unwrap();
        assert_eq!(id.len(), 43, "256 random bits, base64url");
        assert_ne!(id, s.csrf_token);
        assert_eq!(
            sessions.get(&id, t0).await.unwrap().unwrap().key_hash,
            "hash"
        );
        let just_before = t0 + ttl - chrono::Duration::seconds(1);
        assert!(sessions.get(&id, just_before).await.unwrap().is_some());
        assert!(sessions.get(&id, t0 + ttl).await.unwrap().is_none());
        assert!(store.is_empty(), "an expired session is forgotten");
        let (id, _) = sessions.create("hash".into(), t0).await.unwrap();
        sessions.remove(&id).await.unwrap();
        assert!(sessions.get(&id, t0).await.unwrap().is_none());
        assert!(sessions.get("made-up", t0).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn ids_are_stored_hashed_and_bounded() {
        let (store, sessions) = memory();
        let t0 = Utc::now();
        let (id, _) = sessions.create("h".into(), t0).await.unwrap();
        assert!(!store.by_hash.lock().unwrap().contains_key(&id));
        assert!(store.by_hash.lock().unwrap().contains_key(&id_hash(&id)));
        for i in 0..MAX_SESSIONS + 5 {
            let at = t0 + chrono::Duration::milliseconds(i as i64 + 1);
            sessions.create(format!("h{i}"), at).await.unwrap();
        }
        assert!(store.len() <= MAX_SESSIONS);
        assert!(
            sessions.get(&id, t0).await.unwrap().is_none(),
            "the oldest went first"
        );
    }

    #[test]
    fn cookie_parsing_and_attributes() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; fluxcb_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        h.insert(COOKIE, HeaderValue::from_static("fluxcb_sessionx=abc"));
        assert_eq!(cookie_value(&h), None);

        let mut out = HeaderMap::new();
        set_cookie(&mut out, "xyz", false);
        let v = out.get(SET_COOKIE).unwrap().to_str().unwrap();
        assert_eq!(
            v,
            "fluxcb_session=xyz; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict"
        );
        let mut out = HeaderMap::new();
        set_cookie(&mut out, "xyz", true);
        assert!(out
            .get(SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("; Secure"));

        let mut fwd = HeaderMap::new();
        fwd.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(is_https(&fwd, &"/console".parse().unwrap()));
        assert!(!is_https(&HeaderMap::new(), &"/console".parse().unwrap()));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("ab", "abc"));
    }
}
