//! The console's aggregates against known traffic: every count, bucket, percentile and host
//! figure is worked out by hand below. Also schema version 4's migration of existing rows.
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, DurationRound, Utc};
use fluxcb_core::callback::Callback;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{
    CallbackStore, DestinationStats, LatencyPercentiles, ListFilter, PageRequest, StatsRequest,
};
use fluxcb_core::retry::{DeadLetterReason, Decision};
use fluxcb_core::tenant::Scope;
use rusqlite::Connection;

use crate::tests::{attempt, callback, ingest_one, open, tenant, Spec, TempDir};
use crate::{SqliteStore, DB_FILE, SCHEMA_VERSION};

/// Claims `id` and records one attempt with this outcome and duration.
async fn attempt_once(
    store: &SqliteStore,
    id: &CallbackId,
    number: u32,
    code: u16,
    at: DateTime<Utc>,
    duration_ms: u64,
    decision: Decision,
) {
    let now = Utc::now();
    store
        .claim(id, now, now + Duration::minutes(1))
        .await
        .unwrap()
        .expect("due, so claimable");
    let mut a = attempt(number, code, at);
    a.duration_ms = duration_ms;
    store
        .record_attempt(id, a, decision, at, &[])
        .await
        .unwrap();
}

fn cb(tenant_name: &str, host: &str, created: DateTime<Utc>) -> Callback {
    callback(Spec {
        tenant: tenant_name,
        url: &format!("https://{host}/hook"),
        created,
        metadata: &[("team", "payments")],
        ..Spec::default()
    })
}

#[tokio::test]
async fn stats_count_known_traffic_by_bucket_outcome_latency_and_host() {
    let (_dir, store) = open();
    let base = Utc::now().duration_trunc(Duration::hours(1)).unwrap() - Duration::hours(2);
    let min = |m: i64| base + Duration::minutes(m) + Duration::seconds(10);
    // Before the window: not accepted in it.
    ingest_one(&store, cb("a", "a.example", base - Duration::minutes(10))).await;
    let a1 = ingest_one(&store, cb("a", "a.example", min(1))).await;
    let a2 = ingest_one(&store, cb("a", "a.example", min(1))).await;
    let b1 = ingest_one(&store, cb("a", "b.example", min(5))).await;
    let t1 = ingest_one(&store, cb("b", "a.example", min(5))).await;

    attempt_once(&store, &a1, 1, 200, min(2), 10, Decision::Delivered).await;
    let soon = Utc::now() - Duration::seconds(1);
    attempt_once(&store, &a2, 1, 500, min(2), 30, Decision::RetryAt(soon)).await;
    attempt_once(&store, &a2, 2, 200, min(6), 50, Decision::Delivered).await;
    attempt_once(&store, &t1, 1, 200, min(5), 20, Decision::Delivered).await;
    attempt_once(
        &store,
        &b1,
        1,
        500,
        min(7),
        200,
        Decision::DeadLetter(DeadLetterReason::Exhausted),
    )
    .await;

    let request = StatsRequest {
        since: base,
        until: base + Duration::minutes(10),
        bucket: StdDuration::from_secs(60),
        tenant: None,
    };
    let all = store.stats(&Scope::All, &request).await.unwrap();
    assert_eq!(all.buckets.len(), 10);
    assert_eq!(all.buckets[3].start, base + Duration::minutes(3));
    let column = |f: fn(&fluxcb_core::ports::StatsBucket) -> u64| -> Vec<u64> {
        all.buckets.iter().map(f).collect()
    };
    assert_eq!(column(|b| b.accepted), [0, 2, 0, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(column(|b| b.delivered), [0, 0, 1, 0, 0, 1, 1, 0, 0, 0]);
    assert_eq!(column(|b| b.failed), [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(column(|b| b.dead_lettered), [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
    // Durations 10, 20, 30, 50, 200: nearest rank.
    assert_eq!(
        all.latency,
        Some(LatencyPercentiles {
            p50_ms: 30,
            p90_ms: 200,
            p99_ms: 200,
            max_ms: 200
        })
    );
    assert_eq!(all.dead_letters, 1);
    assert_eq!(
        all.destinations,
        vec![
            DestinationStats {
                host: "a.example".into(),
                attempts: 4,
                failed: 1,
                avg_ms: 27.5,
                max_ms: 50,
            },
            DestinationStats {
                host: "b.example".into(),
                attempts: 1,
                failed: 1,
                avg_ms: 200.0,
                max_ms: 200,
            },
        ]
    );

    // A tenant key sees its own traffic only; an admin may narrow to a tenant.
    let a = store
        .stats(&Scope::Tenant(tenant("a")), &request)
        .await
        .unwrap();
    assert_eq!(a.buckets.iter().map(|b| b.accepted).sum::<u64>(), 3);
    assert_eq!(a.destinations[0].attempts, 3);
    assert_eq!(a.dead_letters, 1);
    let b = store
        .stats(
            &Scope::All,
            &StatsRequest {
                tenant: Some(tenant("b")),
                ..request.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(b.buckets.iter().map(|b| b.accepted).sum::<u64>(), 1);
    assert_eq!(b.buckets[5].delivered, 1);
    assert_eq!(b.dead_letters, 0);
    assert_eq!(
        store
            .stats(&Scope::Tenant(tenant("c")), &request)
            .await
            .unwrap()
            .latency,
        None
    );

    // Dead letters by host and error, and the redrive dry run.
    let groups = store
        .dead_letter_groups(&Scope::All, &ListFilter::default())
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (
            groups[0].host.as_str(),
            groups[0].error.as_str(),
            groups[0].count
        ),
        ("b.example", "http_status", 1)
    );
    assert!(store
        .dead_letter_groups(&Scope::Tenant(tenant("b")), &ListFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .count_redrivable(&Scope::All, &ListFilter::default())
            .await
            .unwrap(),
        1
    );
    let elsewhere = ListFilter {
        host: Some("a.example".into()),
        ..ListFilter::default()
    };
    assert_eq!(
        store
            .count_redrivable(&Scope::All, &elsewhere)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn tag_filters_page_newest_first_through_the_tag_rows() {
    let (_dir, store) = open();
    let now = Utc::now();
    let mut tagged = Vec::new();
    for i in 0..7 {
        let team = if i % 2 == 0 { "payments" } else { "search" };
        let c = callback(Spec {
            url: "https://receiver.example/hook",
            created: now + Duration::milliseconds(i),
            metadata: &[("team", team), ("n", "x")],
            ..Spec::default()
        });
        let id = ingest_one(&store, c).await;
        if team == "payments" {
            tagged.push(id);
        }
    }
    tagged.reverse();
    let filter = ListFilter {
        metadata: Some(("team".into(), "payments".into())),
        ..ListFilter::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(&Scope::All, &filter, &PageRequest { cursor, limit: 3 })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|c| c.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, tagged, "every tagged callback once, newest first");
    let scoped = store
        .list(
            &Scope::Tenant(tenant("other")),
            &filter,
            &PageRequest {
                cursor: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(scoped.items.is_empty(), "the tenant scope still applies");
}

#[test]
fn version_4_fills_in_existing_attempts_and_tags() {
    let dir = TempDir::new();
    {
        // A store as version 3 left it, with a callback and an attempt.
        let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &crate::schema::MIGRATIONS[..3] {
            tx.execute_batch(sql).unwrap();
        }
        tx.execute_batch(
            "INSERT INTO callbacks (id, tenant, status, url, host, method, headers, body_kind, \
             body, attempts_made, max_attempts, attempt_budget, timeout_ms, metadata, \
             created_at, updated_at, created_by) VALUES ('cb_01JF0000000000000000000000', 't', \
             'delivered', 'https://old.example/h', 'old.example', 'POST', '{}', 'json', x'7b7d', \
             1, 3, 3, 1000, '{\"team\":\"ops\"}', 1, 2, 'k');
             INSERT INTO attempts (callback_id, number, started_at, duration_ms, status_code, \
             response_headers, recorded_at, to_status) VALUES ('cb_01JF0000000000000000000000', \
             1, 1, 5, 200, '{}', 2, 'delivered');",
        )
        .unwrap();
        tx.pragma_update(None, "user_version", 3).unwrap();
        tx.commit().unwrap();
    }
    drop(SqliteStore::open(dir.path()).expect("migrates to the current version"));
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let (t, h): (String, String) = conn
        .query_row("SELECT tenant, host FROM attempts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((t.as_str(), h.as_str()), ("t", "old.example"));
    let tag: (String, String) = conn
        .query_row("SELECT key, value FROM callback_tags", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(tag, ("team".into(), "ops".into()));
}
