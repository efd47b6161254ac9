//! Failure notifications and the operational event stream (`docs/decisions/0002`).
//!
//! A notification is an ordinary callback row of another [`Kind`], built here by
//! [`follow_ups`] from the attempt that ended its source and written in the same store
//! transaction as that attempt, so a crash can neither lose it nor write it twice (its id is
//! derived from the source, the event and the attempt number). Only rows of kind
//! [`Kind::Callback`] produce follow-ups: a notification never notifies about itself.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use crate::attempt::Attempt;
use crate::callback::{
    Callback, CallbackDefaults, CallbackSpec, FieldError, Method, Payload, WireFormat,
};
use crate::id::CallbackId;
use crate::retry::Decision;
use crate::tenant::TenantId;

/// The reserved tenant that owns the operational event stream's callbacks. No API key can be
/// made for it, so only admin keys see its rows.
pub const SYSTEM_TENANT: &str = "_system";

pub fn system_tenant() -> TenantId {
    TenantId::parse(SYSTEM_TENANT).expect("a valid tenant name")
}

/// What a stored row is: a caller's callback, or one the engine made about another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    #[default]
    Callback,
    /// Sent to a `notify_url` about a callback of the same tenant.
    Notification,
    /// Sent to the installation's operational event stream (tenant `_system`).
    Operational,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Callback => "callback",
            Kind::Notification => "notification",
            Kind::Operational => "operational",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Kind::Callback, Kind::Notification, Kind::Operational]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| "kind must be one of callback, notification, operational".to_owned())
    }
}

/// Which kinds a list shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KindFilter {
    /// Callers' callbacks only: what lists showed before notifications existed.
    #[default]
    Callbacks,
    Only(Kind),
    All,
}

impl FromStr for KindFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(KindFilter::All),
            "callback" => Ok(KindFilter::Callbacks),
            other => other.parse().map(KindFilter::Only).map_err(|_| {
                "kind must be one of callback, notification, operational, all".to_owned()
            }),
        }
    }
}

/// When a callback's notify URL hears about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct NotifyOn {
    pub dead_lettered: bool,
    pub delivered: bool,
}

impl Default for NotifyOn {
    fn default() -> Self {
        Self::DEAD_LETTERED
    }
}

impl NotifyOn {
    /// What a notify URL hears when nothing narrower is said: dead letters only.
    pub const DEAD_LETTERED: NotifyOn = NotifyOn {
        dead_lettered: true,
        delivered: false,
    };
    pub const NOTHING: NotifyOn = NotifyOn {
        dead_lettered: false,
        delivered: false,
    };

    /// From the API's list; the error names the offending item (`notify_on[1]`).
    pub fn parse(items: &[String]) -> Result<Self, FieldError> {
        let mut on = Self::NOTHING;
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                "dead_lettered" => on.dead_lettered = true,
                "delivered" => on.delivered = true,
                _ => {
                    return Err(FieldError::new(
                        format!("notify_on[{i}]"),
                        "must be dead_lettered or delivered",
                    ))
                }
            }
        }
        Ok(on)
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.dead_lettered {
            names.push("dead_lettered");
        }
        if self.delivered {
            names.push("delivered");
        }
        names
    }

    pub fn is_nothing(&self) -> bool {
        !self.dead_lettered && !self.delivered
    }

    /// The stored form: the names joined by commas (empty: nothing).
    pub fn encode(&self) -> String {
        self.names().join(",")
    }

    pub fn decode(stored: &str) -> Self {
        let items: Vec<String> = stored
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        // Written by `encode`; an unknown name (from a newer version) is ignored.
        Self {
            dead_lettered: items.iter().any(|s| s == "dead_lettered"),
            delivered: items.iter().any(|s| s == "delivered"),
        }
    }
}

impl TryFrom<Vec<String>> for NotifyOn {
    type Error = String;
    fn try_from(items: Vec<String>) -> Result<Self, String> {
        Self::parse(&items).map_err(|e| e.message)
    }
}

impl From<NotifyOn> for Vec<String> {
    fn from(on: NotifyOn) -> Self {
        on.names().into_iter().map(str::to_owned).collect()
    }
}

/// Where and when one callback's notifications go, every layer applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyTarget {
    pub url: Url,
    pub on: NotifyOn,
}

impl NotifyTarget {
    /// The callback's own fields over the registrations' (`url`/`on` as merged from the most
    /// specific registration down to the tenant's `any`). `None`: nobody to tell.
    pub fn resolve(
        spec: &CallbackSpec,
        registered_url: Option<&str>,
        registered_on: Option<NotifyOn>,
    ) -> Option<Self> {
        let url = match &spec.notify_url {
            Some(own) => own.clone(),
            // Validated when the registration was stored.
            None => Url::parse(registered_url?).ok()?,
        };
        let on = spec.notify_on.or(registered_on).unwrap_or_default();
        (!on.is_nothing()).then_some(Self { url, on })
    }
}

/// The event types of notifications and of the operational stream. Names are dot-delimited
/// as Standard Webhooks recommends; fields may be added to their data, never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A callback was dead-lettered.
    CallbackFailed,
    CallbackDelivered,
    DestinationCircuitOpened,
    DestinationRecovered,
}

impl EventType {
    pub const OPERATIONAL: [EventType; 3] = [
        EventType::CallbackFailed,
        EventType::DestinationCircuitOpened,
        EventType::DestinationRecovered,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::CallbackFailed => "callback.failed",
            EventType::CallbackDelivered => "callback.delivered",
            EventType::DestinationCircuitOpened => "destination.circuit_opened",
            EventType::DestinationRecovered => "destination.recovered",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            EventType::CallbackFailed,
            EventType::CallbackDelivered,
            EventType::DestinationCircuitOpened,
            EventType::DestinationRecovered,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown event type `{s}`: use callback.failed, destination.circuit_opened or destination.recovered"
            )
        })
    }
}

/// The installation's operational event stream: where it goes and which types it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsStream {
    pub url: Url,
    pub types: Vec<EventType>,
}

impl OpsStream {
    /// From configuration: `url` empty means no stream; `types` is a comma-separated list
    /// (empty: every operational type).
    pub fn parse(url: &str, types: &str) -> Result<Option<Self>, String> {
        if url.trim().is_empty() {
            return Ok(None);
        }
        let url = crate::callback::validate_url(url.trim())?;
        let mut parsed = Vec::new();
        for name in types.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let event: EventType = name.parse()?;
            if !Self::is_operational(event) {
                return Err(format!("`{name}` is not an operational event type"));
            }
            parsed.push(event);
        }
        if parsed.is_empty() {
            parsed = EventType::OPERATIONAL.to_vec();
        }
        Ok(Some(Self { url, types: parsed }))
    }

    fn is_operational(event: EventType) -> bool {
        EventType::OPERATIONAL.contains(&event)
    }

    pub fn carries(&self, event: EventType) -> bool {
        self.types.contains(&event)
    }
}

/// What a worker knows, beside the callback and its attempt, to build follow-ups.
#[derive(Clone, Debug)]
pub struct FollowUpSettings {
    pub ops: Option<OpsStream>,
    /// Attempt budget and timeout of the notifications themselves.
    pub defaults: CallbackDefaults,
}

/// The rows an attempt's transition creates: the tenant's notification and the operational
/// `callback.failed`, each with an id derived from (source, event, attempt number), so a rerun
/// of the same transition names the same rows. Empty for anything but a caller's callback.
pub fn follow_ups(
    source: &Callback,
    attempt: &Attempt,
    decision: &Decision,
    notify: Option<&NotifyTarget>,
    settings: &FollowUpSettings,
    now: DateTime<Utc>,
) -> Vec<Callback> {
    if source.kind != Kind::Callback {
        return Vec::new();
    }
    let event = match decision {
        Decision::DeadLetter(_) => EventType::CallbackFailed,
        Decision::Delivered => EventType::CallbackDelivered,
        Decision::RetryAt(_) => return Vec::new(),
    };
    let mut rows = Vec::new();
    if let Some(target) = notify {
        let wanted = match event {
            EventType::CallbackFailed => target.on.dead_lettered,
            _ => target.on.delivered,
        };
        if wanted {
            let data = event_data(source, attempt, decision, Audience::Tenant);
            rows.push(notification_row(
                CallbackId::for_event(&source.id, "notify", event.as_str(), attempt.number),
                source,
                source.tenant.clone(),
                Kind::Notification,
                target.url.clone(),
                envelope(event, now, data),
                &settings.defaults,
                now,
            ));
        }
    }
    if let Some(ops) = &settings.ops {
        if event == EventType::CallbackFailed && ops.carries(event) {
            let data = event_data(source, attempt, decision, Audience::Operators);
            rows.push(notification_row(
                CallbackId::for_event(&source.id, "ops", event.as_str(), attempt.number),
                source,
                system_tenant(),
                Kind::Operational,
                ops.url.clone(),
                envelope(event, now, data),
                &settings.defaults,
                now,
            ));
        }
    }
    rows
}

/// An operational event that is not about one callback (the breaker's), as a row of the
/// `_system` tenant with a fresh id.
pub fn operational_event(
    ops: &OpsStream,
    event: EventType,
    data: serde_json::Value,
    defaults: &CallbackDefaults,
    now: DateTime<Utc>,
) -> Callback {
    let mut row = Callback::accept(
        CallbackId::generate(),
        system_tenant(),
        notification_spec(ops.url.clone(), envelope(event, now, data)),
        defaults,
        CREATED_BY.to_owned(),
        now,
    );
    row.kind = Kind::Operational;
    row
}

/// Who reads an event's data: a tenant gets its own correlation handles, operators the tenant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audience {
    Tenant,
    Operators,
}

/// Ids, outcome and the last attempt's code and timing; never the payload, the URL's path or
/// query, headers, or the receiver's answer, any of which may carry the caller's secrets.
fn event_data(
    source: &Callback,
    attempt: &Attempt,
    decision: &Decision,
    audience: Audience,
) -> serde_json::Value {
    let (status, reason) = match decision {
        Decision::DeadLetter(reason) => ("failed", Some(reason.as_str())),
        _ => ("delivered", None),
    };
    let mut data = json!({
        "callback_id": source.id.to_string(),
        "external_id": source.external_id,
        "status": status,
        "attempts": attempt.number,
        "destination": source.destination().to_string(),
        "last_attempt": {
            "number": attempt.number,
            "at": rfc3339(attempt.started_at),
            "status_code": attempt.status_code,
            "error": attempt.error.map(|e| e.as_str()),
            "duration_ms": attempt.duration_ms,
        },
        "created_at": rfc3339(source.created_at),
    });
    let fields = data.as_object_mut().expect("an object");
    if let Some(reason) = reason {
        fields.insert("dead_letter_reason".into(), reason.into());
    }
    match audience {
        Audience::Tenant => {
            fields.insert("metadata".into(), json!(source.spec.metadata));
        }
        Audience::Operators => {
            fields.insert("tenant".into(), source.tenant.as_str().into());
        }
    }
    data
}

/// The Standard Webhooks body: `{type, timestamp, data}`.
pub fn envelope(event: EventType, at: DateTime<Utc>, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": event.as_str(),
        "timestamp": rfc3339(at),
        "data": data,
    }))
    .expect("a Value always serialises")
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Who the API shows as having created a notification.
pub const CREATED_BY: &str = "fluxcb:notifications";

fn notification_spec(url: Url, body: Vec<u8>) -> CallbackSpec {
    CallbackSpec {
        url,
        method: Method::Post,
        headers: BTreeMap::new(),
        payload: Payload::Json(body),
        deliver_at: None,
        max_attempts: None,
        timeout_ms: None,
        metadata: BTreeMap::new(),
        // The legacy format renders a payload this body does not have.
        wire_format: WireFormat::StandardWebhooks,
        ordering_key: None,
        notify_url: None,
        notify_on: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn notification_row(
    id: CallbackId,
    source: &Callback,
    tenant: TenantId,
    kind: Kind,
    url: Url,
    body: Vec<u8>,
    defaults: &CallbackDefaults,
    now: DateTime<Utc>,
) -> Callback {
    let mut row = Callback::accept(
        id,
        tenant,
        notification_spec(url, body),
        defaults,
        CREATED_BY.to_owned(),
        now,
    );
    row.kind = kind;
    row.source_id = Some(source.id);
    row
}

#[cfg(test)]
mod tests;
