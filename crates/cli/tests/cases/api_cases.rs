// The black-box /v1 API suite, shared by the embedded and the AWS backend: `api.rs` and
// `api_aws.rs` include it after defining `BACKEND`. Written against HTTP only, so that the same
// assertions hold for both homes of the engine.

use std::time::Duration;

use base64::Engine;
use common::{spawn_on, Backend, ResettingListener, TestReceiver};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(10);

/// A receiver's verification, written from the Standard Webhooks spec without fluxcb's code.
fn verify_standard_webhook(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| sig == expected)
}

#[tokio::test]
async fn a_callback_is_delivered_signed_and_recorded() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let id = app
        .create(json!({
            "url": rx.url("/ok"),
            "payload": {"order": 42, "items": ["a", "b"]},
            "headers": {"X-Tenant-Ref": "abc"},
            "metadata": {"kind": "order"}
        }))
        .await;
    assert!(id.starts_with("cb_"));
    let got = rx.wait_for("/ok", 1, WAIT).await;
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(&req.body[..], br#"{"items":["a","b"],"order":42}"#);
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("x-tenant-ref"), Some("abc"));
    assert_eq!(req.header("webhook-id"), Some(id.as_str()));
    let ts = req.header("webhook-timestamp").expect("timestamp");
    let now = chrono::Utc::now().timestamp();
    assert!((now - ts.parse::<i64>().unwrap()).abs() < 60);
    let secret = app.signing_secret().await;
    assert!(verify_standard_webhook(
        &secret,
        &id,
        ts,
        &req.body,
        req.header("webhook-signature").expect("signature")
    ));
    let v = app.wait_status(&id, "delivered", WAIT).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(v["attempts"][0]["status_code"], 200);
    assert_eq!(v["attempts"][0]["error"], Value::Null);
    assert_eq!(v["metadata"]["kind"], "order");

    let events = app.get_json(&format!("/v1/callbacks/{id}/events")).await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "attempted"]);
    assert_eq!(events["data"][0]["actor"], "admin");
    assert_eq!(events["data"][1]["to_status"], "delivered");
    app.stop().await;
}

#[tokio::test]
async fn raw_bodies_and_methods_go_out_as_given() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let id = app
        .create(
            json!({"url": rx.url("/ok/raw"), "method": "PUT", "body": "a=1&b=2",
                       "content_type": "application/x-www-form-urlencoded"}),
        )
        .await;
    let got = rx.wait_for("/ok/raw", 1, WAIT).await;
    assert_eq!(got[0].method, "PUT");
    assert_eq!(&got[0].body[..], b"a=1&b=2");
    assert_eq!(
        got[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let v = app.wait_status(&id, "delivered", WAIT).await;
    assert_eq!(v["body"], "a=1&b=2");
    app.stop().await;
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let r = app.http.get(app.url("/v1/callbacks")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "urn:fluxcb:problem:unauthorized");
    let r = app.get_as("fcb_not_a_key", "/v1/callbacks").await;
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_problem_naming_the_field() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let cases = [
        (json!({"url": "ftp://example.com/x"}), 400, "url"),
        (json!({"url": "http://u:p@example.com/"}), 400, "url"),
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(2100))}),
            400,
            "url",
        ),
        (
            json!({"url": "https://example.com/", "surprise": 1}),
            400,
            "surprise",
        ),
        (
            json!({"url": "https://example.com/", "max_attempts": 0}),
            400,
            "max_attempts",
        ),
        (
            json!({"url": "https://example.com/", "timeout_ms": 90000}),
            400,
            "timeout_ms",
        ),
        (
            json!({"url": "https://example.com/", "method": "DELETE"}),
            400,
            "method",
        ),
        (
            json!({"url": "https://example.com/", "headers": {"Host": "x"}}),
            400,
            "headers.Host",
        ),
        (
            json!({"url": "https://example.com/", "deliver_at": "tomorrow"}),
            400,
            "deliver_at",
        ),
        (json!({"url": 5}), 400, "url"),
    ];
    for (body, status, field) in cases {
        let r = app.post("/v1/callbacks", &body).await;
        assert_eq!(r.status(), status, "{body}");
        let p: Value = r.json().await.unwrap();
        let fields: Vec<&str> = p["errors"]
            .as_array()
            .map(|a| a.iter().map(|e| e["field"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert!(
            fields.iter().any(|f| f.contains(field))
                || p["detail"].as_str().unwrap().contains(field),
            "{body}: {p}"
        );
    }
    // Malformed JSON.
    let r = app
        .http
        .post(app.url("/v1/callbacks"))
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body("{\"url\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:fluxcb:problem:malformed-body");
    // Over the body limit.
    let big = json!({"url": "https://example.com/", "body": "x".repeat(300 * 1024)});
    let r = app.post("/v1/callbacks", &big).await;
    assert_eq!(r.status(), 413);
    // Nothing was stored by any of them.
    let list = app.get_json("/v1/callbacks").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_with_per_item_errors() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let bad = json!({"callbacks": [
        {"url": rx.url("/ok/b1")},
        {"url": "nope"},
        {"url": rx.url("/ok/b3"), "max_attempts": 99},
    ]});
    let r = app.post("/v1/callbacks/batch", &bad).await;
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["callbacks[1].url", "callbacks[2].max_attempts"]);
    assert_eq!(
        app.get_json("/v1/callbacks").await["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // A batch bigger than the single-request limit but within the batch limit is fine.
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"url": rx.url(&format!("/ok/big{i}")), "body": "y".repeat(40 * 1024)}))
        .collect();
    let r = app
        .post("/v1/callbacks/batch", &json!({ "callbacks": items }))
        .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["callbacks"].as_array().unwrap().len(), 10);
    for i in 0..10 {
        rx.wait_for(&format!("/ok/big{i}"), 1, WAIT).await;
    }
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"url": rx.url("/ok")})).collect();
    let r = app
        .post("/v1/callbacks/batch", &json!({ "callbacks": too_many }))
        .await;
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_conflict_and_serialise() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let body = json!({"url": rx.url("/ok/idem"), "payload": {"n": 1}});
    let send = |key: &'static str, body: Value| {
        let http = app.http.clone();
        let url = app.url("/v1/callbacks");
        let api_key = app.key.clone();
        async move {
            http.post(url)
                .bearer_auth(api_key)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = send("k1", body.clone()).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send("k1", body.clone()).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let other = send(
        "k1",
        json!({"url": rx.url("/ok/idem"), "payload": {"n": 2}}),
    )
    .await;
    assert_eq!(other.status(), 422);

    // Two identical requests at once yield one callback.
    let body2 = json!({"url": rx.url("/ok/idem2")});
    let (a, b) = tokio::join!(send("k2", body2.clone()), send("k2", body2.clone()));
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    assert!(statuses.contains(&202), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 409),
        "{statuses:?}"
    );
    rx.wait_for("/ok/idem2", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received_on("/ok/idem2").len(), 1);
    assert_eq!(rx.received_on("/ok/idem").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn failures_are_retried_on_schedule_until_delivered() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let id = app
        .create(json!({"url": rx.url("/flaky/2/a"), "max_attempts": 5}))
        .await;
    let v = app.wait_status(&id, "delivered", WAIT).await;
    let codes: Vec<i64> = v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200]);
    let got = rx.received_on("/flaky/2/a");
    assert_eq!(got.len(), 3);
    // Every retry carries the same webhook-id, and a fresh timestamp and signature.
    assert!(got
        .iter()
        .all(|r| r.header("webhook-id") == Some(id.as_str())));
    // The schedule is 50ms, 100ms (±20%): the gaps reflect it.
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(gap1 >= Duration::from_millis(35), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(75), "{gap2:?}");
    app.stop().await;
}

#[tokio::test]
async fn exhausted_gone_and_retry_after_follow_the_policy() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let exhausted = app
        .create(json!({"url": rx.url("/status/500"), "max_attempts": 3}))
        .await;
    let gone = app
        .create(json!({"url": rx.url("/status/410"), "max_attempts": 5}))
        .await;
    let limited = app
        .create(json!({"url": rx.url("/status/429?retry_after=1"), "max_attempts": 2}))
        .await;
    let v = app.wait_status(&exhausted, "failed", WAIT).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 3);
    assert!(v["last_error"].as_str().unwrap().starts_with("http_status"));
    let v = app.wait_status(&gone, "failed", WAIT).await;
    assert_eq!(
        v["attempts"].as_array().unwrap().len(),
        1,
        "410 is not retried"
    );
    let v = app.wait_status(&limited, "failed", WAIT).await;
    let a = v["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 2);
    let t0 = chrono::DateTime::parse_from_rfc3339(a[0]["started_at"].as_str().unwrap()).unwrap();
    let t1 = chrono::DateTime::parse_from_rfc3339(a[1]["started_at"].as_str().unwrap()).unwrap();
    assert!(
        (t1 - t0).num_milliseconds() >= 950,
        "Retry-After: 1 was not honoured: {}",
        (t1 - t0).num_milliseconds()
    );
    // A dead letter can be retried by an operator and is then attempted again.
    let r = app
        .post(&format!("/v1/callbacks/{exhausted}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let v = app.wait_status(&exhausted, "failed", WAIT).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 6);
    let events = app
        .get_json(&format!("/v1/callbacks/{exhausted}/events"))
        .await;
    assert!(events["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "retried" && e["actor"] == "admin"));
    // Delivered or failed callbacks cannot be cancelled.
    let r = app
        .post(&format!("/v1/callbacks/{gone}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 409);
    app.stop().await;
}

#[tokio::test]
async fn timeouts_and_resets_are_recorded_with_stable_codes() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let reset = ResettingListener::start().await;
    let slow = app
        .create(json!({"url": rx.url("/hang/3000"), "timeout_ms": 300, "max_attempts": 1}))
        .await;
    let rst = app
        .create(json!({"url": format!("http://{}/x", reset.addr), "max_attempts": 1}))
        .await;
    let v = app.wait_status(&slow, "failed", WAIT).await;
    assert_eq!(v["attempts"][0]["error"], "timeout");
    assert!(v["attempts"][0]["duration_ms"].as_u64().unwrap() < 2000);
    let v = app.wait_status(&rst, "failed", WAIT).await;
    let code = v["attempts"][0]["error"].as_str().unwrap();
    assert!(code == "connect" || code == "protocol", "{code}");
    assert!(reset.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    app.stop().await;
}

#[tokio::test]
async fn scheduled_callbacks_wait_and_can_be_cancelled() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let later = (chrono::Utc::now() + chrono::Duration::milliseconds(700)).to_rfc3339();
    let far = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let soon = app
        .create(json!({"url": rx.url("/ok/soon"), "deliver_at": later}))
        .await;
    let never = app
        .create(json!({"url": rx.url("/ok/never"), "deliver_at": far}))
        .await;
    assert_eq!(
        app.get_json(&format!("/v1/callbacks/{soon}")).await["status"],
        "scheduled"
    );
    let r = app
        .post(&format!("/v1/callbacks/{never}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    let got = rx.wait_for("/ok/soon", 1, WAIT).await;
    assert!(!got.is_empty());
    app.wait_status(&soon, "delivered", WAIT).await;
    assert!(rx.received_on("/ok/never").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let mut keys = Vec::new();
    for t in ["alpha", "beta"] {
        let r = app
            .post(
                "/v1/keys",
                &json!({"name": format!("{t}-key"), "tenant": t}),
            )
            .await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        keys.push(v["key"].as_str().unwrap().to_owned());
    }
    let r = app
        .post_as(
            &keys[0],
            "/v1/callbacks",
            &json!({"url": rx.url("/ok/alpha")}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.get_as(&keys[1], &format!("/v1/callbacks/{id}")).await;
    assert_eq!(
        r.status(),
        404,
        "another tenant's callback must look absent"
    );
    let r = app
        .post_as(&keys[1], &format!("/v1/callbacks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 404);
    let r = app
        .get_as(&keys[1], &format!("/v1/callbacks/{id}/events"))
        .await;
    assert_eq!(r.status(), 404);
    let list: Value = app
        .get_as(&keys[1], "/v1/callbacks")
        .await
        .json()
        .await
        .unwrap();
    assert!(list["data"].as_array().unwrap().is_empty());
    let list: Value = app
        .get_as(&keys[0], "/v1/callbacks")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Tenant keys cannot manage keys; the admin sees everyone.
    let r = app
        .post_as(
            &keys[0],
            "/v1/keys",
            &json!({"name": "x", "tenant": "alpha"}),
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = app.get_as(&keys[0], "/v1/callbacks?tenant=beta").await;
    assert_eq!(r.status(), 400);
    let all = app.get_json(&format!("/v1/callbacks/{id}")).await;
    assert_eq!(all["tenant"], "alpha");
    // Each tenant signs with its own secret.
    let got = rx.wait_for("/ok/alpha", 1, WAIT).await;
    let alpha: Value = app
        .get_as(&keys[0], "/v1/signing-secrets")
        .await
        .json()
        .await
        .unwrap();
    let default_secret = app.signing_secret().await;
    let alpha_secret = alpha["secrets"][0].as_str().unwrap();
    assert_ne!(alpha_secret, default_secret);
    let sig = got[0].header("webhook-signature").unwrap();
    let ts = got[0].header("webhook-timestamp").unwrap();
    assert!(verify_standard_webhook(
        alpha_secret,
        &id,
        ts,
        &got[0].body,
        sig
    ));
    assert!(!verify_standard_webhook(
        &default_secret,
        &id,
        ts,
        &got[0].body,
        sig
    ));
    // A revoked key stops working (within the key cache's few seconds).
    let r = app
        .http
        .delete(app.url("/v1/keys/beta-key"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    tokio::time::sleep(fluxcb_http::auth::KEY_CACHE_TTL + Duration::from_millis(200)).await;
    assert_eq!(app.get_as(&keys[1], "/v1/callbacks").await.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn list_filters_and_cursor_pagination() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let far = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
        ids.push(
            app.create(json!({"url": rx.url("/ok/l"), "deliver_at": far,
                              "metadata": {"batch": if i % 2 == 0 { "even" } else { "odd" }}}))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/callbacks?limit=2&cursor={c}"),
            None => "/v1/callbacks?limit=2".into(),
        };
        let page = app.get_json(&q).await;
        for cb in page["data"].as_array().unwrap() {
            seen.push(cb["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let sched = app.get_json("/v1/callbacks?status=scheduled").await;
    assert_eq!(sched["data"].as_array().unwrap().len(), 5);
    if BACKEND == Backend::Sqlite {
        let even = app.get_json("/v1/callbacks?metadata=batch=even").await;
        assert_eq!(even["data"].as_array().unwrap().len(), 3);
        let sched = app
            .get_json("/v1/callbacks?status=scheduled&host=127.0.0.1")
            .await;
        assert_eq!(sched["data"].as_array().unwrap().len(), 5);
        let none = app.get_json("/v1/callbacks?host=example.com").await;
        assert!(none["data"].as_array().unwrap().is_empty());
    } else {
        // No index serves these on DynamoDB: refused, not answered with a table scan.
        for q in ["metadata=batch=even", "host=127.0.0.1"] {
            let r = app.get(&format!("/v1/callbacks?{q}")).await;
            assert_eq!(r.status(), 400, "{q}");
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["type"], "urn:fluxcb:problem:unsupported", "{p}");
        }
    }
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = app
        .get(&format!(
            "/v1/callbacks?created_after={}",
            urlencode(&future)
        ))
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let r = app.get("/v1/callbacks?status=sent").await;
    assert_eq!(r.status(), 400);
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven_in_bulk() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.create(
                json!({"url": rx.url(&format!("/status/503?n={i}")), "max_attempts": 1,
                              "metadata": {"team": "red"}}),
            )
            .await,
        );
    }
    let ok = app.create(json!({"url": rx.url("/ok/fine")})).await;
    for id in &ids {
        app.wait_status(id, "failed", WAIT).await;
    }
    app.wait_status(&ok, "delivered", WAIT).await;
    let dl = app.get_json("/v1/dead-letters").await;
    assert_eq!(dl["data"].as_array().unwrap().len(), 3);
    let filter = if BACKEND == Backend::Sqlite {
        let r = app
            .post(
                "/v1/dead-letters/redrive",
                &json!({"metadata": "team=blue"}),
            )
            .await;
        assert_eq!(r.json::<Value>().await.unwrap()["moved"], 0);
        json!({"metadata": "team=red", "host": "127.0.0.1"})
    } else {
        json!({"tenant": "default"})
    };
    let r = app.post("/v1/dead-letters/redrive", &filter).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["moved"], 3);
    for id in &ids {
        let v = app.wait_status(id, "failed", WAIT).await;
        assert_eq!(v["attempts"].as_array().unwrap().len(), 2);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_limited_redrive_moves_at_most_the_limit_each_time() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            // Fails once (a dead letter after its one attempt), then takes the redrive.
            app.create(json!({"url": rx.url(&format!("/flaky/1/limited{i}")), "max_attempts": 1}))
                .await,
        );
    }
    for id in &ids {
        app.wait_status(id, "failed", WAIT).await;
    }
    for limit in [0, 10_001] {
        let r = app
            .post("/v1/dead-letters/redrive", &json!({"limit": limit}))
            .await;
        assert_eq!(r.status(), 400, "limit {limit}");
    }
    let dry = app
        .post(
            "/v1/dead-letters/redrive",
            &json!({"dry_run": true, "limit": 2}),
        )
        .await;
    assert_eq!(dry.json::<Value>().await.unwrap()["matched"], 5);
    let mut steps = Vec::new();
    loop {
        let r = app
            .post("/v1/dead-letters/redrive", &json!({"limit": 2}))
            .await;
        assert_eq!(r.status(), 200);
        let moved = r.json::<Value>().await.unwrap()["moved"].as_u64().unwrap();
        steps.push(moved);
        if moved < 2 {
            break;
        }
    }
    assert_eq!(steps, [2, 2, 1]);
    for id in &ids {
        app.wait_status(id, "delivered", WAIT).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn signing_secret_rotation_sends_both_signatures() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let old = app.signing_secret().await;
    let r = app
        .post(
            "/v1/signing-secrets/rotate",
            &json!({"grace_seconds": 3600}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let secrets: Vec<String> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[1], old);
    // The dispatcher caches secrets for a few seconds.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let id = app.create(json!({"url": rx.url("/ok/rot")})).await;
    let got = rx.wait_for("/ok/rot", 1, WAIT).await;
    let sig = got[0].header("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    let ts = got[0].header("webhook-timestamp").unwrap();
    for s in &secrets {
        assert!(verify_standard_webhook(s, &id, ts, &got[0].body, sig));
    }
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_openapi() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/callbacks",
        "/v1/callbacks/batch",
        "/v1/callbacks/{id}",
        "/v1/callbacks/{id}/events",
        "/v1/callbacks/{id}/cancel",
        "/v1/callbacks/{id}/retry",
        "/v1/dead-letters/redrive",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the spec"
        );
    }
    assert!(spec["components"]["schemas"]
        .get("CreateCallback")
        .is_some());
    app.stop().await;
}

#[tokio::test]
async fn a_configured_admin_key_works_and_unknown_backends_are_refused() {
    let Some(app) = spawn_on(BACKEND, |c| c.api_key = Some("my-admin-key".into())).await else {
        return;
    };
    let r = app.get_as("my-admin-key", "/v1/callbacks").await;
    assert_eq!(r.status(), 200);
    app.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = common::test_config(dir.path());
    c.backend = "cassandra".into();
    assert!(c.validate().unwrap_err().contains("FLUXCB_BACKEND"));
}

/// Reads one sample from Prometheus text: the value of the line that starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_what_happened_in_prometheus_format() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let scrape = || async {
        let r = app.http.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    // Other tests in this process share the registry: compare before and after.
    let before = scrape().await;
    let accepted_before = sample(&before, "fluxcb_callbacks_accepted_total").unwrap_or(0.0);
    let delivered_before =
        sample(&before, "fluxcb_attempts_total{outcome=\"delivered\"}").unwrap_or(0.0);
    let ok = app.create(json!({"url": rx.url("/ok/metrics")})).await;
    let gone = app.create(json!({"url": rx.url("/status/410")})).await;
    app.wait_status(&ok, "delivered", WAIT).await;
    app.wait_status(&gone, "failed", WAIT).await;
    let after = scrape().await;
    assert!(sample(&after, "fluxcb_callbacks_accepted_total").unwrap() >= accepted_before + 2.0);
    assert!(
        sample(&after, "fluxcb_attempts_total{outcome=\"delivered\"}").unwrap()
            >= delivered_before + 1.0
    );
    assert!(sample(&after, "fluxcb_attempts_total{outcome=\"dead_lettered\"}").unwrap() >= 1.0);
    assert!(after.contains("fluxcb_accepted_to_delivered_seconds_bucket{le=\"0.025\"}"));
    assert!(sample(&after, "fluxcb_attempt_duration_seconds_count").unwrap() >= 2.0);
    // The state gauges come from this app's own store (on DynamoDB, only waiting and
    // in-flight states are counted: finished ones would take a table scan).
    if BACKEND == Backend::Sqlite {
        assert_eq!(
            sample(&after, "fluxcb_callbacks{status=\"delivered\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&after, "fluxcb_callbacks{status=\"failed\"}"),
            Some(1.0)
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_legacy_wire_format_carries_integer_ids_and_the_legacy_signature() {
    let Some(app) = spawn_on(BACKEND, |c| {
        c.legacy_signing_secret = Some("legacy-secret".into())
    })
    .await
    else {
        return;
    };
    let rx = TestReceiver::start().await;
    let payload = json!({"status": "paid", "id": 7, "name": "Zoë", "amount": 12.5});
    let mut legacy_ids = Vec::new();
    for name in ["l1", "l2"] {
        let r = app
            .post(
                "/v1/callbacks",
                &json!({"url": rx.url(&format!("/ok/{name}")), "payload": payload,
                        "headers": {"X-Row": name}, "wire_format": "legacy"}),
            )
            .await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        legacy_ids.push(v["legacy_id"].as_i64().expect("a legacy id"));
    }
    assert!(legacy_ids[1] > legacy_ids[0], "{legacy_ids:?}");
    let both = app
        .create(json!({"url": rx.url("/ok/both"), "payload": payload, "wire_format": "both"}))
        .await;
    let expected_body = fluxcb_core::legacy::render_body(&payload);
    for (name, legacy_id) in [("l1", legacy_ids[0]), ("l2", legacy_ids[1])] {
        let got = rx.wait_for(&format!("/ok/{name}"), 1, WAIT).await;
        let req = &got[0];
        assert_eq!(&req.body[..], &expected_body[..]);
        assert_eq!(
            req.header("x-flux-callback-id"),
            Some(legacy_id.to_string().as_str())
        );
        let ts: i64 = req.header("x-flux-timestamp").unwrap().parse().unwrap();
        assert!(fluxcb_core::legacy::verify(
            b"legacy-secret",
            ts,
            &req.body,
            req.header("x-flux-signature").unwrap()
        ));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("x-row"), Some(name));
        assert!(req.header("webhook-signature").is_none());
    }
    // Both formats at once: the legacy body, signed both ways.
    let got = rx.wait_for("/ok/both", 1, WAIT).await;
    let req = &got[0];
    assert_eq!(&req.body[..], &expected_body[..]);
    let ts = req.header("x-flux-timestamp").unwrap();
    assert!(fluxcb_core::legacy::verify(
        b"legacy-secret",
        ts.parse().unwrap(),
        &req.body,
        req.header("x-flux-signature").unwrap()
    ));
    let secret = app.signing_secret().await;
    assert_eq!(req.header("webhook-id"), Some(both.as_str()));
    assert!(verify_standard_webhook(
        &secret,
        &both,
        req.header("webhook-timestamp").unwrap(),
        &req.body,
        req.header("webhook-signature").unwrap()
    ));
    let view = app.get_json(&format!("/v1/callbacks/{both}")).await;
    assert_eq!(view["wire_format"], "both");
    assert!(view["legacy_id"].as_i64().unwrap() > legacy_ids[1]);
    // A raw body cannot go out in the legacy format, and callers cannot forge its headers.
    let r = app
        .post(
            "/v1/callbacks",
            &json!({"url": rx.url("/ok/x"), "body": "raw", "wire_format": "legacy"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = app
        .post(
            "/v1/callbacks",
            &json!({"url": rx.url("/ok/x"), "headers": {"X-Flux-Signature": "sha256=00"}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn the_legacy_wire_format_is_refused_without_the_legacy_secret() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let r = app
        .post(
            "/v1/callbacks",
            &json!({"url": "https://example.com/hook", "payload": {}, "wire_format": "legacy"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["errors"][0]["field"], "wire_format", "{p}");
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("FLUXCB_LEGACY_SIGNING_SECRET"));
    let r = app
        .post(
            "/v1/callbacks",
            &json!({"url": "https://example.com/hook", "wire_format": "smoke-signals"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn an_open_circuit_breaker_shows_in_the_metrics_by_destination() {
    let Some(app) = spawn_on(BACKEND, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    // Ten consecutive failures (the default threshold) open the destination's breaker.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            app.create(json!({"url": rx.url(&format!("/status/503?n={i}")), "max_attempts": 1}))
                .await,
        );
    }
    for id in &ids {
        app.wait_status(id, "failed", WAIT).await;
    }
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(
        "fluxcb_destination_circuit_open{{destination=\"http://{}\"}}",
        rx.addr
    );
    assert_eq!(sample(&text, &series), Some(1.0), "{series} in:\n{text}");
    assert!(text.contains("fluxcb_destination_in_flight{destination=\"_other\"}"));
    app.stop().await;
}
