//! `fluxcb migrate import` against a real legacy table on PostgreSQL (the legacy project's own
//! schema): a few thousand rows in every state plus rows fluxcb cannot represent, imported as
//! mirrors, re-imported (idempotent), refreshed, then taken over; afterwards the server serves
//! them through the legacy API with the imported token and delivers what was unfinished.
mod common;
#[path = "../../migrate/tests/support/mod.rs"]
mod support;

use std::process::Output;
use std::time::Duration;

use common::{fluxcb_command, spawn_app_with, TestReceiver};
use serde_json::Value;
use support::LegacyDatabase;

const ROWS: i64 = 3_000;
const TOKEN: &str = "tok-import-123";

fn import(db: &LegacyDatabase, data_dir: &std::path::Path, extra: &[&str]) -> (Output, Value) {
    let out = fluxcb_command(data_dir)
        .args([
            "migrate",
            "import",
            "--legacy-db",
            db.url(),
            "--output",
            "json",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("run fluxcb");
    let report = common::legacy_table::json_report(&out);
    (out, report)
}

async fn sql(db: &LegacyDatabase, statements: &str) {
    common::legacy_table::sql(db.url(), statements).await
}

/// Rows in every legacy state, id % 5 deciding which; every other one with an external_id;
/// pending ones due now or in an hour. Then three rows fluxcb cannot represent.
async fn fill(db: &LegacyDatabase, receiver: &str) {
    sql(
        db,
        &format!(
            "INSERT INTO callme_callback (url, method, headers, payload, external_id, callback_time, \
             status, attempts, max_attempts, last_response_code, last_error, sent_at, created_at, updated_at) \
             SELECT '{receiver}/ok/r' || i, 'POST', '{{\"X-Row\": \"yes\"}}'::jsonb, \
               jsonb_build_object('row', i, 'name', 'Zoë'), \
               CASE WHEN i % 2 = 0 THEN 'ext-' || i END, \
               CASE WHEN i % 10 = 5 THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END, \
               (ARRAY['pending','sending','succeeded','failed','cancelled'])[i % 5 + 1], \
               CASE WHEN i % 5 IN (2, 3) THEN 1 ELSE 0 END, 5, \
               CASE WHEN i % 5 = 3 THEN 500 WHEN i % 5 = 2 THEN 200 END, \
               CASE WHEN i % 5 = 3 THEN 'HTTP 500' ELSE '' END, \
               CASE WHEN i % 5 = 2 THEN now() END, now() - interval '2 hours', now() - interval '1 hour' \
             FROM generate_series(1, {ROWS}) AS i;
             INSERT INTO callme_callback (url, method, headers, payload, callback_time, status, \
               attempts, max_attempts, last_error, created_at, updated_at) VALUES
               ('not a url', 'POST', '{{}}', NULL, now(), 'pending', 0, 5, '', now(), now()),
               ('http://example.com/', 'POST', '{{\"a\": 1}}', NULL, now(), 'pending', 0, 5, '', now(), now()),
               ('http://example.com/', 'GET', '{{}}', NULL, now(), 'pending', 0, 5, '', now(), now());"
        ),
    )
    .await;
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_mirrors_then_take_over_and_deliver() {
    let Some(db) = LegacyDatabase::create_migrated("the import test") else {
        return;
    };
    let receiver = TestReceiver::start().await;
    fill(&db, &receiver.url("")).await;
    db.manage(&["create_api_token", "ops", "--key", TOKEN]);
    let data = tempfile::tempdir().unwrap();

    // First import: every representable row as a mirror, the three others reported.
    let (out, first) = import(&db, data.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "skipped rows make the exit code 5 (a failed check)"
    );
    assert_eq!(count(&first, "rows_read"), ROWS as u64 + 3);
    assert_eq!(count(&first, "inserted"), ROWS as u64);
    let skipped = first["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    let reasons: Vec<&str> = skipped.iter().map(|s| s[1].as_str().unwrap()).collect();
    assert!(
        reasons[0].contains("not a URL")
            && reasons[1].contains("headers")
            && reasons[2].contains("method"),
        "{reasons:?}"
    );
    assert_eq!(count(&first, "tokens_imported"), 1);

    // Again: nothing changes.
    let (_, again) = import(&db, data.path(), &[]);
    assert_eq!(
        (
            count(&again, "inserted"),
            count(&again, "unchanged"),
            count(&again, "tokens_existing")
        ),
        (0, ROWS as u64, 1)
    );

    // Legacy worked on some rows meanwhile: their mirrors are refreshed.
    sql(
        &db,
        "UPDATE callme_callback SET status = 'succeeded', attempts = 1, last_response_code = 200, \
              updated_at = now() WHERE id <= 100 AND status = 'pending'",
    )
    .await;
    let (_, refreshed) = import(&db, data.path(), &[]);
    assert_eq!(count(&refreshed, "updated"), 20);

    // A dry run reads everything and writes nothing; --after skips what was done.
    let fresh = tempfile::tempdir().unwrap();
    let (_, dry) = import(&db, fresh.path(), &["--dry-run"]);
    assert_eq!(
        (count(&dry, "rows_read"), count(&dry, "inserted")),
        (ROWS as u64 + 3, 0)
    );
    let (_, resumed) = import(&db, fresh.path(), &["--after", "2000"]);
    assert_eq!(count(&resumed, "inserted"), ROWS as u64 - 2000);

    // The fence: legacy's worker is stopped (it never ran here); fluxcb takes every row over.
    let (_, taken) = import(&db, data.path(), &["--take-ownership"]);
    assert_eq!(count(&taken, "updated"), ROWS as u64);
    let (_, after_take) = import(&db, data.path(), &["--take-ownership"]);
    assert_eq!(count(&after_take, "owned_here"), ROWS as u64);

    // Served: the imported token sees the legacy rows as legacy did, and what was unfinished
    // and due (pending or sending, not the ones an hour ahead) is delivered in the legacy format.
    let path = data.path().to_path_buf();
    let app = spawn_app_with(move |c| {
        c.data_dir = path;
        c.legacy_signing_secret = Some("legacy-secret".into());
    })
    .await;
    let get = |url: String| {
        let http = app.http.clone();
        async move {
            http.get(url)
                .header("authorization", format!("Token {TOKEN}"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let all = get(app.url("/api/callbacks/")).await;
    assert_eq!(all["count"], ROWS);
    assert_eq!(all["results"][0]["id"], ROWS);
    let failed = get(app.url("/api/callbacks/?status=failed")).await;
    assert_eq!(failed["count"], ROWS / 5);
    let one = get(app.url("/api/callbacks/8/")).await;
    assert_eq!(
        (one["status"].as_str(), one["last_response_code"].as_u64()),
        (Some("failed"), Some(500))
    );
    let due: usize = (1..=ROWS)
        .filter(|i| i % 5 <= 1 && i % 10 != 5 && !(*i <= 100 && i % 5 == 0))
        .count();
    let mut delivered = Vec::new();
    for _ in 0..300 {
        delivered = receiver
            .received()
            .into_iter()
            .filter_map(|r| r.header("x-flux-callback-id").map(str::to_owned))
            .collect();
        if delivered.len() >= due {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delivered.sort();
    let unique = {
        let mut d = delivered.clone();
        d.dedup();
        d.len()
    };
    assert_eq!(
        (delivered.len(), unique),
        (due, due),
        "each due row delivered once"
    );

    // New rows through the legacy API continue past the legacy table's highest id.
    let created: Value = app
        .http
        .post(app.url("/api/callbacks/"))
        .header("authorization", format!("Token {TOKEN}"))
        .json(&serde_json::json!({"url": receiver.url("/ok/new"), "callback_time": "2099-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["id"], ROWS + 4);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_legacy_database_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let out = fluxcb_command(data.path())
        .args([
            "migrate",
            "import",
            "--legacy-db",
            "postgres://postgres@127.0.0.1:1/nothing",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "unreachable: try again later");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unreachable") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cut_off_midway_stops_clearly_and_resumes() {
    let Some(db) = LegacyDatabase::create_migrated("the interrupted import test") else {
        return;
    };
    let receiver = TestReceiver::start().await;
    fill(&db, &receiver.url("")).await;
    let data = tempfile::tempdir().unwrap();
    // Small batches, so the import is still reading when the table goes away under it.
    let child = fluxcb_command(data.path())
        .args([
            "migrate",
            "import",
            "--legacy-db",
            db.url(),
            "--batch",
            "5",
            "--output",
            "json",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sql(
        &db,
        "ALTER TABLE callme_callback RENAME TO callme_callback_away",
    )
    .await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    sql(
        &db,
        "ALTER TABLE callme_callback_away RENAME TO callme_callback",
    )
    .await;
    assert!(!out.status.success(), "the import was cut off");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let after: i64 = stderr
        .split("--after ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error names where to resume: {stderr}"));
    assert!(
        after > 0 && after < ROWS,
        "stopped midway, after {after}: {stderr}"
    );
    let (_, resumed) = import(&db, data.path(), &["--after", &after.to_string()]);
    assert_eq!(count(&resumed, "inserted"), (ROWS - after) as u64);
    // Nothing was lost or doubled: a full rerun finds every row there.
    let (_, check) = import(&db, data.path(), &[]);
    assert_eq!(
        (count(&check, "inserted"), count(&check, "unchanged")),
        (0, ROWS as u64)
    );
}
