//! Where legacy API errors become HTTP, in Django REST Framework's shapes: `{"field":
//! ["message"]}` for validation, `{"detail": "..."}` for everything else, and Django's HTML page
//! for a path no route matches. `/v1` errors are RFC 7807 problems ([`crate::error`]); the
//! legacy API keeps the shapes its callers parse.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fluxcb_core::legacy::api::FieldErrors;
use fluxcb_core::ports::StoreError;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// 401, with DRF's message for what was wrong with the `Authorization` header.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("invalid fields")]
    Validation(FieldErrors),
    /// 400 `{"detail": ...}`: the body could not be parsed.
    #[error("{0}")]
    ParseError(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("No Callback matches the given query.")]
    NotFound,
    /// An id the integer lookup could not even read (DRF's generic 404).
    #[error("Not found.")]
    BadLookup,
    #[error("Invalid page.")]
    InvalidPage,
    /// A path no legacy route matches: Django answered with its HTML 404 page.
    #[error("not found")]
    NoRoute,
    #[error("Method \"{0}\" not allowed.")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{detail}")]
    Unavailable { detail: String, retry_after: u32 },
    /// DRF's throttling answer.
    #[error("Request was throttled. Expected available in {retry_after} seconds.")]
    Throttled { retry_after: u32 },
    #[error("{0}")]
    Unsupported(String),
    /// The legacy service answered with something unusable (502).
    #[error("The legacy service gave an invalid answer.")]
    BadGateway(String),
    #[error("A server error occurred.")]
    Internal(String),
}

impl From<StoreError> for LegacyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy(cause) => {
                tracing::warn!(cause = %cause, "legacy API: store busy");
                LegacyError::Unavailable {
                    detail: "Service temporarily unavailable, try again later.".into(),
                    retry_after: 1,
                }
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "legacy API: store unavailable");
                LegacyError::Unavailable {
                    detail: "Service temporarily unavailable, try again later.".into(),
                    retry_after: 5,
                }
            }
            StoreError::Unsupported(c) => LegacyError::Unsupported(c),
            StoreError::Conflict(c) | StoreError::TooLarge(c) | StoreError::Internal(c) => {
                LegacyError::Internal(c)
            }
        }
    }
}

const DJANGO_NOT_FOUND: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n";

impl IntoResponse for LegacyError {
    fn into_response(self) -> Response {
        let status = match &self {
            LegacyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            LegacyError::Validation(_) | LegacyError::ParseError(_) => StatusCode::BAD_REQUEST,
            LegacyError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            LegacyError::NotFound
            | LegacyError::BadLookup
            | LegacyError::InvalidPage
            | LegacyError::NoRoute => StatusCode::NOT_FOUND,
            LegacyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            LegacyError::Conflict(_) => StatusCode::CONFLICT,
            LegacyError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            LegacyError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            LegacyError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            LegacyError::BadGateway(cause) => {
                tracing::warn!(cause = %cause, "legacy service: bad answer");
                StatusCode::BAD_GATEWAY
            }
            LegacyError::Internal(cause) => {
                tracing::error!(cause = %cause, "legacy API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if let LegacyError::NoRoute = self {
            let mut r = (status, DJANGO_NOT_FOUND).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return r;
        }
        let body = match &self {
            LegacyError::Validation(errors) => Value::Object(
                errors
                    .iter()
                    .map(|(f, m)| (f.clone(), Value::from(m.clone())))
                    .collect::<Map<_, _>>(),
            ),
            other => serde_json::json!({ "detail": other.to_string() }),
        };
        let mut r = super::json(status, &body);
        let headers = r.headers_mut();
        match &self {
            LegacyError::Unauthenticated(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
            }
            LegacyError::Unavailable { retry_after, .. }
            | LegacyError::Throttled { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        r
    }
}
