//! `POST /v1/callbacks` and `/v1/callbacks/batch`: validate, then commit callbacks and their
//! idempotency record in one durable write, and only then answer 202.
//!
//! Idempotency: a key is scoped to the tenant. The first request with a key stores its
//! response with the callbacks; a repeat with the same body gets that response again (with
//! `Idempotent-Replayed: true`), a repeat with another body gets 422, and a repeat while the
//! first is still running gets 409. The in-progress check is per process; across processes
//! the store's unique key still guarantees one set of callbacks per key.
use std::collections::HashSet;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use fluxcb_core::callback::{Callback, FieldError, NewCallback};
use fluxcb_core::destination::Matched;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{Due, IdempotencyRecord, IngestBatch, IngestResult};
use fluxcb_core::tenant::TenantId;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::dto::{Accepted, BatchAccepted, CreateBatch, CreateCallback};
use crate::error::{ApiError, Problem};
use crate::extract::{BodyLimit, JsonBody};
use crate::{ApiLimits, AppState};

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
const MAX_KEY_LEN: usize = 255;

pub fn router(limits: &ApiLimits) -> Router<AppState> {
    let batch = Router::new()
        .route("/v1/callbacks/batch", post(create_batch))
        .layer(axum::extract::DefaultBodyLimit::max(
            limits.batch_body_bytes,
        ))
        .layer(Extension(BodyLimit(limits.batch_body_bytes)));
    Router::new()
        .route("/v1/callbacks", post(create))
        .merge(batch)
}

/// Keys whose first request is still being processed in this process.
#[derive(Default)]
pub struct InFlightKeys(Mutex<HashSet<(TenantId, String)>>);

struct InFlightGuard<'a> {
    set: &'a InFlightKeys,
    entry: (TenantId, String),
}

impl InFlightKeys {
    fn enter(&self, tenant: &TenantId, key: &str) -> Option<InFlightGuard<'_>> {
        let entry = (tenant.clone(), key.to_owned());
        let fresh = self.0.lock().expect("poisoned").insert(entry.clone());
        fresh.then_some(InFlightGuard { set: self, entry })
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.set.0.lock().expect("poisoned").remove(&self.entry);
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = v.to_str().map_err(|_| {
        ApiError::Validation(vec![FieldError::new(
            "Idempotency-Key",
            "must be printable ASCII",
        )])
    })?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::Validation(vec![FieldError::new(
            "Idempotency-Key",
            format!("must be 1-{MAX_KEY_LEN} characters"),
        )]));
    }
    Ok(Some(key.to_owned()))
}

fn fingerprint(path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[utoipa::path(
    post, path = "/v1/callbacks", tag = "callbacks",
    request_body = CreateCallback,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 hours")),
    responses(
        (status = 202, description = "Durably accepted", body = Accepted),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Same Idempotency-Key still in progress", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 422, description = "Idempotency-Key reused with a different body", body = Problem),
        (status = 503, description = "Overloaded; see Retry-After", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<CreateCallback>,
) -> Result<Response, ApiError> {
    let JsonBody { value, raw } = body;
    ingest(
        &state,
        &caller,
        &headers,
        "/v1/callbacks",
        &raw,
        vec![value],
        false,
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/callbacks/batch", tag = "callbacks",
    request_body = CreateBatch,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 hours")),
    responses(
        (status = 202, description = "All durably accepted", body = BatchAccepted),
        (status = 400, description = "At least one invalid item; none accepted. Field paths name the items.", body = Problem),
        (status = 409, description = "Same Idempotency-Key still in progress", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 422, description = "Idempotency-Key reused with a different body", body = Problem),
        (status = 503, description = "Overloaded; see Retry-After", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<CreateBatch>,
) -> Result<Response, ApiError> {
    let JsonBody { value, raw } = body;
    if value.callbacks.is_empty() || value.callbacks.len() > state.limits.batch_items {
        return Err(ApiError::Validation(vec![FieldError::new(
            "callbacks",
            format!("a batch holds 1 to {} callbacks", state.limits.batch_items),
        )]));
    }
    ingest(
        &state,
        &caller,
        &headers,
        "/v1/callbacks/batch",
        &raw,
        value.callbacks,
        true,
    )
    .await
}

async fn ingest(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    path: &str,
    raw: &[u8],
    items: Vec<CreateCallback>,
    batch: bool,
) -> Result<Response, ApiError> {
    let tenant = caller.0.tenant.clone();
    let key = idempotency_key(headers)?;
    let _guard = match &key {
        Some(k) => Some(
            state
                .in_flight
                .enter(&tenant, k)
                .ok_or(ApiError::IdempotencyInFlight)?,
        ),
        None => None,
    };
    let now = state.clock.now();
    let mut callbacks = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    // A registered destination's wire format applies to callbacks that do not name one, fixed
    // at acceptance: the receiver verifies what it was told to expect.
    let registrations = state.destinations.registrations(&tenant).await?;
    for (i, item) in items.into_iter().enumerate() {
        let names_format = item.wire_format.is_some();
        match NewCallback::from(item).validate(now) {
            Ok(mut spec) => {
                if !names_format {
                    let matched = Matched::find(&registrations, &spec.url);
                    if let Some(format) = matched.settings().wire_format {
                        spec.wire_format = format;
                    }
                }
                callbacks.push(Callback::accept(
                    CallbackId::generate(),
                    tenant.clone(),
                    spec,
                    &state.defaults,
                    caller.actor().to_owned(),
                    now,
                ))
            }
            Err(errs) if batch => errors.extend(
                errs.into_iter()
                    .map(|e| e.prefixed(&format!("callbacks[{i}]"))),
            ),
            Err(errs) => errors.extend(errs),
        }
    }
    if !state.callbacks.supports_ordering_keys() {
        for (i, cb) in callbacks.iter().enumerate() {
            if cb.spec.ordering_key.is_some() {
                let e = FieldError::new(
                    "ordering_key",
                    "ordered delivery is not served by this backend yet (the embedded store has it)",
                );
                errors.push(if batch {
                    e.prefixed(&format!("callbacks[{i}]"))
                } else {
                    e
                });
            }
        }
    }
    let legacy: Vec<usize> = callbacks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.spec.wire_format.includes_legacy())
        .map(|(i, _)| i)
        .collect();
    if !legacy.is_empty() && state.legacy_secret.is_none() {
        errors.extend(legacy.iter().map(|&i| {
            let e = FieldError::new(
                "wire_format",
                "the legacy wire format needs the legacy signing secret (FLUXCB_LEGACY_SIGNING_SECRET) configured",
            );
            if batch {
                e.prefixed(&format!("callbacks[{i}]"))
            } else {
                e
            }
        }));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if !legacy.is_empty() {
        // Integer ids from the store's sequence, before the answer is built: it names them.
        let first = state
            .callbacks
            .allocate_legacy_ids(legacy.len() as u32)
            .await?;
        for (offset, &i) in legacy.iter().enumerate() {
            callbacks[i].legacy_id = Some(first + offset as i64);
        }
    }
    let body = if batch {
        serde_json::to_vec(&BatchAccepted {
            callbacks: callbacks.iter().map(Accepted::of).collect(),
        })
    } else {
        serde_json::to_vec(&Accepted::of(&callbacks[0]))
    }
    .expect("responses serialise");
    let due: Vec<Due> = callbacks.iter().map(Due::of).collect();
    let result = state
        .callbacks
        .ingest(IngestBatch {
            tenant,
            callbacks,
            idempotency: key.map(|key| IdempotencyRecord {
                key,
                fingerprint: fingerprint(path, raw),
                response_status: StatusCode::ACCEPTED.as_u16(),
                response_body: body.clone(),
            }),
        })
        .await?;
    match result {
        IngestResult::Accepted => {
            metrics::counter!(fluxcb_core::metric_names::ACCEPTED).increment(due.len() as u64);
            state.notify_queue(&due).await;
            Ok(json_response(StatusCode::ACCEPTED, body, false))
        }
        IngestResult::Replayed { status, body } => Ok(json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
            body,
            true,
        )),
        IngestResult::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>, replayed: bool) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        h.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    r
}
