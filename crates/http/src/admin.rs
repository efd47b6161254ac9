//! Key and signing-secret management. Keys are admin-only; a tenant key may read and rotate
//! its own tenant's signing secrets (its receivers need them to verify).
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Duration;
use fluxcb_core::auth::{PlainKey, Role};
use fluxcb_core::callback::FieldError;
use fluxcb_core::ports::NewApiKey;
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::tenant::{Scope, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::dto::rfc3339;
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{id}", delete(revoke_key))
        .route("/v1/signing-secrets", get(list_secrets))
        .route("/v1/signing-secrets/rotate", post(rotate_secret))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub tenant: String,
    /// `tenant` (default) or `admin`.
    pub role: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub role: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// Only in the response that creates the key: it is not stored and cannot be shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl KeyView {
    fn of(k: &fluxcb_core::auth::ApiKey, key: Option<String>) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            tenant: k.tenant.to_string(),
            role: k.role.to_string(),
            created_at: rfc3339(k.created_at),
            revoked_at: k.revoked_at.map(rfc3339),
            key,
        }
    }
}

#[utoipa::path(post, path = "/v1/keys", tag = "admin", request_body = CreateKey,
    responses(
        (status = 201, body = KeyView),
        (status = 400, description = "Invalid request", body = Problem),
        (status = 403, description = "Needs an admin key", body = Problem),
        (status = 409, description = "A key with this name exists", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    caller.require_admin()?;
    let req = body.value;
    let mut errors = Vec::new();
    let tenant = TenantId::parse_for_key(&req.tenant)
        .map_err(|e| errors.push(FieldError::new("tenant", e)))
        .ok();
    let role = req
        .role
        .as_deref()
        .unwrap_or("tenant")
        .parse::<Role>()
        .map_err(|e| errors.push(FieldError::new("role", e)))
        .ok();
    if req.name.trim().is_empty() || req.name.len() > 100 {
        errors.push(FieldError::new("name", "1-100 characters"));
    }
    let (Some(tenant), Some(role), true) = (tenant, role, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let plain = PlainKey::generate();
    let key = state
        .keys
        .create_key(NewApiKey {
            name: req.name,
            tenant,
            role,
            hash: plain.hash(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyView::of(&key, Some(plain.expose().to_owned()))),
    ))
}

#[utoipa::path(get, path = "/v1/keys", tag = "admin",
    responses((status = 200, body = [KeyView])), security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    caller.require_admin()?;
    let keys = state.keys.list_keys().await?;
    Ok(Json(keys.iter().map(|k| KeyView::of(k, None)).collect()))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "admin", params(("id" = String, Path, description = "Key id or name")),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    if state.keys.revoke_key(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("key"))
    }
}

#[derive(Deserialize, IntoParams, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// Admin keys only; defaults to the caller's tenant.
    pub tenant: Option<String>,
}

/// The tenant a request acts on: the caller's own, or the one an admin key names (a tenant key
/// naming another tenant is forbidden).
pub(crate) fn target_tenant(
    caller: &Caller,
    requested: Option<&str>,
) -> Result<TenantId, ApiError> {
    match (requested, caller.scope()) {
        (None, _) => Ok(caller.0.tenant.clone()),
        (Some(t), Scope::All) => TenantId::parse(t)
            .map_err(|e| ApiError::Validation(vec![FieldError::new("tenant", e.to_string())])),
        (Some(t), Scope::Tenant(own)) if own.as_str() == t => Ok(own),
        (Some(_), Scope::Tenant(_)) => Err(ApiError::Forbidden),
    }
}

#[derive(Serialize, ToSchema)]
pub struct SecretList {
    pub tenant: String,
    /// Active secrets, newest first: during a rotation every one of them signs.
    pub secrets: Vec<String>,
}

#[utoipa::path(get, path = "/v1/signing-secrets", tag = "signing", params(TenantQuery),
    responses((status = 200, body = SecretList)), security(("bearer" = [])))]
pub async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
) -> Result<Json<SecretList>, ApiError> {
    let tenant = target_tenant(&caller, q.tenant.as_deref())?;
    let secrets = state
        .secrets
        .active_secrets(&tenant, state.clock.now())
        .await?;
    Ok(Json(SecretList {
        tenant: tenant.to_string(),
        secrets: secrets.iter().map(SigningSecret::expose).collect(),
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    pub tenant: Option<String>,
    /// How long the previous secrets keep signing beside the new one (default 86400).
    pub grace_seconds: Option<u32>,
}

#[utoipa::path(post, path = "/v1/signing-secrets/rotate", tag = "signing", request_body = RotateRequest,
    responses((status = 200, body = SecretList), (status = 400, description = "Invalid request", body = Problem)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<RotateRequest>,
) -> Result<Json<SecretList>, ApiError> {
    let tenant = target_tenant(&caller, body.value.tenant.as_deref())?;
    let grace = Duration::seconds(body.value.grace_seconds.unwrap_or(86_400).into());
    let now = state.clock.now();
    state
        .secrets
        .add_secret(&tenant, &SigningSecret::generate(), now + grace)
        .await?;
    let secrets = state.secrets.active_secrets(&tenant, now).await?;
    Ok(Json(SecretList {
        tenant: tenant.to_string(),
        secrets: secrets.iter().map(SigningSecret::expose).collect(),
    }))
}
