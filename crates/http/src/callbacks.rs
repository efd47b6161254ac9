//! Reading callbacks and acting on them: get, list, events, cancel, retry, dead letters.
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use fluxcb_core::callback::Callback;
use fluxcb_core::callback::FieldError;
use fluxcb_core::id::CallbackId;
use fluxcb_core::notify::{Kind, KindFilter};
use fluxcb_core::ports::{ActionResult, Due, LegacyListFilter, ListFilter, PageRequest};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::{Scope, TenantId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::dto::{CallbackList, CallbackView, EventList, EventView, RedriveRequest, RedriveResult};
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/callbacks", get(list))
        .route("/v1/callbacks/{id}", get(show))
        .route("/v1/callbacks/{id}/events", get(events))
        .route("/v1/callbacks/{id}/cancel", post(cancel))
        .route("/v1/callbacks/{id}/retry", post(retry))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/redrive", post(redrive))
}

fn parse_id(raw: &str) -> Result<CallbackId, ApiError> {
    // An id that cannot exist is simply not found: same answer as another tenant's id.
    raw.parse().map_err(|_| ApiError::NotFound("callback"))
}

#[utoipa::path(get, path = "/v1/callbacks/{id}", tag = "callbacks",
    params(("id" = String, Path, description = "cb_<ULID>")),
    responses((status = 200, body = CallbackView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CallbackView>, ApiError> {
    let id = parse_id(&id)?;
    let detail = state
        .callbacks
        .get(&caller.scope(), &id)
        .await?
        .ok_or(ApiError::NotFound("callback"))?;
    Ok(Json(CallbackView::of(
        &detail.callback,
        Some(&detail.attempts),
        true,
    )))
}

#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// scheduled, pending, delivering, delivered, failed or cancelled.
    pub status: Option<String>,
    /// Host name of the target URL.
    pub host: Option<String>,
    /// RFC 3339; callbacks created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// RFC 3339; callbacks created before.
    pub created_before: Option<DateTime<Utc>>,
    /// `key=value`: callbacks with this metadata tag.
    pub metadata: Option<String>,
    /// Admin keys only: one tenant.
    pub tenant: Option<String>,
    /// callback (default: callers' callbacks), notification, operational, or all.
    pub kind: Option<String>,
    /// One callback by id (`cb_...`): a page of at most one, the other filters applied to it.
    pub id: Option<String>,
    /// The legacy API's `external_id` (callbacks created through it or imported from it).
    pub external_id: Option<String>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1-500, default 50.
    pub limit: Option<u32>,
}

struct FilterParts<'a> {
    status: Option<&'a str>,
    host: Option<&'a str>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
    metadata: Option<&'a str>,
    tenant: Option<&'a str>,
    kind: Option<&'a str>,
}

fn build_filter(caller: &Caller, p: FilterParts<'_>) -> Result<ListFilter, ApiError> {
    let mut errors = Vec::new();
    let status = p.status.and_then(|s| {
        s.parse::<Status>()
            .map_err(|e| errors.push(FieldError::new("status", e.to_string())))
            .ok()
    });
    let metadata = p.metadata.and_then(|m| match m.split_once('=') {
        Some((k, v)) if !k.is_empty() => Some((k.to_owned(), v.to_owned())),
        _ => {
            errors.push(FieldError::new("metadata", "expected key=value"));
            None
        }
    });
    let tenant = match p.tenant {
        None => None,
        Some(_) if !matches!(caller.scope(), Scope::All) => {
            errors.push(FieldError::new(
                "tenant",
                "only admin keys may choose a tenant",
            ));
            None
        }
        Some(t) => TenantId::parse(t)
            .map_err(|e| errors.push(FieldError::new("tenant", e.to_string())))
            .ok(),
    };
    let kind = match p.kind {
        None => KindFilter::default(),
        Some(k) => k.parse().unwrap_or_else(|e: String| {
            errors.push(FieldError::new("kind", e));
            KindFilter::default()
        }),
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(ListFilter {
        status,
        host: p.host.map(str::to_owned),
        created_after: p.created_after,
        created_before: p.created_before,
        metadata,
        tenant,
        kind,
    })
}

/// The list filter a query asks for (its `id`, `external_id`, cursor and limit aside).
pub fn filter_of(caller: &Caller, q: &ListQuery) -> Result<ListFilter, ApiError> {
    build_filter(
        caller,
        FilterParts {
            status: q.status.as_deref(),
            host: q.host.as_deref(),
            created_after: q.created_after,
            created_before: q.created_before,
            metadata: q.metadata.as_deref(),
            tenant: q.tenant.as_deref(),
            kind: q.kind.as_deref(),
        },
    )
}

/// Whether a callback found by id or `external_id` passes the rest of the filter.
fn passes(cb: &Callback, f: &ListFilter) -> bool {
    f.status.is_none_or(|s| s == cb.status)
        && f.host.as_deref().is_none_or(|h| {
            cb.spec
                .url
                .host_str()
                .is_some_and(|x| x.eq_ignore_ascii_case(h))
        })
        && match f.kind {
            KindFilter::Callbacks => cb.kind == Kind::Callback,
            KindFilter::Only(k) => cb.kind == k,
            KindFilter::All => true,
        }
        && f.created_after.is_none_or(|t| cb.created_at >= t)
        && f.created_before.is_none_or(|t| cb.created_at < t)
        && f.metadata
            .as_ref()
            .is_none_or(|(k, v)| cb.spec.metadata.get(k) == Some(v))
        && f.tenant.as_ref().is_none_or(|t| *t == cb.tenant)
}

#[utoipa::path(get, path = "/v1/callbacks", tag = "callbacks", params(ListQuery),
    responses((status = 200, body = CallbackList), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<CallbackList>, ApiError> {
    list_inner(&state, &caller, q).await.map(Json)
}

async fn list_inner(
    state: &AppState,
    caller: &Caller,
    q: ListQuery,
) -> Result<CallbackList, ApiError> {
    let filter = filter_of(caller, &q)?;
    if q.id.is_some() || q.external_id.is_some() {
        return exact(state, caller, &q, &filter).await;
    }
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<CallbackId>().map_err(|_| {
            ApiError::Validation(vec![FieldError::new(
                "cursor",
                "not a cursor from this API",
            )])
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::Validation(vec![FieldError::new(
            "limit",
            "must be between 1 and 500",
        )]));
    }
    let page = state
        .callbacks
        .list(&caller.scope(), &filter, &PageRequest { cursor, limit })
        .await?;
    Ok(CallbackList {
        data: page
            .items
            .iter()
            .map(|cb| CallbackView::of(cb, None, false))
            .collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
}

/// A lookup by id or `external_id`: at most one callback per tenant, the other filters checked
/// on it. No cursor: there is never a next page.
async fn exact(
    state: &AppState,
    caller: &Caller,
    q: &ListQuery,
    filter: &ListFilter,
) -> Result<CallbackList, ApiError> {
    let scope = caller.scope();
    let mut found: Vec<Callback> = Vec::new();
    if let Some(id) = q.id.as_deref() {
        if let Ok(id) = id.trim().parse::<CallbackId>() {
            if let Some(detail) = state.callbacks.get(&scope, &id).await? {
                found.push(detail.callback);
            }
        }
    }
    if let Some(external_id) = q.external_id.as_deref() {
        let page = state
            .callbacks
            .list_legacy(
                &scope,
                &LegacyListFilter {
                    external_id: Some(external_id.to_owned()),
                    ..LegacyListFilter::default()
                },
                0,
                50,
            )
            .await?;
        if q.id.is_some() {
            // Both given: the callback must answer to both.
            found.retain(|cb| cb.external_id.as_deref() == Some(external_id));
        } else {
            found = page.items;
        }
    }
    found.retain(|cb| passes(cb, filter));
    Ok(CallbackList {
        data: found
            .iter()
            .map(|cb| CallbackView::of(cb, None, false))
            .collect(),
        next_cursor: None,
    })
}

#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters", params(ListQuery),
    responses((status = 200, body = CallbackList)), security(("bearer" = [])))]
pub async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    Query(mut q): Query<ListQuery>,
) -> Result<Json<CallbackList>, ApiError> {
    q.status = Some(Status::Failed.as_str().to_owned());
    list_inner(&state, &caller, q).await.map(Json)
}

#[utoipa::path(get, path = "/v1/callbacks/{id}/events", tag = "callbacks",
    params(("id" = String, Path)),
    responses((status = 200, body = EventList), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EventList>, ApiError> {
    let id = parse_id(&id)?;
    let events = state
        .callbacks
        .events(&caller.scope(), &id)
        .await?
        .ok_or(ApiError::NotFound("callback"))?;
    Ok(Json(EventList {
        data: events.iter().map(EventView::from).collect(),
    }))
}

fn action_response(
    result: ActionResult,
    verb: &str,
    allowed: &str,
) -> Result<Json<CallbackView>, ApiError> {
    match result {
        ActionResult::Done(cb) => Ok(Json(CallbackView::of(&cb, None, false))),
        ActionResult::NotFound => Err(ApiError::NotFound("callback")),
        ActionResult::WrongState(s) => Err(ApiError::WrongState(format!(
            "cannot {verb} a callback that is {s}; only {allowed} callbacks can be"
        ))),
        ActionResult::OwnedByLegacy => Err(ApiError::WrongState(format!(
            "cannot {verb} this callback here: the legacy service owns it (a migration mirror)"
        ))),
    }
}

#[utoipa::path(post, path = "/v1/callbacks/{id}/cancel", tag = "callbacks",
    params(("id" = String, Path)),
    responses((status = 200, body = CallbackView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CallbackView>, ApiError> {
    let id = parse_id(&id)?;
    let result = state
        .callbacks
        .cancel(&caller.scope(), &id, caller.actor())
        .await?;
    action_response(result, "cancel", "scheduled or pending")
}

#[utoipa::path(post, path = "/v1/callbacks/{id}/retry", tag = "callbacks",
    params(("id" = String, Path)),
    responses((status = 200, body = CallbackView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CallbackView>, ApiError> {
    let id = parse_id(&id)?;
    let result = state
        .callbacks
        .retry(&caller.scope(), &id, caller.actor())
        .await?;
    if let ActionResult::Done(cb) = &result {
        state
            .notify_queue(&[Due {
                id,
                tenant: cb.tenant.clone(),
                at: cb.next_attempt_at.unwrap_or(cb.updated_at),
            }])
            .await;
    }
    action_response(result, "retry", "failed")
}

/// The most one limited redrive request may move. Limited steps keep each write short: the
/// embedded store has one writer, and API Gateway cuts a Lambda's answer off after 29 s.
const REDRIVE_LIMIT_MAX: u32 = 10_000;

#[utoipa::path(post, path = "/v1/dead-letters/redrive", tag = "dead letters",
    request_body = RedriveRequest,
    responses((status = 200, body = RedriveResult), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn redrive(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<RedriveRequest>,
) -> Result<Json<RedriveResult>, ApiError> {
    let r = body.value;
    if r.limit
        .is_some_and(|n| !(1..=REDRIVE_LIMIT_MAX).contains(&n))
    {
        return Err(ApiError::Validation(vec![FieldError::new(
            "limit",
            format!("1-{REDRIVE_LIMIT_MAX}"),
        )]));
    }
    let filter = build_filter(
        &caller,
        FilterParts {
            status: None,
            host: r.host.as_deref(),
            created_after: r.created_after,
            created_before: r.created_before,
            metadata: r.metadata.as_deref(),
            tenant: r.tenant.as_deref(),
            kind: r.kind.as_deref(),
        },
    )?;
    if r.dry_run == Some(true) {
        let matched = state
            .callbacks
            .count_redrivable(&caller.scope(), &filter)
            .await?;
        return Ok(Json(RedriveResult {
            moved: 0,
            matched: Some(matched),
        }));
    }
    let moved = state
        .callbacks
        .redrive(&caller.scope(), &filter, caller.actor(), r.limit)
        .await?;
    if moved > 0 {
        state.notify_queue(&[]).await;
    }
    Ok(Json(RedriveResult {
        moved,
        matched: None,
    }))
}
