//! `fluxcb migrate compare` against a real legacy table on PostgreSQL (the legacy project's own
//! schema): a table imported as mirrors compares clean, with and without the signing secret,
//! and after a take-over; then each kind of difference made by editing the legacy table behind
//! fluxcb's back is caught in its category, and the exit code follows the threshold.
//!
//! Receivers are loopback addresses or names under `.invalid`, which never resolve: nothing
//! here reaches beyond the machine.
mod common;
#[path = "../../migrate/tests/support/mod.rs"]
mod support;

use std::process::Output;

use common::fluxcb_command;
use serde_json::{json, Value};
use support::LegacyDatabase;

const ROWS: i64 = 300;
const SECRET: &str = "legacy-secret";

fn run(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = fluxcb_command(data_dir);
    cmd.args(["migrate"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fluxcb")
}

fn import(db: &LegacyDatabase, data_dir: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["import", "--legacy-db", db.url(), "--output", "json"];
    args.extend_from_slice(extra);
    let out = run(data_dir, &args, &[]);
    assert!(
        out.status.success(),
        "import failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `compare --output json`; the report and the whole output.
fn compare(
    db: &LegacyDatabase,
    data_dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Output, Value) {
    let mut args = vec!["compare", "--legacy-db", db.url(), "--output", "json"];
    args.extend_from_slice(extra);
    let out = run(data_dir, &args, env);
    let report = common::legacy_table::json_report(&out);
    (out, report)
}

async fn sql(db: &LegacyDatabase, statements: &str) {
    common::legacy_table::sql(db.url(), statements).await
}

/// `ROWS` rows in every legacy state, `host(i)` deciding each row's receiver; payloads with
/// non-ASCII text, fractions, nesting, SQL NULL and JSON null; every method; some rows whose
/// last answer was a redirect.
async fn fill(db: &LegacyDatabase, host: &str) {
    sql(
        db,
        &format!(
            "INSERT INTO callme_callback (url, method, headers, payload, external_id, callback_time, \
             status, attempts, max_attempts, last_response_code, last_error, sent_at, created_at, updated_at) \
             SELECT {host} || '/cb/' || i || '?q=' || i, \
               (ARRAY['POST','PUT','PATCH'])[i % 3 + 1], \
               jsonb_build_object('X-Row', 'yes', 'X-Trace', 't' || i), \
               CASE WHEN i % 7 = 0 THEN NULL WHEN i % 11 = 0 THEN 'null'::jsonb \
                 ELSE jsonb_build_object('row', i, 'name', 'Zoë 😀', 'amount', i * 1.5, \
                   'nested', jsonb_build_object('b', true, 'a', NULL, 'list', jsonb_build_array(1, 2.25, 'x'))) END, \
               CASE WHEN i % 2 = 0 THEN 'ext-' || i END, \
               CASE WHEN i % 10 = 5 THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END, \
               (ARRAY['pending','sending','succeeded','failed','cancelled'])[i % 5 + 1], \
               CASE WHEN i % 5 IN (2, 3) THEN 1 ELSE 0 END, 1 + i % 9, \
               CASE WHEN i % 10 = 3 THEN 302 WHEN i % 5 = 3 THEN 500 WHEN i % 5 = 2 THEN 200 END, \
               CASE WHEN i % 5 = 3 THEN 'HTTP 500' ELSE '' END, \
               CASE WHEN i % 5 = 2 THEN now() - interval '1 minute' + (i % 50) * interval '20 ms' END, \
               now() - interval '2 hours', now() - interval '1 hour' \
             FROM generate_series(1, {ROWS}) AS i;"
        ),
    )
    .await;
}

fn n(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_table_compares_clean() {
    let Some(db) = LegacyDatabase::create_migrated("the clean compare test") else {
        return;
    };
    // Loopback by address and by name (allow-listed below), and a name that never resolves.
    fill(
        &db,
        "(ARRAY['http://127.0.0.1:9', 'http://localhost:9', 'https://Hooks.Receiver.invalid'])[i % 3 + 1]",
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    import(&db, data.path(), &[]);
    let allow = ("FLUXCB_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8,::1/128");

    // The secret from the configuration: signatures compared too.
    let (out, report) = compare(
        &db,
        data.path(),
        &[],
        &[allow, ("FLUXCB_LEGACY_SIGNING_SECRET", SECRET)],
    );
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(n(&report, "/differences"), 0, "{report:#}");
    assert_eq!(n(&report, "/threshold"), 0);
    assert_eq!(n(&report, "/legacy_rows"), ROWS as u64);
    assert_eq!(n(&report, "/fluxcb_callbacks"), ROWS as u64);
    assert_eq!(n(&report, "/fluxcb_mirrors"), ROWS as u64);
    assert_eq!(n(&report, "/matched"), ROWS as u64);
    for category in [
        "/missing/count",
        "/extra/count",
        "/field_mismatches/count",
        "/request_differences/count",
        "/stale_mirrors",
    ] {
        assert_eq!(n(&report, category), 0, "{category}");
    }
    assert_eq!(report["request_differences"]["signatures_compared"], true);
    assert_eq!(report["receivers"]["blocked"], json!([]));
    assert_eq!(n(&report, "/receivers/hosts_checked"), 3);
    let unresolvable = report["receivers"]["unresolvable"].as_array().unwrap();
    assert_eq!(unresolvable.len(), 1, "{unresolvable:?}");
    assert_eq!(unresolvable[0]["host"], "hooks.receiver.invalid");
    assert_eq!(
        n(&report, "/schedule/legacy_send_delay/rows"),
        ROWS as u64 / 5
    );
    assert!(n(&report, "/schedule/legacy_send_delay/max_ms") <= 1_000);
    assert_eq!(n(&report, "/schedule/deliver_at_drift/rows_differing"), 0);
    assert_eq!(
        n(&report, "/schedule/deliver_at_drift/rows_compared"),
        ROWS as u64 * 3 / 5
    );
    assert_eq!(
        n(&report, "/outcomes/legacy/counts/failed"),
        ROWS as u64 / 5
    );
    assert_eq!(report["notes"], json!([]));

    // Without a secret: still clean, and the report says what was not compared.
    let (out, report) = compare(&db, data.path(), &[], &[allow]);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["request_differences"]["signatures_compared"], false);
    assert!(report["notes"][0]
        .as_str()
        .unwrap()
        .contains("signature values were not"));

    // Taken over: fluxcb's own now, not stale; the rows whose last answer was a redirect name
    // their hosts; the outcome table counts fluxcb's side.
    import(&db, data.path(), &["--take-ownership"]);
    let (out, report) = compare(&db, data.path(), &["--legacy-secret", SECRET], &[allow]);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(n(&report, "/differences"), 0, "{report:#}");
    assert_eq!(n(&report, "/owned_here"), ROWS as u64);
    assert_eq!(n(&report, "/fluxcb_owned"), ROWS as u64);
    assert_eq!(
        n(&report, "/outcomes/fluxcb/counts/succeeded"),
        ROWS as u64 / 5
    );
    let redirecting = report["receivers"]["redirecting"].as_array().unwrap();
    let hosts: Vec<&str> = redirecting
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    // i % 10 == 3 → i % 3 is 0, 1 or 2 in turn: every host.
    assert_eq!(hosts, ["127.0.0.1", "hooks.receiver.invalid", "localhost"]);
    assert_eq!(redirecting[0]["status_codes"], json!([302]));
    assert!(redirecting[0]["note"]
        .as_str()
        .unwrap()
        .contains("does not follow"));

    // The human summary.
    let out = run(
        data.path(),
        &[
            "compare",
            "--legacy-db",
            db.url(),
            "--legacy-secret",
            SECRET,
        ],
        &[allow],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(": passed") && text.contains("differences 0 (threshold 0): none"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_difference_is_caught_in_its_category() {
    let Some(db) = LegacyDatabase::create_migrated("the compare differences test") else {
        return;
    };
    fill(&db, "'https://r' || (i % 4) || '.receiver.invalid'").await;
    // A receiver on loopback, with no allow-list configured; and an FTP one.
    sql(
        &db,
        "INSERT INTO callme_callback (url, method, headers, payload, callback_time, status, \
           attempts, max_attempts, last_error, created_at, updated_at) VALUES
           ('http://127.0.0.1:9/x', 'POST', '{}', '{\"a\": 1}', now(), 'pending', 0, 5, '', now(), now()),
           ('ftp://files.receiver.invalid/drop', 'POST', '{}', NULL, now(), 'pending', 0, 5, '', now(), now());",
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    import(&db, data.path(), &[]);
    let secret = ["--legacy-secret", SECRET];
    let (out, clean) = compare(&db, data.path(), &secret, &[]);
    assert_eq!(
        (n(&clean, "/differences"), out.status.success()),
        (1, false),
        "only the loopback receiver: {clean:#}"
    );

    // Behind fluxcb's back: a row deleted, one added, three edited, one sent by legacy, and
    // one given a number no f64 holds (it cannot be read, so it cannot be checked).
    // Row 50 is pending with no attempt (50 % 5 == 0).
    sql(
        &db,
        "DELETE FROM callme_callback WHERE id = 10;
         INSERT INTO callme_callback (url, method, headers, payload, callback_time, status, \
           attempts, max_attempts, last_error, created_at, updated_at) VALUES \
           ('https://new.receiver.invalid/n', 'POST', '{}', NULL, now(), 'pending', 0, 5, '', now(), now());
         UPDATE callme_callback SET url = 'https://moved.receiver.invalid/m' WHERE id = 20;
         UPDATE callme_callback SET payload = '{\"changed\": true}' WHERE id = 30;
         UPDATE callme_callback SET headers = '{\"X-Row\": \"edited\"}' WHERE id = 40;
         UPDATE callme_callback SET status = 'succeeded', attempts = 1, sent_at = now(), \
           last_response_code = 200 WHERE id = 50;
         UPDATE callme_callback SET payload = ('{\"n\": 1' || repeat('0', 400) || '}')::jsonb \
           WHERE id = 25;",
    )
    .await;
    let (out, report) = compare(&db, data.path(), &secret, &[]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "threshold 0 exceeded: a failed check: {report:#}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("10 difference(s)") && stderr.contains("threshold of 0"),
        "{stderr}"
    );
    assert_eq!(report["passed"], false);

    assert_eq!(n(&report, "/missing/count"), 1);
    assert_eq!(n(&report, "/missing/sample/0/legacy_id"), ROWS as u64 + 3);
    assert!(report["missing"]["sample"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("not imported yet"));
    assert_eq!(n(&report, "/unreadable/count"), 1);
    assert_eq!(n(&report, "/unreadable/sample/0/legacy_id"), 25);
    assert_eq!(
        n(&report, "/matched"),
        ROWS as u64 + 2 - 2,
        "all but 10 and 25"
    );
    assert_eq!(n(&report, "/extra/count"), 1);
    assert_eq!(n(&report, "/extra/sample/0/legacy_id"), 10);

    assert_eq!(n(&report, "/field_mismatches/count"), 3);
    assert_eq!(
        report["field_mismatches"]["by_field"],
        json!({"headers": 1, "payload": 1, "url": 1})
    );
    let fields: Vec<(u64, &str)> = report["field_mismatches"]["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["legacy_id"].as_u64().unwrap(),
                s["fields"][0]["field"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(fields, [(20, "url"), (30, "payload"), (40, "headers")]);
    assert_eq!(
        report["field_mismatches"]["sample"][1]["fields"][0]["legacy"],
        json!({"changed": true})
    );

    assert_eq!(n(&report, "/request_differences/count"), 3);
    assert_eq!(
        report["request_differences"]["by_aspect"],
        json!({"body": 1, "headers": 1, "signature": 1, "url": 1})
    );
    let detail = |i: usize| {
        report["request_differences"]["sample"][i]["differences"][0]["detail"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        detail(0).contains("moved.receiver.invalid"),
        "{}",
        detail(0)
    );
    assert!(
        detail(2).contains("x-row: legacy \"edited\", fluxcb \"yes\""),
        "{}",
        detail(2)
    );

    let blocked = report["receivers"]["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0]["host"], "127.0.0.1");
    assert_eq!(blocked[0]["addresses"][0]["reason"], "loopback");
    assert!(blocked[0]["hint"]
        .as_str()
        .unwrap()
        .contains("FLUXCB_ALLOW_PRIVATE_TARGETS"));
    assert_eq!(
        report["receivers"]["unsupported_scheme"][0]["scheme"],
        "ftp"
    );

    // Informational, not differences.
    assert_eq!(n(&report, "/stale_mirrors"), 1);
    assert_eq!(n(&report, "/differences"), 1 + 1 + 3 + 3 + 1 + 1);

    // A threshold that allows them: exit code zero, the same findings.
    let (out, lenient) = compare(
        &db,
        data.path(),
        &["--threshold", "100", "--legacy-secret", SECRET],
        &[],
    );
    assert!(out.status.success(), "{lenient:#}");
    assert_eq!(
        (lenient["passed"].as_bool(), n(&lenient, "/differences")),
        (Some(true), 10)
    );

    // The human summary names the failure and the blocked receiver.
    let out = run(
        data.path(),
        &[
            "compare",
            "--legacy-db",
            db.url(),
            "--legacy-secret",
            SECRET,
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "a failed check: {text}");
    assert!(
        text.contains("FAILED")
            && text.contains("127.0.0.1 (1 rows")
            && text.contains("allow-list it")
            && text.contains("#30 payload"),
        "{text}"
    );
}
