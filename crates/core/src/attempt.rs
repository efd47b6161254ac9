//! One delivery attempt, recorded whatever happened. A failed attempt is data, not an `Err`:
//! `Err` is reserved for the worker itself failing.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Stable codes for why an attempt did not get a 2xx. Dashboards and alerts key on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No complete answer within the callback's timeout.
    Timeout,
    /// TCP connection refused, reset or unreachable.
    Connect,
    /// The host name did not resolve.
    Dns,
    /// TLS handshake or certificate failure.
    Tls,
    /// The target resolved to an address the SSRF policy refuses. Never retried.
    BlockedTarget,
    /// The receiver answered with a non-2xx status.
    HttpStatus,
    /// The connection broke mid-exchange or the answer was not valid HTTP.
    Protocol,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::Timeout => "timeout",
            ErrorCode::Connect => "connect",
            ErrorCode::Dns => "dns",
            ErrorCode::Tls => "tls",
            ErrorCode::BlockedTarget => "blocked_target",
            ErrorCode::HttpStatus => "http_status",
            ErrorCode::Protocol => "protocol",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [
            ErrorCode::Timeout,
            ErrorCode::Connect,
            ErrorCode::Dns,
            ErrorCode::Tls,
            ErrorCode::BlockedTarget,
            ErrorCode::HttpStatus,
            ErrorCode::Protocol,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or(())
    }
}

/// What the sender observed. Produced by a [`crate::ports::Sender`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendOutcome {
    pub status_code: Option<u16>,
    /// Set when the attempt did not reach a 2xx: a code and a human-readable detail.
    pub error: Option<(ErrorCode, String)>,
    /// Response headers worth keeping (see [`KEPT_RESPONSE_HEADERS`]).
    pub headers: BTreeMap<String, String>,
    /// The first bytes of the response body (at most [`BODY_EXCERPT_LIMIT`]).
    pub body_excerpt: Vec<u8>,
    pub duration: Duration,
}

/// Bytes of the response body kept in the audit trail.
pub const BODY_EXCERPT_LIMIT: usize = 4 * 1024;
/// Bytes of the response body read before hanging up: enough to let small answers finish
/// cleanly (so the connection can be reused), never enough to hurt memory.
pub const BODY_READ_LIMIT: usize = 64 * 1024;

pub const KEPT_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "location",
    "server",
    "x-request-id",
    "date",
];

impl SendOutcome {
    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|s| (200..300).contains(&s))
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|(c, _)| *c)
    }

    pub fn failure(code: ErrorCode, detail: impl Into<String>, duration: Duration) -> Self {
        Self {
            error: Some((code, detail.into())),
            duration,
            ..Default::default()
        }
    }
}

/// An attempt as recorded in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<ErrorCode>,
    pub error_detail: Option<String>,
    pub response_headers: BTreeMap<String, String>,
    pub response_body: Option<String>,
}

impl Attempt {
    pub fn from_outcome(number: u32, started_at: DateTime<Utc>, outcome: &SendOutcome) -> Self {
        let excerpt = &outcome.body_excerpt[..outcome.body_excerpt.len().min(BODY_EXCERPT_LIMIT)];
        Self {
            number,
            started_at,
            duration_ms: outcome.duration.as_millis() as u64,
            status_code: outcome.status_code,
            error: outcome.error_code(),
            error_detail: outcome.error.as_ref().map(|(_, d)| d.clone()),
            response_headers: outcome.headers.clone(),
            response_body: (!excerpt.is_empty())
                .then(|| String::from_utf8_lossy(excerpt).into_owned()),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|s| (200..300).contains(&s))
    }
}
