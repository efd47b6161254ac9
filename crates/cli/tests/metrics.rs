//! `/metrics` after known traffic, exactly: `fluxcb serve` as a process of its own (so no other
//! test shares its registry) takes a known mix of callbacks, and every counter, histogram count
//! and gauge is checked against what that traffic must produce.
mod common;

use std::time::Duration;

use common::{ids_with_status, ServeProcess, TestReceiver, PROCESS_API_KEY};
use serde_json::{json, Value};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every `le` bucket of a histogram, in order, with its cumulative count.
fn buckets(text: &str, histogram: &str) -> Vec<(String, f64)> {
    let prefix = format!("{histogram}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_histogram_and_gauge_matches_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServeProcess::start(&data, &dir.path().join("serve.log"), None, &[]).await;
    let rx = TestReceiver::start().await;
    let http = reqwest::Client::new();
    let scrape = || async {
        let r = http.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let fresh = scrape().await;
    assert_eq!(sample(&fresh, "fluxcb_callbacks_accepted_total"), None);

    // 5 delivered at once; 2 delivered after one failure; 1 gone (410); 1 failing twice
    // with 2 attempts allowed.
    let mut callbacks: Vec<Value> = (0..5)
        .map(|i| json!({ "url": rx.url(&format!("/ok/m{i}")), "payload": { "i": i } }))
        .collect();
    callbacks.extend((0..2).map(|i| json!({ "url": rx.url(&format!("/flaky/1/m{i}")) })));
    callbacks.push(json!({ "url": rx.url("/status/410") }));
    callbacks.push(json!({ "url": rx.url("/status/500"), "max_attempts": 2 }));
    let r = http
        .post(server.url("/v1/callbacks/batch"))
        .bearer_auth(PROCESS_API_KEY)
        .json(&json!({ "callbacks": callbacks }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let base = server.url("");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = ids_with_status(&http, &base, PROCESS_API_KEY, "delivered").await;
        let failed = ids_with_status(&http, &base, PROCESS_API_KEY, "failed").await;
        if delivered.len() == 7 && failed.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} delivered, {} failed",
            delivered.len(),
            failed.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let m = scrape().await;
    assert_eq!(sample(&m, "fluxcb_callbacks_accepted_total"), Some(9.0));
    assert_eq!(
        sample(&m, "fluxcb_attempts_total{outcome=\"delivered\"}"),
        Some(7.0)
    );
    assert_eq!(
        sample(&m, "fluxcb_attempts_total{outcome=\"retried\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, "fluxcb_attempts_total{outcome=\"dead_lettered\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "fluxcb_attempts_total{outcome=\"blocked\"}"),
        None,
        "nothing was blocked"
    );
    // One duration per attempt, one accepted-to-delivered per delivered callback.
    assert_eq!(
        sample(&m, "fluxcb_attempt_duration_seconds_count"),
        Some(12.0)
    );
    assert_eq!(
        sample(&m, "fluxcb_accepted_to_delivered_seconds_count"),
        Some(7.0)
    );
    for histogram in [
        "fluxcb_attempt_duration_seconds",
        "fluxcb_accepted_to_delivered_seconds",
    ] {
        let b = buckets(&m, histogram);
        assert!(b.len() > 5, "{histogram}: {b:?}");
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative: {b:?}");
        let (le, total) = b.last().unwrap();
        assert_eq!(le, "+Inf");
        assert_eq!(Some(*total), sample(&m, &format!("{histogram}_count")));
        assert!(sample(&m, &format!("{histogram}_sum")).unwrap() > 0.0);
    }
    // The retried ones waited at least their 50 ms backoff: not all in the smallest buckets.
    let waited = buckets(&m, "fluxcb_accepted_to_delivered_seconds");
    let within_25ms = waited
        .iter()
        .find(|(le, _)| le == "0.025")
        .map(|(_, n)| *n)
        .unwrap();
    assert!(within_25ms <= 5.0, "{waited:?}");
    // Gauges: callbacks by state, nothing in flight.
    assert_eq!(
        sample(&m, "fluxcb_callbacks{status=\"delivered\"}"),
        Some(7.0)
    );
    assert_eq!(sample(&m, "fluxcb_callbacks{status=\"failed\"}"), Some(2.0));
    assert_eq!(
        sample(&m, "fluxcb_callbacks{status=\"pending\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&m, "fluxcb_deliveries_in_flight"), Some(0.0));
    assert_eq!(
        rx.received().len(),
        12,
        "every attempt reached the receiver"
    );
    // No tenant label anywhere: cardinality stays bounded by outcomes and destinations.
    assert!(!m.contains("tenant="), "{m}");
    drop(server);
}
