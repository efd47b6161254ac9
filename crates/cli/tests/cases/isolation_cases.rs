// Tenant isolation over every endpoint, on both backends: a key of tenant A sees, finds and
// moves nothing of tenant B's, through /v1 and the legacy API alike; tenant keys cannot use
// admin endpoints. (`tenants_never_see_each_other` in api_cases.rs covers reads and signing.)
mod isolation {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::common::{spawn_on, TestReceiver};
    use super::BACKEND;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_endpoint_lets_one_tenant_reach_anothers_callbacks() {
        let Some(app) = spawn_on(BACKEND, |_| {}).await else {
            return;
        };
        let rx = TestReceiver::start().await;
        let mut keys = Vec::new();
        for t in ["alpha", "beta"] {
            let v: Value = app
                .post("/v1/keys", &json!({"name": format!("{t}-iso"), "tenant": t}))
                .await
                .json()
                .await
                .unwrap();
            keys.push(v["key"].as_str().unwrap().to_owned());
        }
        let (alpha, beta) = (&keys[0], &keys[1]);
        // Alpha: a dead letter, and a callback through the legacy API.
        let r = app
            .post_as(
                alpha,
                "/v1/callbacks",
                &json!({"url": rx.url("/status/500"), "max_attempts": 1}),
            )
            .await;
        let dead = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        app.wait_status(&dead, "failed", Duration::from_secs(20))
            .await;
        let legacy: Value = app
            .http
            .post(app.url("/api/callbacks/"))
            .header("authorization", format!("Token {alpha}"))
            .json(&json!({"url": rx.url("/ok/iso"), "callback_time": "2099-01-01T00:00:00Z", "external_id": "iso-1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let legacy_id = legacy["id"].as_i64().expect("a legacy id");

        // Beta finds none of it.
        for path in [
            format!("/v1/callbacks/{dead}"),
            format!("/v1/callbacks/{dead}/events"),
        ] {
            assert_eq!(app.get_as(beta, &path).await.status(), 404, "{path}");
        }
        for path in [
            format!("/v1/callbacks/{dead}/retry"),
            format!("/v1/callbacks/{dead}/cancel"),
        ] {
            let r = app.post_as(beta, &path, &json!({})).await;
            assert_eq!(r.status(), 404, "{path}");
        }
        let letters: Value = app
            .get_as(beta, "/v1/dead-letters")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(letters["data"].as_array().map(Vec::len), Some(0));
        let moved: Value = app
            .post_as(beta, "/v1/dead-letters/redrive", &json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(moved["moved"].as_u64().or(moved["matched"].as_u64()), Some(0), "{moved}");
        let still = app.get_json(&format!("/v1/callbacks/{dead}")).await;
        assert_eq!(still["status"], "failed", "beta's redrive moved alpha's dead letter");
        let legacy_get = |path: String| {
            let http = app.http.clone();
            let url = app.url(&path);
            let key = beta.clone();
            async move {
                http.get(url)
                    .header("authorization", format!("Token {key}"))
                    .send()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            legacy_get(format!("/api/callbacks/{legacy_id}/")).await.status(),
            404
        );
        let page: Value = legacy_get("/api/callbacks/?external_id=iso-1".into())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["count"], 0, "{page}");
        let r = app
            .http
            .post(app.url(&format!("/api/callbacks/{legacy_id}/cancel/")))
            .header("authorization", format!("Token {beta}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // Admin endpoints refuse tenant keys.
        let r = app.get_as(beta, "/v1/keys").await;
        assert_eq!(r.status(), 403);
        let r = app.get_as(beta, "/v1/admin/migration").await;
        assert_eq!(r.status(), 403);
        let r = app.get_as(beta, "/v1/signing-secrets?tenant=alpha").await;
        assert!(matches!(r.status().as_u16(), 400 | 403 | 404), "{}", r.status());
        // Alpha still has all of its own.
        let own: Value = app
            .get_as(alpha, "/v1/dead-letters")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(own["data"].as_array().map(Vec::len), Some(1));
        app.stop().await;
    }

    /// One key over its rate gets 429 with Retry-After (a problem on /v1, DRF's throttle
    /// message on the legacy API); another key is not slowed down by it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_key_has_its_own_rate_limit() {
        // One a second, bursts of 2: low enough that requests slowed down by the AWS emulator
        // on a busy machine still outrun the refill.
        let Some(app) = spawn_on(BACKEND, |c| c.api_rate_limit = 1).await else {
            return;
        };
        // The admin key has its own bucket: creating the two keys costs it its 2.
        let mut keys = Vec::new();
        for t in ["busy", "calm"] {
            let v: Value = app
                .post("/v1/keys", &json!({"name": format!("{t}-rl"), "tenant": t}))
                .await
                .json()
                .await
                .unwrap();
            keys.push(v["key"].as_str().unwrap().to_owned());
        }
        let (busy, calm) = (&keys[0], &keys[1]);
        let mut statuses = Vec::new();
        let mut limited = None;
        let burst = std::time::Instant::now();
        for _ in 0..15 {
            let r = app.get_as(busy, "/v1/callbacks").await;
            statuses.push(r.status().as_u16());
            if r.status() == 429 && limited.is_none() {
                let retry_after = r.headers().get("retry-after").cloned();
                let body: Value = r.json().await.unwrap();
                limited = Some((retry_after, body));
            }
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        // The bucket holds twice the rate and refills at 1 a second while the burst runs.
        let refilled = burst.elapsed().as_secs_f64().ceil() as usize;
        assert!(
            (2..=3 + refilled).contains(&ok),
            "a burst of twice the rate, {refilled} refilled: {statuses:?}"
        );
        let (retry_after, body) = limited.expect("the key was limited");
        assert!(retry_after.is_some());
        assert_eq!(body["type"], "urn:fluxcb:problem:rate-limited");
        let r = app.get_as(calm, "/v1/callbacks").await;
        assert_eq!(r.status(), 200, "another key is not limited");
        // The legacy API shares the key's bucket and answers as DRF does. (Its root: the
        // cheapest authenticated request, so a few outrun what refilled since the burst.)
        let mut throttled = None;
        for _ in 0..10 {
            let r = app
                .http
                .get(app.url("/api/"))
                .header("authorization", format!("Token {busy}"))
                .send()
                .await
                .unwrap();
            if r.status() == 429 {
                throttled = Some(r.json::<Value>().await.unwrap());
                break;
            }
        }
        let body = throttled.expect("the legacy API limits the same key");
        assert!(
            body["detail"].as_str().unwrap().starts_with("Request was throttled."),
            "{body}"
        );
        app.stop().await;
    }
}
