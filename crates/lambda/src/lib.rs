//! What the three Lambda entry points share: configuration from the environment (the same
//! `FLUXCB_*` settings as `fluxcb serve`), JSON logs, trace export when an OTLP endpoint is
//! configured (flushed before each invocation returns), CloudWatch EMF metrics, the AWS clients
//! (created once per cold start), and the event translations, kept here so that tests can
//! drive them with stored event fixtures without the Lambda runtime.
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use fluxcb::aws_backend::AwsParts;
use fluxcb::config::{self, Overrides, Settings};
use fluxcb_aws::deliverer::{Deliverer, Record};
use fluxcb_aws::sweeper::Sweeper;

/// The CloudWatch namespace of the functions' EMF metrics (the alarms in the template use it).
pub const METRICS_NAMESPACE: &str = "Fluxcb";

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Settings, logging, metrics and clients: everything a function's cold start does.
pub async fn init(function: &str) -> Result<(Settings, AwsParts), Error> {
    let config = config::load(
        None,
        Overrides {
            backend: Some("aws".into()),
            log_format: Some("json".into()),
            ..Overrides::default()
        },
    )?;
    fluxcb::telemetry::init(&config)?;
    if let Err(e) = fluxcb_aws::emf::install(METRICS_NAMESPACE) {
        tracing::warn!(error = %e, "EMF metrics are off");
    }
    let settings = config.validate()?;
    let parts = AwsParts::from_env(&settings).await?;
    tracing::debug!(function, "initialised");
    Ok((settings, parts))
}

/// Logs how long the cold start took, from the process's first instruction we control to the
/// handler being ready: the figure `docs/benchmarks.md` reports.
pub fn ready(function: &str, started: Instant) {
    tracing::info!(
        function,
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        "ready"
    );
}

/// The end of each invocation: Lambda freezes the process once the handler returns, so spans
/// still in the exporter's batch and metrics not yet written would wait for the next
/// invocation, or be lost with the instance.
pub async fn end_invocation() {
    fluxcb::telemetry::flush().await;
    flush_metrics();
}

/// Writes the metrics recorded since the last flush as EMF lines (end of each invocation).
pub fn flush_metrics() {
    if let Err(e) = fluxcb_aws::emf::flush_to_stdout() {
        tracing::warn!(error = %e, "could not write EMF metrics");
    }
}

/// One SQS batch: each record through the deliverer, failures reported back so that only
/// they return to the queue (`ReportBatchItemFailures`).
pub async fn handle_sqs(deliverer: &Deliverer, event: SqsEvent) -> SqsBatchResponse {
    let records: Vec<Record> = event
        .records
        .into_iter()
        .map(|m| Record {
            message_id: m.message_id.unwrap_or_default(),
            body: m.body.unwrap_or_default(),
        })
        .collect();
    let failed = deliverer.handle_batch(&records).await;
    let mut response = SqsBatchResponse::default();
    for id in failed {
        response.add_failure(id);
    }
    response
}

/// One scheduled sweep (an EventBridge "Scheduled Event"; its content is not used, so an
/// EventBridge Scheduler payload works as well). Answers with what the run did.
pub async fn handle_schedule(
    sweeper: &Sweeper,
    _event: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    let report = sweeper.sweep_once(chrono::Utc::now()).await?;
    tracing::info!(
        enqueued = report.enqueued,
        recovered = report.recovered,
        "sweep finished"
    );
    Ok(serde_json::json!({
        "enqueued": report.enqueued,
        "recovered": report.recovered,
    }))
}

/// The API router as Lambda serves it: the same router as `fluxcb serve` with its request
/// spans, and spans and metrics flushed after each request (outside the request's span, which
/// has ended by then).
pub fn api_router(
    settings: &Settings,
    parts: &AwsParts,
    legacy: fluxcb::app::LegacyParts,
) -> axum::Router {
    fluxcb::telemetry::trace_requests(fluxcb_http::router(
        parts.api_state(settings, None, legacy, None),
    ))
    .layer(axum::middleware::map_response(
        |response: axum::response::Response| async move {
            end_invocation().await;
            response
        },
    ))
}
