//! `fluxcb backup` against a live server, and the documented restore: copy the file to a new
//! data directory as `fluxcb.db` and start on it. What comes back must be exactly what was
//! there: callbacks with their statuses, attempts and schedules, keys and signing secrets.
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    fluxcb_command, spawn_app, test_config, ServeProcess, TestApp, TestReceiver, PROCESS_API_KEY,
};
use fluxcb::app::App;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

async fn run_backup(data_dir: &Path, out: &Path, cwd: &Path) -> Output {
    let mut cmd = tokio::process::Command::from(fluxcb_command(cwd));
    let run = cmd
        .arg("backup")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--out")
        .arg(out)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("backup finished within 30 s")
        .expect("backup ran")
}

/// Serves a restored data directory the way `spawn_app` serves a fresh one, with the key the
/// caller already holds: a restored store must not need (or make) a new one.
async fn serve_restored(data_dir: tempfile::TempDir, key: String) -> TestApp {
    let config = test_config(data_dir.path());
    let settings = config.validate().expect("valid config");
    let app = App::build(&settings).await.expect("restored store opens");
    assert!(
        app.generated_admin_key.is_none(),
        "the restored store lost its admin key: a new one was generated"
    );
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        key,
        http: reqwest::Client::new(),
        data_dir,
        shutdown,
        server,
        config,
    }
}

async fn all_ids(http: &reqwest::Client, base: &str, key: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/callbacks?limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = http.get(&url).bearer_auth(key).send().await.expect("list");
        assert_eq!(r.status(), 200, "GET {url}");
        let page: Value = r.json().await.unwrap();
        for item in page["data"].as_array().unwrap() {
            ids.insert(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_live_server_restores_callbacks_attempts_keys_and_secrets() {
    let started = Instant::now();
    let receiver = TestReceiver::start().await;
    let app = spawn_app().await;
    let in_an_hour = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();

    let mut fixtures: Vec<(String, &str)> = Vec::new();
    for name in ["a", "b", "c"] {
        let id = app
            .create(
                json!({ "url": receiver.url(&format!("/ok/{name}")), "payload": { "name": name } }),
            )
            .await;
        fixtures.push((id, "delivered"));
    }
    let flaky = app
        .create(json!({ "url": receiver.url("/flaky/1/backup"), "payload": { "flaky": true } }))
        .await;
    fixtures.push((flaky.clone(), "delivered"));
    let failed = app
        .create(json!({ "url": receiver.url("/status/500"), "max_attempts": 2 }))
        .await;
    fixtures.push((failed.clone(), "failed"));
    let scheduled = app
        .create(json!({
            "url": receiver.url("/ok/later"),
            "deliver_at": in_an_hour,
            "metadata": { "kind": "scheduled" },
            "body": "plain text",
            "content_type": "text/plain",
        }))
        .await;
    fixtures.push((scheduled.clone(), "scheduled"));
    let cancelled = app
        .create(json!({ "url": receiver.url("/ok/never"), "deliver_at": in_an_hour }))
        .await;
    let r = app
        .post(&format!("/v1/callbacks/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    fixtures.push((cancelled, "cancelled"));

    let r = app
        .post("/v1/keys", &json!({ "name": "acme-key", "tenant": "acme" }))
        .await;
    assert_eq!(r.status(), 201);
    let tenant_key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post_as(
            &tenant_key,
            "/v1/callbacks",
            &json!({ "url": receiver.url("/ok/acme"), "deliver_at": in_an_hour }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let acme_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fixtures.push((acme_id.clone(), "scheduled"));

    let mut before = Vec::new();
    for (id, status) in &fixtures {
        let v = app.wait_status(id, status, Duration::from_secs(20)).await;
        before.push(v);
    }
    let flaky_view = &before[3];
    assert_eq!(flaky_view["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(before[4]["attempts"].as_array().unwrap().len(), 2);
    let secret = app.signing_secret().await;

    // Writes keep coming while the backup runs: the copy must be one consistent moment.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (http, url, key, target, writing) = (
            app.http.clone(),
            app.url("/v1/callbacks"),
            app.key.clone(),
            receiver.url("/ok/load"),
            writing.clone(),
        );
        let at = in_an_hour.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            while writing.load(Ordering::SeqCst) {
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({ "url": target, "deliver_at": at }))
                    .send()
                    .await
                    .expect("create during backup");
                assert_eq!(r.status(), 202);
                let id = r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                acked.push((id, Instant::now()));
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("fluxcb-backup.db");
    let backup_started = Instant::now();
    let output = run_backup(app.data_dir.path(), &out, work.path()).await;
    let backup_took = backup_started.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    writing.store(false, Ordering::SeqCst);
    let concurrent = writer.await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "backup failed: {stderr}");
    assert!(stderr.contains("Backed up"), "{stderr}");
    assert!(out.metadata().unwrap().len() > 0);

    let after_backup = app
        .create(json!({ "url": receiver.url("/ok/after"), "deliver_at": in_an_hour }))
        .await;
    let old_key = app.key.clone();
    app.stop().await;

    // The documented restore: the single file, renamed, in an empty data directory. No WAL
    // or other side file comes along.
    let restored_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&out, restored_dir.path().join(fluxcb_store_sqlite::DB_FILE)).unwrap();
    let restored = serve_restored(restored_dir, old_key.clone()).await;

    let r = restored.get_as("fcb_not-a-real-key", "/v1/callbacks").await;
    assert_eq!(r.status(), 401);
    for (view, (id, status)) in before.iter().zip(&fixtures) {
        let now = restored.get_json(&format!("/v1/callbacks/{id}")).await;
        assert_eq!(now["status"], *status, "{id}");
        assert_eq!(
            now, *view,
            "{id} came back different from what was backed up"
        );
    }
    let r = restored.get(&format!("/v1/callbacks/{after_backup}")).await;
    assert_eq!(
        r.status(),
        404,
        "a callback created after the backup is in it"
    );
    assert_eq!(restored.signing_secret().await, secret);

    // The tenant key works too, and still sees only its own tenant.
    let acme_sees = all_ids(&restored.http, &restored.url(""), &tenant_key).await;
    assert_eq!(acme_sees, HashSet::from([acme_id]));

    let restored_ids = all_ids(&restored.http, &restored.url(""), &old_key).await;
    let concurrent_ids: HashSet<String> = concurrent.iter().map(|(id, _)| id.clone()).collect();
    let must_have: Vec<_> = concurrent
        .iter()
        .filter(|(_, at)| *at < backup_started)
        .map(|(id, _)| id)
        .collect();
    assert!(!must_have.is_empty(), "no write landed before the backup");
    for id in &must_have {
        assert!(
            restored_ids.contains(*id),
            "{id} was acknowledged before the backup began"
        );
    }
    let known: HashSet<&String> = fixtures
        .iter()
        .map(|(id, _)| id)
        .chain(concurrent_ids.iter())
        .collect();
    for id in &restored_ids {
        assert!(known.contains(id), "{id} restored but never created");
    }
    let concurrent_restored = restored_ids.intersection(&concurrent_ids).count();

    // Nothing that was finished is sent again by the restored server.
    let requests_before = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), requests_before);
    eprintln!(
        "backup: {} fixtures and {concurrent_restored} of {} concurrent writes restored; backup \
         took {:.2}s; test {:.1}s",
        fixtures.len(),
        concurrent.len(),
        backup_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    restored.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_never_overwrites_and_needs_a_store() {
    let app = spawn_app().await;
    app.create(json!({ "url": "http://127.0.0.1:9/never", "deliver_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339() }))
        .await;
    let work = tempfile::tempdir().unwrap();

    let existing = work.path().join("existing.db");
    std::fs::write(&existing, b"precious").unwrap();
    let output = run_backup(app.data_dir.path(), &existing, work.path()).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "overwrote an existing file");
    assert!(
        stderr.contains("already exists") && stderr.contains("existing.db"),
        "unclear message: {stderr}"
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");

    let empty = tempfile::tempdir().unwrap();
    let out = work.path().join("from-nothing.db");
    let output = run_backup(empty.path(), &out, work.path()).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "backed up a store that does not exist"
    );
    assert!(stderr.contains("no store"), "unclear message: {stderr}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        0,
        "a failed backup created files in the data directory"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_into_a_crashed_servers_data_dir_gives_exactly_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let http = reqwest::Client::new();
    let in_an_hour = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let create = |base: String| {
        let (http, at) = (http.clone(), in_an_hour.clone());
        async move {
            let r = http
                .post(format!("{base}/v1/callbacks"))
                .bearer_auth(PROCESS_API_KEY)
                .json(&json!({ "url": "http://127.0.0.1:9/never", "deliver_at": at }))
                .send()
                .await
                .expect("create");
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };

    let server = ServeProcess::start(&data, &log, None, &[]).await;
    let mut kept = HashSet::new();
    for _ in 0..3 {
        kept.insert(create(server.url("")).await);
    }
    let out = tmp.path().join("backup.db");
    let output = run_backup(&data, &out, tmp.path()).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut later = HashSet::new();
    for _ in 0..5 {
        later.insert(create(server.url("")).await);
    }
    server.sigkill();
    let db = data.join(fluxcb_store_sqlite::DB_FILE);
    let side_files = ["-wal", "-shm"]
        .map(|suffix| data.join(format!("{}{suffix}", fluxcb_store_sqlite::DB_FILE)));
    let stale_wal = side_files[0].exists();

    // The README's restore, into the directory the crashed server used: the crash left a WAL
    // holding the writes made after the backup, which would be replayed over the copy if it
    // stayed (the lib.rs doc of `backup` omits this step).
    for f in &side_files {
        if f.exists() {
            std::fs::remove_file(f).unwrap();
        }
    }
    std::fs::copy(&out, &db).unwrap();
    let server = ServeProcess::start(&data, &log, None, &[]).await;
    let restored = all_ids(&http, &server.url(""), PROCESS_API_KEY).await;
    let resurrected = restored.intersection(&later).count();
    assert_eq!(
        restored, kept,
        "the restored server does not hold the backup: {resurrected} callbacks created after \
         the backup are back"
    );
    eprintln!("restore over a crashed data dir: a stale WAL was present and removed: {stale_wal}");
    server.sigterm();
}
