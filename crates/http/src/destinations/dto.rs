//! The request and answer bodies of `/v1/destinations`, and their parsing into the core's
//! registration types.
use fluxcb_core::callback::{FieldError, WireFormat};
use fluxcb_core::destination::{DestinationMatch, DestinationSettings, DestinationTls};
use fluxcb_core::notify::NotifyOn;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::console::DestinationLoad;

/// Exactly one of the three.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchView {
    /// `scheme://host[:port]`: every URL on this origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// An http(s) URL: URLs on its origin whose path is this path or continues it by whole
    /// segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_prefix: Option<String>,
    /// `true`: every URL of the tenant (the tenant's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
}

impl MatchView {
    pub(super) fn parse(&self) -> Result<DestinationMatch, FieldError> {
        let field = |m: String| FieldError::new("match", m);
        match (&self.origin, &self.url_prefix, self.any) {
            (Some(o), None, None) => {
                DestinationMatch::origin(o).map_err(|m| FieldError::new("match.origin", m))
            }
            (None, Some(p), None) => {
                DestinationMatch::url_prefix(p).map_err(|m| FieldError::new("match.url_prefix", m))
            }
            (None, None, Some(true)) => Ok(DestinationMatch::Any),
            _ => Err(field(
                "give exactly one of origin, url_prefix or any: true".into(),
            )),
        }
    }

    pub(super) fn of(m: &DestinationMatch) -> Self {
        match m {
            DestinationMatch::Origin(o) => Self {
                origin: Some(o.clone()),
                ..Self::default()
            },
            DestinationMatch::UrlPrefix(p) => Self {
                url_prefix: Some(p.clone()),
                ..Self::default()
            },
            DestinationMatch::Any => Self {
                any: Some(true),
                ..Self::default()
            },
        }
    }
}

/// Settings of a registration; each one left out falls through to the tenant's defaults (a
/// registration matching `any`), then to the installation's. A callback's own `timeout_ms`,
/// `max_attempts` and `wire_format` come before all of them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsView {
    /// `standard_webhooks`, `legacy` or `both`; for callbacks that do not name one, fixed when
    /// the callback is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_format: Option<String>,
    /// Requests per second, spread evenly; a callback over the rate waits its turn (deferred,
    /// no attempt counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<f64>,
    /// Attempts in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delays before attempt 2, 3, … (`["10s", "1m", "1h"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_schedule: Option<Vec<String>>,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_failure_threshold: Option<u32>,
    /// How long the breaker stays open the first time, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_open_ms: Option<u64>,
    /// Told (signed, with retries) when a callback here is dead-lettered, or delivered if
    /// `notify_on` says so. On the `any` registration: the tenant's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    /// `dead_lettered` (default) and/or `delivered`; `[]`: no notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_on: Option<Vec<String>>,
}

impl SettingsView {
    pub(super) fn parse(&self) -> Result<DestinationSettings, Vec<FieldError>> {
        let mut errors = Vec::new();
        let wire_format = match self.wire_format.as_deref().map(str::parse::<WireFormat>) {
            Some(Err(m)) => {
                errors.push(FieldError::new("wire_format", m));
                None
            }
            Some(Ok(f)) => Some(f),
            None => None,
        };
        let retry_schedule_ms = match &self.retry_schedule {
            None => None,
            Some(steps) => {
                let parsed: Result<Vec<u64>, String> = steps
                    .iter()
                    .map(|s| {
                        humantime::parse_duration(s)
                            .map(|d| d.as_millis() as u64)
                            .map_err(|e| format!("`{s}`: {e}"))
                    })
                    .collect();
                match parsed {
                    Ok(ms) => Some(ms),
                    Err(m) => {
                        errors.push(FieldError::new("retry_schedule", m));
                        None
                    }
                }
            }
        };
        let notify_on = match self.notify_on.as_deref().map(NotifyOn::parse) {
            Some(Err(e)) => {
                errors.push(e);
                None
            }
            Some(Ok(on)) => Some(on),
            None => None,
        };
        let settings = DestinationSettings {
            notify_url: self.notify_url.clone(),
            notify_on,
            wire_format,
            rate_limit_per_second: self.rate_limit_per_second,
            max_in_flight: self.max_in_flight,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            retry_schedule_ms,
            circuit_failure_threshold: self.circuit_failure_threshold,
            circuit_open_ms: self.circuit_open_ms,
        };
        errors.extend(settings.validate().into_iter().map(|e| {
            if e.field == "retry_schedule_ms" {
                FieldError::new("retry_schedule", e.message)
            } else {
                e
            }
        }));
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors.into_iter().map(|e| e.prefixed("settings")).collect())
        }
    }

    pub(super) fn of(s: &DestinationSettings) -> Self {
        Self {
            wire_format: s.wire_format.map(|f| f.as_str().to_owned()),
            rate_limit_per_second: s.rate_limit_per_second,
            max_in_flight: s.max_in_flight,
            timeout_ms: s.timeout_ms,
            max_attempts: s.max_attempts,
            retry_schedule: s.retry_schedule_ms.as_ref().map(|steps| {
                steps
                    .iter()
                    .map(|&ms| {
                        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                    })
                    .collect()
            }),
            circuit_failure_threshold: s.circuit_failure_threshold,
            circuit_open_ms: s.circuit_open_ms,
            notify_url: s.notify_url.clone(),
            notify_on: s
                .notify_on
                .map(|on| on.names().into_iter().map(str::to_owned).collect()),
        }
    }
}

/// TLS toward the receiver, as given.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsInput {
    /// PEM CA certificates trusted for this destination, beside the installation's roots.
    pub ca_bundle_pem: Option<String>,
    /// PEM certificate chain presented to the receiver (mTLS).
    pub client_certificate_pem: Option<String>,
    /// PEM private key of that certificate. Write-only: never shown again.
    pub client_key_pem: Option<String>,
}

impl TlsInput {
    pub(super) fn parse(self) -> Result<DestinationTls, Vec<FieldError>> {
        let tls = DestinationTls {
            ca_bundle_pem: self.ca_bundle_pem,
            client_certificate_pem: self.client_certificate_pem,
            client_key_pem: self.client_key_pem,
        };
        let mut errors = tls.validate();
        if errors.is_empty() {
            // Shape is not enough: what cannot be parsed now would fail every attempt later.
            let certs = |field: &str, pem: &Option<String>, errors: &mut Vec<FieldError>| {
                if let Some(pem) = pem {
                    let parsed: Result<Vec<_>, _> =
                        rustls_pemfile::certs(&mut pem.as_bytes()).collect();
                    if !parsed.is_ok_and(|c| !c.is_empty()) {
                        errors.push(FieldError::new(field, "no readable PEM certificate"));
                    }
                }
            };
            certs("tls.ca_bundle_pem", &tls.ca_bundle_pem, &mut errors);
            certs(
                "tls.client_certificate_pem",
                &tls.client_certificate_pem,
                &mut errors,
            );
            if let Some(key) = &tls.client_key_pem {
                if !matches!(
                    rustls_pemfile::private_key(&mut key.as_bytes()),
                    Ok(Some(_))
                ) {
                    errors.push(FieldError::new(
                        "tls.client_key_pem",
                        "no readable PEM private key",
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(tls)
        } else {
            Err(errors)
        }
    }
}

/// TLS toward the receiver, as shown: certificates are public, the key only says it is set.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TlsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_pem: Option<String>,
    pub client_key_set: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDestination {
    /// Admin keys only; defaults to the caller's tenant.
    pub tenant: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchView,
    pub description: Option<String>,
    #[serde(default)]
    pub settings: SettingsView,
    pub tls: Option<TlsInput>,
    #[serde(default)]
    pub paused: bool,
}

/// Each section given replaces that section whole; sections left out stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDestination {
    #[serde(rename = "match")]
    pub matcher: Option<MatchView>,
    pub description: Option<String>,
    pub settings: Option<SettingsView>,
    /// `{}` removes the TLS settings.
    pub tls: Option<TlsInput>,
    pub paused: Option<bool>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateDestinationSecret {
    /// How long the previous secrets keep signing beside the new one (default 86400).
    pub grace_seconds: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct RegisteredDestinationView {
    pub id: String,
    pub tenant: String,
    #[serde(rename = "match")]
    pub matcher: MatchView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub settings: SettingsView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsView>,
    pub paused: bool,
    /// Secrets signing right now (more than one during a rotation's grace period).
    pub active_secrets: usize,
    pub created_at: String,
    pub updated_at: String,
    pub revision: u64,
    /// This node's delivery engine's view: in flight, consecutive failures, breaker. Absent
    /// where no engine runs in the process (Lambda's API function) or nothing is going on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<DestinationLoad>,
    /// Only in the answers that create or rotate it: store it now, it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DestinationList {
    pub data: Vec<RegisteredDestinationView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DestinationsQuery {
    /// Admin keys only; defaults to the caller's tenant.
    pub tenant: Option<String>,
}
