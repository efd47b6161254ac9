//! The legacy services as an upstream: in shadow mode every legacy API call is passed to them,
//! in split mode the calls for callbacks they own. The HTTP client behind this port lives with
//! the composition root (`fluxcb serve`), so this crate stays client-free.
use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};

/// Which legacy service: the insert API (`flux-callme-service`) or the sender's send-now API
/// (`flux-callback-service`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Insert,
    Send,
}

pub struct Forward {
    pub service: Service,
    pub method: Method,
    /// Path and query as the caller sent them (`/api/callbacks/?page=2`).
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Forwarded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection, or none within the timeout: the caller gets 503, as from a load balancer
    /// with no healthy backend.
    #[error("the legacy service is unreachable: {0}")]
    Unreachable(String),
    /// Connected, but no usable answer: 502.
    #[error("the legacy service gave no usable answer: {0}")]
    BadAnswer(String),
}

#[async_trait]
pub trait LegacyUpstream: Send + Sync + 'static {
    async fn forward(&self, request: Forward) -> Result<Forwarded, UpstreamError>;
}
