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
        crate::stats::dead_letter_groups,
        crate::stats::stats,
        crate::stats::destinations,
        crate::ordering::release,
        crate::destinations::list,
        crate::destinations::create,
        crate::destinations::show,
        crate::destinations::update,
        crate::destinations::remove,
        crate::destinations::pause,
        crate::destinations::resume,
        crate::destinations::rotate_secret,
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
    modifiers(&BearerAuth, &ProblemResponses)
)]
pub struct ApiDoc;

/// What every operation shares and the annotations would repeat: errors are
/// `application/problem+json`, and an operation behind a key can answer 401 and 429.
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                for (status, response) in op.responses.responses.iter_mut() {
                    let utoipa::openapi::RefOr::T(response) = response else {
                        continue;
                    };
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    if let Some(content) = response.content.shift_remove("application/json") {
                        let media = if is_error {
                            "application/problem+json"
                        } else {
                            "application/json"
                        };
                        response.content.insert(media.to_owned(), content);
                    }
                }
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    for (status, why) in [
                        ("401", "Missing, unknown or revoked API key"),
                        (
                            "429",
                            "Over the key's rate limit (api_rate_limit); see Retry-After",
                        ),
                    ] {
                        op.responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| {
                                ResponseBuilder::new()
                                    .description(why)
                                    .content("application/problem+json", problem())
                                    .build()
                                    .into()
                            });
                    }
                }
            }
        }
    }
}

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
