//! `/v1/destinations`: registering a tenant's receivers with settings of their own (see
//! `fluxcb_core::destination` for matching and precedence), pausing and resuming them, rotating
//! their signing secrets, and their live health.
//!
//! A registration's signing secret is shown once, in the answer that creates or rotates it;
//! its client key never. Changes apply on this node at once and on every other node within the
//! directory's refresh time (5 s).
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use fluxcb_core::callback::FieldError;
use fluxcb_core::destination::{DestinationId, DestinationTls, RegisteredDestination};
use fluxcb_core::tenant::Scope;

use crate::admin::target_tenant;
use crate::auth::Caller;
use crate::console::DestinationLoad;
use crate::dto::rfc3339;
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;
use crate::AppState;

mod dto;
pub use dto::*;

/// Attempts at a read-modify-write before a concurrent writer wins with a 409.
const UPDATE_TRIES: usize = 3;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/destinations", get(list).post(create))
        .route(
            "/v1/destinations/{id}",
            get(show).patch(update).delete(remove),
        )
        .route("/v1/destinations/{id}/pause", post(pause))
        .route("/v1/destinations/{id}/resume", post(resume))
        .route("/v1/destinations/{id}/rotate-secret", post(rotate_secret))
}

/// The destinations' live state, where this process can read it (none: `health` is left out).
async fn loads(state: &AppState) -> Vec<DestinationLoad> {
    let Some(source) = state.console.destination_health.get() else {
        return Vec::new();
    };
    match source.loads().await {
        Ok(loads) => loads,
        Err(e) => {
            // The registrations are still worth showing without it.
            tracing::warn!(error = %e, "destination health unavailable");
            Vec::new()
        }
    }
}

fn view(
    state: &AppState,
    loads: &[DestinationLoad],
    r: &RegisteredDestination,
    secret: Option<String>,
) -> RegisteredDestinationView {
    let health = r
        .limits_key()
        .and_then(|key| loads.iter().find(|d| d.destination == key).cloned());
    RegisteredDestinationView {
        id: r.id.to_string(),
        tenant: r.tenant.to_string(),
        matcher: MatchView::of(&r.matcher),
        description: r.description.clone(),
        settings: SettingsView::of(&r.settings),
        tls: (!r.tls.is_empty()).then(|| TlsView {
            ca_bundle_pem: r.tls.ca_bundle_pem.clone(),
            client_certificate_pem: r.tls.client_certificate_pem.clone(),
            client_key_set: r.tls.client_key_pem.is_some(),
        }),
        paused: r.paused,
        active_secrets: r.active_secrets(state.clock.now()).len(),
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        revision: r.revision,
        health,
        signing_secret: secret,
    }
}

fn description(d: Option<String>) -> Result<Option<String>, FieldError> {
    match d {
        Some(d) if d.chars().count() > fluxcb_core::destination::MAX_DESCRIPTION => {
            Err(FieldError::new(
                "description",
                format!(
                    "at most {} characters",
                    fluxcb_core::destination::MAX_DESCRIPTION
                ),
            ))
        }
        Some(d) if d.trim().is_empty() => Ok(None),
        d => Ok(d),
    }
}

/// The registration, if the caller may see it (another tenant's is "not found").
async fn visible(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<RegisteredDestination, ApiError> {
    let id: DestinationId = id.parse().map_err(|_| ApiError::NotFound("destination"))?;
    let found = state.destinations.store().get_destination(&id).await?;
    match (found, caller.scope()) {
        (Some(r), Scope::All) => Ok(r),
        (Some(r), Scope::Tenant(t)) if r.tenant == t => Ok(r),
        _ => Err(ApiError::NotFound("destination")),
    }
}

#[utoipa::path(get, path = "/v1/destinations", tag = "destinations", params(DestinationsQuery),
    responses((status = 200, body = DestinationList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<DestinationsQuery>,
) -> Result<Json<DestinationList>, ApiError> {
    let tenant = target_tenant(&caller, q.tenant.as_deref())?;
    let regs = state
        .destinations
        .store()
        .list_destinations(&tenant)
        .await?;
    Ok(Json(DestinationList {
        data: {
            let loads = loads(&state).await;
            regs.iter().map(|r| view(&state, &loads, r, None)).collect()
        },
    }))
}

#[utoipa::path(post, path = "/v1/destinations", tag = "destinations", request_body = CreateDestination,
    responses((status = 201, body = RegisteredDestinationView), (status = 400, body = Problem),
        (status = 409, description = "The tenant already registered this match", body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateDestination>,
) -> Result<(StatusCode, Json<RegisteredDestinationView>), ApiError> {
    let input = body.value;
    let tenant = target_tenant(&caller, input.tenant.as_deref())?;
    let mut errors = Vec::new();
    let matcher = input.matcher.parse().map_err(|e| errors.push(e)).ok();
    let settings = input.settings.parse().map_err(|e| errors.extend(e)).ok();
    let tls = match input.tls.map(TlsInput::parse).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            errors.extend(e);
            DestinationTls::default()
        }
    };
    let description = description(input.description)
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let (Some(matcher), Some(settings), true) = (matcher, settings, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let now = state.clock.now();
    let (mut r, secret) = RegisteredDestination::new(tenant.clone(), matcher, now);
    r.settings = settings;
    r.tls = tls;
    r.description = description;
    r.paused = input.paused;
    state.destinations.store().create_destination(&r).await?;
    state.destinations.invalidate(&tenant);
    tracing::info!(destination = %r.id, tenant = %tenant, actor = caller.actor(), "destination registered");
    Ok((
        StatusCode::CREATED,
        Json(view(
            &state,
            &loads(&state).await,
            &r,
            Some(secret.expose()),
        )),
    ))
}

#[utoipa::path(get, path = "/v1/destinations/{id}", tag = "destinations",
    params(("id" = String, Path, description = "dst_…")),
    responses((status = 200, body = RegisteredDestinationView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RegisteredDestinationView>, ApiError> {
    let r = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, &loads(&state).await, &r, None)))
}

/// Reads, changes and writes back a registration, again if another change came between.
async fn modify<T>(
    state: &AppState,
    caller: &Caller,
    id: &str,
    change: impl Fn(&mut RegisteredDestination) -> Result<T, ApiError>,
) -> Result<(RegisteredDestination, T), ApiError> {
    let mut last = None;
    for _ in 0..UPDATE_TRIES {
        let mut r = visible(state, caller, id).await?;
        let expected = r.revision;
        let out = change(&mut r)?;
        r.touch(state.clock.now());
        match state
            .destinations
            .store()
            .update_destination(&r, expected)
            .await
        {
            Ok(true) => {
                state.destinations.invalidate(&r.tenant);
                return Ok((r, out));
            }
            Ok(false) => return Err(ApiError::NotFound("destination")),
            Err(fluxcb_core::ports::StoreError::Conflict(m)) if m.contains("changed meanwhile") => {
                last = Some(m)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(last.unwrap_or_default()))
}

#[utoipa::path(patch, path = "/v1/destinations/{id}", tag = "destinations", request_body = UpdateDestination,
    params(("id" = String, Path, description = "dst_…")),
    responses((status = 200, body = RegisteredDestinationView), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<UpdateDestination>,
) -> Result<Json<RegisteredDestinationView>, ApiError> {
    let input = body.value;
    let mut errors = Vec::new();
    let matcher = match &input.matcher {
        Some(m) => m.parse().map_err(|e| errors.push(e)).ok(),
        None => None,
    };
    let settings = match &input.settings {
        Some(s) => s.parse().map_err(|e| errors.extend(e)).ok(),
        None => None,
    };
    let tls = match input.tls.clone().map(TlsInput::parse).transpose() {
        Ok(t) => t,
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    // Given: the new description (blank clears it); not given: unchanged.
    let new_description = input.description.clone().map(|d| {
        description(Some(d))
            .map_err(|e| errors.push(e))
            .ok()
            .flatten()
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (r, ()) = modify(&state, &caller, &id, |r| {
        if let Some(m) = &matcher {
            r.matcher = m.clone();
        }
        if let Some(s) = &settings {
            r.settings = s.clone();
        }
        if let Some(t) = &tls {
            r.tls = t.clone();
        }
        if let Some(d) = &new_description {
            r.description = d.clone();
        }
        if let Some(p) = input.paused {
            r.paused = p;
        }
        Ok(())
    })
    .await?;
    Ok(Json(view(&state, &loads(&state).await, &r, None)))
}

#[utoipa::path(delete, path = "/v1/destinations/{id}", tag = "destinations",
    params(("id" = String, Path, description = "dst_…")),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let r = visible(&state, &caller, &id).await?;
    if state.destinations.store().delete_destination(&r.id).await? {
        state.destinations.invalidate(&r.tenant);
        tracing::info!(destination = %r.id, tenant = %r.tenant, actor = caller.actor(), "destination removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("destination"))
    }
}

async fn set_paused(
    state: AppState,
    caller: Caller,
    id: String,
    paused: bool,
) -> Result<Json<RegisteredDestinationView>, ApiError> {
    let (r, ()) = modify(&state, &caller, &id, |r| {
        r.paused = paused;
        Ok(())
    })
    .await?;
    tracing::info!(destination = %r.id, tenant = %r.tenant, paused, actor = caller.actor(), "destination paused or resumed");
    Ok(Json(view(&state, &loads(&state).await, &r, None)))
}

/// Callbacks to a paused destination wait (no attempt is counted) until it is resumed.
#[utoipa::path(post, path = "/v1/destinations/{id}/pause", tag = "destinations",
    params(("id" = String, Path, description = "dst_…")),
    responses((status = 200, body = RegisteredDestinationView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RegisteredDestinationView>, ApiError> {
    set_paused(state, caller, id, true).await
}

#[utoipa::path(post, path = "/v1/destinations/{id}/resume", tag = "destinations",
    params(("id" = String, Path, description = "dst_…")),
    responses((status = 200, body = RegisteredDestinationView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RegisteredDestinationView>, ApiError> {
    set_paused(state, caller, id, false).await
}

#[utoipa::path(post, path = "/v1/destinations/{id}/rotate-secret", tag = "destinations",
    request_body = RotateDestinationSecret, params(("id" = String, Path, description = "dst_…")),
    responses((status = 200, body = RegisteredDestinationView),
        (status = 400, description = "Invalid or missing JSON body (send `{}` for the defaults)", body = Problem),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<RotateDestinationSecret>,
) -> Result<Json<RegisteredDestinationView>, ApiError> {
    let grace = chrono::Duration::seconds(body.value.grace_seconds.unwrap_or(86_400).into());
    let now = state.clock.now();
    let (r, secret) = modify(&state, &caller, &id, |r| Ok(r.rotate_secret(now, grace))).await?;
    tracing::info!(destination = %r.id, tenant = %r.tenant, actor = caller.actor(), "destination signing secret rotated");
    Ok(Json(view(
        &state,
        &loads(&state).await,
        &r,
        Some(secret.expose()),
    )))
}
