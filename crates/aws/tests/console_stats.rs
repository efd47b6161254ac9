//! The console's statistics and dead-letter groups on DynamoDB (moto), against known traffic:
//! every count, bucket and host figure below is worked out by hand (the same traffic as the
//! embedded store's `tests_stats.rs`, plus a tenant with slow attempts for the percentiles'
//! precision), then the counters' failure mode: a counter that cannot be updated costs a count,
//! never an ingest.
mod support;

use std::time::Duration as StdDuration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Duration, DurationRound, Utc};
use fluxcb_aws::store::stats::STATS_SHARDS;
use fluxcb_aws::store::DynamoStore;
use fluxcb_core::attempt::{Attempt, ErrorCode};
use fluxcb_core::callback::Callback;
use fluxcb_core::ports::{
    CallbackStore, DestinationStats, IngestResult, LatencyPercentiles, ListFilter, StatsRequest,
};
use fluxcb_core::retry::{DeadLetterReason, Decision};
use fluxcb_core::tenant::Scope;
use support::{ingest, legacy_callback, scope, store, tenant};

fn cb(tenant_name: &str, host: &str, created: DateTime<Utc>) -> Callback {
    let mut cb = legacy_callback(tenant_name, 0, None);
    cb.legacy_id = None;
    cb.spec.url = format!("https://{host}/hook").parse().unwrap();
    cb.created_at = created;
    cb.updated_at = created;
    cb.next_attempt_at = Some(created);
    cb
}

/// Claims `cb` and records one attempt with this outcome and duration, through the trait (the
/// store reads the callback for its tenant and host).
async fn attempt_once(
    store: &DynamoStore,
    cb: &Callback,
    number: u32,
    code: u16,
    at: DateTime<Utc>,
    duration_ms: u64,
    decision: Decision,
) {
    let now = Utc::now();
    store
        .claim(&cb.id, now, now + Duration::minutes(1))
        .await
        .unwrap()
        .expect("due, so claimable");
    let failed = !(200..300).contains(&code);
    let attempt = Attempt {
        number,
        started_at: at,
        duration_ms,
        status_code: Some(code),
        error: failed.then_some(ErrorCode::HttpStatus),
        error_detail: failed.then(|| format!("{code}")),
        response_headers: Default::default(),
        response_body: None,
    };
    store
        .record_attempt(&cb.id, attempt, decision, at, &[])
        .await
        .unwrap();
}

fn request(since: DateTime<Utc>, minutes: i64, bucket_secs: u64) -> StatsRequest {
    StatsRequest {
        since,
        until: since + Duration::minutes(minutes),
        bucket: StdDuration::from_secs(bucket_secs),
        tenant: None,
    }
}

#[tokio::test]
async fn stats_count_known_traffic_by_bucket_outcome_latency_and_host() {
    let Some(store) = store().await else { return };
    let base = Utc::now().duration_trunc(Duration::hours(1)).unwrap() - Duration::hours(2);
    let min = |m: i64| base + Duration::minutes(m) + Duration::seconds(10);
    // Before the window: not accepted in it.
    ingest(
        &store,
        vec![cb("a", "a.example", base - Duration::minutes(10))],
    )
    .await
    .unwrap();
    // One batch of two: counted once, as 2.
    let (a1, a2) = (cb("a", "a.example", min(1)), cb("a", "a.example", min(1)));
    ingest(&store, vec![a1.clone(), a2.clone()]).await.unwrap();
    let b1 = cb("a", "b.example", min(5));
    ingest(&store, vec![b1.clone()]).await.unwrap();
    let t1 = cb("b", "a.example", min(5));
    ingest(&store, vec![t1.clone()]).await.unwrap();

    attempt_once(&store, &a1, 1, 200, min(2), 10, Decision::Delivered).await;
    let soon = Utc::now() - Duration::seconds(1);
    attempt_once(&store, &a2, 1, 500, min(2), 30, Decision::RetryAt(soon)).await;
    attempt_once(&store, &a2, 2, 200, min(6), 50, Decision::Delivered).await;
    attempt_once(&store, &t1, 1, 200, min(5), 20, Decision::Delivered).await;
    let exhausted = Decision::DeadLetter(DeadLetterReason::Exhausted);
    attempt_once(&store, &b1, 1, 500, min(7), 200, exhausted).await;

    let all = store
        .stats(&Scope::All, &request(base, 10, 60))
        .await
        .unwrap();
    assert_eq!(all.buckets.len(), 10);
    assert_eq!(all.buckets[3].start, base + Duration::minutes(3));
    let column = |s: &fluxcb_core::ports::DeliveryStats,
                  f: fn(&fluxcb_core::ports::StatsBucket) -> u64|
     -> Vec<u64> { s.buckets.iter().map(f).collect() };
    assert_eq!(column(&all, |b| b.accepted), [0, 2, 0, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(
        column(&all, |b| b.delivered),
        [0, 0, 1, 0, 0, 1, 1, 0, 0, 0]
    );
    assert_eq!(column(&all, |b| b.failed), [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(
        column(&all, |b| b.dead_lettered),
        [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    );
    // Durations 10, 20, 30, 50, 200: each the lower bound of its own bucket, so exact.
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

    // The day's view reads the hour items: the same traffic in the window's first hour.
    let day = store
        .stats(&Scope::All, &request(base, 180, 3600))
        .await
        .unwrap();
    assert_eq!(column(&day, |b| b.accepted), [4, 0, 0]);
    assert_eq!(column(&day, |b| b.delivered), [3, 0, 0]);
    assert_eq!(column(&day, |b| b.failed), [2, 0, 0]);
    assert_eq!(column(&day, |b| b.dead_lettered), [1, 0, 0]);
    assert_eq!(day.destinations, all.destinations);
    assert_eq!(day.latency, all.latency);
    // The ingest before the window is in the hour before it.
    let before = store
        .stats(&Scope::All, &request(base - Duration::hours(1), 60, 3600))
        .await
        .unwrap();
    assert_eq!(column(&before, |b| b.accepted), [1]);

    // A tenant key sees its own traffic only; an admin may narrow to a tenant.
    let a = store
        .stats(&scope("a"), &request(base, 10, 60))
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
                ..request(base, 10, 60)
            },
        )
        .await
        .unwrap();
    assert_eq!(b.buckets.iter().map(|b| b.accepted).sum::<u64>(), 1);
    assert_eq!(b.buckets[5].delivered, 1);
    assert_eq!(b.dead_letters, 0);
    assert_eq!(b.destinations.len(), 1);
    assert_eq!(
        store
            .stats(&scope("c"), &request(base, 10, 60))
            .await
            .unwrap()
            .latency,
        None
    );
    assert!(
        store
            .stats(&Scope::All, &request(base, 10, 30))
            .await
            .is_err(),
        "counters are per minute: half-minute buckets are refused, not made up"
    );

    // Dead letters by host and error, per tenant.
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
        .dead_letter_groups(&scope("b"), &ListFilter::default())
        .await
        .unwrap()
        .is_empty());
    let elsewhere = ListFilter {
        host: Some("a.example".into()),
        ..ListFilter::default()
    };
    assert!(store
        .dead_letter_groups(&Scope::All, &elsewhere)
        .await
        .unwrap()
        .is_empty());

    // A group's "view" and "redrive": dead letters filtered by host, as they are read.
    let dead_at = |host: &str| ListFilter {
        status: Some(fluxcb_core::status::Status::Failed),
        host: Some(host.into()),
        ..ListFilter::default()
    };
    let page = fluxcb_core::ports::PageRequest {
        cursor: None,
        limit: 10,
    };
    let listed = store
        .list(&Scope::All, &dead_at("b.example"), &page)
        .await
        .unwrap();
    assert_eq!(
        listed.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [b1.id]
    );
    assert!(store
        .list(&Scope::All, &dead_at("a.example"), &page)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        store
            .count_redrivable(&Scope::All, &dead_at("b.example"))
            .await
            .unwrap(),
        1
    );
    assert!(
        matches!(
            store.list(&Scope::All, &elsewhere, &page).await,
            Err(fluxcb_core::ports::StoreError::Unsupported(_))
        ),
        "by host across every status would read every callback"
    );
}

/// Slow attempts whose durations fall inside histogram buckets: percentiles come back as their
/// bucket's lower bound (at most 1/16 below the truth), the maximum exactly.
#[tokio::test]
async fn percentiles_are_within_a_sixteenth_and_the_maximum_is_exact() {
    let Some(store) = store().await else { return };
    let base = Utc::now().duration_trunc(Duration::minutes(1)).unwrap() - Duration::minutes(30);
    let at = base + Duration::minutes(1);
    let durations = [1234u64, 777, 4321, 95, 2500, 1800];
    let callbacks: Vec<Callback> = durations
        .iter()
        .map(|_| cb("slow", "slow.example", at))
        .collect();
    ingest(&store, callbacks.clone()).await.unwrap();
    for (cb, d) in callbacks.iter().zip(durations) {
        attempt_once(&store, cb, 1, 200, at, d, Decision::Delivered).await;
    }
    let s = store
        .stats(&scope("slow"), &request(base, 30, 60))
        .await
        .unwrap();
    let p = s.latency.expect("attempts in the window");
    // Sorted: 95, 777, 1234, 1800, 2500, 4321. Nearest rank: p50 the 3rd, p90 and p99 the 6th.
    for (got, truth) in [(p.p50_ms, 1234u64), (p.p90_ms, 4321), (p.p99_ms, 4321)] {
        assert!(
            got <= truth && (truth - got) * 16 <= truth,
            "{got} reported for {truth}"
        );
    }
    assert_eq!(p.max_ms, 4321);
    let d = &s.destinations[0];
    assert_eq!((d.attempts, d.failed, d.max_ms), (6, 0, 4321));
    assert!((d.avg_ms - 10_727.0 / 6.0).abs() < 1e-9, "{}", d.avg_ms);
}

/// A counter item that cannot take the update (here its `acc` is a string, so `ADD` fails on
/// every shard): the ingest is accepted all the same, and only that count is missing.
#[tokio::test]
async fn a_counter_that_cannot_be_updated_never_fails_an_ingest() {
    let Some(store) = store().await else { return };
    let at = Utc::now().duration_trunc(Duration::minutes(1)).unwrap() - Duration::minutes(5);
    let minute_sk = format!("m#{:013}", at.timestamp_millis());
    for shard in 0..STATS_SHARDS {
        store
            .client()
            .put_item()
            .table_name(store.table())
            .item("pk", AttributeValue::S(format!("stats#broken#{shard}")))
            .item("sk", AttributeValue::S(minute_sk.clone()))
            .item("acc", AttributeValue::S("not a number".into()))
            .send()
            .await
            .unwrap();
    }
    let c = cb("broken", "x.example", at + Duration::seconds(1));
    assert_eq!(
        ingest(&store, vec![c.clone()]).await.unwrap(),
        IngestResult::Accepted
    );
    assert!(store.get(&scope("broken"), &c.id).await.unwrap().is_some());
    let minute = store
        .stats(&scope("broken"), &request(at, 1, 60))
        .await
        .unwrap();
    assert_eq!(
        minute.buckets[0].accepted, 0,
        "the minute's counters refused it"
    );
    let hour = at.duration_trunc(Duration::hours(1)).unwrap();
    let day = store
        .stats(&scope("broken"), &request(hour, 60, 3600))
        .await
        .unwrap();
    assert_eq!(day.buckets[0].accepted, 1, "the hour's counter took it");
}
