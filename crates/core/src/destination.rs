//! Registered destinations: a tenant's receivers with settings of their own (signing secrets,
//! wire format, TLS, rate and concurrency limits, timeout, retry schedule, circuit breaker,
//! paused), and how a callback's effective settings are resolved from them.
//!
//! A registration matches callback URLs by origin (`scheme://host:port`), by URL prefix (whole
//! path segments), or every URL of the tenant (`any`: the tenant's defaults). Where several
//! match, the most specific wins: the longest matching prefix, then the origin, then `any`.
//!
//! Precedence of each setting, first set wins: the callback's own, the most specific
//! registration's, the tenant's (`any`), the installation's configuration. Signing secrets are
//! per registration: the most specific registration that matches signs with its own secrets, so
//! one receiver never holds a key that verifies messages meant for another.
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;
use url::Url;

use crate::callback::{Callback, Destination, FieldError, WireFormat};
use crate::retry::RetryPolicy;
use crate::signing::SigningSecret;
use crate::tenant::TenantId;

const ID_PREFIX: &str = "dst_";
/// Largest request rate a destination may be limited to; above it, a limit means nothing.
pub const MAX_RATE_PER_SECOND: f64 = 100_000.0;
/// Smallest: one request every 1,000 seconds.
pub const MIN_RATE_PER_SECOND: f64 = 0.001;
pub const MAX_IN_FLIGHT_LIMIT: u32 = 4_096;
pub const MAX_DESCRIPTION: usize = 256;
/// PEM text accepted for a CA bundle, a certificate chain or a key.
pub const MAX_PEM_BYTES: usize = 64 * 1024;
pub const MAX_SCHEDULE_STEPS: usize = 30;
pub const MAX_SCHEDULE_STEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Secrets a registration holds at most: during rotations the older ones still sign.
pub const MAX_ACTIVE_SECRETS: usize = 5;

/// `dst_<ULID>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DestinationId(Ulid);

impl DestinationId {
    pub fn generate() -> Self {
        Self(Ulid::new())
    }
}

impl fmt::Display for DestinationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ID_PREFIX}{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a destination id (expected dst_ followed by a 26-character ULID)")]
pub struct InvalidDestinationId(pub String);

impl FromStr for DestinationId {
    type Err = InvalidDestinationId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix(ID_PREFIX)
            .and_then(|u| Ulid::from_string(u).ok())
            .map(Self)
            .ok_or_else(|| InvalidDestinationId(s.to_owned()))
    }
}

impl TryFrom<String> for DestinationId {
    type Error = InvalidDestinationId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DestinationId> for String {
    fn from(id: DestinationId) -> String {
        id.to_string()
    }
}

/// Which callback URLs a registration covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationMatch {
    /// `scheme://host:port`, with the scheme's default port written out.
    Origin(String),
    /// An http(s) URL without query or fragment; covers URLs on the same origin whose path is
    /// this path or continues it by whole segments (`/hooks` covers `/hooks` and `/hooks/a`,
    /// not `/hooksx`).
    UrlPrefix(String),
    /// Every URL of the tenant: the tenant's defaults.
    Any,
}

/// How specific a match is; larger wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity(u8, usize);

impl DestinationMatch {
    /// Parses and normalises an origin: `https://Example.com` → `https://example.com:443`.
    pub fn origin(raw: &str) -> Result<Self, String> {
        let url = http_url(raw)?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(
                "an origin is scheme://host[:port], without a path, query or fragment \
                 (use url_prefix to match a path)"
                    .to_owned(),
            );
        }
        Ok(Self::Origin(Destination::of(&url).as_str().to_owned()))
    }

    /// Parses and normalises a URL prefix.
    pub fn url_prefix(raw: &str) -> Result<Self, String> {
        let url = http_url(raw)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a URL prefix has no query or fragment".to_owned());
        }
        let origin = Destination::of(&url);
        let path = url.path().trim_end_matches('/');
        Ok(Self::UrlPrefix(format!("{origin}{path}")))
    }

    /// Whether this covers `url`, and how specifically.
    pub fn matches(&self, url: &Url) -> Option<Specificity> {
        match self {
            Self::Any => Some(Specificity(0, 0)),
            Self::Origin(origin) => {
                (Destination::of(url).as_str() == origin).then_some(Specificity(1, 0))
            }
            Self::UrlPrefix(prefix) => {
                let origin = Destination::of(url);
                let rest = prefix.strip_prefix(origin.as_str())?;
                // `rest` is empty or a path without its trailing slash.
                let path = url.path();
                let covered = rest.is_empty()
                    || path == rest
                    || path
                        .strip_prefix(rest)
                        .is_some_and(|tail| tail.starts_with('/'));
                covered.then_some(Specificity(2, rest.len()))
            }
        }
    }

    /// Unique per tenant: two registrations with the same key would be ambiguous.
    pub fn key(&self) -> String {
        match self {
            Self::Origin(o) => format!("origin {o}"),
            Self::UrlPrefix(p) => format!("prefix {p}"),
            Self::Any => "any".to_owned(),
        }
    }
}

fn http_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".to_owned());
    }
    Ok(url)
}

/// Settings a registration may set; `None` falls through to the next layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DestinationSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_format: Option<WireFormat>,
    /// Requests per second, spread evenly: a request over the rate waits for its turn (the
    /// callback is deferred, no attempt is counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delays before attempt 2, 3, …, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_schedule_ms: Option<Vec<u64>>,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_failure_threshold: Option<u32>,
    /// How long the breaker stays open the first time (it doubles on each failed probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_open_ms: Option<u64>,
    /// Told when a callback here ends (see [`crate::notify`]); on the `any` registration, the
    /// tenant's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_on: Option<crate::notify::NotifyOn>,
}

impl DestinationSettings {
    /// Field errors, named as in the API (`settings.` prefix added by the caller if needed).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(r) = self.rate_limit_per_second {
            if !(r.is_finite() && (MIN_RATE_PER_SECOND..=MAX_RATE_PER_SECOND).contains(&r)) {
                errors.push(FieldError::new(
                    "rate_limit_per_second",
                    format!("must be between {MIN_RATE_PER_SECOND} and {MAX_RATE_PER_SECOND}"),
                ));
            }
        }
        if let Some(n) = self.max_in_flight {
            if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&n) {
                errors.push(FieldError::new(
                    "max_in_flight",
                    format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
                ));
            }
        }
        if let Some(ms) = self.timeout_ms {
            if !(100..=crate::callback::MAX_TIMEOUT_MS).contains(&ms) {
                errors.push(FieldError::new(
                    "timeout_ms",
                    format!(
                        "must be between 100 and {}",
                        crate::callback::MAX_TIMEOUT_MS
                    ),
                ));
            }
        }
        if let Some(n) = self.max_attempts {
            if !(1..=crate::callback::MAX_ATTEMPTS_LIMIT).contains(&n) {
                errors.push(FieldError::new(
                    "max_attempts",
                    format!(
                        "must be between 1 and {}",
                        crate::callback::MAX_ATTEMPTS_LIMIT
                    ),
                ));
            }
        }
        if let Some(steps) = &self.retry_schedule_ms {
            let longest = MAX_SCHEDULE_STEP.as_millis() as u64;
            if steps.is_empty() || steps.len() > MAX_SCHEDULE_STEPS {
                errors.push(FieldError::new(
                    "retry_schedule_ms",
                    format!("needs 1 to {MAX_SCHEDULE_STEPS} delays"),
                ));
            } else if steps.iter().any(|&ms| ms == 0 || ms > longest) {
                errors.push(FieldError::new(
                    "retry_schedule_ms",
                    format!("each delay must be between 1 and {longest} milliseconds (7 days)"),
                ));
            }
        }
        if let Some(n) = self.circuit_failure_threshold {
            if !(1..=1000).contains(&n) {
                errors.push(FieldError::new(
                    "circuit_failure_threshold",
                    "must be between 1 and 1000",
                ));
            }
        }
        if let Some(ms) = self.circuit_open_ms {
            if !(100..=3_600_000).contains(&ms) {
                errors.push(FieldError::new(
                    "circuit_open_ms",
                    "must be between 100 and 3600000 (one hour)",
                ));
            }
        }
        if let Some(Err(msg)) = self
            .notify_url
            .as_deref()
            .map(crate::callback::validate_url)
        {
            errors.push(FieldError::new("notify_url", msg));
        }
        errors
    }

    /// `self` where set, else `fallback`.
    pub fn or(&self, fallback: &DestinationSettings) -> DestinationSettings {
        DestinationSettings {
            wire_format: self.wire_format.or(fallback.wire_format),
            rate_limit_per_second: self
                .rate_limit_per_second
                .or(fallback.rate_limit_per_second),
            max_in_flight: self.max_in_flight.or(fallback.max_in_flight),
            timeout_ms: self.timeout_ms.or(fallback.timeout_ms),
            max_attempts: self.max_attempts.or(fallback.max_attempts),
            retry_schedule_ms: self
                .retry_schedule_ms
                .clone()
                .or_else(|| fallback.retry_schedule_ms.clone()),
            circuit_failure_threshold: self
                .circuit_failure_threshold
                .or(fallback.circuit_failure_threshold),
            circuit_open_ms: self.circuit_open_ms.or(fallback.circuit_open_ms),
            notify_url: self
                .notify_url
                .clone()
                .or_else(|| fallback.notify_url.clone()),
            notify_on: self.notify_on.or(fallback.notify_on),
        }
    }
}

/// TLS for a receiver behind a private CA or asking for a client certificate (mTLS).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationTls {
    /// PEM CA certificates trusted for this destination, beside the installation's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    /// PEM certificate chain presented to the receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_pem: Option<String>,
    /// PEM private key of the client certificate. Never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
}

impl fmt::Debug for DestinationTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DestinationTls")
            .field("ca_bundle", &self.ca_bundle_pem.is_some())
            .field("client_certificate", &self.client_certificate_pem.is_some())
            .field("client_key", &self.client_key_pem.is_some())
            .finish()
    }
}

impl DestinationTls {
    pub fn is_empty(&self) -> bool {
        self.ca_bundle_pem.is_none() && self.client_certificate_pem.is_none()
    }

    /// Shape checks only; whether the PEM parses is the sender's to say when it builds.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let pem = |field: &str, value: &Option<String>, label: &str, errors: &mut Vec<_>| {
            if let Some(v) = value {
                if v.len() > MAX_PEM_BYTES {
                    errors.push(FieldError::new(
                        field,
                        format!("at most {MAX_PEM_BYTES} bytes"),
                    ));
                } else if !v.contains("-----BEGIN ") || !v.contains(label) {
                    errors.push(FieldError::new(
                        field,
                        format!("must be PEM text with a {label} block"),
                    ));
                }
            }
        };
        pem(
            "tls.ca_bundle_pem",
            &self.ca_bundle_pem,
            "CERTIFICATE",
            &mut errors,
        );
        pem(
            "tls.client_certificate_pem",
            &self.client_certificate_pem,
            "CERTIFICATE",
            &mut errors,
        );
        pem(
            "tls.client_key_pem",
            &self.client_key_pem,
            "PRIVATE KEY",
            &mut errors,
        );
        if self.client_certificate_pem.is_some() != self.client_key_pem.is_some() {
            errors.push(FieldError::new(
                "tls",
                "a client certificate and its key go together",
            ));
        }
        errors
    }
}

/// One signing secret of a registration; it signs until `retire_at`, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `whsec_…`.
    pub secret: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<DateTime<Utc>>,
}

/// A registration as stored. Its secrets and client key are never shown by the API after
/// creation (the secret once more at each rotation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisteredDestination {
    pub id: DestinationId,
    pub tenant: TenantId,
    #[serde(rename = "match")]
    pub matcher: DestinationMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub settings: DestinationSettings,
    #[serde(default, skip_serializing_if = "DestinationTls::is_empty")]
    pub tls: DestinationTls,
    #[serde(default)]
    pub paused: bool,
    /// Newest first.
    pub secrets: Vec<StoredSecret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change; updates are conditioned on it.
    pub revision: u64,
}

impl RegisteredDestination {
    /// A new registration with one fresh secret.
    pub fn new(
        tenant: TenantId,
        matcher: DestinationMatch,
        now: DateTime<Utc>,
    ) -> (Self, SigningSecret) {
        let secret = SigningSecret::generate();
        let registration = Self {
            id: DestinationId::generate(),
            tenant,
            matcher,
            description: None,
            settings: DestinationSettings::default(),
            tls: DestinationTls::default(),
            paused: false,
            secrets: vec![StoredSecret {
                secret: secret.expose(),
                created_at: now,
                retire_at: None,
            }],
            created_at: now,
            updated_at: now,
            revision: 1,
        };
        (registration, secret)
    }

    /// The secrets that sign at `now`, newest first (unparseable ones skipped: they were
    /// written by us, so that would be a bug, and signing with the rest is still right).
    pub fn active_secrets(&self, now: DateTime<Utc>) -> Vec<SigningSecret> {
        self.secrets
            .iter()
            .filter(|s| s.retire_at.is_none_or(|at| at > now))
            .filter_map(|s| SigningSecret::parse(&s.secret).ok())
            .collect()
    }

    /// Adds a fresh secret; the active ones keep signing until `now + grace` (and retired ones
    /// are dropped). Returns the new secret, to be shown once.
    pub fn rotate_secret(&mut self, now: DateTime<Utc>, grace: chrono::Duration) -> SigningSecret {
        let fresh = SigningSecret::generate();
        let retire = now + grace;
        self.secrets
            .retain(|s| s.retire_at.is_none_or(|at| at > now));
        for s in &mut self.secrets {
            s.retire_at = Some(s.retire_at.map_or(retire, |at| at.min(retire)));
        }
        self.secrets.insert(
            0,
            StoredSecret {
                secret: fresh.expose(),
                created_at: now,
                retire_at: None,
            },
        );
        self.secrets.truncate(MAX_ACTIVE_SECRETS);
        fresh
    }

    /// The key a delivery engine keeps this registration's limits and breaker under; `None`
    /// for the tenant's defaults, which apply per origin.
    pub fn limits_key(&self) -> Option<String> {
        match &self.matcher {
            DestinationMatch::Origin(o) => Some(format!("{} {o}", self.tenant)),
            DestinationMatch::UrlPrefix(p) => Some(format!("{} {p}", self.tenant)),
            DestinationMatch::Any => None,
        }
    }

    pub fn touch(&mut self, now: DateTime<Utc>) {
        self.updated_at = now;
        self.revision += 1;
    }
}

/// The registrations of one tenant that apply to a URL: the most specific, and the tenant's
/// defaults (`any`) if that is not already it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Matched<'a> {
    pub specific: Option<&'a RegisteredDestination>,
    pub tenant_defaults: Option<&'a RegisteredDestination>,
}

impl<'a> Matched<'a> {
    pub fn find(registrations: &'a [RegisteredDestination], url: &Url) -> Self {
        let mut best: Option<(Specificity, &RegisteredDestination)> = None;
        let mut any = None;
        for r in registrations {
            if r.matcher == DestinationMatch::Any {
                any = Some(r);
                continue;
            }
            if let Some(s) = r.matcher.matches(url) {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, r));
                }
            }
        }
        Self {
            specific: best.map(|(_, r)| r),
            tenant_defaults: any,
        }
    }

    /// The registration that owns the secrets, limits and breaker: the most specific one.
    pub fn owner(&self) -> Option<&'a RegisteredDestination> {
        self.specific.or(self.tenant_defaults)
    }

    /// Registration settings merged: the most specific over the tenant's defaults.
    pub fn settings(&self) -> DestinationSettings {
        let specific = self
            .specific
            .map(|r| r.settings.clone())
            .unwrap_or_default();
        match self.tenant_defaults {
            Some(t) => specific.or(&t.settings),
            None => specific,
        }
    }

    pub fn paused(&self) -> bool {
        self.owner().is_some_and(|r| r.paused)
    }
}

/// The installation's defaults, the last layer.
#[derive(Clone, Debug)]
pub struct InstallationDefaults {
    pub max_attempts: u32,
    pub max_in_flight: usize,
    pub circuit_failure_threshold: u32,
    pub circuit_open: Duration,
}

/// What one attempt of a callback runs with, every layer applied.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveSettings {
    pub timeout: Duration,
    pub max_attempts: u32,
    /// `None`: the installation's retry policy.
    pub retry_schedule: Option<Vec<Duration>>,
    pub max_in_flight: usize,
    pub rate_limit_per_second: Option<f64>,
    pub circuit_failure_threshold: u32,
    pub circuit_open: Duration,
    /// Who hears about this callback's end.
    pub notify: Option<crate::notify::NotifyTarget>,
}

impl EffectiveSettings {
    /// Callback over registrations over installation. A callback stores the budget it was
    /// accepted with (`max_attempts`, which operator retries extend); when the callback did not
    /// set its own, a registration's `max_attempts` replaces the installation's share of it.
    pub fn resolve(
        callback: &Callback,
        registrations: &DestinationSettings,
        installation: &InstallationDefaults,
    ) -> Self {
        // The stored timeout is the callback's own or the installation's, already cut to what
        // the deployment allows (the AWS claim lease); a registration's replaces the latter.
        let timeout_ms = match (callback.spec.timeout_ms, registrations.timeout_ms) {
            (None, Some(own)) => own,
            _ => callback.timeout_ms,
        };
        let max_attempts = match (callback.spec.max_attempts, registrations.max_attempts) {
            (None, Some(own)) => callback
                .max_attempts
                .saturating_sub(installation.max_attempts)
                .saturating_add(own),
            _ => callback.max_attempts,
        };
        Self {
            timeout: Duration::from_millis(timeout_ms.into()),
            max_attempts,
            retry_schedule: registrations
                .retry_schedule_ms
                .as_ref()
                .map(|steps| steps.iter().map(|&ms| Duration::from_millis(ms)).collect()),
            max_in_flight: registrations
                .max_in_flight
                .map_or(installation.max_in_flight, |n| n as usize),
            rate_limit_per_second: registrations.rate_limit_per_second,
            circuit_failure_threshold: registrations
                .circuit_failure_threshold
                .unwrap_or(installation.circuit_failure_threshold),
            circuit_open: registrations
                .circuit_open_ms
                .map_or(installation.circuit_open, Duration::from_millis),
            notify: crate::notify::NotifyTarget::resolve(
                &callback.spec,
                registrations.notify_url.as_deref(),
                registrations.notify_on,
            ),
        }
    }

    /// `base` with this schedule, if it has its own.
    pub fn retry_policy(&self, base: &RetryPolicy) -> Option<RetryPolicy> {
        self.retry_schedule.as_ref().map(|schedule| RetryPolicy {
            schedule: schedule.clone(),
            ..base.clone()
        })
    }
}

#[cfg(test)]
mod tests;
