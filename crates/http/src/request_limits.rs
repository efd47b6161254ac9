//! Limits on the request line and headers, checked before routing, so that an oversized
//! request gets a problem the caller can read instead of whatever the transport does with it.
//! hyper's own limits (100 headers, ~400 KiB of buffered head) stay behind these as the
//! backstop on `fluxcb serve`; behind API Gateway its limits come first.
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Path and query together, in bytes.
    pub uri_bytes: usize,
    /// Header names and values together, in bytes.
    pub header_bytes: usize,
    pub header_count: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        // The URLs this API serves are short; 8 KiB is what common proxies allow a request
        // line. 32 KiB of headers leaves room for large cookies and tracing headers.
        Self {
            uri_bytes: 8 * 1024,
            header_bytes: 32 * 1024,
            header_count: 96,
        }
    }
}

pub async fn enforce(State(limits): State<HeadLimits>, request: Request, next: Next) -> Response {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_bytes > limits.uri_bytes {
        return ApiError::UriTooLong {
            limit: limits.uri_bytes,
        }
        .into_response();
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > limits.header_count || header_bytes > limits.header_bytes {
        return ApiError::HeadersTooLarge {
            count: limits.header_count,
            bytes: limits.header_bytes,
        }
        .into_response();
    }
    next.run(request).await
}
