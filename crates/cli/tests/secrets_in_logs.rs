//! Keys, signing secrets and payloads never reach the logs or error messages: a server logging
//! everything down to `debug` goes through key creation, secret rotation, deliveries in both
//! wire formats (one retried, one dead-lettered), wrong keys and malformed requests; then the
//! whole log and every error body are searched for each secret.
mod common;

use std::time::Duration;

use common::{ServeProcess, TestReceiver, PROCESS_API_KEY};
use serde_json::{json, Value};

const LEGACY_SECRET: &str = "legacy-shared-secret-do-not-log";
const PAYLOAD_MARKER: &str = "payload-marker-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_secrets_and_payloads_never_appear_in_logs_or_errors() {
    let receiver = TestReceiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let server = ServeProcess::start(
        &data,
        &log,
        None,
        &[
            ("RUST_LOG", "debug,hyper=info,h2=info,rustls=info"),
            ("FLUXCB_LEGACY_SIGNING_SECRET", LEGACY_SECRET),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth(PROCESS_API_KEY);
    let mut error_bodies = Vec::new();

    let key: Value = admin(http.post(server.url("/v1/keys")))
        .json(&json!({"name": "acme-key", "tenant": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_key = key["key"].as_str().unwrap().to_owned();
    let rotated: Value = http
        .post(server.url("/v1/signing-secrets/rotate"))
        .bearer_auth(&tenant_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secrets: Vec<String> = rotated["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert!(!secrets.is_empty());

    for (path, format) in [
        ("/ok/std", "standard_webhooks"),
        ("/ok/legacy", "legacy"),
        ("/flaky/1/once", "both"),
        ("/status/500", "standard_webhooks"),
    ] {
        let r = http
            .post(server.url("/v1/callbacks"))
            .bearer_auth(&tenant_key)
            .json(&json!({
                "url": receiver.url(path),
                "wire_format": format,
                "max_attempts": 2,
                "headers": {"Authorization": format!("Bearer {PAYLOAD_MARKER}-header")},
                "payload": {"secret": PAYLOAD_MARKER},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    // Wrong keys, and a key in the wrong place, and bad bodies: the answers name no secret.
    for auth in [
        format!("Bearer {tenant_key}x"),
        format!("Token {tenant_key}"),
        format!("Basic {PROCESS_API_KEY}"),
    ] {
        let r = http
            .get(server.url("/v1/callbacks"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        error_bodies.push(r.text().await.unwrap());
    }
    let r = http
        .post(server.url("/v1/callbacks"))
        .bearer_auth(&tenant_key)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"url\": \"not a url {PAYLOAD_MARKER}\", \"payload\": "
        ))
        .send()
        .await
        .unwrap();
    error_bodies.push(r.text().await.unwrap());

    receiver
        .wait_for("/status/500", 2, Duration::from_secs(20))
        .await;
    receiver
        .wait_for("/flaky/1/once", 2, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.sigterm();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = std::fs::read_to_string(&log).unwrap();
    let attempts_logged = logs.matches("attempt finished").count();
    assert!(
        attempts_logged >= 6,
        "the server logged its attempts at debug level:\n{logs}"
    );
    let mut needles: Vec<(&str, String)> = vec![
        ("the admin key", PROCESS_API_KEY.to_owned()),
        ("a tenant key", tenant_key.clone()),
        ("the legacy secret", LEGACY_SECRET.to_owned()),
        ("a payload", PAYLOAD_MARKER.to_owned()),
    ];
    for s in &secrets {
        // The secret itself, and its key material without the prefix.
        needles.push(("a signing secret", s.clone()));
        needles.push((
            "a signing secret's key",
            s.trim_start_matches("whsec_").to_owned(),
        ));
    }
    for (what, needle) in &needles {
        assert!(
            !logs.contains(needle.as_str()),
            "{what} appears in the logs:\n{}",
            logs.lines()
                .filter(|l| l.contains(needle.as_str()))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
        for body in &error_bodies {
            assert!(
                !body.contains(needle.as_str()),
                "{what} in an error: {body}"
            );
        }
    }
    eprintln!(
        "secrets in logs: {} log lines, {} error bodies searched for {} secrets: none found",
        logs.lines().count(),
        error_bodies.len(),
        needles.len()
    );
}
