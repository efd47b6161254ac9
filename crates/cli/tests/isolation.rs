//! Nobody's trouble becomes everybody's: a slow destination does not stall healthy ones, and a
//! tenant's backlog does not starve another tenant.
mod common;

use std::time::{Duration, Instant};

use common::{spawn_app_with, TestReceiver};
use serde_json::{json, Value};

#[tokio::test]
async fn a_slow_destination_does_not_stall_healthy_ones() {
    let app = spawn_app_with(|c| {
        c.max_in_flight = 16;
        c.destination_max_in_flight = 4;
    })
    .await;
    let slow = TestReceiver::start().await;
    let fast = TestReceiver::start().await;
    let stuck: Vec<Value> = (0..40)
        .map(|_| json!({"url": slow.url("/hang/1000"), "timeout_ms": 5000}))
        .collect();
    let r = app
        .post("/v1/callbacks/batch", &json!({ "callbacks": stuck }))
        .await;
    assert_eq!(r.status(), 202);
    slow.wait_for("/hang/1000", 4, Duration::from_secs(5)).await;
    let start = Instant::now();
    let healthy: Vec<Value> = (0..20)
        .map(|i| json!({"url": fast.url(&format!("/ok/f{i}"))}))
        .collect();
    let r = app
        .post("/v1/callbacks/batch", &json!({ "callbacks": healthy }))
        .await;
    assert_eq!(r.status(), 202);
    for i in 0..20 {
        fast.wait_for(&format!("/ok/f{i}"), 1, Duration::from_secs(5))
            .await;
    }
    let took = start.elapsed();
    // The slow destination needs about 10 s for its 40 callbacks at 4 at a time.
    assert!(
        took < Duration::from_secs(3),
        "healthy deliveries took {took:?}"
    );
    let in_flight_slow = slow.received_on("/hang/1000").len();
    assert!(
        in_flight_slow <= 12,
        "the slow destination got {in_flight_slow} requests: its limit of 4 was not kept"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_tenants_backlog_does_not_starve_another_tenant() {
    let app = spawn_app_with(|c| c.max_in_flight = 32).await;
    let busy = TestReceiver::start().await;
    let quiet = TestReceiver::start().await;
    let mut keys = Vec::new();
    for t in ["busy", "quiet"] {
        let r = app
            .post(
                "/v1/keys",
                &json!({"name": format!("{t}-key"), "tenant": t}),
            )
            .await;
        keys.push(
            r.json::<Value>().await.unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for _ in 0..3 {
        let batch: Vec<Value> = (0..1000)
            .map(|_| json!({"url": busy.url("/hang/10")}))
            .collect();
        let r = app
            .post_as(
                &keys[0],
                "/v1/callbacks/batch",
                &json!({ "callbacks": batch }),
            )
            .await;
        assert_eq!(r.status(), 202);
    }
    busy.wait_for("/hang/10", 1, Duration::from_secs(5)).await;
    let r = app
        .post_as(
            &keys[1],
            "/v1/callbacks",
            &json!({"url": quiet.url("/ok/q")}),
        )
        .await;
    assert_eq!(r.status(), 202);
    quiet.wait_for("/ok/q", 1, Duration::from_secs(10)).await;
    let busy_done = busy.received_on("/hang/10").len();
    assert!(
        busy_done < 1500,
        "the quiet tenant waited for {busy_done} of the busy tenant's 3000 callbacks"
    );
    app.stop().await;
}
