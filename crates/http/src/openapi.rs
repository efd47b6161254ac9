//! `GET /openapi.json`: the OpenAPI 3.1 description, generated from the handlers' annotations
//! and the DTO types, so it cannot drift from the code.
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "fluxcb", description = "Callback (webhook) delivery: accept, store, deliver with retries, dead-letter."),
    paths(
        crate::ingest::create,
        crate::ingest::create_batch,
        crate::callbacks::show,
        crate::callbacks::list,
        crate::callbacks::events,
        crate::callbacks::cancel,
        crate::callbacks::retry,
        crate::callbacks::dead_letters,
        crate::callbacks::redrive,
        crate::admin::create_key,
        crate::admin::list_keys,
        crate::admin::revoke_key,
        crate::admin::list_secrets,
        crate::admin::rotate_secret,
        crate::migration::show,
        crate::migration::set,
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics_text,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
