//! What a caller asks for, validated once at the edge ([`CallbackSpec`]), and what is stored
//! ([`Callback`]).
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::id::CallbackId;
use crate::notify::{Kind, NotifyOn};
use crate::status::Status;
use crate::tenant::TenantId;

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_ATTEMPTS_LIMIT: u32 = 50;
pub const MAX_TIMEOUT_MS: u32 = 60_000;
/// Longest `ordering_key`, in bytes.
pub const MAX_ORDERING_KEY_BYTES: usize = 256;
/// What a claim's lease leaves beyond the attempt's own timeout: time to read the signing
/// secrets and record the attempt, and clock differences between workers. A lease shorter than
/// an attempt plus this could end while the attempt is still on the wire, and the callback
/// would be sent again by another worker.
pub const LEASE_MARGIN_MS: u32 = 5_000;
pub const MAX_HEADERS: usize = 64;
pub const MAX_METADATA: usize = 32;
/// Scheduled callbacks may be months ahead, not forever: a year bounds what retention must keep.
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 366;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl FromStr for Method {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            "PATCH" => Ok(Method::Patch),
            _ => Err(()),
        }
    }
}

/// The request body as it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Compact JSON, sent with `Content-Type: application/json`.
    Json(Vec<u8>),
    /// Caller-supplied bytes with their content type.
    Raw {
        content_type: String,
        bytes: Vec<u8>,
    },
    Empty,
}

impl Payload {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Json(b) => b,
            Payload::Raw { bytes, .. } => bytes,
            Payload::Empty => &[],
        }
    }

    pub fn content_type(&self) -> Option<&str> {
        match self {
            Payload::Json(_) => Some("application/json"),
            Payload::Raw { content_type, .. } => Some(content_type),
            Payload::Empty => None,
        }
    }
}

/// How a delivery is framed and signed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    #[default]
    StandardWebhooks,
    /// What the legacy sender sent: `X-Flux-Callback-Id` (an integer id), `X-Flux-Timestamp`,
    /// `X-Flux-Signature` with the legacy shared secret, and the payload rendered as the
    /// legacy sender rendered it (see [`crate::legacy`]). For receivers not yet moved.
    Legacy,
    /// Both sets of headers on the legacy body, while a receiver moves from one to the other.
    Both,
}

impl WireFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            WireFormat::StandardWebhooks => "standard_webhooks",
            WireFormat::Legacy => "legacy",
            WireFormat::Both => "both",
        }
    }

    pub fn includes_legacy(&self) -> bool {
        matches!(self, WireFormat::Legacy | WireFormat::Both)
    }

    pub fn includes_standard(&self) -> bool {
        matches!(self, WireFormat::StandardWebhooks | WireFormat::Both)
    }
}

impl FromStr for WireFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            WireFormat::StandardWebhooks,
            WireFormat::Legacy,
            WireFormat::Both,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
        .ok_or_else(|| "wire_format must be one of standard_webhooks, legacy, both".to_owned())
    }
}

/// Which system delivers a callback during a migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    #[default]
    Fluxcb,
    /// The legacy service delivers it; fluxcb keeps a read-only mirror (imported while legacy
    /// still sends, recorded in a shadow run, or handed back by a rollback). Never due here.
    Legacy,
}

impl Owner {
    pub fn as_str(&self) -> &'static str {
        match self {
            Owner::Fluxcb => "fluxcb",
            Owner::Legacy => "legacy",
        }
    }
}

impl FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fluxcb" => Ok(Owner::Fluxcb),
            "legacy" => Ok(Owner::Legacy),
            other => Err(format!("unknown owner `{other}`")),
        }
    }
}

/// The scheme, host and port a callback is sent to: the unit of per-destination limits,
/// circuit breaking and health.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination(String);

impl Destination {
    pub fn of(url: &Url) -> Self {
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(0);
        Self(format!("{}://{}:{}", url.scheme(), host, port))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Unvalidated input, as decoded from a request.
#[derive(Clone, Debug, Default)]
pub struct NewCallback {
    pub url: String,
    pub method: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: Option<serde_json::Value>,
    pub body: Option<String>,
    pub content_type: Option<String>,
    pub deliver_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    pub wire_format: Option<String>,
    pub ordering_key: Option<String>,
    pub notify_url: Option<String>,
    pub notify_on: Option<Vec<String>>,
}

/// A validated callback request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackSpec {
    pub url: Url,
    pub method: Method,
    pub headers: BTreeMap<String, String>,
    pub payload: Payload,
    pub deliver_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    pub wire_format: WireFormat,
    /// Callbacks with the same key (within a tenant) are delivered one at a time, in the order
    /// they were accepted.
    pub ordering_key: Option<String>,
    /// Told about this callback's end (see [`crate::notify`]); `None`: the registrations'.
    pub notify_url: Option<Url>,
    /// `None`: the registrations' choice, or dead letters only. Nothing: no notification.
    pub notify_on: Option<NotifyOn>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `url` or `items[3].headers.Host`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// Headers fluxcb sets itself or that would let a caller smuggle a second request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-flux-callback-id",
    "x-flux-timestamp",
    "x-flux-signature",
];

impl NewCallback {
    pub fn validate(self, now: DateTime<Utc>) -> Result<CallbackSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let url = match validate_url(&self.url) {
            Ok(u) => Some(u),
            Err(msg) => {
                errors.push(FieldError::new("url", msg));
                None
            }
        };
        let method = match self.method.as_deref() {
            None => Method::Post,
            Some(m) => m.parse().unwrap_or_else(|_| {
                errors.push(FieldError::new(
                    "method",
                    "method must be one of POST, PUT, PATCH",
                ));
                Method::Post
            }),
        };
        if self.headers.len() > MAX_HEADERS {
            errors.push(FieldError::new(
                "headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            if !is_token(name) {
                errors.push(FieldError::new(field, "not a valid HTTP header name"));
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                errors.push(FieldError::new(
                    field,
                    "this header is set by fluxcb and cannot be overridden",
                ));
            } else if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                errors.push(FieldError::new(
                    field,
                    "header values may not contain control characters",
                ));
            }
        }
        let payload = match (self.payload, self.body) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    "body",
                    "give either `payload` (JSON) or `body` (a string), not both",
                ));
                Payload::Empty
            }
            (Some(json), None) => {
                if self.content_type.is_some() {
                    errors.push(FieldError::new(
                        "content_type",
                        "`content_type` goes with `body`; `payload` is always sent as application/json",
                    ));
                }
                Payload::Json(serde_json::to_vec(&json).expect("a Value always serialises"))
            }
            (None, Some(body)) => {
                let content_type = self
                    .content_type
                    .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
                if content_type.bytes().any(|b| b < 0x20 || b == 0x7f) || content_type.is_empty() {
                    errors.push(FieldError::new("content_type", "not a valid content type"));
                }
                Payload::Raw {
                    content_type,
                    bytes: body.into_bytes(),
                }
            }
            (None, None) => Payload::Empty,
        };
        if let Some(at) = self.deliver_at {
            if at > now + Duration::days(MAX_SCHEDULE_AHEAD_DAYS) {
                errors.push(FieldError::new(
                    "deliver_at",
                    format!("may be at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead"),
                ));
            }
        }
        if let Some(n) = self.max_attempts {
            if !(1..=MAX_ATTEMPTS_LIMIT).contains(&n) {
                errors.push(FieldError::new(
                    "max_attempts",
                    format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
                ));
            }
        }
        if let Some(ms) = self.timeout_ms {
            if !(100..=MAX_TIMEOUT_MS).contains(&ms) {
                errors.push(FieldError::new(
                    "timeout_ms",
                    format!("must be between 100 and {MAX_TIMEOUT_MS}"),
                ));
            }
        }
        if self.metadata.len() > MAX_METADATA {
            errors.push(FieldError::new(
                "metadata",
                format!("at most {MAX_METADATA} tags"),
            ));
        }
        for (k, v) in &self.metadata {
            if k.is_empty() || k.len() > 64 || v.len() > 256 {
                errors.push(FieldError::new(
                    format!("metadata.{k}"),
                    "tag names are 1-64 bytes and values at most 256 bytes",
                ));
            }
        }
        let wire_format = match self.wire_format.as_deref() {
            None => WireFormat::default(),
            Some(f) => f.parse().unwrap_or_else(|msg: String| {
                errors.push(FieldError::new("wire_format", msg));
                WireFormat::default()
            }),
        };
        if let Some(key) = &self.ordering_key {
            if key.is_empty() || key.len() > MAX_ORDERING_KEY_BYTES {
                errors.push(FieldError::new(
                    "ordering_key",
                    format!("must be 1 to {MAX_ORDERING_KEY_BYTES} bytes"),
                ));
            }
        }
        let notify_url = match self.notify_url.as_deref().map(validate_url) {
            Some(Ok(u)) => Some(u),
            Some(Err(msg)) => {
                errors.push(FieldError::new("notify_url", msg));
                None
            }
            None => None,
        };
        let notify_on = match self.notify_on.as_deref().map(NotifyOn::parse) {
            Some(Ok(on)) => Some(on),
            Some(Err(e)) => {
                errors.push(e);
                None
            }
            None => None,
        };
        if wire_format.includes_legacy() && matches!(payload, Payload::Raw { .. }) {
            errors.push(FieldError::new(
                "body",
                "the legacy wire format sends the JSON `payload`; `body` cannot be used with it",
            ));
        }
        match (errors.is_empty(), url) {
            (true, Some(url)) => Ok(CallbackSpec {
                url,
                method,
                headers: self.headers,
                payload,
                deliver_at: self.deliver_at,
                max_attempts: self.max_attempts,
                timeout_ms: self.timeout_ms,
                metadata: self.metadata,
                wire_format,
                ordering_key: self.ordering_key,
                notify_url,
                notify_on,
            }),
            _ => Err(errors),
        }
    }
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Ingest-time URL rules. Whether the target's address is allowed is decided at send time, on
/// the address actually dialled (see [`crate::target`]), because DNS can change in between.
pub fn validate_url(raw: &str) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("URL is longer than {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    // Percent-encoding can triple a URL's length, and the stored, sent form is the normalised one.
    if url.as_str().len() > MAX_URL_LEN {
        return Err(format!(
            "URL is longer than {MAX_URL_LEN} characters once percent-encoded"
        ));
    }
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("only http and https URLs can be called".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs may not carry credentials; put them in a header".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".to_owned());
    }
    Ok(url)
}

/// A stored callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub id: CallbackId,
    pub tenant: TenantId,
    pub spec: CallbackSpec,
    pub status: Status,
    /// Attempts made so far (the first one included).
    pub attempts_made: u32,
    /// Resolved at ingest: the callback's own value or the installation default.
    pub max_attempts: u32,
    pub timeout_ms: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Name of the API key that created it.
    pub created_by: String,
    pub last_error: Option<String>,
    /// The integer id legacy receivers see as `X-Flux-Callback-Id` (and legacy API callers as
    /// `id`): set when the wire format includes the legacy one.
    pub legacy_id: Option<i64>,
    /// The caller's own reference (the legacy API's `external_id`), unique within a tenant.
    pub external_id: Option<String>,
    /// The URL string exactly as the legacy API received it, which that API echoes back (the
    /// parsed [`CallbackSpec::url`] is normalised). `None` when the two are the same.
    pub url_as_given: Option<String>,
    /// The HTTP status of the latest attempt (`None` when it got no answer).
    pub last_status_code: Option<u16>,
    pub owner: Owner,
    /// A caller's callback, or a notification the engine made about `source_id`.
    pub kind: Kind,
    pub source_id: Option<CallbackId>,
}

impl Callback {
    pub fn destination(&self) -> Destination {
        Destination::of(&self.spec.url)
    }

    /// Builds the stored form of a freshly accepted callback.
    pub fn accept(
        id: CallbackId,
        tenant: TenantId,
        spec: CallbackSpec,
        defaults: &CallbackDefaults,
        created_by: String,
        now: DateTime<Utc>,
    ) -> Self {
        let (status, due) = match spec.deliver_at {
            Some(at) if at > now => (Status::Scheduled, at),
            _ => (Status::Pending, now),
        };
        Self {
            id,
            tenant,
            max_attempts: spec.max_attempts.unwrap_or(defaults.max_attempts),
            timeout_ms: spec.timeout_ms.unwrap_or(defaults.timeout_ms),
            spec,
            status,
            attempts_made: 0,
            next_attempt_at: Some(due),
            created_at: now,
            updated_at: now,
            created_by,
            last_error: None,
            legacy_id: None,
            external_id: None,
            url_as_given: None,
            last_status_code: None,
            owner: Owner::Fluxcb,
            kind: Kind::Callback,
            source_id: None,
        }
    }
}

/// Installation-wide values for what a callback leaves unset.
#[derive(Clone, Debug)]
pub struct CallbackDefaults {
    pub max_attempts: u32,
    pub timeout_ms: u32,
}

#[cfg(test)]
mod tests;
