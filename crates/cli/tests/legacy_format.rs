//! The legacy receiver format, proven against the legacy sender's own code: the legacy Django
//! project (`../shared/legacy`) stores rows in a PostgreSQL database of its own, reads them back
//! (so payloads come out of `jsonb`, as in production) and sends them with
//! `callback.sender.send` to a receiver here. `fluxcb_core::legacy` must produce the same body
//! bytes and signature for the same payloads.
//!
//! Needs the CI venv's Python with Django, DRF, psycopg and requests (`.ci/requirements.txt`),
//! PostgreSQL on 127.0.0.1:5432 with trust auth, and the legacy folder (`FLUXCB_LEGACY_DIR`, or
//! `../shared/legacy` next to the repository). Skips with a message when one is missing, except
//! under `CI=true`.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestReceiver;
use fluxcb_core::legacy;
use serde_json::Value;

const SECRET: &str = "legacy-secret-ü";

fn legacy_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var("FLUXCB_LEGACY_DIR").ok().map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/legacy")),
        Some(PathBuf::from("/work/shared/legacy")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("callback/sender.py").is_file())
}

fn python() -> Option<String> {
    let python = std::env::var("FLUXCB_TEST_PYTHON").ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        let p = format!("{home}/.cache/fluxcb/venv/bin/python");
        std::path::Path::new(&p).is_file().then_some(p)
    })?;
    let ok = std::process::Command::new(&python)
        .args(["-c", "import django, rest_framework, psycopg, requests"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {why}");
    }
    // Not eprintln!: the test harness captures that for passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPING the legacy-format vectors: {why} ***\n"
    );
}

/// Payloads that exercise every rendering rule: key order, escapes, numbers.
const PAYLOADS: &[&str] = &[
    r#"{"order": 1042, "status": "paid"}"#,
    r#"{"bb": 1, "a": 2, "ccc": {"z": true, "yy": null}, "ab": [1, "x"], "B": 0}"#,
    r#"{"name": "Zoë Ünal", "city": "東京", "emoji": "😀", "ctl": "a\tb\nc\u0001\u007f", "q": "\"\\/"}"#,
    r#"{"f": [1.0, 0.1, 1.5, 100.0, 1e2, 0.0001, 0.00001, 1.5e-7, 123456.789, 1e15, 1e16, 1.5e16, 1.2345678901234568e17, -2.5, 1e300]}"#,
    r#"{"big": 18446744073709551615, "neg": -9223372036854775808, "zero": 0}"#,
    r#"[1, "two", {"three": 3}]"#,
    r#""just a string""#,
    r#"null"#,
    r#"{}"#,
    r#"{"nested": {"deeper": {"deepest": [[], {}, [null, false]]}}}"#,
];

const SCRIPT: &str = r#"
import json, os, sys
import psycopg
admin = "postgresql://postgres@127.0.0.1:5432/postgres"
db = os.environ["VECTORS_DB"]
with psycopg.connect(admin, autocommit=True) as c:
    c.execute(f'DROP DATABASE IF EXISTS "{db}"')
    c.execute(f'CREATE DATABASE "{db}"')
try:
    os.environ["LEGACY_DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "flux_legacy.settings"
    import django
    django.setup()
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from callme.models import Callback
    from callback import sender
    receiver = os.environ["RECEIVER"]
    for i, text in enumerate(json.loads(sys.stdin.read())):
        row = Callback.objects.create(
            url=f"{receiver}/ok/legacy{i}", payload=json.loads(text), headers={"X-Row": f"r{i}"}
        )
        row = Callback.objects.get(pk=row.pk)  # read back: the payload now comes from jsonb
        sender.send(row)
        print(json.dumps({"i": i, "id": row.pk, "status": row.status}))
finally:
    from django.db import connections
    connections.close_all()
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{db}"')
"#;

#[tokio::test]
async fn fluxcb_renders_and_signs_exactly_as_the_legacy_sender_does() {
    let Some(dir) = legacy_dir() else {
        return skip("the legacy project (../shared/legacy) is not here");
    };
    let Some(python) = python() else {
        return skip("no Python with Django, DRF, psycopg and requests (.ci/requirements.txt)");
    };
    if std::net::TcpStream::connect("127.0.0.1:5432").is_err() {
        return skip("PostgreSQL is not listening on 127.0.0.1:5432");
    }
    let rx = TestReceiver::start().await;
    let home = tempfile::tempdir().unwrap();
    let input = serde_json::to_string(PAYLOADS).unwrap();
    let python_out = tokio::task::spawn_blocking({
        let receiver = rx.url("");
        let dir = dir.clone();
        let home = home.path().to_path_buf();
        move || {
            use std::io::Write;
            let mut child = std::process::Command::new(python)
                .arg("-c")
                .arg(SCRIPT)
                .current_dir(&dir)
                .env("PYTHONPATH", &dir)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("LEGACY_HOME", &home)
                .env("LEGACY_SIGNING_SECRET", SECRET)
                .env(
                    "VECTORS_DB",
                    format!("fluxcb_vectors_{}", std::process::id()),
                )
                .env("RECEIVER", receiver)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start python");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().expect("python ran")
        }
    })
    .await
    .unwrap();
    assert!(
        python_out.status.success(),
        "the legacy sender failed:\n{}",
        String::from_utf8_lossy(&python_out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(python_out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), PAYLOADS.len());
    for row in &rows {
        let i = row["i"].as_u64().unwrap() as usize;
        assert_eq!(row["status"], "succeeded", "{row}");
        let got = rx
            .wait_for(&format!("/ok/legacy{i}"), 1, Duration::from_secs(5))
            .await;
        let req = &got[0];
        let payload: Value = serde_json::from_str(PAYLOADS[i]).unwrap();
        let ours = legacy::render_body(&payload);
        assert_eq!(
            String::from_utf8_lossy(&req.body),
            String::from_utf8_lossy(&ours),
            "body of payload {i}: {}",
            PAYLOADS[i]
        );
        let ts: i64 = req
            .header(legacy::HEADER_TIMESTAMP)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            req.header(legacy::HEADER_SIGNATURE).unwrap(),
            legacy::signature(SECRET.as_bytes(), ts, &ours),
            "signature of payload {i}"
        );
        assert_eq!(
            req.header(legacy::HEADER_ID).unwrap(),
            row["id"].to_string()
        );
        assert_eq!(req.header("x-row"), Some(format!("r{i}").as_str()));
        // And the headers fluxcb would send carry the same values.
        let ours_headers = legacy::headers(
            &[("X-Row".to_owned(), format!("r{i}"))]
                .into_iter()
                .collect(),
            row["id"].as_i64().unwrap(),
            ts,
            &ours,
            SECRET.as_bytes(),
        );
        for (name, value) in ours_headers {
            assert_eq!(req.header(&name), Some(value.as_str()), "{name}");
        }
    }
}

/// `fluxcb_core::legacy::django_url` is tested against answers the legacy serializer gave
/// (`crates/core/src/legacy/django_url_vectors.json`); this asks the real Django and DRF again, so
/// that a change on either side (a bumped pin, an edited vector) shows up here.
#[test]
fn django_url_vectors_are_what_the_legacy_serializer_answers() {
    let Some(dir) = legacy_dir() else {
        return skip("the legacy project (../shared/legacy) is not here");
    };
    let Some(python) = python() else {
        return skip("no Python with Django, DRF, psycopg and requests (.ci/requirements.txt)");
    };
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/django_url_vectors.py");
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(python)
        .arg(&script)
        .env("FLUXCB_LEGACY_DIR", &dir)
        .env("LEGACY_HOME", home.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let checked_in: Vec<Value> = serde_json::from_str(include_str!(
        "../../core/src/legacy/django_url_vectors.json"
    ))
    .unwrap();
    let differing: Vec<String> = fresh
        .iter()
        .zip(&checked_in)
        .filter(|(a, b)| a != b)
        .take(5)
        .map(|(a, b)| format!("legacy now: {a}\nchecked in: {b}"))
        .collect();
    assert!(
        fresh.len() == checked_in.len() && differing.is_empty(),
        "the checked-in vectors are stale ({} now, {} checked in); regenerate them with \
         scripts/django_url_vectors.py, then make django_url.rs pass again:\n{}",
        fresh.len(),
        checked_in.len(),
        differing.join("\n")
    );
}
