//! `GET`/`PUT /v1/admin/migration`: the migration switch (mode and cutover percentage), changed
//! at runtime without a restart. The value is kept in the store, so every node and every Lambda
//! sees a change within [`crate::legacy_api::MIGRATION_REFRESH`].
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use fluxcb_core::callback::FieldError;
use fluxcb_core::migration::{MigrationMode, MigrationState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::dto::rfc3339;
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/migration", get(show).put(set))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMigration {
    /// `off`, `shadow` or `split`.
    pub mode: String,
    /// 0–100: the share of new legacy-API callbacks fluxcb takes in split mode.
    pub cutover_percent: i64,
}

#[derive(Serialize, ToSchema)]
pub struct MigrationView {
    pub mode: String,
    pub cutover_percent: u8,
    pub updated_at: String,
    /// Every node applies a change within this many seconds.
    pub refresh_seconds: u64,
}

impl MigrationView {
    fn of(s: &MigrationState) -> Self {
        Self {
            mode: s.mode.to_string(),
            cutover_percent: s.cutover_percent,
            updated_at: rfc3339(s.updated_at),
            refresh_seconds: crate::legacy_api::MIGRATION_REFRESH.as_secs(),
        }
    }
}

#[utoipa::path(get, path = "/v1/admin/migration", tag = "admin",
    responses((status = 200, body = MigrationView), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<MigrationView>, ApiError> {
    caller.require_admin()?;
    let current = state.migration.current(state.callbacks.as_ref()).await;
    Ok(Json(MigrationView::of(&current)))
}

#[utoipa::path(put, path = "/v1/admin/migration", tag = "admin", request_body = SetMigration,
    responses((status = 200, body = MigrationView), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<SetMigration>,
) -> Result<Json<MigrationView>, ApiError> {
    caller.require_admin()?;
    let req = body.value;
    let mut errors = Vec::new();
    let mode = req
        .mode
        .parse::<MigrationMode>()
        .map_err(|e| errors.push(FieldError::new("mode", e)))
        .ok();
    let percent = MigrationState::validate(mode.unwrap_or_default(), req.cutover_percent)
        .map_err(|e| errors.push(FieldError::new("cutover_percent", e)))
        .ok();
    if matches!(mode, Some(MigrationMode::Shadow | MigrationMode::Split))
        && state.legacy_upstream.is_none()
    {
        errors.push(FieldError::new(
            "mode",
            "shadow and split mode need the legacy service (FLUXCB_LEGACY_UPSTREAM)",
        ));
    }
    if mode == Some(MigrationMode::Split) && state.legacy_table.is_none() {
        errors.push(FieldError::new(
            "mode",
            "split mode needs the legacy database (FLUXCB_LEGACY_DATABASE_URL): both sides take ids from its sequence",
        ));
    }
    let (Some(mode), Some(cutover_percent), true) = (mode, percent, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let next = MigrationState {
        mode,
        cutover_percent,
        updated_at: state.clock.now(),
    };
    state.callbacks.set_migration_state(next).await?;
    state.migration.remember(next);
    tracing::info!(mode = %mode, cutover_percent, actor = caller.actor(), "migration switch changed");
    Ok(Json(MigrationView::of(&next)))
}
