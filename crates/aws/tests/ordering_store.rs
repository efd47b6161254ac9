//! The ordering chain on DynamoDB (moto), at the store: what a key's head and members look like
//! after ingest, that a turn's end recorded twice (its answer lost, the record retried) makes
//! the next callback due once and changes nothing the second time, that a batch replayed under
//! its idempotency key adds nothing to the line, and that cancels leave and pass the turn.
//! The end-to-end cases (order at a receiver, holds, `kill -9`) are in the CLI's tests.
mod support;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{Duration, Utc};
use fluxcb_aws::store::DynamoStore;
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback};
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{
    ActionResult, CallbackStore, IdempotencyRecord, IngestBatch, IngestResult,
};
use fluxcb_core::retry::Decision;
use fluxcb_core::status::Status;
use fluxcb_core::tenant::Scope;
use serde_json::json;
use support::{ingest, store, tenant};

type Item = std::collections::HashMap<String, AttributeValue>;

fn ordered(key: &str, n: u32) -> Callback {
    let now = Utc::now();
    let spec = NewCallback {
        url: format!("https://example.com/k/{key}/{n}"),
        payload: Some(json!({ "n": n })),
        ordering_key: Some(key.into()),
        ..NewCallback::default()
    }
    .validate(now)
    .expect("valid callback");
    Callback::accept(
        CallbackId::generate(),
        tenant("acme"),
        spec,
        &CallbackDefaults {
            max_attempts: 3,
            timeout_ms: 2_000,
        },
        "test".into(),
        now,
    )
}

fn delivered(number: u32) -> Attempt {
    Attempt {
        number,
        started_at: Utc::now(),
        duration_ms: 5,
        status_code: Some(200),
        error: None,
        error_detail: None,
        response_headers: Default::default(),
        response_body: None,
    }
}

async fn item(store: &DynamoStore, pk: String, sk: &str) -> Option<Item> {
    store
        .client()
        .get_item()
        .table_name(store.table())
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

async fn callback_item(store: &DynamoStore, cb: &Callback) -> Item {
    item(store, format!("cb#{}", cb.id), "cb")
        .await
        .expect("the callback item")
}

fn s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// The head's `busy`, `held` and `version`, and the callbacks waiting behind it, in order.
async fn line(store: &DynamoStore, key: &str) -> (Option<String>, u64, Vec<String>) {
    let pk = format!("okey#acme#{key}");
    let head = item(store, pk.clone(), "head")
        .await
        .expect("the key's head");
    let version = head["version"].as_n().unwrap().parse().unwrap();
    let members = store
        .client()
        .query()
        .table_name(store.table())
        .key_condition_expression("pk = :pk AND begins_with(sk, :m)")
        .expression_attribute_values(":pk", AttributeValue::S(pk))
        .expression_attribute_values(":m", AttributeValue::S("m#".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
        .iter()
        .map(|m| s(m, "callback").unwrap().to_owned())
        .collect();
    (s(&head, "busy").map(str::to_owned), version, members)
}

fn is_due(item: &Item) -> bool {
    ["next_attempt_at", "due_pk", "due_sk"]
        .iter()
        .all(|a| item.contains_key(*a))
}

fn waits(item: &Item) -> bool {
    ["next_attempt_at", "due_pk", "due_sk", "enqueued_at"]
        .iter()
        .all(|a| !item.contains_key(*a))
}

#[tokio::test]
async fn the_first_is_due_the_rest_wait_in_line_and_a_repeated_end_promotes_once() {
    let Some(store) = store().await else { return };
    let batch: Vec<Callback> = (0..3).map(|n| ordered("k", n)).collect();
    ingest(&store, batch.clone()).await.unwrap();
    // A later request joins the line behind them.
    let late = ordered("k", 3);
    ingest(&store, vec![late.clone()]).await.unwrap();
    let ids = |cbs: &[&Callback]| cbs.iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        line(&store, "k").await,
        (
            Some(batch[0].id.to_string()),
            4,
            ids(&[&batch[1], &batch[2], &late])
        )
    );
    assert!(is_due(&callback_item(&store, &batch[0]).await));
    for cb in [&batch[1], &batch[2], &late] {
        let it = callback_item(&store, cb).await;
        assert!(waits(&it), "{it:?}");
        // A stale message (every accepted callback gets one) claims nothing.
        let claimed = store
            .claim_in(
                &cb.id,
                Some(&cb.tenant),
                Utc::now(),
                Utc::now() + Duration::seconds(60),
            )
            .await
            .unwrap();
        assert!(claimed.is_none(), "a waiting callback was claimed");
    }

    let claimed = store
        .claim_in(
            &batch[0].id,
            Some(&batch[0].tenant),
            Utc::now(),
            Utc::now() + Duration::seconds(60),
        )
        .await
        .unwrap()
        .expect("the head is due");
    let first = store
        .record_attempt_of(
            Some(&claimed),
            &claimed.id,
            delivered(1),
            Decision::Delivered,
            Utc::now(),
            &[],
        )
        .await
        .unwrap();
    let promoted = first.promoted.expect("the next one is made due");
    assert_eq!(promoted.id, batch[1].id);
    let after_first = callback_item(&store, &batch[1]).await;
    assert!(is_due(&after_first));
    assert_eq!(
        line(&store, "k").await,
        (Some(batch[1].id.to_string()), 5, ids(&[&batch[2], &late]))
    );

    // The same record again, as after a lost answer: nothing more happens.
    let again = store
        .record_attempt_of(
            Some(&claimed),
            &claimed.id,
            delivered(1),
            Decision::Delivered,
            Utc::now(),
            &[],
        )
        .await
        .unwrap();
    assert!(again.promoted.is_none() && !again.waits_here);
    assert_eq!(
        line(&store, "k").await,
        (Some(batch[1].id.to_string()), 5, ids(&[&batch[2], &late]))
    );
    assert_eq!(callback_item(&store, &batch[1]).await, after_first);
    assert!(waits(&callback_item(&store, &batch[2]).await));
}

#[tokio::test]
async fn a_replayed_batch_adds_nothing_to_the_line() {
    let Some(store) = store().await else { return };
    // 30 of one key: more than one transaction's run, so the record goes first.
    let batch: Vec<Callback> = (0..30).map(|n| ordered("big", n)).collect();
    let request = |callbacks: Vec<Callback>| IngestBatch {
        tenant: tenant("acme"),
        callbacks,
        idempotency: Some(IdempotencyRecord {
            key: "replay-1".into(),
            fingerprint: "f".into(),
            response_status: 202,
            response_body: b"{}".to_vec(),
        }),
    };
    assert!(matches!(
        store.ingest(request(batch.clone())).await.unwrap(),
        IngestResult::Accepted
    ));
    let again: Vec<Callback> = (0..30).map(|n| ordered("big", n)).collect();
    assert!(matches!(
        store.ingest(request(again)).await.unwrap(),
        IngestResult::Replayed { .. }
    ));
    let (busy, version, members) = line(&store, "big").await;
    assert_eq!(busy, Some(batch[0].id.to_string()));
    assert_eq!(version, 30);
    assert_eq!(
        members,
        batch[1..]
            .iter()
            .map(|c| c.id.to_string())
            .collect::<Vec<_>>(),
        "in acceptance order, once each"
    );
}

#[tokio::test]
async fn a_cancel_leaves_the_line_or_passes_the_turn() {
    let Some(store) = store().await else { return };
    let batch: Vec<Callback> = (0..4).map(|n| ordered("c", n)).collect();
    ingest(&store, batch.clone()).await.unwrap();
    let scope = Scope::Tenant(tenant("acme"));
    // A waiting one leaves the line; the head stays.
    let r = store.cancel(&scope, &batch[2].id, "op").await.unwrap();
    assert!(matches!(r, ActionResult::Done(ref cb) if cb.status == Status::Cancelled));
    let (busy, _, members) = line(&store, "c").await;
    assert_eq!(busy, Some(batch[0].id.to_string()));
    assert_eq!(members, [batch[1].id.to_string(), batch[3].id.to_string()]);
    // The head passes its turn to the next in line.
    store.cancel(&scope, &batch[0].id, "op").await.unwrap();
    let (busy, _, members) = line(&store, "c").await;
    assert_eq!(busy, Some(batch[1].id.to_string()));
    assert_eq!(members, [batch[3].id.to_string()]);
    assert!(is_due(&callback_item(&store, &batch[1]).await));
    // The last two go; the key is idle and its head set to expire.
    store.cancel(&scope, &batch[3].id, "op").await.unwrap();
    store.cancel(&scope, &batch[1].id, "op").await.unwrap();
    let (busy, _, members) = line(&store, "c").await;
    assert_eq!((busy, members.len()), (None, 0));
    let head = item(&store, "okey#acme#c".into(), "head").await.unwrap();
    assert!(head.contains_key("expires_at"));
}
