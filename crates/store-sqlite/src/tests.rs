//! The store's own guarantees, checked against a real SQLite file: schema versioning, group
//! commit under concurrency, idempotency at the storage level, claiming with leases, lease
//! recovery, retention and redrive.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use fluxcb_core::attempt::{Attempt, ErrorCode};
use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback};
use fluxcb_core::event::EventKind;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{
    CallbackStore, IdempotencyRecord, IngestBatch, IngestResult, ListFilter, PageRequest,
    PolledStore, StoreError,
};
use fluxcb_core::retry::{DeadLetterReason, Decision};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::{Scope, TenantId};
use rusqlite::Connection;

use crate::{OpenError, SqliteStore, DB_FILE, SCHEMA_VERSION};

/// A data directory removed when the test ends; the crate has no tempfile dependency.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fluxcb-store-test-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn open() -> (TempDir, SqliteStore) {
    let dir = TempDir::new();
    let store = SqliteStore::open(dir.path()).expect("open store");
    (dir, store)
}

pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn default_scope() -> Scope {
    Scope::Tenant(TenantId::default_tenant())
}

pub(crate) struct Spec<'a> {
    pub tenant: &'a str,
    pub url: &'a str,
    pub created: DateTime<Utc>,
    pub deliver_at: Option<DateTime<Utc>>,
    pub metadata: &'a [(&'a str, &'a str)],
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            tenant: "default",
            url: "https://receiver.example/hook",
            created: Utc::now(),
            deliver_at: None,
            metadata: &[],
        }
    }
}

pub(crate) fn callback(s: Spec<'_>) -> Callback {
    let spec = NewCallback {
        url: s.url.to_owned(),
        payload: Some(serde_json::json!({ "hello": "world" })),
        deliver_at: s.deliver_at,
        metadata: s
            .metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..NewCallback::default()
    }
    .validate(s.created)
    .expect("valid callback");
    Callback::accept(
        CallbackId::generate(),
        tenant(s.tenant),
        spec,
        &CallbackDefaults {
            max_attempts: 3,
            timeout_ms: 1_000,
        },
        "test-key".into(),
        s.created,
    )
}

pub(crate) async fn ingest_one(store: &SqliteStore, cb: Callback) -> CallbackId {
    let id = cb.id;
    let result = store
        .ingest(IngestBatch {
            tenant: cb.tenant.clone(),
            callbacks: vec![cb],
            idempotency: None,
        })
        .await
        .expect("ingest");
    assert_eq!(result, IngestResult::Accepted);
    id
}

async fn status_of(store: &SqliteStore, id: &CallbackId) -> Status {
    store
        .get(&Scope::All, id)
        .await
        .unwrap()
        .expect("callback exists")
        .callback
        .status
}

pub(crate) fn attempt(number: u32, status_code: u16, at: DateTime<Utc>) -> Attempt {
    let ok = (200..300).contains(&status_code);
    Attempt {
        number,
        started_at: at,
        duration_ms: 12,
        status_code: Some(status_code),
        error: (!ok).then_some(ErrorCode::HttpStatus),
        error_detail: (!ok).then(|| format!("receiver answered {status_code}")),
        response_headers: BTreeMap::new(),
        response_body: None,
    }
}

/// Claims everything due for `tenant` and finishes each with `decision`, dated `at`.
async fn finish_all(
    store: &SqliteStore,
    tenant: &TenantId,
    decision: Decision,
    at: DateTime<Utc>,
) -> Vec<CallbackId> {
    let now = Utc::now();
    let claimed = store
        .claim_due(tenant, now, 1000, now + Duration::minutes(2))
        .await
        .unwrap();
    let code = if decision == Decision::Delivered {
        200
    } else {
        500
    };
    for cb in &claimed {
        store
            .record_attempt(&cb.id, attempt(1, code, at), decision, at, &[])
            .await
            .unwrap();
    }
    claimed.iter().map(|c| c.id).collect()
}

/// Rows that mention `id` in a table, read beside the store as an operator would.
fn rows_for(dir: &Path, table: &str, id: &CallbackId) -> i64 {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.query_row(
        &format!("SELECT COUNT(*) FROM {table} WHERE callback_id = ?1"),
        [id.to_string()],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn fresh_store_is_at_the_current_schema_and_reopens() {
    let dir = TempDir::new();
    drop(SqliteStore::open(dir.path()).unwrap());
    let version: i64 = Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // A second open must not try to re-run migrations (the tables already exist).
    SqliteStore::open(dir.path()).expect("reopening a current store");
}

#[test]
fn a_store_from_a_newer_fluxcb_is_refused() {
    let dir = TempDir::new();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = match SqliteStore::open(dir.path()) {
        Ok(_) => panic!("a newer schema was opened"),
        Err(e) => e,
    };
    match &err {
        OpenError::NewerSchema { found, supported } => {
            assert_eq!(*found, SCHEMA_VERSION + 1);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(err.to_string().contains("newer fluxcb"), "{err}");
    // Refusing must leave the file alone, so the newer fluxcb can still use it.
    let version: i64 = Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_accepts_many_concurrent_ingests() {
    let (_dir, store) = open();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let store = store.clone();
            let t = if i % 2 == 0 { "alpha" } else { "beta" };
            tokio::spawn(async move {
                let cb = callback(Spec {
                    tenant: t,
                    ..Spec::default()
                });
                ingest_one(&store, cb).await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 500);
    for id in &ids {
        assert_eq!(status_of(&store, id).await, Status::Pending);
    }
    let counts = store.count_by_status().await.unwrap();
    assert_eq!(counts.get(&Status::Pending), Some(&500));
    let mut listed = HashSet::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(
                &Scope::All,
                &ListFilter::default(),
                &PageRequest { cursor, limit: 500 },
            )
            .await
            .unwrap();
        listed.extend(page.items.iter().map(|c| c.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(listed, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_does_not_undo_the_others_in_its_group() {
    let (_dir, store) = open();
    let original = callback(Spec::default());
    let dup_id = ingest_one(&store, original.clone()).await;
    // Re-ingesting the same id violates the UNIQUE constraint; the fresh ones beside it in the
    // same group commit must still land, and the failed one must leave nothing behind.
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let store = store.clone();
            let cb = if i % 3 == 0 {
                original.clone()
            } else {
                callback(Spec::default())
            };
            tokio::spawn(async move {
                let id = cb.id;
                let r = store
                    .ingest(IngestBatch {
                        tenant: TenantId::default_tenant(),
                        callbacks: vec![cb],
                        idempotency: None,
                    })
                    .await;
                (id, r)
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        let (id, r) = t.await.unwrap();
        if id == dup_id {
            assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
        } else {
            assert_eq!(r, Ok(IngestResult::Accepted));
            assert_eq!(status_of(&store, &id).await, Status::Pending);
            accepted += 1;
        }
    }
    assert_eq!(accepted, 40);
    assert_eq!(
        store.count_by_status().await.unwrap().get(&Status::Pending),
        Some(&41)
    );
    assert_eq!(
        store
            .events(&Scope::All, &dup_id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        1,
        "failed duplicates left history behind"
    );
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let (_dir, store) = open();
    let a = callback(Spec::default());
    let b = callback(Spec::default());
    let r = store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![a.clone(), b, a.clone()],
            idempotency: Some(IdempotencyRecord {
                key: "k-batch".into(),
                fingerprint: "f1".into(),
                response_status: 202,
                response_body: b"{}".to_vec(),
            }),
        })
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert!(store.get(&Scope::All, &a.id).await.unwrap().is_none());
    assert!(store.count_by_status().await.unwrap().is_empty());
    // The idempotency record went with the rest: the key is free for a fresh attempt.
    let retry = store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![callback(Spec::default())],
            idempotency: Some(IdempotencyRecord {
                key: "k-batch".into(),
                fingerprint: "f1".into(),
                response_status: 202,
                response_body: b"{}".to_vec(),
            }),
        })
        .await
        .unwrap();
    assert_eq!(retry, IngestResult::Accepted);
}

fn idem(key: &str, fingerprint: &str, body: &str) -> Option<IdempotencyRecord> {
    Some(IdempotencyRecord {
        key: key.into(),
        fingerprint: fingerprint.into(),
        response_status: 202,
        response_body: body.as_bytes().to_vec(),
    })
}

#[tokio::test]
async fn idempotency_replays_the_first_answer_and_refuses_a_different_request() {
    let (_dir, store) = open();
    let first = callback(Spec::default());
    let r = store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![first.clone()],
            idempotency: idem("key-1", "fp-a", r#"{"id":"first"}"#),
        })
        .await
        .unwrap();
    assert_eq!(r, IngestResult::Accepted);

    let again = callback(Spec::default());
    let r = store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![again.clone()],
            idempotency: idem("key-1", "fp-a", r#"{"id":"second"}"#),
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        IngestResult::Replayed {
            status: 202,
            body: br#"{"id":"first"}"#.to_vec()
        }
    );
    assert!(
        store.get(&Scope::All, &again.id).await.unwrap().is_none(),
        "a replay must not store new callbacks"
    );

    let other = callback(Spec::default());
    let r = store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks: vec![other.clone()],
            idempotency: idem("key-1", "fp-b", r#"{"id":"other"}"#),
        })
        .await
        .unwrap();
    assert_eq!(r, IngestResult::KeyReused);
    assert!(store.get(&Scope::All, &other.id).await.unwrap().is_none());

    // Keys are per tenant: another tenant's identical key is a new request.
    let elsewhere = callback(Spec {
        tenant: "other",
        ..Spec::default()
    });
    let r = store
        .ingest(IngestBatch {
            tenant: tenant("other"),
            callbacks: vec![elsewhere.clone()],
            idempotency: idem("key-1", "fp-a", r#"{"id":"elsewhere"}"#),
        })
        .await
        .unwrap();
    assert_eq!(r, IngestResult::Accepted);
    assert_eq!(
        store.count_by_status().await.unwrap().get(&Status::Pending),
        Some(&2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_store_one_set_of_callbacks() {
    let (_dir, store) = open();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .ingest(IngestBatch {
                        tenant: TenantId::default_tenant(),
                        callbacks: vec![callback(Spec::default()), callback(Spec::default())],
                        idempotency: idem("shared", "same-request", &format!("answer-{i}")),
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    let mut replayed_bodies = HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            IngestResult::Accepted => accepted += 1,
            IngestResult::Replayed { body, .. } => {
                replayed_bodies.insert(body);
            }
            IngestResult::KeyReused => panic!("same fingerprint reported as reused"),
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(
        replayed_bodies.len(),
        1,
        "every replay returns the one answer"
    );
    assert_eq!(
        store.count_by_status().await.unwrap().get(&Status::Pending),
        Some(&2)
    );
}

#[tokio::test]
async fn claim_due_takes_one_tenants_oldest_due_and_leases_them() {
    let (_dir, store) = open();
    let now = Utc::now();
    let mut alpha = Vec::new();
    for i in 0..5 {
        let cb = callback(Spec {
            tenant: "alpha",
            created: now - Duration::seconds(10 - i),
            ..Spec::default()
        });
        alpha.push(ingest_one(&store, cb).await);
    }
    let mut beta = Vec::new();
    for i in 0..3 {
        let cb = callback(Spec {
            tenant: "beta",
            created: now - Duration::seconds(20 - i),
            ..Spec::default()
        });
        beta.push(ingest_one(&store, cb).await);
    }
    let later = ingest_one(
        &store,
        callback(Spec {
            tenant: "gamma",
            deliver_at: Some(now + Duration::hours(1)),
            ..Spec::default()
        }),
    )
    .await;
    assert_eq!(status_of(&store, &later).await, Status::Scheduled);

    let mut due: Vec<_> = store.tenants_with_due(now).await.unwrap();
    due.sort();
    assert_eq!(due, vec![tenant("alpha"), tenant("beta")]);
    assert_eq!(
        store
            .next_due()
            .await
            .unwrap()
            .map(|t| t.timestamp_millis()),
        Some((now - Duration::seconds(20)).timestamp_millis())
    );

    let lease_until = now + Duration::minutes(2);
    let first = store
        .claim_due(&tenant("alpha"), now, 2, lease_until)
        .await
        .unwrap();
    let first_ids: HashSet<_> = first.iter().map(|c| c.id).collect();
    assert_eq!(first_ids, alpha[..2].iter().copied().collect());
    assert!(first.iter().all(|c| c.status == Status::Delivering));
    for id in &alpha[..2] {
        assert_eq!(status_of(&store, id).await, Status::Delivering);
    }
    // Leased callbacks are not handed out again.
    let second = store
        .claim_due(&tenant("alpha"), now, 10, lease_until)
        .await
        .unwrap();
    let second_ids: HashSet<_> = second.iter().map(|c| c.id).collect();
    assert_eq!(second_ids, alpha[2..].iter().copied().collect());
    assert!(store
        .claim_due(&tenant("alpha"), now, 10, lease_until)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.tenants_with_due(now).await.unwrap(),
        vec![tenant("beta")]
    );
    let b = store
        .claim_due(&tenant("beta"), now, 10, lease_until)
        .await
        .unwrap();
    assert_eq!(b.len(), 3);
    assert!(b.iter().all(|c| c.tenant == tenant("beta")));

    // A scheduled callback is claimable once its time comes, and not before.
    assert!(store
        .claim_due(&tenant("gamma"), now, 10, lease_until)
        .await
        .unwrap()
        .is_empty());
    let at = now + Duration::hours(1) + Duration::seconds(1);
    assert_eq!(
        store.tenants_with_due(at).await.unwrap(),
        vec![tenant("gamma")]
    );
    let g = store
        .claim_due(&tenant("gamma"), at, 10, at + Duration::minutes(2))
        .await
        .unwrap();
    assert_eq!(g.iter().map(|c| c.id).collect::<Vec<_>>(), vec![later]);
}

#[tokio::test]
async fn expired_leases_return_to_pending_and_can_be_claimed_again() {
    let (_dir, store) = open();
    let ids = [
        ingest_one(&store, callback(Spec::default())).await,
        ingest_one(&store, callback(Spec::default())).await,
    ];
    let done = ingest_one(&store, callback(Spec::default())).await;
    let now = Utc::now();
    let lease_until = now + Duration::minutes(2);
    let claimed = store
        .claim_due(&TenantId::default_tenant(), now, 10, lease_until)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    store
        .record_attempt(&done, attempt(1, 200, now), Decision::Delivered, now, &[])
        .await
        .unwrap();

    // Not expired yet: a live worker keeps its callbacks.
    assert_eq!(
        store
            .recover_expired_leases(lease_until - Duration::seconds(1))
            .await
            .unwrap(),
        0
    );
    for id in &ids {
        assert_eq!(status_of(&store, id).await, Status::Delivering);
    }
    assert_eq!(
        store
            .recover_expired_leases(lease_until + Duration::seconds(1))
            .await
            .unwrap(),
        2
    );
    for id in &ids {
        assert_eq!(status_of(&store, id).await, Status::Pending);
        let events = store
            .events(&Scope::All, id)
            .await
            .unwrap()
            .expect("callback exists");
        let last = events.last().expect("events");
        assert_eq!(last.kind, EventKind::Recovered);
        assert_eq!(last.from_status.as_deref(), Some("delivering"));
        assert_eq!(last.to_status.as_deref(), Some("pending"));
    }
    assert_eq!(
        status_of(&store, &done).await,
        Status::Delivered,
        "recovery must not touch finished callbacks"
    );
    let later = Utc::now() + Duration::seconds(1);
    let again = store
        .claim_due(
            &TenantId::default_tenant(),
            later,
            10,
            later + Duration::minutes(2),
        )
        .await
        .unwrap();
    let again_ids: HashSet<_> = again.iter().map(|c| c.id).collect();
    assert_eq!(again_ids, ids.iter().copied().collect());
    assert!(
        again.iter().all(|c| c.attempts_made == 0),
        "recovery counts no attempt"
    );
}

#[tokio::test]
async fn purge_deletes_only_finished_callbacks_older_than_the_cut_off() {
    let (dir, store) = open();
    let t = TenantId::default_tenant();
    let now = Utc::now();
    let cut = now + Duration::hours(1);

    for _ in 0..2 {
        ingest_one(&store, callback(Spec::default())).await;
    }
    let old_delivered = finish_all(&store, &t, Decision::Delivered, now).await;
    ingest_one(&store, callback(Spec::default())).await;
    let old_failed = finish_all(
        &store,
        &t,
        Decision::DeadLetter(DeadLetterReason::Exhausted),
        now,
    )
    .await;
    ingest_one(&store, callback(Spec::default())).await;
    let recent_delivered =
        finish_all(&store, &t, Decision::Delivered, cut + Duration::hours(1)).await;
    let cancelled = ingest_one(&store, callback(Spec::default())).await;
    store
        .cancel(&Scope::All, &cancelled, "operator")
        .await
        .unwrap();
    ingest_one(&store, callback(Spec::default())).await;
    let in_flight = store
        .claim_due(&t, Utc::now(), 10, cut + Duration::days(1))
        .await
        .unwrap();
    let in_flight: Vec<_> = in_flight.iter().map(|c| c.id).collect();
    assert_eq!(in_flight.len(), 1);
    let pending = ingest_one(&store, callback(Spec::default())).await;
    let scheduled = ingest_one(
        &store,
        callback(Spec {
            deliver_at: Some(now + Duration::days(2)),
            ..Spec::default()
        }),
    )
    .await;
    assert_eq!(old_delivered.len(), 2);
    assert_eq!(old_failed.len(), 1);

    let mut doomed = old_delivered.clone();
    doomed.extend(&old_failed);
    doomed.push(cancelled);
    for id in &doomed {
        if *id != cancelled {
            assert_eq!(rows_for(dir.path(), "attempts", id), 1);
        }
        assert!(store.events(&Scope::All, id).await.unwrap().unwrap().len() >= 2);
    }

    // The limit bounds one call; the next call continues.
    assert_eq!(
        store.purge(cut, now - Duration::days(1), 1).await.unwrap(),
        1
    );
    assert_eq!(
        store
            .purge(cut, now - Duration::days(1), 100)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .purge(cut, now - Duration::days(1), 100)
            .await
            .unwrap(),
        0
    );

    for id in &doomed {
        assert!(
            store.get(&Scope::All, id).await.unwrap().is_none(),
            "{id} survived"
        );
        assert_eq!(rows_for(dir.path(), "attempts", id), 0, "attempts of {id}");
        assert_eq!(rows_for(dir.path(), "events", id), 0, "events of {id}");
    }
    let survivors = [
        (recent_delivered[0], Status::Delivered),
        (pending, Status::Pending),
        (scheduled, Status::Scheduled),
        (in_flight[0], Status::Delivering),
    ];
    for (id, status) in survivors {
        assert_eq!(status_of(&store, &id).await, status);
        assert!(!store
            .events(&Scope::All, &id)
            .await
            .unwrap()
            .unwrap()
            .is_empty());
    }
    assert_eq!(rows_for(dir.path(), "attempts", &recent_delivered[0]), 1);
}

#[tokio::test]
async fn purge_forgets_idempotency_keys_past_their_retention_only() {
    let (_dir, store) = open();
    let batch = |key: &str| IngestBatch {
        tenant: TenantId::default_tenant(),
        callbacks: vec![callback(Spec::default())],
        idempotency: idem(key, "fp", "first"),
    };
    assert_eq!(
        store.ingest(batch("kept")).await.unwrap(),
        IngestResult::Accepted
    );
    let past = Utc::now() - Duration::hours(1);
    store.purge(past, past, 100).await.unwrap();
    assert!(matches!(
        store.ingest(batch("kept")).await.unwrap(),
        IngestResult::Replayed { .. }
    ));
    let future = Utc::now() + Duration::hours(1);
    store.purge(past, future, 100).await.unwrap();
    assert_eq!(
        store.ingest(batch("kept")).await.unwrap(),
        IngestResult::Accepted,
        "an expired key is free again"
    );
    assert_eq!(
        store.count_by_status().await.unwrap().get(&Status::Pending),
        Some(&2),
        "purge must not delete callbacks that are not finished"
    );
}

#[tokio::test]
async fn redrive_moves_only_failed_callbacks_matching_the_filter() {
    let (_dir, store) = open();
    let now = Utc::now();
    let failed = Decision::DeadLetter(DeadLetterReason::Exhausted);

    for tag in ["a", "a", "b"] {
        ingest_one(
            &store,
            callback(Spec {
                metadata: &[("team", tag)],
                ..Spec::default()
            }),
        )
        .await;
    }
    ingest_one(
        &store,
        callback(Spec {
            url: "https://elsewhere.example/hook",
            metadata: &[("team", "a")],
            ..Spec::default()
        }),
    )
    .await;
    let failed_default = finish_all(&store, &TenantId::default_tenant(), failed, now).await;
    assert_eq!(failed_default.len(), 4);
    ingest_one(
        &store,
        callback(Spec {
            tenant: "other",
            metadata: &[("team", "a")],
            ..Spec::default()
        }),
    )
    .await;
    let failed_other = finish_all(&store, &tenant("other"), failed, now).await;
    ingest_one(
        &store,
        callback(Spec {
            metadata: &[("team", "a")],
            ..Spec::default()
        }),
    )
    .await;
    let delivered = finish_all(
        &store,
        &TenantId::default_tenant(),
        Decision::Delivered,
        now,
    )
    .await;
    let waiting = ingest_one(
        &store,
        callback(Spec {
            metadata: &[("team", "a")],
            ..Spec::default()
        }),
    )
    .await;

    let filter = ListFilter {
        metadata: Some(("team".into(), "a".into())),
        host: Some("receiver.example".into()),
        ..ListFilter::default()
    };
    let moved = store
        .redrive(&default_scope(), &filter, "operator", None)
        .await
        .unwrap();
    assert_eq!(moved, 2, "two failed team=a callbacks on receiver.example");

    let mut redriven = Vec::new();
    let mut still_failed = Vec::new();
    for id in &failed_default {
        let detail = store.get(&Scope::All, id).await.unwrap().unwrap();
        let cb = detail.callback;
        match cb.status {
            Status::Pending => {
                assert_eq!(cb.spec.metadata.get("team").map(String::as_str), Some("a"));
                assert_eq!(cb.spec.url.host_str(), Some("receiver.example"));
                assert_eq!(cb.attempts_made, 1);
                assert!(
                    cb.max_attempts > cb.attempts_made,
                    "a redriven callback needs attempts left: {cb:?}"
                );
                let events = store.events(&Scope::All, id).await.unwrap().unwrap();
                let last = events.last().unwrap();
                assert_eq!(last.kind, EventKind::Redriven);
                assert_eq!(last.actor.as_deref(), Some("operator"));
                redriven.push(*id);
            }
            Status::Failed => still_failed.push(*id),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((redriven.len(), still_failed.len()), (2, 2));
    assert_eq!(status_of(&store, &failed_other[0]).await, Status::Failed);
    assert_eq!(status_of(&store, &delivered[0]).await, Status::Delivered);
    assert_eq!(status_of(&store, &waiting).await, Status::Pending);

    // Redriven callbacks are due again.
    let later = Utc::now() + Duration::seconds(1);
    let claimed = store
        .claim_due(
            &TenantId::default_tenant(),
            later,
            100,
            later + Duration::minutes(2),
        )
        .await
        .unwrap();
    let claimed: HashSet<_> = claimed.iter().map(|c| c.id).collect();
    for id in &redriven {
        assert!(claimed.contains(id));
    }

    // An admin may aim at another tenant; a tenant scope never reaches it.
    let other_filter = ListFilter {
        tenant: Some(tenant("other")),
        ..ListFilter::default()
    };
    assert_eq!(
        store
            .redrive(&default_scope(), &other_filter, "tenant-key", None)
            .await
            .unwrap(),
        2,
        "a tenant scope ignores the tenant filter and stays in its own tenant"
    );
    assert_eq!(status_of(&store, &failed_other[0]).await, Status::Failed);
    assert_eq!(
        store
            .redrive(&Scope::All, &other_filter, "admin", None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(status_of(&store, &failed_other[0]).await, Status::Pending);
}

/// A queue message names one callback: only a due, unclaimed one may be taken, and only once.
#[tokio::test]
async fn claim_takes_one_due_callback_once() {
    let (_dir, store) = open();
    let now = Utc::now();
    let due = ingest_one(
        &store,
        callback(Spec {
            created: now,
            ..Spec::default()
        }),
    )
    .await;
    let later = ingest_one(
        &store,
        callback(Spec {
            created: now,
            deliver_at: Some(now + Duration::hours(1)),
            ..Spec::default()
        }),
    )
    .await;
    let lease = now + Duration::minutes(2);
    let got = store
        .claim(&due, now, lease)
        .await
        .unwrap()
        .expect("due callback claimed");
    assert_eq!(got.id, due);
    assert_eq!(got.status, Status::Delivering);
    assert!(
        store.claim(&due, now, lease).await.unwrap().is_none(),
        "claimed twice"
    );
    assert!(
        store.claim(&later, now, lease).await.unwrap().is_none(),
        "not due yet"
    );
    assert!(store
        .claim(&CallbackId::generate(), now, lease)
        .await
        .unwrap()
        .is_none());
    let at_due_time = now + Duration::hours(2);
    assert!(store
        .claim(&later, at_due_time, at_due_time + Duration::minutes(2))
        .await
        .unwrap()
        .is_some());
}
