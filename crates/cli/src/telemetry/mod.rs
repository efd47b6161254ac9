//! Trace export: the `tracing` spans (HTTP requests, delivery attempts) sent over OTLP/HTTP
//! (protobuf) with a batch exporter, when an endpoint is configured ([`Config::trace_export`]).
//! Off by default: then nothing is built, no thread started, no propagator installed, and the
//! spans only add their fields to log lines.
//!
//! The exporter lives as long as the process, like the `tracing` subscriber it feeds, so it is
//! kept in a global; [`flush`] and [`shutdown`] reach it from wherever an invocation or the
//! server ends.
mod exporter_client;
mod request_span;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::registry::Registry;
use tracing_subscriber::Layer;

use crate::config::{Config, TraceExport};
use crate::logging;

pub use request_span::trace_requests;

/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "fluxcb";

/// The exporter's own request timeout: one slow collector must not hold a Lambda invocation's
/// flush (or the server's shutdown) for the SDK's default 10 s.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `serve` waits for the last spans to leave once it has stopped.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("trace export: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("trace export over https: cannot load the system CA certificates: {0}")]
    Roots(#[source] std::io::Error),
}

/// Logs, and trace export when configured. Call once, inside the Tokio runtime (exports run
/// on it). A bad `otlp_*` setting is not reported here but by [`Config::validate`], with the
/// others; until then nothing is exported.
pub fn init(config: &Config) -> Result<(), TelemetryError> {
    let traces = match config.trace_export() {
        Ok(Some(export)) => Some(start_export(&export)?),
        Ok(None) | Err(_) => None,
    };
    logging::init(&config.log_format, traces);
    Ok(())
}

/// True when spans are being exported.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

fn start_export(
    export: &TraceExport,
) -> Result<Box<dyn Layer<Registry> + Send + Sync>, TelemetryError> {
    let client = exporter_client::RuntimeHyperClient::new(EXPORT_TIMEOUT)?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(client)
        .with_timeout(EXPORT_TIMEOUT);
    if let Some(url) = &export.traces_url {
        builder = builder.with_endpoint(url.clone());
    }
    let exporter = builder.build()?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            export.sample_ratio,
        ))))
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("fluxcb");
    if PROVIDER.set(provider).is_err() {
        tracing::warn!("trace export was initialised twice; the first exporter stays");
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .boxed())
}

/// Exports the spans the batch holds now. Lambda calls it before each invocation returns: the
/// process is frozen between invocations, so a batch left for later may never leave.
pub async fn flush() {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    // force_flush blocks until the export is done, and the export runs on this runtime: on a
    // worker thread it could wait for itself.
    match tokio::task::spawn_blocking(move || provider.force_flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not export spans"),
        Err(e) => tracing::warn!(error = %e, "could not export spans"),
    }
}

/// Exports what is left, waiting at most `within`, and stops the exporter (end of `serve`).
pub async fn shutdown(within: Duration) {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    let stopped = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within));
    match tokio::time::timeout(within + Duration::from_millis(500), stopped).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "spans not exported at shutdown"),
        Ok(Err(e)) => tracing::warn!(error = %e, "spans not exported at shutdown"),
        Err(_) => tracing::warn!(
            ?within,
            "spans not exported at shutdown: the collector is too slow"
        ),
    }
}
