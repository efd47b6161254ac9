//! The three Lambda entry points driven with stored, AWS-shaped events (`tests/fixtures`), the way
//! the Lambda runtime would hand them over, against DynamoDB and SQS emulated by moto through the
//! real AWS SDK:
//! - the API: an API Gateway HTTP API (payload v2.0) event turned into an `http::Request` by
//!   lambda_http's own conversion, then through [`fluxcb_lambda::api_router`];
//! - the deliverer: an SQS batch through [`fluxcb_lambda::handle_sqs`], with partial batch
//!   failures;
//! - the sweeper: an EventBridge "Scheduled Event" through [`fluxcb_lambda::handle_schedule`].
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback};
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{CallbackStore, IngestBatch, IngestResult};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::{Scope, TenantId};
use http_body_util::BodyExt;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use serde_json::{json, Value};
use support::{fixture, fixture_json, Receiver, FIXTURE_API_KEY, FIXTURE_GET_ID};
use tower::ServiceExt;

const SQS_FIXTURE: &str = "sqs-deliver-batch.json";
const POST_FIXTURE: &str = "apigw-v2-post-callback.json";
const GET_FIXTURE: &str = "apigw-v2-get-callback.json";
const SCHEDULE_FIXTURE: &str = "eventbridge-scheduled.json";

/// The records of the SQS fixture, by role.
const DELIVER_A: &str = "4f2c1e7a-9b3d-4c8e-a1f5-2d6b8e0c7a91";
const DELIVER_B: &str = "b7e0d5c3-6a2f-4e19-8c7d-5f3a1b9e2c64";
const POISON: &str = "e1a9c4b2-3d7f-4a6e-9b0c-8f2d5e7a1c38";
const FROM_THE_FUTURE: &str = "92d6f0b8-1c4e-4b7a-a3d9-6e5c2f8b0a17";

// ---------------------------------------------------------------------------------------------
// The fixtures themselves: they parse as the types the runtime hands the functions.

#[test]
fn fixtures_parse_as_the_lambda_event_types() {
    for name in [POST_FIXTURE, GET_FIXTURE] {
        let event: ApiGatewayV2httpRequest =
            serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event.version.as_deref(), Some("2.0"), "{name}");
        assert_eq!(event.route_key.as_deref(), Some("$default"), "{name}");
        assert!(!event.is_base64_encoded, "{name}");
        assert_eq!(event.request_context.stage.as_deref(), Some("$default"));
    }

    let sqs: SqsEvent = serde_json::from_str(&fixture(SQS_FIXTURE)).expect("SQS fixture");
    let ids: Vec<_> = sqs
        .records
        .iter()
        .map(|r| r.message_id.as_deref().unwrap())
        .collect();
    assert_eq!(ids, [DELIVER_A, DELIVER_B, POISON, FROM_THE_FUTURE]);
    for r in &sqs.records {
        assert_eq!(r.event_source.as_deref(), Some("aws:sqs"));
        assert!(r.attributes.contains_key("ApproximateReceiveCount"));
        assert!(r.body.is_some() && r.receipt_handle.is_some());
    }

    let scheduled: EventBridgeEvent<Value> =
        serde_json::from_str(&fixture(SCHEDULE_FIXTURE)).expect("scheduled event");
    assert_eq!(scheduled.detail_type, "Scheduled Event");
    assert_eq!(scheduled.source, "aws.events");
}

#[test]
fn the_v2_event_becomes_the_request_the_router_sees() {
    let request = lambda_http::request::from_str(&fixture(POST_FIXTURE)).expect("v2 event");
    assert_eq!(request.method(), "POST");
    assert_eq!(request.uri().path(), "/v1/callbacks");
    assert_eq!(
        request.headers()["authorization"],
        format!("Bearer {FIXTURE_API_KEY}").as_str()
    );
    assert_eq!(request.headers()["content-type"], "application/json");
    let body = std::str::from_utf8(request.body().as_ref()).expect("text body");
    let expected = fixture_json(POST_FIXTURE)["body"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(body, expected);
}

// ---------------------------------------------------------------------------------------------
// The API function.

/// The API Gateway event as lambda_http turns it into a request, through the function's router.
async fn call_api(router: &axum::Router, event: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(event).expect("API Gateway v2 event");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_accepts_the_gateway_post_and_serves_the_get() {
    let Some(f) = support::function(|_| {}).await else {
        return;
    };
    // What the API function's cold start does before it serves.
    f.parts.prepare(&f.settings).await.expect("prepare");
    let router = fluxcb_lambda::api_router(
        &f.settings,
        &f.parts,
        f.parts.legacy_parts(&f.settings).await.unwrap(),
    );

    let (status, accepted) = call_api(&router, &fixture(POST_FIXTURE)).await;
    assert_eq!(status, 202, "POST /v1/callbacks: {accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    assert!(id.parse::<CallbackId>().is_ok(), "{id}");
    assert_eq!(accepted["status"], "pending");

    let get = fixture(GET_FIXTURE).replace(FIXTURE_GET_ID, &id);
    let (status, shown) = call_api(&router, &get).await;
    assert_eq!(status, 200, "GET /v1/callbacks/{id}: {shown}");
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["url"], "https://example.com/hooks/order-shipped");
    assert_eq!(shown["metadata"]["source"], "lambda-fixture");

    // Stored in the table, not only answered.
    let detail = f
        .parts
        .store
        .get(&Scope::All, &id.parse().unwrap())
        .await
        .expect("store read")
        .expect("the callback is in the table");
    assert_eq!(
        detail.callback.spec.url.as_str(),
        "https://example.com/hooks/order-shipped"
    );

    // The same event with another key is refused: the header really is what authenticates.
    let wrong = fixture(POST_FIXTURE).replace(FIXTURE_API_KEY, "fxk_not_a_key");
    let (status, _) = call_api(&router, &wrong).await;
    assert_eq!(status, 401);
}

/// Through lambda_http's own adapter, as `lambda_http::run` wires it: the answer API Gateway
/// gets back is a payload v2 response with the JSON body as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_in_the_gateway_v2_response_shape() {
    let Some(f) = support::function(|_| {}).await else {
        return;
    };
    f.parts.prepare(&f.settings).await.expect("prepare");
    let router = fluxcb_lambda::api_router(
        &f.settings,
        &f.parts,
        f.parts.legacy_parts(&f.settings).await.unwrap(),
    );
    // `Adapter` and `LambdaRequest` are public but doc(hidden) in lambda_http 1.3: this pins
    // what `lambda_http::run` does with our router (Cargo.lock pins the version).
    let adapter = lambda_http::Adapter::from(router);
    let payload: lambda_http::request::LambdaRequest =
        serde_json::from_str(&fixture(POST_FIXTURE)).expect("v2 event");
    let response = adapter
        .oneshot(lambda_http::LambdaEvent::new(
            payload,
            lambda_http::Context::default(),
        ))
        .await
        .expect("infallible");
    let response = serde_json::to_value(&response).expect("serialises");
    assert_eq!(response["statusCode"], 202, "{response}");
    assert_eq!(response["isBase64Encoded"], false, "{response}");
    assert_eq!(response["headers"]["content-type"], "application/json");
    let body: Value =
        serde_json::from_str(response["body"].as_str().expect("a text body")).expect("JSON");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("cb_")));
}

/// Two cold starts of the API function (two instances behind API Gateway) on one table: a
/// console session opened through one is honoured by the other, and a logout through the other
/// ends it for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_opened_on_one_api_instance_works_on_another() {
    let Some(f) = support::function(|_| {}).await else {
        return;
    };
    f.parts.prepare(&f.settings).await.expect("prepare");
    let other = fluxcb::aws_backend::AwsParts::new(
        &f.settings,
        f.parts.resources.clone(),
        f.parts.clients.clone(),
    );
    let one = fluxcb_lambda::api_router(&f.settings, &f.parts, Default::default());
    let two = fluxcb_lambda::api_router(&f.settings, &other, Default::default());
    let send = |router: &axum::Router, request: axum::http::Request<axum::body::Body>| {
        router.clone().oneshot(request)
    };
    let login = axum::http::Request::post("/console/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!("key={FIXTURE_API_KEY}")))
        .unwrap();
    let response = send(&one, login).await.unwrap();
    assert_eq!(
        response.status(),
        303,
        "logged in through the first instance"
    );
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let session = |cookie: &str| {
        axum::http::Request::get("/console/session")
            .header("cookie", cookie)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let response = send(&two, session(&cookie)).await.unwrap();
    assert_eq!(response.status(), 200, "known to the second instance");
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let token = body["csrf_token"]
        .as_str()
        .expect("a CSRF token")
        .to_owned();
    let logout = axum::http::Request::post("/console/logout")
        .header("cookie", &cookie)
        .header("x-csrf-token", &token)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&two, logout).await.unwrap().status(), 204);
    assert_eq!(send(&one, session(&cookie)).await.unwrap().status(), 401);
}

// ---------------------------------------------------------------------------------------------
// The deliverer function.

/// Puts a callback with a given id in the table directly (no queue message), due now.
async fn store_callback(f: &support::Function, id: &str, url: &str) {
    let now = chrono::Utc::now();
    let spec = NewCallback {
        url: url.to_owned(),
        payload: Some(json!({ "callback": id })),
        metadata: BTreeMap::from([("test".into(), "lambda".into())]),
        ..Default::default()
    }
    .validate(now)
    .expect("valid callback");
    let callback = Callback::accept(
        id.parse().expect("a callback id"),
        TenantId::default_tenant(),
        spec,
        &CallbackDefaults {
            max_attempts: f.settings.max_attempts,
            timeout_ms: f.settings.timeout_ms,
        },
        "lambda-test".into(),
        now,
    );
    let result = f
        .parts
        .store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![callback],
            idempotency: None,
        })
        .await
        .expect("ingest");
    assert_eq!(result, IngestResult::Accepted);
}

async fn stored(f: &support::Function, id: &str) -> Callback {
    f.parts
        .store
        .get(&Scope::All, &id.parse().unwrap())
        .await
        .expect("store read")
        .expect("callback exists")
        .callback
}

fn callback_id_in(event: &SqsEvent, message_id: &str) -> String {
    let record = event
        .records
        .iter()
        .find(|r| r.message_id.as_deref() == Some(message_id))
        .expect("record");
    let body: Value = serde_json::from_str(record.body.as_deref().unwrap()).expect("JSON body");
    body["callback_id"]
        .as_str()
        .expect("callback_id")
        .to_owned()
}

/// A message as received from SQS, with what the tests look at.
#[derive(Debug)]
struct Received {
    message_id: Option<String>,
    receipt_handle: Option<String>,
    body: Option<String>,
    md5_of_body: Option<String>,
    /// String message attributes.
    attributes: BTreeMap<String, String>,
}

/// Everything on a queue within a short wait (moto's long polling), with message attributes.
async fn drain(f: &support::Function, queue_url: &str) -> Vec<Received> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let got = f
            .parts
            .clients
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() && !out.is_empty() {
            break;
        }
        out.extend(messages.into_iter().map(|m| {
            Received {
                attributes: m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                    .collect(),
                message_id: m.message_id,
                receipt_handle: m.receipt_handle,
                body: m.body,
                md5_of_body: m.md5_of_body,
            }
        }));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliverer_handles_the_sqs_batch_with_partial_failures() {
    let Some(f) = support::function(|_| {}).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let deliverer = f.parts.deliverer(&f.settings).expect("deliverer");
    let event: SqsEvent = serde_json::from_str(&fixture(SQS_FIXTURE)).expect("SQS fixture");
    let a = callback_id_in(&event, DELIVER_A);
    let b = callback_id_in(&event, DELIVER_B);
    let future = callback_id_in(&event, FROM_THE_FUTURE);
    for (id, path) in [(&a, "/a"), (&b, "/b"), (&future, "/future")] {
        store_callback(&f, id, &receiver.url(path)).await;
    }

    let response = fluxcb_lambda::handle_sqs(&deliverer, event.clone()).await;

    // Only the message from a newer worker goes back to the queue; the poison record is dealt
    // with (dead-lettered), so it is not a failure.
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({ "batchItemFailures": [{ "itemIdentifier": FROM_THE_FUTURE }] })
    );
    for (id, path) in [(&a, "/a"), (&b, "/b")] {
        let got = receiver.received_on(path);
        assert_eq!(got.len(), 1, "{path}: one delivery");
        assert_eq!(got[0].method, "POST");
        assert!(got[0].headers.contains_key("webhook-signature"));
        let body: Value = serde_json::from_slice(&got[0].body).expect("JSON payload");
        assert_eq!(body, json!({ "callback": id }));
        let cb = stored(&f, id).await;
        assert_eq!(cb.status, Status::Delivered, "{id}");
        assert_eq!(cb.attempts_made, 1);
    }
    assert!(receiver.received_on("/future").is_empty());
    let untouched = stored(&f, &future).await;
    assert_eq!(untouched.status, Status::Pending);
    assert_eq!(untouched.attempts_made, 0);

    let poison_body = event.records[2].body.clone().unwrap();
    let dead = drain(&f, &f.parts.resources.dlq_url).await;
    assert_eq!(dead.len(), 1, "one message on the DLQ: {dead:?}");
    assert_eq!(dead[0].body.as_deref(), Some(poison_body.as_str()));
    let reason = dead[0]
        .attributes
        .get("fluxcb_reason")
        .expect("a fluxcb_reason attribute");
    assert!(reason.contains("malformed"), "{reason}");

    // SQS delivers at least once: the same batch again delivers nothing twice.
    let again = fluxcb_lambda::handle_sqs(&deliverer, event).await;
    assert_eq!(again.batch_item_failures.len(), 1);
    assert_eq!(receiver.received_on("/a").len(), 1);
    assert_eq!(receiver.received_on("/b").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// The sweeper function.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_sends_the_lost_message_on_the_scheduled_event() {
    let Some(f) = support::function(|_| {}).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let sweeper = f.parts.sweeper();
    let schedule = fixture_json(SCHEDULE_FIXTURE);

    // Nothing to do on an empty table.
    let idle = fluxcb_lambda::handle_schedule(&sweeper, schedule.clone())
        .await
        .expect("sweep");
    assert_eq!(idle, json!({ "enqueued": 0, "recovered": 0 }));

    // A callback whose message was lost between the table write and SendMessage: written to
    // the table only. Once overdue by more than the grace period (1 s here), the sweeper sends it.
    let id = CallbackId::generate().to_string();
    store_callback(&f, &id, &receiver.url("/swept")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let report = fluxcb_lambda::handle_schedule(&sweeper, schedule.clone())
        .await
        .expect("sweep");
    assert_eq!(report, json!({ "enqueued": 1, "recovered": 0 }));

    // The message it sent, handed to the deliverer as the SQS trigger would.
    let sent = drain(&f, &f.parts.resources.queue_url).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let body: Value = serde_json::from_str(sent[0].body.as_deref().unwrap()).expect("JSON");
    // It names the tenant, so the deliverer's claim needs no read first.
    assert_eq!(
        body,
        json!({ "type": "deliver", "v": 1, "callback_id": id, "tenant": "default" })
    );
    let event: SqsEvent = serde_json::from_value(json!({
        "Records": [{
            "messageId": sent[0].message_id,
            "receiptHandle": sent[0].receipt_handle,
            "body": sent[0].body,
            "attributes": { "ApproximateReceiveCount": "1" },
            "messageAttributes": {},
            "md5OfBody": sent[0].md5_of_body,
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
            "awsRegion": "us-east-1"
        }]
    }))
    .expect("SQS event");
    let deliverer = f.parts.deliverer(&f.settings).expect("deliverer");
    let response = fluxcb_lambda::handle_sqs(&deliverer, event).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(receiver.received_on("/swept").len(), 1);
    assert_eq!(stored(&f, &id).await.status, Status::Delivered);

    // Marked as sent: the next run leaves it alone.
    let after = fluxcb_lambda::handle_schedule(&sweeper, schedule)
        .await
        .expect("sweep");
    assert_eq!(after, json!({ "enqueued": 0, "recovered": 0 }));
}
