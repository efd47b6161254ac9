//! The legacy caller API's store operations on DynamoDB (moto): lookups by legacy id through
//! the pointer item, `external_id` uniqueness through the guard item (conflicts, other tenants,
//! stale guards), page-number listing with counts from the `by_legacy` index, and the `send`
//! claim.
mod support;

use chrono::{Duration, Utc};
use fluxcb_aws::store::{StoreRetention, SweepKind};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::event::EventKind;
use fluxcb_core::ports::{
    ActionResult, CallbackStore, IdempotencyRecord, IngestBatch, IngestResult, LegacyListFilter,
    StoreError,
};
use fluxcb_core::retry::{DeadLetterReason, Decision};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::Scope;
use support::{ids, ingest, legacy_callback, legacy_callback_at, same_table, scope, store, tenant};

fn attempt(number: u32, status_code: u16) -> Attempt {
    Attempt {
        number,
        started_at: Utc::now(),
        duration_ms: 5,
        status_code: Some(status_code),
        error: None,
        error_detail: None,
        response_headers: Default::default(),
        response_body: None,
    }
}

#[tokio::test]
async fn legacy_ids_and_external_ids_find_their_callbacks_and_stay_unique() {
    let Some(store) = store().await else { return };
    let first = legacy_callback("legacy", 7, Some("order-1"));
    assert_eq!(
        ingest(&store, vec![first.clone()]).await,
        Ok(IngestResult::Accepted)
    );
    let found = store
        .get_by_legacy_id(&scope("legacy"), 7)
        .await
        .unwrap()
        .expect("found by its legacy id");
    assert_eq!(found.callback.id, first.id);
    assert_eq!(found.callback.external_id.as_deref(), Some("order-1"));
    assert!(store
        .get_by_legacy_id(&Scope::All, 7)
        .await
        .unwrap()
        .is_some());
    assert!(
        store
            .get_by_legacy_id(&scope("other"), 7)
            .await
            .unwrap()
            .is_none(),
        "another tenant's callback is not found"
    );
    assert!(store
        .get_by_legacy_id(&scope("legacy"), 8)
        .await
        .unwrap()
        .is_none());

    let t = tenant("legacy");
    assert!(store.external_id_exists(&t, "order-1").await.unwrap());
    assert!(!store.external_id_exists(&t, "order-2").await.unwrap());
    assert!(!store
        .external_id_exists(&tenant("other"), "order-1")
        .await
        .unwrap());

    // The same external_id again: refused, and nothing of the second callback is written.
    let second = legacy_callback("legacy", 8, Some("order-1"));
    match ingest(&store, vec![second.clone()]).await {
        Err(StoreError::Conflict(why)) => assert!(why.contains("order-1"), "{why}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store
        .get_by_legacy_id(&scope("legacy"), 8)
        .await
        .unwrap()
        .is_none());
    assert!(store.get(&Scope::All, &second.id).await.unwrap().is_none());
    // Also when it comes with an idempotency key (one transaction with the record).
    let keyed = store
        .ingest(IngestBatch {
            tenant: t.clone(),
            callbacks: vec![legacy_callback("legacy", 9, Some("order-1"))],
            idempotency: Some(IdempotencyRecord {
                key: "k-1".into(),
                fingerprint: "f".into(),
                response_status: 201,
                response_body: b"{}".to_vec(),
            }),
        })
        .await;
    assert!(matches!(keyed, Err(StoreError::Conflict(_))), "{keyed:?}");
    // Another tenant may use it.
    assert_eq!(
        ingest(&store, vec![legacy_callback("other", 10, Some("order-1"))]).await,
        Ok(IngestResult::Accepted)
    );
    // A legacy id is unique across the table.
    assert!(matches!(
        ingest(&store, vec![legacy_callback("other", 7, None)]).await,
        Err(StoreError::Conflict(_))
    ));

    // Long values are hashed into the guard's key, and still unique.
    let long = "x".repeat(700);
    ingest(&store, vec![legacy_callback("legacy", 11, Some(&long))])
        .await
        .unwrap();
    assert!(store.external_id_exists(&t, &long).await.unwrap());
    assert!(matches!(
        ingest(&store, vec![legacy_callback("legacy", 12, Some(&long))]).await,
        Err(StoreError::Conflict(_))
    ));

    // Retention removed the first callback: its guard and pointer are stale, the external_id
    // is free again, and the guard goes to the new callback.
    store
        .client()
        .delete_item()
        .table_name(store.table())
        .key("pk", aws_string(format!("cb#{}", first.id)))
        .key("sk", aws_string("cb".into()))
        .send()
        .await
        .unwrap();
    assert!(!store.external_id_exists(&t, "order-1").await.unwrap());
    assert!(store
        .get_by_legacy_id(&scope("legacy"), 7)
        .await
        .unwrap()
        .is_none());
    let third = legacy_callback("legacy", 13, Some("order-1"));
    assert_eq!(
        ingest(&store, vec![third.clone()]).await,
        Ok(IngestResult::Accepted)
    );
    assert!(store.external_id_exists(&t, "order-1").await.unwrap());
    let page = store
        .list_legacy(
            &scope("legacy"),
            &LegacyListFilter {
                external_id: Some("order-1".into()),
                ..Default::default()
            },
            0,
            50,
        )
        .await
        .unwrap();
    assert_eq!((page.count, ids(&page.items)), (1, vec![13]));
}

fn aws_string(v: String) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::S(v)
}

#[tokio::test]
async fn a_batch_too_big_for_one_transaction_keeps_each_callback_with_its_pointer() {
    let Some(store) = store().await else { return };
    // 60 callbacks with a pointer and a guard each: 180 items, more than one transaction.
    let callbacks: Vec<_> = (1..=60)
        .map(|i| legacy_callback("legacy", i, Some(&format!("e-{i}"))))
        .collect();
    let batch = |callbacks| IngestBatch {
        tenant: tenant("legacy"),
        callbacks,
        idempotency: Some(IdempotencyRecord {
            key: "big".into(),
            fingerprint: "f".into(),
            response_status: 202,
            response_body: b"{}".to_vec(),
        }),
    };
    assert_eq!(
        store.ingest(batch(callbacks.clone())).await,
        Ok(IngestResult::Accepted)
    );
    assert_eq!(
        store.ingest(batch(callbacks.clone())).await,
        Ok(IngestResult::Replayed {
            status: 202,
            body: b"{}".to_vec()
        })
    );
    for cb in callbacks.iter().step_by(7) {
        let found = store
            .get_by_legacy_id(&scope("legacy"), cb.legacy_id.unwrap())
            .await
            .unwrap()
            .expect("every callback has its pointer");
        assert_eq!(found.callback.id, cb.id);
    }
    let page = store
        .list_legacy(&scope("legacy"), &LegacyListFilter::default(), 0, 50)
        .await
        .unwrap();
    assert_eq!(page.count, 60);
    assert_eq!(ids(&page.items), (11..=60).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn the_legacy_listing_counts_and_pages_newest_legacy_id_first() {
    let Some(store) = store().await else { return };
    let later = Some(Utc::now() + Duration::hours(1));
    // Legacy ids 1..=12: 3 and 6 scheduled (legacy "pending" too), 4, 8 and 12 cancelled.
    let mine: Vec<_> = (1..=12)
        .map(|i| {
            let at = if i % 3 == 0 && i < 9 { later } else { None };
            legacy_callback_at("legacy", i, Some(&format!("e-{i}")), at)
        })
        .collect();
    for cb in &mine {
        ingest(&store, vec![cb.clone()]).await.unwrap();
    }
    for cb in mine.iter().filter(|c| c.legacy_id.unwrap() % 4 == 0) {
        let done = store.cancel(&scope("legacy"), &cb.id, "caller").await;
        assert!(matches!(done, Ok(ActionResult::Done(_))), "{done:?}");
    }
    for i in 100..=102 {
        ingest(&store, vec![legacy_callback("other", i, None)])
            .await
            .unwrap();
    }
    let list = |scope: Scope, statuses: Option<Vec<Status>>, ext: Option<&str>, offset, limit| {
        let store = store.clone();
        let filter = LegacyListFilter {
            statuses,
            external_id: ext.map(str::to_owned),
            ..LegacyListFilter::default()
        };
        async move {
            let page = store
                .list_legacy(&scope, &filter, offset, limit)
                .await
                .unwrap();
            (page.count, ids(&page.items))
        }
    };
    let legacy = || scope("legacy");
    assert_eq!(
        list(legacy(), None, None, 0, 5).await,
        (12, vec![12, 11, 10, 9, 8])
    );
    assert_eq!(
        list(legacy(), None, None, 5, 5).await,
        (12, vec![7, 6, 5, 4, 3])
    );
    assert_eq!(list(legacy(), None, None, 10, 5).await, (12, vec![2, 1]));
    assert_eq!(list(legacy(), None, None, 50, 5).await, (12, vec![]));
    let waiting = Some(vec![Status::Scheduled, Status::Pending]);
    assert_eq!(
        list(legacy(), waiting.clone(), None, 0, 4).await,
        (9, vec![11, 10, 9, 7])
    );
    assert_eq!(
        list(legacy(), waiting.clone(), None, 4, 4).await,
        (9, vec![6, 5, 3, 2])
    );
    assert_eq!(
        list(legacy(), Some(vec![Status::Cancelled]), None, 0, 50).await,
        (3, vec![12, 8, 4])
    );
    assert_eq!(list(legacy(), Some(vec![]), None, 0, 50).await, (0, vec![]));
    assert_eq!(list(legacy(), None, Some("e-5"), 0, 50).await, (1, vec![5]));
    assert_eq!(list(legacy(), None, Some("e-5"), 1, 50).await, (1, vec![]));
    assert_eq!(
        list(legacy(), Some(vec![Status::Cancelled]), Some("e-5"), 0, 50).await,
        (0, vec![])
    );
    assert_eq!(list(legacy(), None, Some("nope"), 0, 50).await, (0, vec![]));
    assert_eq!(
        list(scope("other"), None, Some("e-5"), 0, 50).await,
        (0, vec![])
    );
    // An admin lists every tenant's, merged by legacy id.
    assert_eq!(
        list(Scope::All, None, None, 0, 4).await,
        (15, vec![102, 101, 100, 12])
    );
    assert_eq!(
        list(Scope::All, None, Some("e-5"), 0, 50).await,
        (1, vec![5])
    );

    // What retention has expired is neither counted nor listed, before DynamoDB deletes it.
    let no_retention = same_table(
        &store,
        StoreRetention {
            callbacks: std::time::Duration::ZERO,
            ..StoreRetention::default()
        },
    );
    let eleven = &mine[10];
    no_retention
        .cancel(&scope("legacy"), &eleven.id, "caller")
        .await
        .unwrap();
    assert_eq!(
        list(legacy(), None, None, 0, 3).await,
        (11, vec![12, 10, 9])
    );
    assert_eq!(
        list(legacy(), Some(vec![Status::Cancelled]), None, 0, 50).await,
        (3, vec![12, 8, 4])
    );
}

#[tokio::test]
async fn send_now_claims_a_waiting_or_failed_callback_whatever_its_due_time() {
    let Some(store) = store().await else { return };
    let now = Utc::now();
    let lease = now + Duration::seconds(60);
    let legacy = scope("legacy");

    // Scheduled an hour ahead: claimed now, under a lease the sweeper watches.
    let scheduled = legacy_callback_at("legacy", 1, None, Some(now + Duration::hours(1)));
    ingest(&store, vec![scheduled.clone()]).await.unwrap();
    let claimed = match store
        .claim_now(&legacy, &scheduled.id, "caller", now, lease)
        .await
        .unwrap()
    {
        ActionResult::Done(cb) => cb,
        other => panic!("expected a claim, got {other:?}"),
    };
    assert_eq!(claimed.status, Status::Delivering);
    let swept = store
        .sweep_candidates(lease + Duration::seconds(1), 100)
        .await
        .unwrap();
    assert!(swept
        .iter()
        .any(|c| c.id == scheduled.id && c.kind == SweepKind::ExpiredLease));
    assert!(matches!(
        store
            .claim_now(&legacy, &scheduled.id, "caller", now, lease)
            .await
            .unwrap(),
        ActionResult::WrongState(Status::Delivering)
    ));
    let events = store.events(&legacy, &scheduled.id).await.unwrap().unwrap();
    let sent = events
        .iter()
        .find(|e| e.kind == EventKind::SentNow)
        .expect("a sent_now event");
    assert_eq!(sent.actor.as_deref(), Some("caller"));
    assert_eq!(sent.from_status.as_deref(), Some("scheduled"));
    store
        .record_attempt(
            &scheduled.id,
            attempt(1, 200),
            Decision::Delivered,
            Utc::now(),
            &[],
        )
        .await
        .unwrap();
    let done = store.get(&legacy, &scheduled.id).await.unwrap().unwrap();
    assert_eq!(done.callback.status, Status::Delivered);
    assert_eq!(done.callback.last_status_code, Some(200));
    assert!(matches!(
        store
            .claim_now(&legacy, &scheduled.id, "caller", now, lease)
            .await
            .unwrap(),
        ActionResult::WrongState(Status::Delivered)
    ));

    // A dead letter gets one more attempt; it is no longer set to expire while in flight.
    let failed = legacy_callback("legacy", 2, None);
    ingest(&store, vec![failed.clone()]).await.unwrap();
    store
        .claim_in(&failed.id, None, Utc::now(), lease)
        .await
        .unwrap()
        .expect("due now");
    store
        .record_attempt(
            &failed.id,
            attempt(1, 500),
            Decision::DeadLetter(DeadLetterReason::Exhausted),
            Utc::now(),
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        store.claim_now(&legacy, &failed.id, "caller", Utc::now(), lease).await.unwrap(),
        ActionResult::Done(cb) if cb.status == Status::Delivering
    ));
    let item = store
        .client()
        .get_item()
        .table_name(store.table())
        .key("pk", aws_string(format!("cb#{}", failed.id)))
        .key("sk", aws_string("cb".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(!item.contains_key("expires_at"));
    assert!(item.contains_key("due_sk"));

    // Out of scope: not found.
    let pending = legacy_callback("legacy", 3, None);
    ingest(&store, vec![pending.clone()]).await.unwrap();
    assert!(matches!(
        store
            .claim_now(&scope("other"), &pending.id, "caller", now, lease)
            .await
            .unwrap(),
        ActionResult::NotFound
    ));
}

#[tokio::test]
async fn bootstrap_adds_the_legacy_index_to_a_table_made_before_it() {
    let Some(store) = store().await else { return };
    let delete = aws_sdk_dynamodb::types::GlobalSecondaryIndexUpdate::builder()
        .delete(
            aws_sdk_dynamodb::types::DeleteGlobalSecondaryIndexAction::builder()
                .index_name(fluxcb_aws::store::INDEX_BY_LEGACY)
                .build()
                .unwrap(),
        )
        .build();
    store
        .client()
        .update_table()
        .table_name(store.table())
        .global_secondary_index_updates(delete)
        .send()
        .await
        .unwrap();
    ingest(&store, vec![legacy_callback("legacy", 1, None)])
        .await
        .unwrap();
    assert!(store
        .list_legacy(&scope("legacy"), &LegacyListFilter::default(), 0, 50)
        .await
        .is_err());
    let prefix = store.table().strip_suffix("-callbacks").unwrap();
    let clients = fluxcb_aws::AwsClients::from_env().await;
    fluxcb_aws::bootstrap::bootstrap(&clients, prefix)
        .await
        .unwrap();
    let page = store
        .list_legacy(&scope("legacy"), &LegacyListFilter::default(), 0, 50)
        .await
        .unwrap();
    assert_eq!((page.count, ids(&page.items)), (1, vec![1]));
}
