//! Tenants: every callback, key and signing secret belongs to exactly one.
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

pub const DEFAULT_TENANT: &str = "default";

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, InvalidTenant> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidTenant(s.chars().take(80).collect()))
        }
    }

    pub fn default_tenant() -> Self {
        Self(DEFAULT_TENANT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A tenant name no API key may be made for: `_system` owns the operational event stream,
    /// which only admin keys read.
    pub fn parse_for_key(s: &str) -> Result<Self, String> {
        if s == crate::notify::SYSTEM_TENANT {
            return Err(format!(
                "`{s}` is reserved for the operational event stream; admin keys read it"
            ));
        }
        Self::parse(s).map_err(|e| e.to_string())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a tenant name: use 1-64 characters from a-z, 0-9, '-' and '_'")]
pub struct InvalidTenant(pub String);

impl TryFrom<String> for TenantId {
    type Error = InvalidTenant;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> Self {
        t.0
    }
}

/// What a request may see: one tenant, or (admin keys) all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Tenant(TenantId),
}

impl Scope {
    pub fn permits(&self, tenant: &TenantId) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
        }
    }
}
