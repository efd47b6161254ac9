//! The rollback's fence on DynamoDB (moto), with the embedded store's semantics: every
//! unfinished callback fluxcb owns that has a legacy id becomes a mirror, leaves the `due`
//! index and waits for hand-back (found again by a rerun until marked handed back); an attempt
//! in flight at the fence, or a lease that ran out, never makes it due here again (no `due`
//! entry, no queue message).
mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use fluxcb_aws::deliverer::{Deliverer, Handled, Record};
use fluxcb_aws::queue::SqsQueue;
use fluxcb_aws::store::DynamoStore;
use fluxcb_aws::sweeper::Sweeper;
use fluxcb_core::attempt::{Attempt, SendOutcome};
use fluxcb_core::callback::{Callback, Owner};
use fluxcb_core::event::EventKind;
use fluxcb_core::message::QueueMessage;
use fluxcb_core::ports::{CallbackStore, OutboundRequest, SecretStore, Sender, SystemClock};
use fluxcb_core::retry::{Decision, RetryPolicy};
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::status::Status;
use fluxcb_core::tenant::Scope;
use fluxcb_delivery::destinations::{DestinationLimits, Destinations};
use fluxcb_delivery::secrets::SecretCache;
use support::{imported_row, ingest, legacy_callback, legacy_callback_at, store, store_and_queue};

type Item = std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

async fn raw(store: &DynamoStore, cb: &Callback) -> Item {
    store
        .client()
        .get_item()
        .table_name(store.table())
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("cb#{}", cb.id)),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("cb".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the callback item")
}

/// Off the `due` index and not due: what a mirror looks like.
fn assert_not_due(item: &Item) {
    for attr in ["due_pk", "due_sk", "next_attempt_at", "enqueued_at"] {
        assert!(!item.contains_key(attr), "{attr} left on {item:?}");
    }
}

fn legacy_ids(callbacks: &[Callback]) -> BTreeSet<i64> {
    callbacks.iter().filter_map(|c| c.legacy_id).collect()
}

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

async fn claim(store: &DynamoStore, cb: &Callback, lease_until: DateTime<Utc>) {
    store
        .claim_in(&cb.id, Some(&cb.tenant), Utc::now(), lease_until)
        .await
        .unwrap()
        .expect("due, so claimed");
}

#[tokio::test]
async fn the_fence_makes_unfinished_callbacks_mirrors_until_each_is_handed_back() {
    let Some(store) = store().await else { return };
    let lease = Utc::now() + Duration::seconds(60);
    let pending = legacy_callback("legacy", 1, Some("e-1"));
    let scheduled = legacy_callback_at("legacy", 2, None, Some(Utc::now() + Duration::hours(1)));
    let delivering = legacy_callback("legacy", 3, None);
    let delivered = legacy_callback("legacy", 4, None);
    let mut plain = legacy_callback("legacy", 0, None);
    plain.legacy_id = None;
    let other_tenant = legacy_callback("other", 6, None);
    for cb in [&pending, &scheduled, &delivering, &delivered, &plain] {
        ingest(&store, vec![cb.clone()]).await.unwrap();
    }
    ingest(&store, vec![other_tenant.clone()]).await.unwrap();
    // A mirror of a legacy row: legacy's already.
    store
        .import_legacy(vec![imported_row(5, Status::Pending, Owner::Legacy)])
        .await
        .unwrap();
    claim(&store, &delivering, lease).await;
    claim(&store, &delivered, lease).await;
    store
        .record_attempt(
            &delivered.id,
            attempt(1, 200),
            Decision::Delivered,
            Utc::now(),
            &[],
        )
        .await
        .unwrap();

    let fenced = store.fence_for_handback(Utc::now()).await.unwrap();
    assert_eq!(legacy_ids(&fenced), BTreeSet::from([1, 2, 3, 6]));
    // As they were before the fence.
    for cb in &fenced {
        assert_eq!(cb.owner, Owner::Fluxcb, "{cb:?}");
        let expected = match cb.legacy_id {
            Some(2) => Status::Scheduled,
            Some(3) => Status::Delivering,
            _ => Status::Pending,
        };
        assert_eq!(cb.status, expected);
    }
    let before_pending = fenced.iter().find(|c| c.id == pending.id).unwrap();
    assert!(before_pending.next_attempt_at.is_some());

    // Now mirrors: out of the `due` index, never claimed, no action applies.
    for cb in [&pending, &scheduled, &other_tenant] {
        let item = raw(&store, cb).await;
        assert_not_due(&item);
        let now = store
            .get(&Scope::All, &cb.id)
            .await
            .unwrap()
            .unwrap()
            .callback;
        assert_eq!((now.owner, now.status), (Owner::Legacy, cb.status));
        assert!(store
            .claim_in(&cb.id, None, Utc::now() + Duration::hours(2), lease)
            .await
            .unwrap()
            .is_none());
    }
    // The one in flight keeps its lease's `due` entry, so the sweeper could recover it.
    let item = raw(&store, &delivering).await;
    assert!(item.contains_key("due_sk") && !item.contains_key("next_attempt_at"));
    let swept = store
        .sweep_candidates(Utc::now() + Duration::hours(2), 100)
        .await
        .unwrap();
    let swept: BTreeSet<_> = swept.iter().map(|c| c.id).collect();
    assert!(!swept.contains(&pending.id) && !swept.contains(&scheduled.id));
    // Left alone: finished, not a legacy-API callback, and the mirror.
    let untouched = store.get(&Scope::All, &plain.id).await.unwrap().unwrap();
    assert_eq!(untouched.callback.owner, Owner::Fluxcb);
    assert!(raw(&store, &plain).await.contains_key("due_sk"));
    let done = store
        .get(&Scope::All, &delivered.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.callback.owner, done.callback.status),
        (Owner::Fluxcb, Status::Delivered)
    );

    // A rerun (an export that stopped before writing) finds the same ones, as they are now.
    let again = store.fence_for_handback(Utc::now()).await.unwrap();
    assert_eq!(legacy_ids(&again), BTreeSet::from([1, 2, 3, 6]));
    assert!(again.iter().all(|c| c.owner == Owner::Legacy));

    // Marked handed back: no longer awaited, and recorded with its detail.
    store
        .mark_handed_back(
            &pending.id,
            serde_json::json!({"legacy_id": 1, "status": "pending"}),
        )
        .await
        .unwrap();
    let events = store
        .events(&Scope::All, &pending.id)
        .await
        .unwrap()
        .unwrap();
    let handed = events
        .iter()
        .find(|e| e.kind == EventKind::HandedBack)
        .expect("a handed_back event");
    assert_eq!(handed.actor.as_deref(), Some("fluxcb migrate export"));
    assert_eq!(handed.detail["legacy_id"], 1);
    // A callback fluxcb took after the fence is fenced by the next run.
    let later = legacy_callback("legacy", 7, None);
    ingest(&store, vec![later.clone()]).await.unwrap();
    let third = store.fence_for_handback(Utc::now()).await.unwrap();
    assert_eq!(legacy_ids(&third), BTreeSet::from([2, 3, 6, 7]));
    for id in [&scheduled.id, &delivering.id, &other_tenant.id, &later.id] {
        store
            .mark_handed_back(id, serde_json::json!({}))
            .await
            .unwrap();
    }
    assert!(store
        .fence_for_handback(Utc::now())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_attempt_in_flight_at_the_fence_is_recorded_but_not_made_due() {
    let Some(store) = store().await else { return };
    let lease = Utc::now() + Duration::seconds(60);
    let fenced = legacy_callback("legacy", 1, None);
    let kept = legacy_callback("legacy", 2, None);
    ingest(&store, vec![fenced.clone()]).await.unwrap();
    claim(&store, &fenced, lease).await;
    store.fence_for_handback(Utc::now()).await.unwrap();
    // Taken after the fence: fluxcb's.
    ingest(&store, vec![kept.clone()]).await.unwrap();
    claim(&store, &kept, lease).await;

    let retry = Decision::RetryAt(Utc::now() + Duration::seconds(30));
    let waits = store
        .record_attempt_of(
            Some(&fenced),
            &fenced.id,
            attempt(1, 500),
            retry,
            Utc::now(),
            &[],
        )
        .await
        .unwrap()
        .waits_here;
    assert!(!waits, "a handed-back callback is not due here");
    let detail = store.get(&Scope::All, &fenced.id).await.unwrap().unwrap();
    assert_eq!(
        (detail.callback.status, detail.callback.owner),
        (Status::Pending, Owner::Legacy)
    );
    assert_eq!(detail.callback.attempts_made, 1);
    assert_eq!(
        detail.attempts.len(),
        1,
        "the attempt is in the audit trail"
    );
    assert_not_due(&raw(&store, &fenced).await);
    // Through the trait too (the tenant read first), for a callback fluxcb still owns: due.
    let waits = store
        .record_attempt_of(None, &kept.id, attempt(1, 500), retry, Utc::now(), &[])
        .await
        .unwrap()
        .waits_here;
    assert!(waits);
    let item = raw(&store, &kept).await;
    assert!(item.contains_key("due_sk") && item.contains_key("next_attempt_at"));
}

/// A receiver that answers 500, and fences the callback for hand-back while "sending" it when
/// asked to: the rollback starting during an attempt.
struct FencingSender {
    store: Arc<DynamoStore>,
    fence: Mutex<bool>,
}

#[async_trait]
impl Sender for FencingSender {
    async fn send(&self, _request: OutboundRequest) -> SendOutcome {
        let fence = std::mem::take(&mut *self.fence.lock().unwrap());
        if fence {
            self.store.fence_for_handback(Utc::now()).await.unwrap();
        }
        SendOutcome {
            status_code: Some(500),
            error: None,
            headers: Default::default(),
            body_excerpt: Vec::new(),
            duration: std::time::Duration::from_millis(3),
        }
    }
}

async fn messages(queue: &SqsQueue) -> u64 {
    let d = queue.depths().await.unwrap();
    d.visible + d.delayed + d.in_flight
}

#[tokio::test]
async fn the_deliverer_sends_no_retry_message_for_a_callback_handed_back_mid_attempt() {
    let Some((store, queue)) = store_and_queue().await else {
        return;
    };
    let store = Arc::new(store);
    let sender = Arc::new(FencingSender {
        store: store.clone(),
        fence: Mutex::new(false),
    });
    let deliverer = Deliverer {
        store: store.clone(),
        queue: queue.clone(),
        sender: sender.clone(),
        secrets: Arc::new(SecretCache::new(
            store.clone(),
            std::time::Duration::from_secs(5),
        )),
        legacy_secret: None,
        policy: RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        clock: Arc::new(SystemClock),
        destinations: Arc::new(Destinations::new(DestinationLimits::default())),
        routes: None,
        lease: std::time::Duration::from_secs(60),
        follow_ups: std::sync::Arc::new(fluxcb_core::notify::FollowUpSettings {
            ops: None,
            defaults: fluxcb_core::callback::CallbackDefaults {
                max_attempts: 5,
                timeout_ms: 10_000,
            },
        }),
        ops_events: None,
    };
    let kept = legacy_callback("legacy", 1, None);
    let handed_back = legacy_callback("legacy", 2, None);
    store
        .add_secret(
            &kept.tenant,
            &SigningSecret::generate(),
            Utc::now() + Duration::days(1),
        )
        .await
        .unwrap();
    ingest(&store, vec![kept.clone()]).await.unwrap();
    ingest(&store, vec![handed_back.clone()]).await.unwrap();
    let record = |cb: &Callback| Record {
        message_id: cb.id.to_string(),
        body: QueueMessage::deliver_for(cb.id, cb.tenant.clone()).encode(),
    };

    // Control: a 500 for a callback fluxcb owns schedules a retry with its delayed message.
    assert_eq!(
        deliverer.handle(&record(&kept)).await.unwrap(),
        Handled::Attempted
    );
    assert_eq!(messages(&queue).await, 1);

    // The fence lands while the attempt is on the wire: recorded, pending, legacy's, no message.
    *sender.fence.lock().unwrap() = true;
    assert_eq!(
        deliverer.handle(&record(&handed_back)).await.unwrap(),
        Handled::Attempted
    );
    assert_eq!(
        messages(&queue).await,
        1,
        "no message for the handed-back one"
    );
    let now = store
        .get(&Scope::All, &handed_back.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (now.callback.status, now.callback.owner, now.attempts.len()),
        (Status::Pending, Owner::Legacy, 1)
    );
    assert_not_due(&raw(&store, &handed_back).await);
    // A stale message for it claims nothing.
    assert_eq!(
        deliverer.handle(&record(&handed_back)).await.unwrap(),
        Handled::Stale
    );
}

#[tokio::test]
async fn a_lease_that_ran_out_after_the_fence_is_recovered_off_the_queue() {
    let Some((store, queue)) = store_and_queue().await else {
        return;
    };
    let store = Arc::new(store);
    let cb = legacy_callback("legacy", 1, None);
    ingest(&store, vec![cb.clone()]).await.unwrap();
    // Claimed by a worker that then died: the lease is over already.
    claim(&store, &cb, Utc::now() - Duration::seconds(1)).await;
    let fenced = store.fence_for_handback(Utc::now()).await.unwrap();
    assert_eq!(legacy_ids(&fenced), BTreeSet::from([1]));

    let sweeper = Sweeper {
        store: store.clone(),
        queue: queue.clone(),
        limit: 100,
    };
    let report = sweeper.sweep_once(Utc::now()).await.unwrap();
    assert_eq!((report.recovered, report.enqueued), (1, 0), "{report:?}");
    assert_eq!(messages(&queue).await, 0);
    let now = store
        .get(&Scope::All, &cb.id)
        .await
        .unwrap()
        .unwrap()
        .callback;
    assert_eq!((now.status, now.owner), (Status::Pending, Owner::Legacy));
    assert_not_due(&raw(&store, &cb).await);
    let events = store.events(&Scope::All, &cb.id).await.unwrap().unwrap();
    assert!(events.iter().any(|e| e.kind == EventKind::Recovered));
    // Nothing left for the sweeper, and it is still awaited by the export.
    let report = sweeper.sweep_once(Utc::now()).await.unwrap();
    assert_eq!((report.recovered, report.enqueued), (0, 0));
    let again = store.fence_for_handback(Utc::now()).await.unwrap();
    assert_eq!(legacy_ids(&again), BTreeSet::from([1]));

    // The same through `recover_expired_leases` (the store port), for one fenced in flight
    // whose index entry the lease recovery reads.
    let other = legacy_callback("legacy", 2, None);
    ingest(&store, vec![other.clone()]).await.unwrap();
    claim(&store, &other, Utc::now() - Duration::seconds(1)).await;
    store.fence_for_handback(Utc::now()).await.unwrap();
    assert_eq!(store.recover_expired_leases(Utc::now()).await.unwrap(), 1);
    assert_not_due(&raw(&store, &other).await);
}
