// Ordered delivery per key on both backends, proven at a real receiver: strict acceptance order
// and one request in flight per key, under retries, across keys and requests, after a dead
// letter (continue, or hold until retried or released), and with writers on two app instances
// at once (AWS: one table). Every wait is bounded.
mod ordering {
    use std::time::{Duration, Instant};

    use super::common::ordered::{
        assert_in_order, batch, patient, post_batch, Arrival, OrderedReceiver,
    };
    use super::common::{spawn_on, Backend};
    use super::BACKEND;
    use serde_json::{json, Value};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_key_is_delivered_in_acceptance_order_one_at_a_time_under_retries() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        // Every third callback fails twice before it is accepted.
        let (rx, addr) = OrderedReceiver::start(|_, seq| if seq % 3 == 1 { 2 } else { 0 }).await;
        // Failures on purpose would otherwise open the receiver's circuit breaker (10 in a row).
        let r = app.post("/v1/destinations", &patient(addr)).await;
        assert_eq!(r.status(), 201);
        // Smaller on the emulator, which handles a few dozen transactions a second at most.
        let (key_count, per_key) = match BACKEND {
            Backend::Sqlite => (12, 10u32),
            Backend::Aws => (6, 6),
        };
        let keys: Vec<String> = (0..key_count).map(|k| format!("order-{k}")).collect();
        post_batch(&app, &batch(addr, &keys, 0..per_key / 2)).await;
        // A second request while the first ones are under way: the key's order spans requests.
        post_batch(&app, &batch(addr, &keys, per_key / 2..per_key)).await;
        let started = Instant::now();
        let total = key_count * per_key as usize;
        rx.wait_delivered(total, Duration::from_secs(90)).await;
        let arrivals = rx.arrivals();
        assert_in_order(&arrivals, per_key);
        assert!(rx.overlaps().is_empty(), "{:?}", rx.overlaps());
        // Every key's failing callbacks × 2 failures each.
        let failing = (0..per_key).filter(|seq| seq % 3 == 1).count();
        let failed = arrivals.iter().filter(|a| !a.ok).count();
        assert_eq!(failed, key_count * failing * 2);
        eprintln!(
            "ordered: {total} callbacks over {key_count} keys with {failed} failed attempts in {:?}",
            started.elapsed()
        );
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_dead_letter_the_key_continues_by_default() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let (rx, addr) = OrderedReceiver::start(|_, seq| if seq == 0 { 100 } else { 0 }).await;
        let body = json!({ "callbacks": (0..3).map(|seq| json!({
            "url": format!("http://{addr}/k/a/{seq}"), "ordering_key": "a", "max_attempts": 2,
        })).collect::<Vec<_>>() });
        let ids = post_batch(&app, &body).await;
        app.wait_status(&ids[0], "failed", Duration::from_secs(10))
            .await;
        rx.wait_delivered(2, Duration::from_secs(10)).await;
        let arrivals = rx.arrivals();
        let order: Vec<(u32, bool)> = arrivals.iter().map(|a| (a.seq, a.ok)).collect();
        assert_eq!(order, [(0, false), (0, false), (1, true), (2, true)]);
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_hold_a_dead_letter_holds_its_key_until_retried_or_released() {
        let Some(app) = spawn_on(BACKEND, |c| c.ordering_after_dead_letter = "hold".into()).await else {
            return;
        };
        // seq 0 of key `a` fails once (then succeeds); seq 0 of key `b` always fails.
        let (rx, addr) = OrderedReceiver::start(|key, seq| match (key, seq) {
            ("a", 0) => 1,
            ("b", 0) => 100,
            _ => 0,
        })
        .await;
        let one = |key: &str, seq: u32| json!({ "url": format!("http://{addr}/k/{key}/{seq}"), "ordering_key": key, "max_attempts": 1 });
        let ids = post_batch(
            &app,
            &json!({ "callbacks": [one("a", 0), one("a", 1), one("b", 0), one("b", 1), one("c", 0)] }),
        )
        .await;
        app.wait_status(&ids[0], "failed", Duration::from_secs(10))
            .await;
        app.wait_status(&ids[2], "failed", Duration::from_secs(10))
            .await;
        app.wait_status(&ids[4], "delivered", Duration::from_secs(10))
            .await;
        // Held: the followers wait with no due time and no attempt, and so does one accepted now.
        let late = app.create(one("b", 2)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for id in [&ids[1], &ids[3], &late] {
            let v = app.get_json(&format!("/v1/callbacks/{id}")).await;
            assert_eq!(v["status"], "pending", "{v}");
            assert_eq!(v["attempts_made"], 0, "{v}");
            assert!(v["next_attempt_at"].is_null(), "{v}");
            assert_eq!(v["ordering_key"].as_str().map(str::len), Some(1));
        }
        // Key `a`: the dead letter is retried, goes first, then its follower.
        let r = app
            .post(&format!("/v1/callbacks/{}/retry", ids[0]), &json!({}))
            .await;
        assert_eq!(r.status(), 200);
        app.wait_status(&ids[1], "delivered", Duration::from_secs(10))
            .await;
        // Key `b`: released without its dead letter; the rest go in order.
        let r = app
            .post("/v1/ordering-keys/release", &json!({ "key": "b" }))
            .await;
        assert_eq!(r.json::<Value>().await.unwrap()["released"], true);
        app.wait_status(&late, "delivered", Duration::from_secs(10))
            .await;
        assert_eq!(
            app.get_json(&format!("/v1/callbacks/{}", ids[2])).await["status"],
            "failed",
            "released, not retried"
        );
        let order: Vec<(String, u32, bool)> = rx
            .arrivals()
            .into_iter()
            .filter(|a| a.key != "c")
            .map(|a| (a.key, a.seq, a.ok))
            .collect();
        let of = |k: &str| -> Vec<(u32, bool)> {
            order
                .iter()
                .filter(|(key, ..)| key == k)
                .map(|(_, s, ok)| (*s, *ok))
                .collect()
        };
        assert_eq!(of("a"), [(0, false), (0, true), (1, true)]);
        assert_eq!(of("b"), [(0, false), (1, true), (2, true)]);
        assert!(rx.overlaps().is_empty());
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ordering_keys_are_validated() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        for key in [String::new(), "k".repeat(257)] {
            let r = app
                .post(
                    "/v1/callbacks",
                    &json!({ "url": "http://127.0.0.1:9/x", "ordering_key": key }),
                )
                .await;
            assert_eq!(r.status(), 400);
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["errors"][0]["field"], "ordering_key", "{p}");
        }
        let r = app
            .post(
                "/v1/callbacks",
                &json!({ "url": "http://127.0.0.1:9/x", "ordering_key": "k".repeat(256) }),
            )
            .await;
        assert_eq!(r.status(), 202, "256 bytes is allowed");
        app.stop().await;
    }

    /// Two writers post single callbacks to the same keys at the same time, on AWS through two
    /// app instances on one table (each key's head decides the order between them): one
    /// request in flight per key, and each writer's callbacks of a key arrive in the order its
    /// requests were acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_on_two_instances_at_once_keep_each_key_in_order() {
        let Some(first) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let second = match BACKEND {
            Backend::Aws => Some(
                spawn_on(BACKEND, |c| {
                    let dir = c.data_dir.clone();
                    *c = first.config.clone();
                    c.data_dir = dir;
                    c.api_key = Some(first.key.clone());
                })
                .await
                .expect("the first one started"),
            ),
            Backend::Sqlite => None,
        };
        let (rx, addr) = OrderedReceiver::start(|_, seq| u32::from(seq % 7 == 3)).await;
        
        let r = first.post("/v1/destinations", &patient(addr)).await;
        assert_eq!(r.status(), 201);
        let keys = ["w0", "w1", "w2"];
        let per_writer = match BACKEND {
            Backend::Sqlite => 12u32,
            Backend::Aws => 6,
        };
        let write = |app: &'static str, writer: u32| {
            let app = match (app, &second) {
                ("second", Some(s)) => s,
                _ => &first,
            };
            async move {
                for n in 0..per_writer {
                    for key in keys {
                        let seq = writer * 1000 + n;
                        let r = app
                            .post(
                                "/v1/callbacks",
                                &json!({
                                    "url": format!("http://{addr}/k/{key}/{seq}"),
                                    "ordering_key": key,
                                }),
                            )
                            .await;
                        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
                    }
                }
            }
        };
        tokio::join!(write("first", 0), write("second", 1));
        let total = 2 * keys.len() * per_writer as usize;
        rx.wait_delivered(total, Duration::from_secs(90)).await;
        assert!(rx.overlaps().is_empty(), "{:?}", rx.overlaps());
        // Per key and writer, the writer's sequence: 0, 1, 2, … in order.
        let by_writer: Vec<Arrival> = rx
            .arrivals()
            .into_iter()
            .map(|a| Arrival {
                key: format!("{}/{}", a.key, a.seq / 1000),
                seq: a.seq % 1000,
                ok: a.ok,
            })
            .collect();
        assert_in_order(&by_writer, per_writer);
        first.stop().await;
        if let Some(second) = second {
            second.stop().await;
        }
    }
}
