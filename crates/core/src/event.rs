//! The audit trail: an append-only history per callback.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Accepted at ingest (actor: the key's name).
    Created,
    /// A delivery attempt ended; detail has the attempt number, outcome and the state it led to.
    Attempted,
    /// An in-flight callback returned to pending after its worker died or the process stopped.
    Recovered,
    Cancelled,
    /// A single dead letter sent back by an operator.
    Retried,
    /// Sent back as part of a bulk redrive.
    Redriven,
    /// Claimed for an immediate attempt by an operator (the legacy API's `send`).
    SentNow,
    /// Copied from the legacy table, or refreshed from it (`fluxcb migrate import`).
    Imported,
    /// Recorded in a shadow run: detail holds the request fluxcb would have sent, and when.
    Shadowed,
    /// Written back to the legacy table by a rollback (`fluxcb migrate export`).
    HandedBack,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Attempted => "attempted",
            EventKind::Recovered => "recovered",
            EventKind::Cancelled => "cancelled",
            EventKind::Retried => "retried",
            EventKind::Redriven => "redriven",
            EventKind::SentNow => "sent_now",
            EventKind::Imported => "imported",
            EventKind::Shadowed => "shadowed",
            EventKind::HandedBack => "handed_back",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the store's global, increasing event sequence.
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub actor: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub detail: serde_json::Value,
}
