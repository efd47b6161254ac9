//! Lambda freezes the process as soon as a handler returns, so an invocation's spans must have
//! reached the collector by then: the API function's router, driven with the stored API Gateway
//! event, has exported the request's span before it answers, although the batch's own timer
//! would wait a minute. (The deliverer and sweeper end their invocations through the same
//! `end_invocation`.)
#[path = "../../cli/tests/common/otlp_collector.rs"]
mod otlp_collector;
mod support;

use fluxcb::config::Config;
use otlp_collector::{int_attribute, Collector};
use support::fixture;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_function_exports_a_requests_span_before_it_answers() {
    let collector = Collector::start().await;
    let Some(f) = support::function(|_| {}).await else {
        return;
    };
    // The only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "60000");
    fluxcb::telemetry::init(&Config {
        otlp_endpoint: collector.base_url(),
        log_format: "json".into(),
        ..Config::default()
    })
    .expect("trace export starts");
    assert!(fluxcb::telemetry::exporting());
    f.parts.prepare(&f.settings).await.expect("prepare");
    let router = fluxcb_lambda::api_router(
        &f.settings,
        &f.parts,
        f.parts.legacy_parts(&f.settings).await.unwrap(),
    );

    let request = lambda_http::request::from_str(&fixture("apigw-v2-post-callback.json"))
        .expect("API Gateway v2 event");
    let response = router.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), 202);

    // No waiting: the invocation is over once the response is out.
    let spans = collector.spans();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let ingest = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "POST /v1/callbacks")
        .unwrap_or_else(|| panic!("the request's span was not exported in time: {names:?}"));
    assert_eq!(
        int_attribute(&ingest.attributes, "http.response.status_code"),
        Some(202)
    );
    assert!(spans.iter().all(|(service, _)| service == "fluxcb"));
}
