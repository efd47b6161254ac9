//! Entry points for the coverage-guided fuzz targets in `fuzz/`: the steps the handlers run on
//! a request body (decode, validate, and the error response a refusal becomes), without a
//! server or a store around them. Compiled only by `cargo fuzz` (`--cfg fuzzing`), so that
//! the handlers' internals stay private in every other build.
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use fluxcb_core::callback::{CallbackSpec, FieldError, NewCallback};
use fluxcb_core::legacy::api::{self as rules, LegacyCreate};

use crate::dto::{CreateBatch, CreateCallback};
use crate::error::ApiError;
use crate::extract::decode;
use crate::legacy_api::{parse_body, LegacyError};

/// `POST /v1/callbacks`: the accepted spec, or the status of the refusal the caller gets.
pub fn create_callback(raw: &[u8], now: DateTime<Utc>) -> Result<CallbackSpec, StatusCode> {
    let item = decode::<CreateCallback>(raw).map_err(status_of)?;
    NewCallback::from(item)
        .validate(now)
        .map_err(|errors| status_of(ApiError::Validation(errors)))
}

/// `POST /v1/callbacks/batch`: every item's spec, or the refusal (all or nothing).
pub fn create_batch(
    raw: &[u8],
    now: DateTime<Utc>,
    max_items: usize,
) -> Result<Vec<CallbackSpec>, StatusCode> {
    let batch = decode::<CreateBatch>(raw).map_err(status_of)?;
    if batch.callbacks.is_empty() || batch.callbacks.len() > max_items {
        return Err(status_of(ApiError::Validation(vec![FieldError::new(
            "callbacks",
            "a batch holds too few or too many callbacks",
        )])));
    }
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in batch.callbacks.into_iter().enumerate() {
        match NewCallback::from(item).validate(now) {
            Ok(spec) => specs.push(spec),
            Err(e) => errors.extend(
                e.into_iter()
                    .map(|e| e.prefixed(&format!("callbacks[{i}]"))),
            ),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(status_of(ApiError::Validation(errors)))
    }
}

/// `POST /api/callbacks/` with the given `Content-Type`: DRF's parsing, then its field rules.
pub fn legacy_create(content_type: &str, body: &[u8]) -> Result<LegacyCreate, StatusCode> {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(axum::http::header::CONTENT_TYPE, v);
    }
    let value = parse_body(&headers, body).map_err(|e| e.into_response().status())?;
    rules::validate_create(&value)
        .map_err(|errors| LegacyError::Validation(errors).into_response().status())
}

fn status_of(e: ApiError) -> StatusCode {
    e.into_response().status()
}
