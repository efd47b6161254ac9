// Failure notifications and the operational event stream end to end, on both backends: a dead
// letter notifies its notify URL once (signed, thin, with a stable webhook-id), delivered
// notifications are opt-in, the tenant default comes from the `any` registration and `[]`
// silences it, a failing notify receiver is retried and never notified about, bad input is
// named, a private notify URL is blocked, and the ops stream carries callback.failed and the
// breaker's opened/recovered events. Every wait is bounded.
mod notifications {
    use std::time::{Duration, Instant};

    use super::common::{spawn_on, Received, TestApp, TestReceiver};
    use super::BACKEND;
    use fluxcb_core::signing::{verify, SigningSecret};
    use serde_json::{json, Value};

    const WAIT: Duration = Duration::from_secs(15);

    fn body(r: &Received) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    fn signed_by(received: &Received, secret: &str) -> bool {
        let secret = SigningSecret::parse(secret).unwrap();
        let id = received.header("webhook-id").unwrap();
        let ts: i64 = received
            .header("webhook-timestamp")
            .unwrap()
            .parse()
            .unwrap();
        let header = received.header("webhook-signature").unwrap();
        verify(&secret, id, ts, &received.body, header, ts, 5)
    }

    /// Waits `quiet` more and returns what arrived on `path` in all: nothing late may follow.
    async fn settled(rx: &TestReceiver, path: &str, count: usize, quiet: Duration) -> Vec<Received> {
        rx.wait_for(path, count, WAIT).await;
        tokio::time::sleep(quiet).await;
        rx.received_on(path)
    }

    async fn register(app: &TestApp, body: Value) {
        let r = app.post("/v1/destinations", &body).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    async fn list(app: &TestApp, query: &str) -> Vec<Value> {
        let v = app.get_json(&format!("/v1/callbacks?{query}")).await;
        v["data"].as_array().cloned().unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_letter_notifies_once_signed_and_thin() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        let id = app
            .create(json!({
                "url": rx.url("/status/503?token=hush"),
                "payload": {"marker": "payload-marker"},
                "max_attempts": 2,
                "metadata": {"order": "1042"},
                "notify_url": rx.url("/ok/notify"),
            }))
            .await;
        let got = settled(&rx, "/ok/notify", 1, Duration::from_secs(2)).await;
        assert_eq!(got.len(), 1, "one notification per dead letter");
        let n = &got[0];
        let v = body(n);
        assert_eq!(v["type"], "callback.failed");
        assert_eq!(v["data"]["callback_id"], id);
        assert_eq!(v["data"]["attempts"], 2);
        assert_eq!(v["data"]["status"], "failed");
        assert_eq!(v["data"]["dead_letter_reason"], "exhausted");
        assert_eq!(v["data"]["last_attempt"]["status_code"], 503);
        assert_eq!(v["data"]["last_attempt"]["error"], "http_status");
        assert_eq!(v["data"]["destination"], format!("http://{}", rx.addr));
        assert_eq!(v["data"]["metadata"]["order"], "1042");
        let text = String::from_utf8_lossy(&n.body);
        for secret in ["payload-marker", "hush", "/status/503"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(
            signed_by(n, &app.signing_secret().await),
            "signed with the tenant's secret"
        );
        // The webhook-id is the notification's own id, readable through the API.
        let nid = n.header("webhook-id").unwrap();
        let row = app
            .wait_status(nid, "delivered", Duration::from_secs(5))
            .await;
        assert_eq!(row["kind"], "notification");
        assert_eq!(row["source_id"], id);
        // Callers' lists do not show it; kind=all does.
        let default_list = list(&app, "").await;
        assert!(default_list.iter().all(|c| c["kind"] == "callback"));
        assert!(default_list.iter().any(|c| c["id"] == id));
        let everything = list(&app, "kind=all").await;
        assert!(everything.iter().any(|c| c["id"] == nid));
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivered_is_opt_in_and_the_tenant_default_can_be_overridden_or_silenced() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        register(
            &app,
            json!({ "match": { "any": true }, "settings": { "notify_url": rx.url("/ok/tenant") } }),
        )
        .await;
        // A prefix registration with its own notify URL wins over the tenant's.
        register(
            &app,
            json!({
                "match": { "url_prefix": rx.url("/status/502") },
                "settings": { "notify_url": rx.url("/ok/prefix") },
            }),
        )
        .await;
        let delivered_opt_in = app
            .create(json!({ "url": rx.url("/ok/a"), "notify_on": ["delivered"] }))
            .await;
        app.create(json!({ "url": rx.url("/ok/b") })).await;
        app.create(json!({ "url": rx.url("/status/503"), "max_attempts": 1, "notify_on": [] }))
            .await;
        app.create(json!({
            "url": rx.url("/status/503"),
            "max_attempts": 1,
            "notify_url": rx.url("/ok/own"),
        }))
        .await;
        let bare_failure = app
            .create(json!({ "url": rx.url("/status/503"), "max_attempts": 1 }))
            .await;
        let prefixed = app
            .create(json!({ "url": rx.url("/status/502"), "max_attempts": 1 }))
            .await;

        let tenant = settled(&rx, "/ok/tenant", 2, Duration::from_secs(2)).await;
        let mut seen: Vec<(String, String)> = tenant
            .iter()
            .map(|r| {
                let v = body(r);
                (
                    v["type"].as_str().unwrap().to_owned(),
                    v["data"]["callback_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        seen.sort();
        let mut expected = vec![
            ("callback.delivered".to_owned(), delivered_opt_in),
            ("callback.failed".to_owned(), bare_failure),
        ];
        expected.sort();
        assert_eq!(seen, expected, "the default is dead letters only; [] silences");
        let own = rx.received_on("/ok/own");
        assert_eq!(own.len(), 1, "the callback's own URL wins");
        let prefix = rx.received_on("/ok/prefix");
        assert_eq!(prefix.len(), 1, "the most specific registration wins");
        assert_eq!(body(&prefix[0])["data"]["callback_id"], prefixed);
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_notify_receiver_is_retried_and_never_notified_about() {
        let Some(app) = spawn_on(BACKEND, |c| c.max_attempts = 3).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        // Twice 500, then 200: three requests carrying one webhook-id.
        app.create(json!({
            "url": rx.url("/status/503"),
            "max_attempts": 1,
            "notify_url": rx.url("/flaky/2/notify"),
        }))
        .await;
        let got = settled(&rx, "/flaky/2/notify", 3, Duration::from_secs(1)).await;
        assert_eq!(got.len(), 3);
        let ids: std::collections::BTreeSet<_> =
            got.iter().map(|r| r.header("webhook-id").unwrap()).collect();
        assert_eq!(ids.len(), 1, "a retried notification keeps its id");

        // Always failing: its own attempts run out, and nothing is made about it.
        let source = app
            .create(json!({
                "url": rx.url("/status/503"),
                "max_attempts": 1,
                "notify_url": rx.url("/status/500"),
            }))
            .await;
        let got = settled(&rx, "/status/500", 3, Duration::from_secs(2)).await;
        assert_eq!(got.len(), 3, "the installation's max_attempts (3)");
        let nid = got[0].header("webhook-id").unwrap().to_owned();
        let dead = app.wait_status(&nid, "failed", WAIT).await;
        assert_eq!(dead["kind"], "notification");
        let about: Vec<Value> = list(&app, "kind=all")
            .await
            .into_iter()
            .filter(|c| c["id"] == source || c["source_id"] == source || c["source_id"] == nid)
            .collect();
        assert_eq!(about.len(), 2, "the source and one notification: {about:?}");
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_notify_fields_are_named_and_private_notify_urls_are_blocked() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        for (body, field) in [
            (json!({"url": rx.url("/ok"), "notify_url": "ftp://a.test/"}), "notify_url"),
            (json!({"url": rx.url("/ok"), "notify_url": "http://u:p@a.test/"}), "notify_url"),
            (
                json!({"url": rx.url("/ok"), "notify_url": format!("http://a.test/{}", "a".repeat(2040))}),
                "notify_url",
            ),
            (json!({"url": rx.url("/ok"), "notify_on": ["dead_lettered", "often"]}), "notify_on[1]"),
        ] {
            let r = app.post("/v1/callbacks", &body).await;
            assert_eq!(r.status(), 400);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["errors"][0]["field"], field, "{v}");
            let r = app
                .post("/v1/callbacks/batch", &json!({ "callbacks": [ {"url": rx.url("/ok")}, body ] }))
                .await;
            assert_eq!(r.status(), 400);
            let v: Value = r.json().await.unwrap();
            let named = v["errors"][0]["field"].as_str().unwrap().to_owned();
            assert!(named.contains("[1]") && named.ends_with(field), "{named}");
        }
        let r = app
            .post(
                "/v1/destinations",
                &json!({ "match": { "any": true }, "settings": { "notify_on": ["never"] } }),
            )
            .await;
        assert_eq!(r.status(), 400);

        // 10.0.0.0/8 is outside the tests' allow-list (loopback only): blocked at send time.
        let source = app
            .create(json!({
                "url": rx.url("/status/503"),
                "max_attempts": 1,
                "notify_url": "http://10.255.255.1/notify",
            }))
            .await;
        let deadline = Instant::now() + WAIT;
        let blocked = loop {
            let found = list(&app, "kind=all&status=failed")
                .await
                .into_iter()
                .find(|c| c["source_id"] == source);
            if let Some(n) = found {
                break n;
            }
            assert!(Instant::now() < deadline, "no blocked notification");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            blocked["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("blocked_target"),
            "{blocked}"
        );
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ops_stream_carries_dead_letters_and_the_breakers_outages() {
        let ops = TestReceiver::start().await;
        let ops_url = ops.url("/ok/ops");
        let Some(app) = spawn_on(BACKEND, |c| {
            c.ops_events_url = ops_url.clone();
            c.ops_events_quiet = "1s".into();
        })
        .await
        else {
            return;
        };
        let rx = TestReceiver::start().await;
        register(
            &app,
            json!({
                "match": { "origin": format!("http://{}", rx.addr) },
                "settings": { "circuit_failure_threshold": 2, "circuit_open_ms": 200 },
            }),
        )
        .await;
        let failed: Vec<String> = {
            let mut ids = Vec::new();
            for _ in 0..2 {
                ids.push(
                    app.create(json!({ "url": rx.url("/status/503"), "max_attempts": 1 }))
                        .await,
                );
                rx.wait_for("/status/503", ids.len(), WAIT).await;
            }
            ids
        };
        // The probe after the open period succeeds: the breaker closes.
        let healthy = app.create(json!({ "url": rx.url("/ok/probe") })).await;
        app.wait_status(&healthy, "delivered", WAIT).await;
        // A recovery waits out the quiet period (1 s) and, on AWS, the next batch.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        let nudge = app.create(json!({ "url": rx.url("/ok/nudge") })).await;
        app.wait_status(&nudge, "delivered", WAIT).await;

        let got = settled(&ops, "/ok/ops", 4, Duration::from_secs(1)).await;
        let mut types: Vec<String> = got
            .iter()
            .map(|r| body(r)["type"].as_str().unwrap().to_owned())
            .collect();
        types.sort();
        assert_eq!(
            types,
            [
                "callback.failed",
                "callback.failed",
                "destination.circuit_opened",
                "destination.recovered"
            ]
        );
        let system_secret = app
            .get_json("/v1/signing-secrets?tenant=_system")
            .await["secrets"][0]
            .as_str()
            .unwrap()
            .to_owned();
        for r in &got {
            assert!(signed_by(r, &system_secret), "signed with _system's secret");
            let v = body(r);
            if v["type"] == "callback.failed" {
                assert_eq!(v["data"]["tenant"], "default");
                assert!(v["data"].get("metadata").is_none());
                assert!(failed.iter().any(|id| v["data"]["callback_id"] == *id));
            } else {
                assert!(v["data"]["destination"].as_str().is_some(), "{v}");
                assert!(v["data"]["node"].as_str().is_some(), "{v}");
            }
        }
        // `_system` is reserved: no key can be made for it.
        let r = app
            .post("/v1/keys", &json!({ "name": "ops", "tenant": "_system" }))
            .await;
        assert_eq!(r.status(), 400);
        app.stop().await;
    }
}
