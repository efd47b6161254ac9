//! Trace export over OTLP/HTTP, end to end: `fluxcb serve` as a process, a loopback collector
//! that decodes what it is sent with the OTLP protobuf definitions, a callback ingested with a
//! W3C `traceparent` and delivered to a loopback receiver. The ingest span continues the
//! caller's trace, the attempt's span names the callback, nothing exported carries the
//! payload, the URL's query, a header value, a key or the signing secret, and SIGTERM sends
//! what the batch still held. Without an endpoint, no exporter thread and nothing sent.
mod common;
#[path = "common/otlp_collector.rs"]
mod otlp_collector;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{ServeProcess, TestReceiver, PROCESS_API_KEY};
use otlp_collector::{int_attribute, string_attribute, Collector};
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const PAYLOAD_MARKER: &str = "payload-marker-5d1e0b";
const QUERY_MARKER: &str = "query-marker-93c2aa";
const HEADER_MARKER: &str = "header-marker-71f04e";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names of the threads of process `pid` (Linux truncates them to 15 bytes).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn signing_secret() -> String {
    let key = base64::engine::general_purpose::STANDARD.encode(b"otlp-test-signing-secret-32-byte");
    format!("whsec_{key}")
}

/// Sends one callback (with `traceparent` when given) and waits until it is delivered.
async fn deliver_one(
    server: &ServeProcess,
    receiver: &TestReceiver,
    traceparent: Option<&str>,
) -> String {
    let http = reqwest::Client::new();
    let mut request = http
        .post(server.url("/v1/callbacks"))
        .bearer_auth(PROCESS_API_KEY)
        .json(&json!({
            "url": receiver.url(&format!("/ok/otlp?token={QUERY_MARKER}")),
            "headers": {"X-Receiver-Token": HEADER_MARKER},
            "payload": {"secret": PAYLOAD_MARKER},
        }));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let created = request.send().await.unwrap();
    assert_eq!(created.status(), 202);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view: Value = http
            .get(server.url(&format!("/v1/callbacks/{id}")))
            .bearer_auth(PROCESS_API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["status"] == "delivered" {
            return id;
        }
        assert!(Instant::now() < deadline, "not delivered: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_carry_no_secrets() {
    let collector = Collector::start().await;
    let receiver = TestReceiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("server.log");
    let secret = signing_secret();
    let endpoint = collector.base_url();
    let mut server = ServeProcess::start(
        &tmp.path().join("data"),
        &log,
        None,
        &[
            ("FLUXCB_OTLP_ENDPOINT", endpoint.as_str()),
            ("FLUXCB_SIGNING_SECRET", secret.as_str()),
            // Nothing leaves on the batch's timer during the test: what arrives is what the
            // shutdown flushed.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    )
    .await;
    assert!(
        thread_names(server.child.id())
            .iter()
            .any(|t| t.starts_with("OpenTelemetry")),
        "the batch exporter's thread runs while exporting: {:?}",
        thread_names(server.child.id())
    );

    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    let id = deliver_one(&server, &receiver, Some(&traceparent)).await;
    assert_eq!(receiver.received_on("/ok/otlp").len(), 1);
    assert_eq!(collector.requests(), 0, "exported before the batch was due");

    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "serve did not stop cleanly: {status:?}"
    );

    let spans = collector.spans();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert!(
        spans.iter().all(|(service, _)| service == "fluxcb"),
        "service.name: {:?}",
        spans.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );

    let ingest = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "POST /v1/callbacks")
        .unwrap_or_else(|| panic!("no ingest span among {names:?}; log:\n{log_text}"));
    assert_eq!(hex(&ingest.trace_id), TRACE_ID);
    assert_eq!(hex(&ingest.parent_span_id), CALLER_SPAN_ID);
    assert_eq!(
        string_attribute(&ingest.attributes, "http.route").as_deref(),
        Some("/v1/callbacks")
    );
    assert_eq!(
        int_attribute(&ingest.attributes, "http.response.status_code"),
        Some(202)
    );

    // Reads of the callback are named by the route template, not the id in the path.
    let read = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "GET /v1/callbacks/{id}")
        .unwrap_or_else(|| panic!("no read span among {names:?}"));
    assert_ne!(
        hex(&read.trace_id),
        TRACE_ID,
        "a request without traceparent starts its own trace"
    );

    // The readiness polls (`ServeProcess::start` waits on /healthz) are not exported.
    assert!(
        !names.iter().any(|n| n.contains("/healthz")),
        "probes exported: {names:?}"
    );

    let attempt = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "delivery attempt")
        .unwrap_or_else(|| panic!("no delivery attempt span among {names:?}"));
    let attrs = &attempt.attributes;
    assert_eq!(
        string_attribute(attrs, "callback_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        string_attribute(attrs, "tenant").as_deref(),
        Some("default")
    );
    assert_eq!(
        string_attribute(attrs, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(int_attribute(attrs, "attempt"), Some(1));
    assert_eq!(int_attribute(attrs, "http.response.status_code"), Some(200));
    assert_eq!(
        string_attribute(attrs, "outcome").as_deref(),
        Some("delivered")
    );
    assert!(int_attribute(attrs, "duration_ms").is_some());

    for body in collector.bodies() {
        for secret in [
            PAYLOAD_MARKER,
            QUERY_MARKER,
            HEADER_MARKER,
            PROCESS_API_KEY,
            secret.as_str(),
            secret.trim_start_matches("whsec_"),
        ] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} was exported"
            );
        }
    }
}

/// Runs a server with `env`, delivers a traced callback, and says whether an exporter thread
/// ran; the server is stopped (SIGTERM, which would flush an exporter) before returning.
async fn exporter_thread_ran(env: &[(&str, &str)]) -> bool {
    let receiver = TestReceiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(
        &tmp.path().join("data"),
        &tmp.path().join("server.log"),
        None,
        env,
    )
    .await;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    deliver_one(&server, &receiver, Some(&traceparent)).await;
    let threads = thread_names(server.child.id());
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).await.is_some());
    threads.iter().any(|t| t.starts_with("OpenTelemetry"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_an_endpoint() {
    // Empty endpoint variables are no endpoint; the other OTEL settings alone start nothing.
    assert!(
        !exporter_thread_ran(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", " "),
            ("OTEL_SERVICE_NAME", "fluxcb-unconfigured"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ])
        .await,
        "an exporter thread runs without an endpoint"
    );
    // An endpoint with the SDK switched off (the standard OTEL_SDK_DISABLED) sends nothing.
    let collector = Collector::start().await;
    let endpoint = collector.base_url();
    assert!(
        !exporter_thread_ran(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ])
        .await,
        "an exporter thread runs with OTEL_SDK_DISABLED=true"
    );
    assert_eq!(collector.requests(), 0);
}
