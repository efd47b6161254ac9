//! A JSON body extractor that names the failing field and answers in problem+json.
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The raw body and its decoded form; the raw bytes are kept for idempotency fingerprints.
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

pub fn bytes_rejection(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge { limit }
    } else {
        ApiError::MalformedBody {
            detail: format!("cannot read the request body: {e}"),
            field: None,
        }
    }
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != ".").then_some(path);
        ApiError::MalformedBody {
            detail: if inner.is_syntax() || inner.is_eof() {
                format!("the body is not valid JSON: {inner}")
            } else {
                inner.to_string()
            },
            field,
        }
    })
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let raw = Bytes::from_request(req, state)
            .await
            .map_err(|e| bytes_rejection(e, limit))?;
        if raw.is_empty() {
            return Err(ApiError::MalformedBody {
                detail: "the request needs a JSON body".into(),
                field: None,
            });
        }
        Ok(Self {
            value: decode(&raw)?,
            raw,
        })
    }
}

/// Set by the router next to `DefaultBodyLimit` so rejections can state the limit.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);
