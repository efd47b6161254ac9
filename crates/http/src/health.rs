//! Liveness and readiness.
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "The store takes writes"), (status = 503, description = "It does not")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.callbacks.check_writable().await?;
    Ok(Json(json!({ "status": "ready" })))
}

/// Prometheus text format. Unauthenticated like most scrape endpoints: it carries counts by
/// outcome and status only, no tenant, destination or payload. 404 when no exporter is set up.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format")))]
pub async fn metrics_text(
    State(state): State<AppState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Some(render) = &state.metrics else {
        return Err(ApiError::NotFound("metrics exporter"));
    };
    // Sampled per scrape: the store is the truth for how many callbacks wait in each state.
    let counts = state.callbacks.count_by_status().await?;
    for status in fluxcb_core::status::Status::ALL {
        let n = counts.get(&status).copied().unwrap_or(0);
        metrics::gauge!(fluxcb_core::metric_names::CALLBACKS, "status" => status.as_str())
            .set(n as f64);
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        render(),
    )
        .into_response())
}
