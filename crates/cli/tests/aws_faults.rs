//! The AWS backend's own guarantees, against DynamoDB and SQS emulated by moto through the real
//! AWS SDK: a crash between the table write and `SendMessage` only delays a callback; a worker
//! that dies holding a callback gives it back; poison messages go to the DLQ with a reason;
//! a batch too big for one transaction completes on retry with the same ids; items over
//! DynamoDB's limit are refused before anything is written; retention hides expired items.
mod common;

use std::time::Duration;

use chrono::Utc;
use common::{spawn_on, Backend, TestApp, TestReceiver};
use fluxcb_aws::store::{DynamoStore, StoreRetention};
use fluxcb_aws::{AwsClients, AwsResources};
use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback};
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{CallbackStore, IdempotencyRecord, IngestBatch, IngestResult};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::{Scope, TenantId};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

struct AwsApp {
    app: TestApp,
    resources: AwsResources,
    clients: AwsClients,
}

async fn aws_app(customize: impl FnOnce(&mut fluxcb::config::Config)) -> Option<AwsApp> {
    let mut resources = None;
    let app = spawn_on(Backend::Aws, |c| {
        customize(c);
        resources = Some(AwsResources {
            table: c.dynamodb_table.clone(),
            queue_url: c.sqs_queue_url.clone(),
            dlq_url: c.sqs_dlq_url.clone(),
        });
    })
    .await?;
    Some(AwsApp {
        app,
        resources: resources.expect("set by the customisation"),
        clients: AwsClients::from_env().await,
    })
}

impl AwsApp {
    /// A second handle on the app's table, as another process (an API instance) would hold
    /// it: with the same sweep grace as the app (3 s in tests), since writers key the `due`
    /// index by it.
    fn store(&self, retention: StoreRetention) -> DynamoStore {
        DynamoStore::new(
            self.clients.dynamodb.clone(),
            self.resources.table.clone(),
            retention,
        )
        .with_sweep_grace(chrono::TimeDelta::seconds(3))
    }
}

fn callback(url: &str, deliver_at: Option<chrono::DateTime<Utc>>) -> Callback {
    let spec = NewCallback {
        url: url.to_owned(),
        payload: Some(json!({"n": 1})),
        deliver_at,
        ..NewCallback::default()
    }
    .validate(Utc::now())
    .expect("valid callback");
    Callback::accept(
        CallbackId::generate(),
        TenantId::default_tenant(),
        spec,
        &CallbackDefaults {
            max_attempts: 3,
            timeout_ms: 2_000,
        },
        "test".into(),
        Utc::now(),
    )
}

/// Writes one callback the way ingest writes it, without the queue message that would follow.
async fn ingest_one(store: &DynamoStore, cb: Callback) {
    let r = store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![cb],
            idempotency: None,
        })
        .await
        .unwrap();
    assert_eq!(r, IngestResult::Accepted);
}

async fn receive_all(clients: &AwsClients, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let out = clients
        .sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive");
    out.messages.unwrap_or_default()
}

#[tokio::test]
async fn a_crash_between_the_table_write_and_the_send_only_delays_the_callback() {
    let Some(aws) = aws_app(|_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    // Written to the table the way ingest writes it, but the process "dies" before sending.
    let cb = callback(&rx.url("/ok/orphan"), None);
    let id = cb.id;
    let store = aws.store(StoreRetention::default());
    ingest_one(&store, cb).await;
    // The sweeper presumes the message lost once it is overdue by the grace (3 s in tests).
    let got = rx.wait_for("/ok/orphan", 1, WAIT).await;
    assert_eq!(got[0].header("webhook-id"), Some(id.to_string().as_str()));
    aws.app
        .wait_status(&id.to_string(), "delivered", WAIT)
        .await;
    aws.app.stop().await;
}

#[tokio::test]
async fn long_waits_get_their_message_when_they_come_within_the_queues_reach() {
    let Some(aws) = aws_app(|_| {}).await else {
        return;
    };
    let store = std::sync::Arc::new(aws.store(StoreRetention::default()));
    let far = Utc::now() + chrono::Duration::minutes(40);
    let cb = callback("https://example.com/later", Some(far));
    let id = cb.id;
    ingest_one(&store, cb).await;
    // 40 minutes ahead is beyond SQS's 15-minute delay: nothing to send yet.
    let now = Utc::now();
    let candidates = store.sweep_candidates(now, 100).await.unwrap();
    assert!(candidates.iter().all(|c| c.id != id));
    // Thirty minutes later it is within reach: the sweeper picks it, and marks it so that the
    // next run does not send it again.
    let later = now + chrono::Duration::minutes(30);
    let candidates = store.sweep_candidates(later, 100).await.unwrap();
    let mine: Vec<_> = candidates.iter().filter(|c| c.id == id).collect();
    assert_eq!(mine.len(), 1);
    assert!(store.mark_enqueued(mine[0], later).await.unwrap());
    assert!(
        !store.mark_enqueued(mine[0], later).await.unwrap(),
        "a second sweeper must not send it again"
    );
    let again = store.sweep_candidates(later, 100).await.unwrap();
    assert!(again.iter().all(|c| c.id != id));
    aws.app.stop().await;
}

#[tokio::test]
async fn the_sweeper_reads_only_what_needs_it_not_the_healthy_backlog() {
    let Some(aws) = aws_app(|c| c.sweep_grace = "10m".into()).await else {
        return;
    };
    let store = aws
        .store(StoreRetention::default())
        .with_sweep_grace(chrono::TimeDelta::minutes(10));
    // Due now, and its writer sends the message: not the sweeper's business...
    let cb = callback("https://example.com/healthy", None);
    let id = cb.id;
    ingest_one(&store, cb).await;
    let now = Utc::now();
    let ids =
        |c: Vec<fluxcb_aws::store::SweepCandidate>| c.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert!(!ids(store.sweep_candidates(now, 100).await.unwrap()).contains(&id));
    // ...until its message is overdue by the grace period: then it is presumed lost.
    let overdue = now + chrono::Duration::minutes(11);
    assert!(ids(store.sweep_candidates(overdue, 100).await.unwrap()).contains(&id));
    aws.app.stop().await;
}

#[tokio::test]
async fn a_worker_that_dies_holding_a_callback_gives_it_back() {
    let Some(aws) = aws_app(|_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let store = aws.store(StoreRetention::default());
    let cb = callback(&rx.url("/ok/held"), None);
    let id = cb.id;
    // Claimed by a "worker" that then vanished: in flight, with a lease that ends at once.
    ingest_one(&store, cb).await;
    let now = Utc::now();
    // A message naming the wrong tenant claims nothing (the claim is conditioned on it).
    let other = TenantId::parse("someone-else").unwrap();
    assert!(store
        .claim_in(&id, Some(&other), now, now + chrono::Duration::seconds(60))
        .await
        .unwrap()
        .is_none());
    let claimed = store
        .claim_in(
            &id,
            Some(&TenantId::default_tenant()),
            now,
            now + chrono::Duration::milliseconds(500),
        )
        .await
        .unwrap();
    assert!(claimed.is_some());
    assert!(
        store.claim(&id, now, now).await.unwrap().is_none(),
        "a callback in flight cannot be claimed twice"
    );
    rx.wait_for("/ok/held", 1, WAIT).await;
    let v = aws
        .app
        .wait_status(&id.to_string(), "delivered", WAIT)
        .await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1);
    let events = aws
        .app
        .get_json(&format!("/v1/callbacks/{id}/events"))
        .await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"recovered"), "{kinds:?}");
    aws.app.stop().await;
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_queue_with_a_reason() {
    let Some(aws) = aws_app(|_| {}).await else {
        return;
    };
    aws.clients
        .sqs
        .send_message()
        .queue_url(&aws.resources.queue_url)
        .message_body("{\"type\":\"deliver\",\"nonsense\":true}")
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let message = loop {
        let got = receive_all(&aws.clients, &aws.resources.dlq_url).await;
        if let Some(m) = got.into_iter().next() {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the poison message never reached the DLQ"
        );
    };
    assert!(message.body().unwrap().contains("nonsense"));
    let reason = message
        .message_attributes()
        .and_then(|a| a.get("fluxcb_reason"))
        .and_then(|v| v.string_value())
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("malformed queue message"), "{reason}");
    // Moved at once, not after maxReceiveCount failed receives: the work queue is empty.
    assert!(receive_all(&aws.clients, &aws.resources.queue_url)
        .await
        .is_empty());
    aws.app.stop().await;
}

#[tokio::test]
async fn a_half_written_big_batch_completes_on_retry_with_the_same_ids() {
    let Some(aws) = aws_app(|_| {}).await else {
        return;
    };
    let store = aws.store(StoreRetention::default());
    let far = Utc::now() + chrono::Duration::days(1);
    let first: Vec<Callback> = (0..150)
        .map(|_| callback("https://example.com/batch", Some(far)))
        .collect();
    let ids: Vec<CallbackId> = first.iter().map(|c| c.id).collect();
    let record = IdempotencyRecord {
        key: "big-batch".into(),
        fingerprint: "same-request".into(),
        response_status: 202,
        response_body: b"{\"original\":true}".to_vec(),
    };
    let batch = |callbacks| IngestBatch {
        tenant: TenantId::default_tenant(),
        callbacks,
        idempotency: Some(record.clone()),
    };
    assert_eq!(
        store.ingest(batch(first)).await.unwrap(),
        IngestResult::Accepted
    );
    // Simulate the crash: the second chunk never landed and the record stayed incomplete.
    for id in &ids[100..] {
        aws.clients
            .dynamodb
            .delete_item()
            .table_name(&aws.resources.table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("cb#{id}")),
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S("cb".into()),
            )
            .send()
            .await
            .unwrap();
    }
    aws.clients
        .dynamodb
        .update_item()
        .table_name(&aws.resources.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("idem#default#big-batch".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("idem".into()),
        )
        .update_expression("SET complete = :f")
        .expression_attribute_values(":f", aws_sdk_dynamodb::types::AttributeValue::Bool(false))
        .send()
        .await
        .unwrap();
    // The client retries the same request: new objects (fresh ids) from the same body.
    let retry: Vec<Callback> = (0..150)
        .map(|_| callback("https://example.com/batch", Some(far)))
        .collect();
    let r = store.ingest(batch(retry)).await.unwrap();
    assert_eq!(
        r,
        IngestResult::Replayed {
            status: 202,
            body: b"{\"original\":true}".to_vec()
        }
    );
    for id in &ids {
        let got = store.get(&Scope::All, id).await.unwrap();
        assert!(got.is_some(), "{id} missing after the retry");
    }
    // Exactly the original 150: the retry's fresh ids were not used.
    let listed = store
        .list(
            &Scope::All,
            &fluxcb_core::ports::ListFilter {
                tenant: Some(TenantId::default_tenant()),
                ..Default::default()
            },
            &fluxcb_core::ports::PageRequest {
                cursor: None,
                limit: 500,
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 150);
    // A different request under the same key is refused.
    let other = IngestBatch {
        tenant: TenantId::default_tenant(),
        callbacks: vec![callback("https://example.com/other", None)],
        idempotency: Some(IdempotencyRecord {
            fingerprint: "another-request".into(),
            ..record.clone()
        }),
    };
    assert_eq!(store.ingest(other).await.unwrap(), IngestResult::KeyReused);
    aws.app.stop().await;
}

#[tokio::test]
async fn items_over_dynamodbs_limit_are_refused_before_anything_is_written() {
    let Some(aws) = aws_app(|c| {
        c.body_limit = 2 * 1024 * 1024;
        c.batch_body_limit = 4 * 1024 * 1024;
    })
    .await
    else {
        return;
    };
    let app = &aws.app;
    let big = "x".repeat(450 * 1024);
    let r = app
        .post(
            "/v1/callbacks",
            &json!({"url": "https://example.com/big", "body": big}),
        )
        .await;
    assert_eq!(r.status(), 413);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:fluxcb:problem:too-large", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("400 KB"), "{p}");
    // In a batch, one oversized item refuses the whole batch.
    let r = app
        .post(
            "/v1/callbacks/batch",
            &json!({"callbacks": [
                {"url": "https://example.com/small"},
                {"url": "https://example.com/big", "body": big},
            ]}),
        )
        .await;
    assert_eq!(r.status(), 413);
    let list = app.get_json("/v1/callbacks").await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    aws.app.stop().await;
}

#[tokio::test]
async fn finished_callbacks_expire_by_ttl_and_reads_hide_them_before_dynamodb_deletes_them() {
    let Some(aws) = aws_app(|_| {}).await else {
        return;
    };
    // A three-second retention: a finished callback disappears from reads soon after.
    let store = aws.store(StoreRetention {
        callbacks: Duration::from_secs(3),
        idempotency_keys: Duration::from_secs(3),
    });
    let cb = callback(
        "https://example.com/ttl",
        Some(Utc::now() + chrono::Duration::days(1)),
    );
    let id = cb.id;
    ingest_one(&store, cb).await;
    let detail = store.get(&Scope::All, &id).await.unwrap().unwrap();
    assert_eq!(detail.callback.status, Status::Scheduled);
    let r = store.cancel(&Scope::All, &id, "test").await.unwrap();
    assert!(matches!(r, fluxcb_core::ports::ActionResult::Done(_)));
    // The item is still in the table (moto, like DynamoDB, deletes expired items lazily: moto
    // never does), carrying its TTL...
    let raw = aws
        .clients
        .dynamodb
        .get_item()
        .table_name(&aws.resources.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("cb#{id}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("cb".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("still stored");
    let expires: i64 = raw["expires_at"].as_n().unwrap().parse().unwrap();
    assert!(
        (expires - Utc::now().timestamp() - 3).abs() <= 1,
        "{expires}"
    );
    assert!(store.get(&Scope::All, &id).await.unwrap().is_some());
    // ...and reads treat it as gone once that time has passed.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert!(store.get(&Scope::All, &id).await.unwrap().is_none());
    aws.app.stop().await;
}

#[tokio::test]
async fn an_unavailable_table_answers_503_with_retry_after_and_stores_nothing() {
    let Some(aws) = aws_app(|_| {}).await else {
        return;
    };
    // Unreachable DynamoDB (nothing listens there): the store says unavailable, not internal.
    let dead = format!("http://{}", common::free_loopback_addr());
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(dead)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::for_tests())
        .build();
    let unreachable = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        aws.resources.table.clone(),
        StoreRetention::default(),
    );
    let r = unreachable
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![callback("https://example.com/x", None)],
            idempotency: None,
        })
        .await;
    assert!(
        matches!(r, Err(fluxcb_core::ports::StoreError::Unavailable(_))),
        "{r:?}"
    );
    // The table disappears under a running server: callers get 503 with Retry-After.
    aws.clients
        .dynamodb
        .delete_table()
        .table_name(&aws.resources.table)
        .send()
        .await
        .unwrap();
    let r = aws
        .app
        .post("/v1/callbacks", &json!({"url": "https://example.com/y"}))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:fluxcb:problem:overloaded", "{p}");
    aws.app.stop().await;
}

#[tokio::test]
async fn messages_on_the_dlq_can_be_redriven_and_poison_stays() {
    // A long grace period: the delivery below must come from the redrive, not the sweeper.
    let Some(aws) = aws_app(|c| c.sweep_grace = "10m".into()).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    // A callback whose message ended on the DLQ (say, a deliverer crashed on it five times):
    // its table item is due, and the sweeper would resend it only after the grace period.
    let store = aws.store(StoreRetention::default());
    let cb = callback(&rx.url("/ok/redriven"), None);
    let id = cb.id;
    ingest_one(&store, cb).await;
    for body in [
        fluxcb_core::message::QueueMessage::deliver(id).encode(),
        "not a message".to_owned(),
    ] {
        aws.clients
            .sqs
            .send_message()
            .queue_url(&aws.resources.dlq_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let queue = fluxcb_aws::queue::SqsQueue::new(
        aws.clients.sqs.clone(),
        aws.resources.queue_url.clone(),
        aws.resources.dlq_url.clone(),
    );
    let r = queue.redrive_dead_letters(10).await.unwrap();
    assert_eq!(r.moved, 1);
    assert_eq!(r.kept, 1);
    let got = rx.wait_for("/ok/redriven", 1, WAIT).await;
    assert_eq!(got[0].header("webhook-id"), Some(id.to_string().as_str()));
    aws.app.stop().await;
}
