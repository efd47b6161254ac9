//! `LegacyDb` against real PostgreSQL, on a schema made by the legacy project's own Django
//! migrations. Each test has its own database (see `support`); they skip loudly without
//! PostgreSQL or the venv, and fail under `CI=true`.
mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use fluxcb_core::ports::{LegacyTable, StoreError};
use fluxcb_migrate::{LegacyDb, LegacyDbError};
use serde_json::{json, Value};
use support::LegacyDatabase;
use tokio_postgres::NoTls;

/// A plain client for the test's own SQL (inserts, terminating backends).
async fn sql_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

const STATUSES: [&str; 5] = ["pending", "sending", "succeeded", "failed", "cancelled"];

/// Rows `from..=to`, in the shape the legacy API writes them: row `i` has a SQL NULL payload
/// when `i % 3 == 0`, a JSON `null` when `i % 3 == 1`, an object otherwise; status by `i % 5`.
async fn insert_rows(client: &tokio_postgres::Client, from: i64, to: i64) {
    client
        .execute(
            "INSERT INTO callme_callback (id, url, method, headers, payload, external_id, \
                 callback_time, status, attempts, max_attempts, last_response_code, last_error, \
                 sent_at, created_at, updated_at) \
             SELECT i, 'https://example.com/hook/' || i, 'POST', \
                 jsonb_build_object('X-Row', 'r' || i), \
                 CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN 'null'::jsonb \
                     ELSE jsonb_build_object('n', i, 'name', 'Zoë ' || i) END, \
                 CASE WHEN i % 2 = 0 THEN 'ext-' || i END, \
                 now() + i * interval '1 second', \
                 (ARRAY['pending','sending','succeeded','failed','cancelled'])[i % 5 + 1], \
                 i % 4, 5, CASE WHEN i % 5 = 3 THEN 500 END, \
                 CASE WHEN i % 5 = 3 THEN 'HTTP 500' ELSE '' END, \
                 CASE WHEN i % 5 = 2 THEN now() END, now(), now() \
             FROM generate_series($1::bigint, $2::bigint) AS i",
            &[&from, &to],
        )
        .await
        .expect("insert rows");
}

#[tokio::test]
async fn max_id_and_the_sequence_only_move_forward() {
    let Some(db) = LegacyDatabase::create_migrated("max_id_and_the_sequence") else {
        return;
    };
    let legacy = LegacyDb::connect(db.url()).await.unwrap();
    assert_eq!(legacy.max_id().await.unwrap(), 0);

    // An unused sequence: nothing to do for 0, and the first id is still 1.
    legacy.advance_sequence_past(0).await.unwrap();
    assert_eq!(legacy.next_ids(1).await.unwrap(), vec![1]);

    legacy.advance_sequence_past(100).await.unwrap();
    assert_eq!(legacy.next_ids(2).await.unwrap(), vec![101, 102]);
    // Never backwards.
    legacy.advance_sequence_past(50).await.unwrap();
    legacy.advance_sequence_past(102).await.unwrap();
    assert_eq!(legacy.next_ids(1).await.unwrap(), vec![103]);

    // Rows inserted with explicit ids (an import, say) leave the sequence behind them.
    let client = sql_client(db.url()).await;
    insert_rows(&client, 1000, 1002).await;
    assert_eq!(legacy.max_id().await.unwrap(), 1002);
    legacy
        .advance_sequence_past(legacy.max_id().await.unwrap())
        .await
        .unwrap();
    // The legacy API's own insert (the column default) lands past them too.
    let id: i64 = client
        .query_one(
            "INSERT INTO callme_callback (url, method, headers, payload, callback_time, status, \
                 attempts, max_attempts, last_error, created_at, updated_at) \
             VALUES ('https://example.com/', 'POST', '{}', NULL, now(), 'pending', 0, 5, '', \
                 now(), now()) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 1003);
    assert_eq!(legacy.max_id().await.unwrap(), 1003);
}

#[tokio::test]
async fn rows_after_pages_through_the_table_in_id_order() {
    let Some(db) = LegacyDatabase::create_migrated("rows_after_pages") else {
        return;
    };
    let client = sql_client(db.url()).await;
    insert_rows(&client, 1, 2_500).await;
    let legacy = LegacyDb::connect(db.url()).await.unwrap();

    let mut after = 0;
    let mut batches = Vec::new();
    let mut seen = 0i64;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let rows = legacy.rows_after(after, 1_000).await.unwrap();
        if rows.is_empty() {
            break;
        }
        batches.push(rows.len());
        for row in &rows {
            seen += 1;
            assert_eq!(row.id, seen, "ascending, none skipped or repeated");
            let i = row.id;
            match i % 3 {
                0 => assert_eq!(row.payload, None, "SQL NULL, row {i}"),
                1 => assert_eq!(row.payload, Some(Value::Null), "JSON null, row {i}"),
                _ => assert_eq!(
                    row.payload,
                    Some(json!({"n": i, "name": format!("Zoë {i}")})),
                    "row {i}"
                ),
            }
            assert_eq!(row.headers, json!({"X-Row": format!("r{i}")}));
            assert_eq!(row.status, STATUSES[(i % 5) as usize]);
            assert_eq!(
                row.external_id,
                (i % 2 == 0).then(|| format!("ext-{i}")),
                "row {i}"
            );
            assert_eq!(row.attempts, (i % 4) as i32);
            assert_eq!(row.max_attempts, 5);
            assert_eq!(row.url, format!("https://example.com/hook/{i}"));
            assert_eq!(row.method, "POST");
            assert_eq!(row.last_response_code, (i % 5 == 3).then_some(500));
            assert_eq!(row.sent_at.is_some(), i % 5 == 2);
            *statuses.entry(row.status.clone()).or_default() += 1;
        }
        after = rows.last().unwrap().id;
    }
    assert_eq!(batches, vec![1_000, 1_000, 500]);
    assert_eq!(legacy.count_by_status().await.unwrap(), statuses);
    assert_eq!(statuses.values().sum::<u64>(), 2_500);

    let one = legacy.row(1_234).await.unwrap().unwrap();
    assert_eq!(legacy.rows_after(1_233, 1).await.unwrap(), vec![one]);
    assert_eq!(legacy.row(2_501).await.unwrap(), None);
}

/// Numbers come back as the legacy sender's Python reads them from jsonb.
#[tokio::test]
async fn jsonb_numbers_read_as_python_reads_them() {
    let Some(db) = LegacyDatabase::create_migrated("jsonb_numbers") else {
        return;
    };
    let client = sql_client(db.url()).await;
    let payload = r#"{"f": [14.400704887186233, 0.1, 1.5, 1e16, 1.5e16, 1e-7, 123456.789, 1e300],
        "i": [0, -1, 9223372036854775807, -9223372036854775808, 18446744073709551615],
        "big": 123456789012345678901234567890, "s": "\u00e9\ud83d\ude00\n"}"#;
    insert_rows(&client, 1, 1).await;
    client
        .execute(
            "UPDATE callme_callback SET payload = $1::text::jsonb WHERE id = 1",
            &[&payload],
        )
        .await
        .unwrap();
    let legacy = LegacyDb::connect(db.url()).await.unwrap();
    let got = legacy.row(1).await.unwrap().unwrap().payload.unwrap();
    let f: Vec<f64> = got["f"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want: [f64; 8] = [
        14.400704887186233,
        0.1,
        1.5,
        1e16,
        1.5e16,
        1e-7,
        123456.789,
        1e300,
    ];
    for (got, want) in f.iter().zip(want) {
        assert_eq!(got.to_bits(), want.to_bits(), "{got} vs {want}");
    }
    // jsonb stores 1e16 without exponent, so it reads back as an integer, as in Python.
    assert_eq!(got["f"][3], json!(10_000_000_000_000_000u64));
    assert_eq!(
        got["i"],
        json!([0, -1, i64::MAX, i64::MIN, u64::MAX]),
        "64-bit integers are exact"
    );
    // The lossy case: Python keeps this integer exact, serde_json cannot.
    assert!(got["big"].is_f64());
    assert_eq!(got["big"].as_f64(), Some(1.2345678901234568e29));
    assert_eq!(got["s"], json!("é😀\n"));

    // An integer beyond f64's range names its row instead of failing the whole batch silently.
    client
        .execute(
            "UPDATE callme_callback SET payload = ('[1' || repeat('0', 400) || ']')::jsonb \
             WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    match legacy.rows_after(0, 10).await {
        Err(LegacyDbError::Decode { id: 1, column, .. }) => assert_eq!(column, "payload"),
        other => panic!("expected a decode error for row 1, got {other:?}"),
    }
}

#[tokio::test]
async fn next_ids_are_unique_and_increasing_under_concurrent_callers() {
    let Some(db) = LegacyDatabase::create_migrated("next_ids_concurrent") else {
        return;
    };
    let shared = LegacyDb::connect(db.url()).await.unwrap();
    let mut tasks = Vec::new();
    for caller in 0..8 {
        // Half share one connection (pipelined), half have their own.
        let legacy = if caller % 2 == 0 {
            shared.clone()
        } else {
            LegacyDb::connect(db.url()).await.unwrap()
        };
        tasks.push(tokio::spawn(async move {
            let mut mine: Vec<i64> = Vec::new();
            for round in 0..25u32 {
                let ids = legacy.next_ids(1 + round % 7).await.unwrap();
                assert_eq!(ids.len() as u32, 1 + round % 7);
                mine.extend(ids);
            }
            mine
        }));
    }
    let mut all = HashSet::new();
    let mut total = 0;
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "each caller's ids increase: {mine:?}"
        );
        total += mine.len();
        all.extend(mine);
    }
    assert_eq!(all.len(), total, "no id handed out twice");
    assert!(all.iter().all(|&id| id >= 1));
    assert!(shared.next_ids(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn external_id_exists_sees_legacy_rows() {
    let Some(db) = LegacyDatabase::create_migrated("external_id_exists") else {
        return;
    };
    let client = sql_client(db.url()).await;
    insert_rows(&client, 1, 4).await; // ext-2, ext-4; rows 1 and 3 have none
    client
        .execute(
            "UPDATE callme_callback SET external_id = 'order ''42'' ü' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    let legacy = LegacyDb::connect(db.url()).await.unwrap();
    assert!(legacy.external_id_exists("ext-2").await.unwrap());
    assert!(legacy.external_id_exists("order '42' ü").await.unwrap());
    assert!(!legacy.external_id_exists("ext-3").await.unwrap());
    assert!(!legacy.external_id_exists("").await.unwrap());
    assert!(!legacy.external_id_exists("EXT-2").await.unwrap());
}

#[tokio::test]
async fn tokens_come_with_their_users() {
    let Some(db) = LegacyDatabase::create_migrated("tokens") else {
        return;
    };
    let legacy = LegacyDb::connect(db.url()).await.unwrap();
    assert!(legacy.tokens().await.unwrap().is_empty());
    let before = chrono::Utc::now();
    db.manage(&["create_api_token", "ops", "--key", "k1"]);
    db.manage(&["create_api_token", "billing", "--key", "k2"]);
    let tokens = legacy.tokens().await.unwrap();
    let pairs: Vec<(&str, &str)> = tokens
        .iter()
        .map(|t| (t.key.as_str(), t.user.as_str()))
        .collect();
    assert_eq!(pairs, vec![("k1", "ops"), ("k2", "billing")]);
    let slack = chrono::Duration::seconds(5);
    assert!(tokens
        .iter()
        .all(|t| t.created >= before - slack && t.created <= chrono::Utc::now() + slack));
}

/// The runbook restarts the legacy database; fluxcb must not need a restart too.
#[tokio::test]
async fn reconnects_after_its_backend_is_terminated() {
    let Some(db) = LegacyDatabase::create_migrated("reconnects") else {
        return;
    };
    let admin = sql_client(support::ADMIN_URL).await;
    let terminate = || async {
        admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'fluxcb-migrate'",
                &[&db.name()],
            )
            .await
            .unwrap()
            .len()
    };
    let legacy = LegacyDb::connect(db.url()).await.unwrap();
    assert_eq!(legacy.next_ids(1).await.unwrap(), vec![1]);

    // Straight away: the query may go out before the client has noticed.
    assert_eq!(terminate().await, 1);
    assert_eq!(legacy.next_ids(1).await.unwrap().len(), 1);
    assert_eq!(legacy.max_id().await.unwrap(), 0);

    // After the connection task has seen the end: the client reconnects before querying.
    assert_eq!(terminate().await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!legacy.external_id_exists("x").await.unwrap());
    let ids = legacy.next_ids(3).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] > 2, "nextval kept counting across sessions: {ids:?}");

    // Concurrent callers after a termination all succeed on one new connection.
    assert_eq!(terminate().await, 1);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let legacy = legacy.clone();
            tokio::spawn(async move { legacy.next_ids(2).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().len(), 2);
    }
    assert_eq!(terminate().await, 1, "one connection, not one per caller");

    // A database that is gone for good: the store port reports it unavailable.
    let name = db.name().to_owned();
    drop(db);
    match legacy.next_ids(1).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("legacy database"), "{message}");
            assert!(message.contains(&name), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn connection_errors_name_the_database_but_not_the_password() {
    // Port 1 refuses at once; needs no PostgreSQL.
    let err = LegacyDb::connect("postgres://ops:hunter2@127.0.0.1:1/legacy")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("ops@127.0.0.1:1/legacy"),
        "names the target: {message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"));
    assert!(matches!(StoreError::from(err), StoreError::Unavailable(_)));

    let err = LegacyDb::connect("postgres://ops@127.0.0.1:1/legacy?sslmode=require")
        .await
        .unwrap_err();
    assert!(matches!(err, LegacyDbError::TlsUnsupported), "{err}");
    let err = LegacyDb::connect("postgres://ops:hunter2@127.0.0.1:notaport/legacy")
        .await
        .unwrap_err();
    assert!(matches!(err, LegacyDbError::Url(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    if support::postgres_listening() {
        let err = LegacyDb::connect("postgres://postgres@127.0.0.1:5432/fluxcb_no_such_db")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/fluxcb_no_such_db"), "{message}");
        assert!(message.contains("does not exist"), "{message}");
    }
}
