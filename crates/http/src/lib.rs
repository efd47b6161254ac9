//! The HTTP API as one axum [`Router`] built from [`AppState`]: `fluxcb serve` serves it with
//! `axum::serve`, and the Lambda API function will serve the same router through `lambda_http`.
//!
//! Each feature module owns its routes; handlers stay short and call the domain through the
//! ports in [`AppState`]. Errors become RFC 7807 problems in [`error`] only.

mod admin;
pub mod auth;
mod callbacks;
pub mod console;
pub mod destinations;
pub mod dto;
pub mod error;
mod extract;
#[cfg(fuzzing)]
pub mod fuzzing;
mod health;
mod ingest;
pub mod legacy_api;
mod migration;
pub mod openapi;
mod ordering;
pub mod rate_limit;
pub mod request_limits;
mod stats;

use std::sync::Arc;

use axum::Router;
use fluxcb_core::callback::CallbackDefaults;
use fluxcb_core::ports::{
    CallbackStore, Clock, Due, KeyStore, LegacyTable, Queue, SecretStore, SendNow,
};

pub use ingest::InFlightKeys;

#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Body limit of every endpoint but batch ingest.
    pub body_bytes: usize,
    pub batch_body_bytes: usize,
    pub batch_items: usize,
    pub head: request_limits::HeadLimits,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            body_bytes: 256 * 1024,
            batch_body_bytes: 4 * 1024 * 1024,
            batch_items: 1000,
            head: request_limits::HeadLimits::default(),
        }
    }
}

pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything the handlers need, shared by clone.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

pub struct AppParts {
    pub callbacks: Arc<dyn CallbackStore>,
    pub keys: Arc<dyn KeyStore>,
    pub secrets: Arc<dyn SecretStore>,
    /// Registered destinations, as this node last read them.
    pub destinations: Arc<fluxcb_core::directory::DestinationDirectory>,
    pub clock: Arc<dyn Clock>,
    pub defaults: CallbackDefaults,
    pub limits: ApiLimits,
    /// Told about callbacks once they are committed and due to be worked on.
    pub queue: Arc<dyn Queue>,
    /// Renders the metrics registry for `/metrics` (None: no exporter, 404).
    pub metrics: Option<MetricsRender>,
    pub key_cache: auth::KeyCache,
    /// Requests per API key (`api_rate_limit`; disabled at 0).
    pub rate_limit: rate_limit::KeyRateLimiter,
    /// The legacy shared secret, when configured: callbacks may then use the legacy wire
    /// format, and shadow runs record the legacy-signed request fluxcb would have sent.
    pub legacy_secret: Option<Arc<[u8]>>,
    pub in_flight: InFlightKeys,
    /// The legacy table, while the legacy database is configured: ids and `external_id`
    /// uniqueness for rows created through the legacy API.
    pub legacy_table: Option<Arc<dyn LegacyTable>>,
    /// Makes the legacy API's synchronous `send` attempts (None: `send` answers 501).
    pub send_now: Option<Arc<dyn SendNow>>,
    /// The legacy services, for shadow and split mode (None: only `off` is possible).
    pub legacy_upstream: Option<Arc<dyn legacy_api::LegacyUpstream>>,
    /// The migration switch as this node sees it.
    pub migration: legacy_api::MigrationControl,
    /// Receivers moved off the legacy format: callbacks created through the legacy API for
    /// these destinations use the given format instead (`legacy_receiver_formats`).
    pub legacy_receiver_formats: Vec<(
        fluxcb_core::callback::Destination,
        fluxcb_core::callback::WireFormat,
    )>,
    /// The console's sessions, failed-login counts and view of the delivery engine.
    pub console: console::ConsoleState,
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }

    /// The callbacks are committed already; a failed notification only delays them until the
    /// store is next polled (locally) or swept (on AWS), so it is logged, not returned.
    pub async fn notify_queue(&self, due: &[Due]) {
        if let Err(e) = self.queue.notify(due).await {
            tracing::warn!(error = %e, count = due.len(), "could not notify the queue; the sweep will pick these up");
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(ingest::router(&state.limits))
        .merge(callbacks::router())
        .merge(admin::router())
        .merge(migration::router())
        .merge(stats::router())
        .merge(destinations::router())
        .merge(ordering::router())
        .merge(console::router())
        .merge(openapi::router())
        .layer(axum::extract::DefaultBodyLimit::max(
            state.limits.body_bytes,
        ))
        .merge(legacy_api::router())
        .layer(axum::Extension(extract::BodyLimit(state.limits.body_bytes)))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.head,
            request_limits::enforce,
        ))
        .with_state(state)
}
