//! The migration phases against the real legacy pair on PostgreSQL: a shadow run (legacy sends
//! everything, fluxcb records mirrors and the requests it would have sent), a split at 0, 30 and
//! 100 percent (each callback delivered exactly once, by the side that owns it), the rollback
//! from 30 percent, and the legacy service down (callers get a DRF-style 503, nothing
//! half-recorded). Each runs on the embedded store and, as `…_on_aws`, on the AWS backend
//! (container mode against moto; skipped like the other AWS tests without the emulator), with
//! the `fluxcb migrate` commands on the same records.
mod common;
#[path = "common/legacy.rs"]
mod legacy;

use std::collections::BTreeMap;
use std::time::Duration;

use common::legacy_table::sql;
use common::{spawn_on, Backend, TestApp, TestReceiver};
use fluxcb_core::migration::bucket;
use legacy::LegacyPair;
use serde_json::{json, Value};

const SECRET: &str = "phases-secret";

async fn start_pair() -> Option<LegacyPair> {
    tokio::task::spawn_blocking(|| {
        LegacyPair::options()
            .signing_secret(SECRET)
            .retry_step_seconds(1)
            .start()
    })
    .await
    .unwrap()
}

/// Whether `backend` can run here (on AWS: the emulator), checked before the legacy pair starts.
fn available(backend: Backend) -> bool {
    backend == Backend::Sqlite || common::aws::endpoint().is_some()
}

async fn fluxcb_in_front(pair: &LegacyPair, mode: &str, backend: Backend) -> TestApp {
    let (insert, send, db) = (
        pair.callme_url(),
        pair.callback_url(),
        pair.database_url().to_owned(),
    );
    let mode = mode.to_owned();
    spawn_on(backend, move |c| {
        c.legacy_signing_secret = Some(SECRET.into());
        c.legacy_upstream = Some(insert);
        c.legacy_send_upstream = Some(send);
        c.legacy_database_url = Some(db);
        c.migration_mode = mode;
        // The rollback keeps one attempt on the wire for 6 s.
        c.timeout_ms = 10_000;
    })
    .await
    .expect("checked by `available`")
}

async fn post(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url("/api/callbacks/"))
        .header("authorization", format!("Token {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let r = app
        .http
        .get(app.url(path))
        .header("authorization", format!("Token {token}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn set_switch(app: &TestApp, mode: &str, percent: u8) {
    let r = app
        .http
        .put(app.url("/v1/admin/migration"))
        .bearer_auth(&app.key)
        .json(&json!({"mode": mode, "cutover_percent": percent}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Who delivered each request the receiver saw: legacy's worker (python-requests) or fluxcb.
fn senders(receiver: &TestReceiver, prefix: &str) -> BTreeMap<String, Vec<&'static str>> {
    let mut by_path: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for r in receiver.received() {
        if !r.path.starts_with(prefix) {
            continue;
        }
        let who = if r
            .header("user-agent")
            .is_some_and(|u| u.starts_with("fluxcb"))
        {
            "fluxcb"
        } else {
            "legacy"
        };
        by_path.entry(r.path.clone()).or_default().push(who);
    }
    by_path
}

async fn wait_for_paths(receiver: &TestReceiver, prefix: &str, count: usize) {
    for _ in 0..400 {
        if senders(receiver, prefix).len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_then_split_at_0_30_100() {
    shadow_then_split(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_then_split_at_0_30_100_on_aws() {
    shadow_then_split(Backend::Aws).await;
}

async fn shadow_then_split(backend: Backend) {
    if !available(backend) {
        return;
    }
    let Some(pair) = start_pair().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    let app = fluxcb_in_front(&pair, "shadow", backend).await;
    let token = pair.token().to_owned();

    // Shadow: callers talk to fluxcb; legacy answers, stores and sends everything.
    for i in 0..20 {
        let (status, row) = post(
            &app,
            &token,
            json!({"url": receiver.url(&format!("/ok/shadow-{i}")), "external_id": format!("s-{i}"), "payload": {"i": i}}),
        )
        .await;
        assert_eq!(status, 201, "{row}");
    }
    let (status, page) = get(&app, &token, "/api/callbacks/?status=pending").await;
    assert_eq!(status, 200);
    assert!(page["count"].as_u64().is_some());
    wait_for_paths(&receiver, "/ok/shadow-", 20).await;
    let shadow = senders(&receiver, "/ok/shadow-");
    assert_eq!(shadow.len(), 20);
    assert!(
        shadow
            .values()
            .all(|who| who.iter().all(|w| *w == "legacy")),
        "fluxcb sent nothing in shadow mode: {shadow:?}"
    );
    // fluxcb kept a mirror of each, with the request it would have sent.
    let mirrors: Value = app
        .http
        .get(app.url("/v1/callbacks?tenant=legacy&limit=100"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mirrors = mirrors["data"].as_array().expect("a list").clone();
    assert_eq!(mirrors.len(), 20, "{mirrors:?}");
    let first = mirrors[0]["id"].as_str().unwrap();
    let events: Value = app
        .http
        .get(app.url(&format!("/v1/callbacks/{first}/events")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shadowed = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "shadowed")
        .expect("a shadowed event")
        .clone();
    let headers = shadowed["detail"]["headers"].as_array().unwrap();
    assert!(
        headers.iter().any(|h| h[0] == "X-Flux-Signature"),
        "{shadowed}"
    );

    // The comparison gates the next phase: nothing differs...
    let compare = |app: &TestApp| {
        app.store_command(&["migrate", "compare", "--legacy-db", pair.database_url()])
            .args(["--legacy-secret", SECRET, "--output", "json"])
            .env("FLUXCB_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8")
            .output()
            .unwrap()
    };
    let out = compare(&app);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert_eq!(
        (report["differences"].as_u64(), report["matched"].as_u64()),
        (Some(0), Some(20)),
        "{report}"
    );
    // ...until something does: a row changed behind fluxcb's back.
    let db = pair.database_url();
    sql(
        db,
        "UPDATE callme_callback SET payload = '{\"i\": 999}' WHERE external_id = 's-3'",
    )
    .await;
    let out = compare(&app);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(report["field_mismatches"]["count"], 1, "{report}");
    sql(
        db,
        "UPDATE callme_callback SET payload = '{\"i\": 3}' WHERE external_id = 's-3'",
    )
    .await;

    // Split: the legacy tokens must work on fluxcb's side too.
    let out = app
        .store_command(&["migrate", "import", "--legacy-db", pair.database_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut expected: BTreeMap<String, &'static str> = BTreeMap::new();
    for (percent, n) in [(0u8, 20), (30, 60), (100, 20)] {
        set_switch(&app, "split", percent).await;
        for i in 0..n {
            let ext = format!("p{percent}-{i}");
            let (status, row) = post(
                &app,
                &token,
                json!({"url": receiver.url(&format!("/ok/{ext}")), "external_id": ext, "payload": {"n": i}}),
            )
            .await;
            assert_eq!(status, 201, "{ext}: {row}");
            let owner = if bucket(ext.as_bytes()) < percent {
                "fluxcb"
            } else {
                "legacy"
            };
            expected.insert(format!("/ok/{ext}"), owner);
        }
    }
    wait_for_paths(&receiver, "/ok/p", expected.len()).await;
    let seen = senders(&receiver, "/ok/p");
    for (path, owner) in &expected {
        assert_eq!(
            seen.get(path).map(Vec::as_slice),
            Some(&[*owner][..]),
            "{path} delivered once, by {owner}"
        );
    }
    let by_fluxcb = expected.values().filter(|o| **o == "fluxcb").count();
    assert!(
        (12..=30).contains(&(by_fluxcb - 20)),
        "about 30% of 60 at 30 percent, plus all 20 at 100: {by_fluxcb}"
    );

    // One id sequence and one list: counts add up across both sides.
    let (_, all) = get(&app, &token, "/api/callbacks/").await;
    assert_eq!(all["count"], 20 + 100);
    let ids: Vec<i64> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    // Reads of a legacy-owned id come from legacy; of a fluxcb-owned one from fluxcb.
    for row in all["results"].as_array().unwrap().iter().take(10) {
        let (status, one) = get(&app, &token, &format!("/api/callbacks/{}/", row["id"])).await;
        assert_eq!((status, &one["id"]), (200, &row["id"]));
    }
    // An external_id legacy took stays taken after the percentage moved to fluxcb.
    let legacy_owned = expected
        .iter()
        .find(|(p, o)| **o == "legacy" && p.starts_with("/ok/p30"))
        .map(|(p, _)| p.trim_start_matches("/ok/").to_owned())
        .unwrap();
    let (status, body) = post(
        &app,
        &token,
        json!({"url": receiver.url("/ok/dup"), "external_id": legacy_owned}),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"external_id": ["callback with this external id already exists."]})
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn legacy_down_during_shadow_is_a_drf_style_503() {
    legacy_down_during_shadow(Backend::Sqlite).await;
}

#[tokio::test]
async fn legacy_down_during_shadow_is_a_drf_style_503_on_aws() {
    legacy_down_during_shadow(Backend::Aws).await;
}

async fn legacy_down_during_shadow(backend: Backend) {
    let closed = common::free_loopback_addr();
    let Some(app) = spawn_on(backend, move |c| {
        c.legacy_upstream = Some(format!("http://{closed}"));
        c.migration_mode = "shadow".into();
    })
    .await
    else {
        return;
    };
    let r = app
        .http
        .post(app.url("/api/callbacks/"))
        .header("authorization", "Token whatever")
        .json(&json!({"url": "http://127.0.0.1:9/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("legacy service"));
    let listed: Value = app.get_json("/v1/callbacks?tenant=legacy").await;
    assert_eq!(
        listed["data"].as_array().map(Vec::len),
        Some(0),
        "nothing half-recorded"
    );
    app.stop().await;
}

/// An external id that the hash routes to fluxcb at `percent` (or to legacy when `fluxcb` is
/// false), so a test can place a callback on a chosen side.
fn ext_for(prefix: &str, percent: u8, fluxcb: bool) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|e| (bucket(e.as_bytes()) < percent) == fluxcb)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_30_percent_delivers_everything_once() {
    rollback_from_30_percent(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_30_percent_delivers_everything_once_on_aws() {
    rollback_from_30_percent(Backend::Aws).await;
}

async fn rollback_from_30_percent(backend: Backend) {
    if !available(backend) {
        return;
    }
    let Some(pair) = start_pair().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    let app = fluxcb_in_front(&pair, "split", backend).await;
    let token = pair.token().to_owned();
    let out = app
        .store_command(&["migrate", "import", "--legacy-db", pair.database_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    set_switch(&app, "split", 30).await;

    // Forty callbacks due in a few seconds, split 30/70; one of fluxcb's in flight at the
    // hand-back (its receiver takes 6 s to answer: the export must still find it on the wire,
    // and on a busy machine the export against the AWS emulator has taken 5 s).
    // Far enough ahead that the export fences fluxcb's before they are due, even on a machine
    // busy compiling (a cold CI run once took more than 6 s on AWS to get there).
    let lead = if backend == Backend::Aws { 15 } else { 10 };
    let due = (chrono::Utc::now() + chrono::Duration::seconds(lead)).to_rfc3339();
    for i in 0..40 {
        let ext = format!("rb-{i}");
        let (status, row) = post(
            &app,
            &token,
            json!({"url": receiver.url(&format!("/ok/{ext}")), "external_id": ext, "callback_time": due}),
        )
        .await;
        assert_eq!(status, 201, "{row}");
    }
    let slow = ext_for("slow", 30, true);
    let (status, slow_row) = post(
        &app,
        &token,
        json!({"url": receiver.url("/hang/6000"), "external_id": slow}),
    )
    .await;
    assert_eq!(status, 201, "{slow_row}");
    receiver
        .wait_for("/hang/6000", 1, Duration::from_secs(5))
        .await;
    let fluxcb_owned = (0..40)
        .filter(|i| bucket(format!("rb-{i}").as_bytes()) < 30)
        .count();

    // The rollback.
    let out = app
        .store_command(&[
            "migrate",
            "export",
            "--legacy-db",
            pair.database_url(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["written"], fluxcb_owned as u64 + 1, "{report}");
    assert_eq!(report["in_flight"], 1, "{report}");
    assert_eq!(report["still_in_flight"], 0, "{report}");
    assert_eq!(report["by_status"]["succeeded"], 1, "{report}");
    set_switch(&app, "split", 0).await;

    // Every callback delivered once, by legacy (fluxcb's were handed back before they were
    // due); the one in flight at the fence was delivered by fluxcb and not again by legacy.
    wait_for_paths(&receiver, "/ok/rb-", 40).await;
    // Time for a duplicate to show (a queue message for a handed-back callback, say).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = senders(&receiver, "/ok/rb-");
    assert_eq!(seen.len(), 40, "{seen:?}");
    for (path, who) in &seen {
        assert_eq!(who.as_slice(), ["legacy"], "{path}");
    }
    assert_eq!(receiver.received_on("/hang/6000").len(), 1);
    // Reads of handed-back ids are answered by legacy, which now has them.
    let (status, one) = get(&app, &token, &format!("/api/callbacks/{}/", slow_row["id"])).await;
    assert_eq!((status, one["status"].as_str()), (200, Some("succeeded")));
    // New callbacks go to legacy, with ids past everything fluxcb used.
    let (status, fresh) = post(
        &app,
        &token,
        json!({"url": receiver.url("/ok/after"), "external_id": ext_for("after", 30, true)}),
    )
    .await;
    assert_eq!(status, 201);
    assert!(fresh["id"].as_i64() > slow_row["id"].as_i64(), "{fresh}");
    app.stop().await;
}
