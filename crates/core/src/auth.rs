//! API keys. Keys are 32 random base62 characters (about 190 bits), so a plain SHA-256 of the
//! key is a safe thing to store: unlike passwords they cannot be guessed, and a fast hash keeps
//! the per-request lookup cheap.
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tenant::{Scope, TenantId};

pub const KEY_PREFIX: &str = "fcb_";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every tenant; key and secret management.
    Admin,
    /// One tenant's callbacks only.
    Tenant,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tenant => "tenant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "tenant" => Ok(Role::Tenant),
            other => Err(format!("unknown role `{other}` (admin or tenant)")),
        }
    }
}

/// A stored key: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub tenant: TenantId,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Admin => Scope::All,
            Role::Tenant => Scope::Tenant(self.tenant.clone()),
        }
    }
}

/// A freshly generated key, shown once.
pub struct PlainKey(String);

impl PlainKey {
    pub fn generate() -> Self {
        Self(format!(
            "{KEY_PREFIX}{}",
            Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
        ))
    }

    pub fn from_configured(key: String) -> Self {
        Self(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> String {
        hash_key(&self.0)
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainKey(***)")
    }
}

pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_hash_stably() {
        let a = PlainKey::generate();
        let b = PlainKey::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(KEY_PREFIX) && a.expose().len() == 36);
        assert_eq!(a.hash(), hash_key(a.expose()));
        assert_eq!(a.hash().len(), 64);
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
