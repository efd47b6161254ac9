//! `/v1/ordering-keys/release`: lets the later callbacks of a key held after a dead letter
//! (policy `hold`) go on without it.
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use fluxcb_core::callback::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::admin::target_tenant;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/ordering-keys/release", post(release))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseKey {
    pub key: String,
    /// Admin keys only; defaults to the caller's tenant.
    pub tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Released {
    /// Whether the key was held (its next waiting callback is due now either way).
    pub released: bool,
}

#[utoipa::path(post, path = "/v1/ordering-keys/release", tag = "callbacks", request_body = ReleaseKey,
    responses((status = 200, body = Released), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<ReleaseKey>,
) -> Result<Json<Released>, ApiError> {
    let input = body.value;
    let tenant = target_tenant(&caller, input.tenant.as_deref())?;
    if input.key.is_empty() || input.key.len() > fluxcb_core::callback::MAX_ORDERING_KEY_BYTES {
        return Err(ApiError::Validation(vec![FieldError::new(
            "key",
            format!(
                "must be 1 to {} bytes",
                fluxcb_core::callback::MAX_ORDERING_KEY_BYTES
            ),
        )]));
    }
    let released = state
        .callbacks
        .release_ordering_key(&tenant, &input.key, state.clock.now())
        .await?;
    tracing::info!(tenant = %tenant, released, actor = caller.actor(), "ordering key released");
    // The released key's next callback is due now: wake the workers.
    state.notify_queue(&[]).await;
    Ok(Json(Released { released }))
}
