//! Console sessions: a login exchanges an API key for a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie (and `Secure` over https), mapped in this process to the key's hash
//! and a CSRF token, for [`SESSION_TTL`].
//!
//! Why server-side ids rather than signed tokens: a signed token needs a secret shared by every
//! process that checks it, and fluxcb has none to give (the webhook signing secrets are known to
//! receivers, so they must not sign anything else). A random id needs no secret, logout really
//! ends the session, and since every request re-checks the key behind the session (through the
//! key cache), revoking the key ends its sessions within [`crate::auth::KEY_CACHE_TTL`]. The
//! cost: sessions live in one process's memory. `fluxcb serve` is one process per data
//! directory, so that is exact there; a restart logs everyone out. Behind several Lambda
//! instances a session is known only to the instance that made it, so the console there needs
//! a shared session store first (the [`Sessions`] seam; not done yet, see the README).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a session lasts from login, whatever it does meanwhile.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
pub const COOKIE_NAME: &str = "fluxcb_session";
/// The header a cookie-authenticated POST, PUT, PATCH or DELETE must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions held at most; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct Session {
    /// SHA-256 of the API key that logged in: the key is looked up on every request.
    pub key_hash: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    expires: Instant,
}

/// The sessions of this process, keyed by the SHA-256 of their id (a memory dump shows no
/// usable cookie).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn id_hash(id: &str) -> String {
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
    /// Starts a session for the key with this hash; returns the session id for the cookie.
    pub fn create(&self, key_hash: String, now: Instant) -> (String, Session) {
        let id = random_token();
        let session = Session {
            key_hash,
            csrf_token: random_token(),
            expires_at: Utc::now() + chrono::Duration::from_std(SESSION_TTL).unwrap_or_default(),
            expires: now + SESSION_TTL,
        };
        let mut map = self.by_id.lock().expect("sessions poisoned");
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
            while map.len() >= MAX_SESSIONS {
                let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        map.insert(id_hash(&id), session.clone());
        (id, session)
    }

    /// The live session with this id; an expired one is forgotten.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let hash = id_hash(id);
        let mut map = self.by_id.lock().expect("sessions poisoned");
        match map.get(&hash) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(&hash);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.by_id
            .lock()
            .expect("sessions poisoned")
            .remove(&id_hash(id));
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().expect("sessions poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn a_session_lives_twelve_hours_and_logout_ends_it() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (id, s) = sessions.create("hash".into(), t0);
        assert_eq!(id.len(), 43, "256 random bits, base64url");
        assert_ne!(id, s.csrf_token);
        assert_eq!(sessions.get(&id, t0).unwrap().key_hash, "hash");
        assert!(sessions
            .get(&id, t0 + SESSION_TTL - Duration::from_secs(1))
            .is_some());
        assert!(sessions.get(&id, t0 + SESSION_TTL).is_none());
        assert!(sessions.is_empty(), "an expired session is forgotten");
        let (id, _) = sessions.create("hash".into(), t0);
        sessions.remove(&id);
        assert!(sessions.get(&id, t0).is_none());
        assert!(sessions.get("made-up", t0).is_none());
    }

    #[test]
    fn ids_are_stored_hashed_and_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (id, _) = sessions.create("h".into(), t0);
        assert!(!sessions.by_id.lock().unwrap().contains_key(&id));
        for i in 0..MAX_SESSIONS + 5 {
            sessions.create(format!("h{i}"), t0 + Duration::from_millis(i as u64 + 1));
        }
        assert!(sessions.len() <= MAX_SESSIONS);
        assert!(sessions.get(&id, t0).is_none(), "the oldest went first");
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
