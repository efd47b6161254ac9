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
use fluxcb_core::callback::{FieldError, WireFormat};
use fluxcb_core::destination::{
    DestinationId, DestinationMatch, DestinationSettings, DestinationTls, RegisteredDestination,
};
use fluxcb_core::tenant::Scope;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::admin::target_tenant;
use crate::auth::Caller;
use crate::console::DestinationLoad;
use crate::dto::rfc3339;
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;
use crate::AppState;

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

/// Exactly one of the three.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchView {
    /// `scheme://host[:port]`: every URL on this origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// An http(s) URL: URLs on its origin whose path is this path or continues it by whole
    /// segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_prefix: Option<String>,
    /// `true`: every URL of the tenant (the tenant's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
}

impl MatchView {
    fn parse(&self) -> Result<DestinationMatch, FieldError> {
        let field = |m: String| FieldError::new("match", m);
        match (&self.origin, &self.url_prefix, self.any) {
            (Some(o), None, None) => {
                DestinationMatch::origin(o).map_err(|m| FieldError::new("match.origin", m))
            }
            (None, Some(p), None) => {
                DestinationMatch::url_prefix(p).map_err(|m| FieldError::new("match.url_prefix", m))
            }
            (None, None, Some(true)) => Ok(DestinationMatch::Any),
            _ => Err(field(
                "give exactly one of origin, url_prefix or any: true".into(),
            )),
        }
    }

    fn of(m: &DestinationMatch) -> Self {
        match m {
            DestinationMatch::Origin(o) => Self {
                origin: Some(o.clone()),
                ..Self::default()
            },
            DestinationMatch::UrlPrefix(p) => Self {
                url_prefix: Some(p.clone()),
                ..Self::default()
            },
            DestinationMatch::Any => Self {
                any: Some(true),
                ..Self::default()
            },
        }
    }
}

/// Settings of a registration; each one left out falls through to the tenant's defaults (a
/// registration matching `any`), then to the installation's. A callback's own `timeout_ms`,
/// `max_attempts` and `wire_format` come before all of them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsView {
    /// `standard_webhooks`, `legacy` or `both`; for callbacks that do not name one, fixed when
    /// the callback is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_format: Option<String>,
    /// Requests per second, spread evenly; a callback over the rate waits its turn (deferred,
    /// no attempt counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<f64>,
    /// Attempts in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delays before attempt 2, 3, … (`["10s", "1m", "1h"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_schedule: Option<Vec<String>>,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_failure_threshold: Option<u32>,
    /// How long the breaker stays open the first time, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_open_ms: Option<u64>,
}

impl SettingsView {
    fn parse(&self) -> Result<DestinationSettings, Vec<FieldError>> {
        let mut errors = Vec::new();
        let wire_format = match self.wire_format.as_deref().map(str::parse::<WireFormat>) {
            Some(Err(m)) => {
                errors.push(FieldError::new("wire_format", m));
                None
            }
            Some(Ok(f)) => Some(f),
            None => None,
        };
        let retry_schedule_ms = match &self.retry_schedule {
            None => None,
            Some(steps) => {
                let parsed: Result<Vec<u64>, String> = steps
                    .iter()
                    .map(|s| {
                        humantime::parse_duration(s)
                            .map(|d| d.as_millis() as u64)
                            .map_err(|e| format!("`{s}`: {e}"))
                    })
                    .collect();
                match parsed {
                    Ok(ms) => Some(ms),
                    Err(m) => {
                        errors.push(FieldError::new("retry_schedule", m));
                        None
                    }
                }
            }
        };
        let settings = DestinationSettings {
            wire_format,
            rate_limit_per_second: self.rate_limit_per_second,
            max_in_flight: self.max_in_flight,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            retry_schedule_ms,
            circuit_failure_threshold: self.circuit_failure_threshold,
            circuit_open_ms: self.circuit_open_ms,
        };
        errors.extend(settings.validate().into_iter().map(|e| {
            if e.field == "retry_schedule_ms" {
                FieldError::new("retry_schedule", e.message)
            } else {
                e
            }
        }));
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors.into_iter().map(|e| e.prefixed("settings")).collect())
        }
    }

    fn of(s: &DestinationSettings) -> Self {
        Self {
            wire_format: s.wire_format.map(|f| f.as_str().to_owned()),
            rate_limit_per_second: s.rate_limit_per_second,
            max_in_flight: s.max_in_flight,
            timeout_ms: s.timeout_ms,
            max_attempts: s.max_attempts,
            retry_schedule: s.retry_schedule_ms.as_ref().map(|steps| {
                steps
                    .iter()
                    .map(|&ms| {
                        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                    })
                    .collect()
            }),
            circuit_failure_threshold: s.circuit_failure_threshold,
            circuit_open_ms: s.circuit_open_ms,
        }
    }
}

/// TLS toward the receiver, as given.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsInput {
    /// PEM CA certificates trusted for this destination, beside the installation's roots.
    pub ca_bundle_pem: Option<String>,
    /// PEM certificate chain presented to the receiver (mTLS).
    pub client_certificate_pem: Option<String>,
    /// PEM private key of that certificate. Write-only: never shown again.
    pub client_key_pem: Option<String>,
}

impl TlsInput {
    fn parse(self) -> Result<DestinationTls, Vec<FieldError>> {
        let tls = DestinationTls {
            ca_bundle_pem: self.ca_bundle_pem,
            client_certificate_pem: self.client_certificate_pem,
            client_key_pem: self.client_key_pem,
        };
        let mut errors = tls.validate();
        if errors.is_empty() {
            // Shape is not enough: what cannot be parsed now would fail every attempt later.
            let certs = |field: &str, pem: &Option<String>, errors: &mut Vec<FieldError>| {
                if let Some(pem) = pem {
                    let parsed: Result<Vec<_>, _> =
                        rustls_pemfile::certs(&mut pem.as_bytes()).collect();
                    if !parsed.is_ok_and(|c| !c.is_empty()) {
                        errors.push(FieldError::new(field, "no readable PEM certificate"));
                    }
                }
            };
            certs("tls.ca_bundle_pem", &tls.ca_bundle_pem, &mut errors);
            certs(
                "tls.client_certificate_pem",
                &tls.client_certificate_pem,
                &mut errors,
            );
            if let Some(key) = &tls.client_key_pem {
                if !matches!(
                    rustls_pemfile::private_key(&mut key.as_bytes()),
                    Ok(Some(_))
                ) {
                    errors.push(FieldError::new(
                        "tls.client_key_pem",
                        "no readable PEM private key",
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(tls)
        } else {
            Err(errors)
        }
    }
}

/// TLS toward the receiver, as shown: certificates are public, the key only says it is set.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TlsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_pem: Option<String>,
    pub client_key_set: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDestination {
    /// Admin keys only; defaults to the caller's tenant.
    pub tenant: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchView,
    pub description: Option<String>,
    #[serde(default)]
    pub settings: SettingsView,
    pub tls: Option<TlsInput>,
    #[serde(default)]
    pub paused: bool,
}

/// Each section given replaces that section whole; sections left out stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDestination {
    #[serde(rename = "match")]
    pub matcher: Option<MatchView>,
    pub description: Option<String>,
    pub settings: Option<SettingsView>,
    /// `{}` removes the TLS settings.
    pub tls: Option<TlsInput>,
    pub paused: Option<bool>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateDestinationSecret {
    /// How long the previous secrets keep signing beside the new one (default 86400).
    pub grace_seconds: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct RegisteredDestinationView {
    pub id: String,
    pub tenant: String,
    #[serde(rename = "match")]
    pub matcher: MatchView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub settings: SettingsView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsView>,
    pub paused: bool,
    /// Secrets signing right now (more than one during a rotation's grace period).
    pub active_secrets: usize,
    pub created_at: String,
    pub updated_at: String,
    pub revision: u64,
    /// This node's delivery engine's view: in flight, consecutive failures, breaker. Absent
    /// where no engine runs in the process (Lambda's API function) or nothing is going on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<DestinationLoad>,
    /// Only in the answers that create or rotate it: store it now, it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DestinationList {
    pub data: Vec<RegisteredDestinationView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DestinationsQuery {
    /// Admin keys only; defaults to the caller's tenant.
    pub tenant: Option<String>,
}

fn view(
    state: &AppState,
    r: &RegisteredDestination,
    secret: Option<String>,
) -> RegisteredDestinationView {
    let health = r.limits_key().and_then(|key| {
        state
            .console
            .destination_health
            .get()
            .and_then(|read| read().into_iter().find(|d| d.destination == key))
    });
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
        data: regs.iter().map(|r| view(&state, r, None)).collect(),
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
        Json(view(&state, &r, Some(secret.expose()))),
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
    Ok(Json(view(&state, &r, None)))
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
    Ok(Json(view(&state, &r, None)))
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
    Ok(Json(view(&state, &r, None)))
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
    Ok(Json(view(&state, &r, Some(secret.expose()))))
}
