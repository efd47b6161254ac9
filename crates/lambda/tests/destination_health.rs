//! Lambda's API function runs no delivery engine, yet operators see the destinations' circuit
//! breakers there: the deliverer function records each opening and closing in the table, and
//! the API reads them back (moto; a real receiver on loopback).
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use fluxcb_aws::deliverer::{Handled, Record};
use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback};
use fluxcb_core::destination::{DestinationMatch, DestinationSettings, RegisteredDestination};
use fluxcb_core::id::CallbackId;
use fluxcb_core::message::QueueMessage;
use fluxcb_core::ports::{CallbackStore, DestinationStore, IngestBatch};
use fluxcb_core::tenant::TenantId;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::FIXTURE_API_KEY;
use tower::ServiceExt;

async fn get(router: &axum::Router, path: &str) -> Value {
    let request = Request::get(path)
        .header("authorization", format!("Bearer {FIXTURE_API_KEY}"))
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), 200, "GET {path}");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).expect("JSON")
}

async fn ingest_to(f: &support::Function, url: &str) -> Callback {
    let now = chrono::Utc::now();
    let spec = NewCallback {
        url: url.to_owned(),
        payload: Some(json!({})),
        metadata: BTreeMap::new(),
        ..Default::default()
    }
    .validate(now)
    .expect("valid callback");
    let callback = Callback::accept(
        CallbackId::generate(),
        TenantId::default_tenant(),
        spec,
        &CallbackDefaults {
            max_attempts: 5,
            timeout_ms: 1_000,
        },
        "lambda-test".into(),
        now,
    );
    f.parts
        .store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![callback.clone()],
            idempotency: None,
        })
        .await
        .expect("ingest");
    callback
}

fn record(cb: &Callback) -> Record {
    Record {
        message_id: cb.id.to_string(),
        body: QueueMessage::deliver_for(cb.id, cb.tenant.clone()).encode(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_the_deliverer_opens_shows_in_the_api_function_and_clears_when_it_closes() {
    let Some(f) = support::function(|_| {}).await else {
        return;
    };
    f.parts.prepare(&f.settings).await.expect("prepare");
    // A loopback port nobody listens on yet: connections are refused until the receiver starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("http://127.0.0.1:{port}");
    let (mut registration, _) = RegisteredDestination::new(
        TenantId::default_tenant(),
        DestinationMatch::Origin(origin.clone()),
        chrono::Utc::now(),
    );
    registration.settings = DestinationSettings {
        circuit_failure_threshold: Some(2),
        circuit_open_ms: Some(300),
        ..Default::default()
    };
    f.parts
        .store
        .create_destination(&registration)
        .await
        .unwrap();
    let key = registration
        .limits_key()
        .expect("an origin registration has a key");
    let deliverer = f.parts.deliverer(&f.settings).expect("deliverer");
    let router = fluxcb_lambda::api_router(
        &f.settings,
        &f.parts,
        f.parts.legacy_parts(&f.settings).await.unwrap(),
    );

    let health = get(&router, "/v1/destinations/health").await;
    assert_eq!(health["available"], true);
    assert_eq!(health["destinations"], json!([]), "nothing to report yet");

    for _ in 0..2 {
        let cb = ingest_to(&f, &format!("{origin}/hook")).await;
        assert_eq!(
            deliverer.handle(&record(&cb)).await.unwrap(),
            Handled::Attempted
        );
    }
    let health = get(&router, "/v1/destinations/health").await;
    assert_eq!(
        health["destinations"],
        json!([{ "destination": key, "in_flight": 0, "consecutive_failures": 2, "circuit_open": true }]),
        "the API function sees the deliverer's breaker"
    );
    let listed = get(&router, "/v1/destinations").await;
    assert_eq!(
        listed["data"][0]["health"]["circuit_open"], true,
        "{listed}"
    );

    // The receiver comes up; after the open period a probe succeeds and the breaker closes.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is still free");
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { "ok" });
        let _ = axum::serve(listener, app).await;
    });
    tokio::time::sleep(Duration::from_millis(350)).await;
    let probe = ingest_to(&f, &format!("{origin}/hook")).await;
    assert_eq!(
        deliverer.handle(&record(&probe)).await.unwrap(),
        Handled::Attempted
    );
    let health = get(&router, "/v1/destinations/health").await;
    assert_eq!(health["destinations"], json!([]), "closed again: {health}");
}
