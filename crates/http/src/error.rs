//! The one place errors become HTTP: RFC 7807 `application/problem+json` with a stable `type`.
//! Internal causes are logged, never sent.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fluxcb_core::callback::FieldError;
use fluxcb_core::ports::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("this action needs an admin key")]
    Forbidden,
    /// A console request that changes state came without its session's CSRF token.
    #[error("missing or wrong X-CSRF-Token: reload the console and try again")]
    CsrfRejected,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("{detail}")]
    MalformedBody {
        detail: String,
        field: Option<String>,
    },
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the path and query are longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("more than {count} headers or {bytes} bytes of headers")]
    HeadersTooLarge { count: usize, bytes: usize },
    #[error("{0}")]
    WrongState(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInFlight,
    #[error("{0}")]
    Conflict(String),
    /// Within the request body limit, but over what the store can hold in one item.
    #[error("{0}")]
    StoreLimit(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("too many requests with this API key; retry after {retry_after} s")]
    RateLimited { retry_after: u32 },
    #[error("the service is overloaded; retry after {retry_after} s")]
    Overloaded { retry_after: u32, cause: String },
    #[error("internal error")]
    Internal(String),
}

/// RFC 7807 problem details.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:fluxcb:problem:validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For validation errors: each failing field's path and what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

#[derive(Serialize, ToSchema)]
pub struct ProblemField {
    pub field: String,
    pub message: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            CsrfRejected => (StatusCode::FORBIDDEN, "csrf", "CSRF token rejected"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Validation(_) => (StatusCode::BAD_REQUEST, "validation", "Invalid request"),
            MalformedBody { .. } => (StatusCode::BAD_REQUEST, "malformed-body", "Malformed body"),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Body too large"),
            UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "uri-too-long", "URI too long"),
            HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request headers too large",
            ),
            WrongState(_) => (
                StatusCode::CONFLICT,
                "wrong-state",
                "Not allowed in this state",
            ),
            IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
            ),
            IdempotencyInFlight => (
                StatusCode::CONFLICT,
                "idempotency-in-flight",
                "Request in progress",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            StoreLimit(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Too large for the store",
            ),
            Unsupported(_) => (
                StatusCode::BAD_REQUEST,
                "unsupported",
                "Not supported by this backend",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Temporarily unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy(cause) => ApiError::Overloaded {
                retry_after: 1,
                cause,
            },
            StoreError::Unavailable(cause) => ApiError::Overloaded {
                retry_after: 5,
                cause,
            },
            StoreError::Conflict(c) => ApiError::Conflict(c),
            StoreError::TooLarge(c) => ApiError::StoreLimit(c),
            StoreError::Unsupported(c) => ApiError::Unsupported(c),
            StoreError::Internal(c) => ApiError::Internal(c),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        match &self {
            ApiError::Internal(cause) => tracing::error!(cause = %cause, "request failed"),
            ApiError::Overloaded { cause, .. } => {
                tracing::warn!(cause = %cause, "refusing request: store unavailable")
            }
            _ => {}
        }
        let errors = match &self {
            ApiError::Validation(errs) => errs
                .iter()
                .map(|e| ProblemField {
                    field: e.field.clone(),
                    message: e.message.clone(),
                })
                .collect(),
            ApiError::MalformedBody {
                field: Some(f),
                detail,
            } => vec![ProblemField {
                field: f.clone(),
                message: detail.clone(),
            }],
            _ => Vec::new(),
        };
        let detail = match &self {
            ApiError::Validation(errs) if !errs.is_empty() => errs
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("urn:fluxcb:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let body = serde_json::to_vec(&problem).expect("problems serialise");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::Overloaded { retry_after, .. } | ApiError::RateLimited { retry_after } =
            &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let ApiError::Unauthorized = &self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
