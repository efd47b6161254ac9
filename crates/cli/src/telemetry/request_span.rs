//! One span per HTTP request, named by the route template (`POST /v1/callbacks/{id}/retry`),
//! never the raw path: paths carry ids, and the legacy API's query strings carry tokens.
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use opentelemetry_http::HeaderExtractor;
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Wraps every route of `router` (and its fallback) in a request span; while spans are
/// exported, a request's W3C `traceparent` makes its span part of the caller's trace.
pub fn trace_requests(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(in_request_span))
}

async fn in_request_span(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    macro_rules! request_span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "http_request",
                otel.name = %name,
                otel.kind = "server",
                otel.status_code = Empty,
                http.request.method = %method,
                http.route = route.as_deref(),
                http.response.status_code = Empty,
            )
        };
    }
    // Probes and scrapes come every few seconds from load balancers and Prometheus: at debug
    // they stay out of the exported traces (which take info and above) and the default logs.
    let span = match route.as_deref() {
        Some("/healthz" | "/readyz" | "/metrics") => request_span!(tracing::Level::DEBUG),
        _ => request_span!(tracing::Level::INFO),
    };
    if super::exporting() {
        let caller = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Without a usable traceparent this is an empty context: the span starts a trace.
        let _ = span.set_parent(caller);
    }
    let response = next.run(request).instrument(span.clone()).await;
    // Only an exported span can show the status: the request's log lines were all written
    // before it existed. Recording it anyway re-formats the span's fields for the log layer,
    // ~3 % of the server's CPU under ingest.
    if super::exporting() {
        let status = response.status();
        // Signed: OTLP has no unsigned integers, and unsigned values are exported as strings.
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
    response
}
