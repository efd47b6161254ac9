//! The `fluxcb` binary's output and exit codes, as scripts and people see them: the real binary
//! against a real server on loopback (and, for the errors only a broken server gives, a stub).
//! docs/cli.md documents what is checked here.
mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{fluxcb_command, free_loopback_addr, spawn_app, TestApp, TestReceiver};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// What a finished `fluxcb` run left behind.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout as the one JSON document `--output json` promises (trailing text fails to parse).
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn assert_code(&self, code: i32, what: &str) {
        assert_eq!(
            self.code, code,
            "{what}: exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
    }
}

async fn run(cmd: std::process::Command) -> Run {
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .expect("fluxcb runs");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// An API client command against `base` with `key` (the variables an operator would set).
async fn client_at(base: &str, key: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = fluxcb_command(dir.path());
    cmd.args(args)
        .env("FLUXCB_URL", base)
        .env("FLUXCB_API_KEY", key);
    run(cmd).await
}

async fn client(app: &TestApp, args: &[&str]) -> Run {
    client_at(&app.url(""), &app.key, args).await
}

/// A command that opens the app's store directly (`keys`, `secrets`).
async fn on_store(app: &TestApp, args: &[&str]) -> Run {
    run(app.store_command(args)).await
}

/// The line of a human table or block that contains `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test]
async fn callbacks_print_as_tables_and_blocks_or_as_one_json_document() {
    let app = spawn_app().await;
    let rx = TestReceiver::start().await;
    let delivered = app.create(json!({"url": rx.url("/ok/table")})).await;
    let failed = app
        .create(json!({"url": rx.url("/status/500"), "max_attempts": 1}))
        .await;
    app.wait_status(&delivered, "delivered", WAIT).await;
    app.wait_status(&failed, "failed", WAIT).await;
    let host = rx.addr.to_string();

    let list = client(&app, &["list"]).await;
    list.assert_code(0, "list");
    let header = list.stdout.lines().next().unwrap();
    assert_eq!(
        words(header),
        ["ID", "STATUS", "ATTEMPTS", "NEXT", "ATTEMPT", "URL"]
    );
    let budget = app.get_json(&format!("/v1/callbacks/{delivered}")).await["max_attempts"].clone();
    let row = words(line_with(&list.stdout, &delivered));
    assert_eq!(
        row,
        [
            delivered.as_str(),
            "delivered",
            &format!("1/{budget}"),
            "-",
            &format!("{host}/ok/table")
        ]
    );
    let row = words(line_with(&list.stdout, &failed));
    assert_eq!(
        row,
        [
            failed.as_str(),
            "failed",
            "1/1",
            "-",
            &format!("{host}/status/500")
        ]
    );
    // Columns line up: every row's URL starts where the header's does.
    let url_column = header.find("URL").unwrap();
    for line in list.stdout.lines().skip(1) {
        assert!(line[url_column..].starts_with(&host), "{}", list.stdout);
    }

    let list = client(&app, &["list", "--output", "json"]).await;
    list.assert_code(0, "list --output json");
    let page = list.json();
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [failed.as_str(), delivered.as_str()], "newest first");
    assert!(page.get("next_cursor").is_some(), "{page}");

    // One page at a time; the cursor for the next is a hint on stderr, not in the table.
    let first = client(&app, &["list", "--limit", "1"]).await;
    first.assert_code(0, "list --limit 1");
    assert_eq!(first.stdout.lines().count(), 2, "{}", first.stdout);
    assert!(
        first.stderr.contains(&format!("--cursor {failed}")),
        "{}",
        first.stderr
    );

    let get = client(&app, &["get", &failed]).await;
    get.assert_code(0, "get");
    assert_eq!(
        words(line_with(&get.stdout, "status")),
        ["status", "failed"]
    );
    assert_eq!(
        words(line_with(&get.stdout, "attempts ")),
        ["attempts", "1", "of", "1"]
    );
    let timeline = get
        .stdout
        .split("\nAttempts\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no attempt timeline after the block:\n{}", get.stdout));
    let attempt = words(timeline.lines().nth(1).unwrap());
    assert_eq!(attempt[0], "1", "{timeline}");
    assert!(attempt.contains(&"500"), "{timeline}");

    let get = client(&app, &["get", &failed, "--output", "json"]).await;
    get.assert_code(0, "get --output json");
    let cb = get.json();
    assert_eq!(cb["id"], failed.as_str());
    assert_eq!(cb["status"], "failed");
    assert_eq!(cb["attempts"][0]["status_code"], 500);

    let sent = client(
        &app,
        &[
            "send",
            &rx.url("/ok/sent"),
            "--payload",
            r#"{"order": 7}"#,
            "--metadata",
            "team=cli",
            "--output",
            "json",
        ],
    )
    .await;
    sent.assert_code(0, "send --output json");
    let id = sent.json()["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("cb_"), "{id}");
    let got = rx.wait_for("/ok/sent", 1, WAIT).await;
    assert_eq!(&got[0].body[..], br#"{"order":7}"#);

    let sent = client(&app, &["send", &rx.url("/ok/human"), "--payload", "{}"]).await;
    sent.assert_code(0, "send");
    let id = words(line_with(&sent.stdout, "id "))[1].to_owned();
    assert!(id.starts_with("cb_"), "{}", sent.stdout);
    app.wait_status(&id, "delivered", WAIT).await;

    let retried = client(&app, &["retry", &failed, "--output", "json"]).await;
    retried.assert_code(0, "retry");
    assert_ne!(retried.json()["status"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn each_failure_has_its_exit_code_and_a_json_error_object() {
    let app = spawn_app().await;
    let rx = TestReceiver::start().await;
    let delivered = app.create(json!({"url": rx.url("/ok/done")})).await;
    app.wait_status(&delivered, "delivered", WAIT).await;
    let unknown = "cb_01JB6Z4M3Q9W8X7V6T5S4R3P2N";

    // 2: not found.
    let r = client(&app, &["get", unknown]).await;
    r.assert_code(2, "get of an unknown id");
    assert_eq!(r.stdout, "", "nothing on stdout in human mode");
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    assert!(
        r.stderr.starts_with("fluxcb: ") && r.stderr.contains("404"),
        "{}",
        r.stderr
    );
    let r = client(&app, &["get", unknown, "--output", "json"]).await;
    r.assert_code(2, "get --output json of an unknown id");
    let error = &r.json()["error"];
    assert_eq!(error["exit_code"], 2);
    assert_eq!(error["kind"], "not_found");
    assert_eq!(error["status"], 404);
    assert_eq!(error["problem"]["status"], 404);

    // 3: the wrong state.
    let r = client(&app, &["cancel", &delivered]).await;
    r.assert_code(3, "cancel of a delivered callback");
    assert!(r.stderr.contains("409"), "{}", r.stderr);
    let r = client(&app, &["retry", &delivered, "--output", "json"]).await;
    r.assert_code(3, "retry of a delivered callback");
    assert_eq!(r.json()["error"]["kind"], "conflict");

    // 1: a request the server refuses, a wrong key, a missing key, bad flags.
    let r = client(&app, &["send", "ftp://example.com/x", "--payload", "{}"]).await;
    r.assert_code(1, "send of an ftp URL");
    assert!(
        r.stderr.contains("400") && r.stderr.contains("url"),
        "{}",
        r.stderr
    );
    let r = client_at(&app.url(""), "fcb_wrong", &["list", "--output", "json"]).await;
    r.assert_code(1, "a wrong API key");
    assert_eq!(r.json()["error"]["status"], 401);
    let dir = tempfile::tempdir().unwrap();
    let mut no_key = fluxcb_command(dir.path());
    no_key.args(["list", "--url", &app.url("")]);
    run(no_key).await.assert_code(1, "no API key");
    for bad in [
        &["list", "--output", "yaml"][..],
        &["list", "--no-such-flag"],
        &["get"],
        &["redrive", "--batch", "0"],
        &["no-such-command"],
    ] {
        let r = client(&app, bad).await;
        r.assert_code(1, &format!("{bad:?}"));
        assert_eq!(r.stdout, "", "usage errors go to stderr: {bad:?}");
        assert!(r.stderr.contains("error:"), "{}", r.stderr);
    }

    // 4: no server, or one that is failing or overloaded.
    let nobody = format!("http://{}", free_loopback_addr());
    let r = client_at(&nobody, &app.key, &["list", "--output", "json"]).await;
    r.assert_code(4, "an unreachable server");
    assert_eq!(r.json()["error"]["kind"], "unavailable");
    assert!(r.stderr.contains("cannot reach the server"), "{}", r.stderr);
    let stub = StubServer::start().await;
    for status in ["500", "503", "429"] {
        let r = client_at(&stub.base, "any", &["get", status]).await;
        r.assert_code(4, &format!("an answer of {status}"));
        assert!(r.stderr.contains(status), "{}", r.stderr);
    }
    let r = client_at(&stub.base, "any", &["get", "422"]).await;
    r.assert_code(1, "an answer of 422");

    app.stop().await;
}

#[tokio::test]
async fn every_command_has_help_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["demo"],
        &["serve"],
        &["send"],
        &["get"],
        &["list"],
        &["cancel"],
        &["retry"],
        &["redrive"],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
        &["secrets"],
        &["secrets", "rotate"],
        &["secrets", "show"],
        &["backup"],
        &["restore"],
        &["migrate"],
        &["migrate", "import"],
        &["migrate", "compare"],
        &["migrate", "export"],
        &["aws"],
        &["aws", "bootstrap"],
        &["aws", "redrive-dlq"],
    ];
    for command in commands {
        let mut cmd = fluxcb_command(dir.path());
        cmd.args(*command).arg("--help");
        let r = run(cmd).await;
        r.assert_code(0, &format!("{command:?} --help"));
        let examples = if command.is_empty() {
            "Exit codes"
        } else {
            "Examples:"
        };
        assert!(
            r.stdout.contains(examples),
            "{command:?} --help has no {examples}:\n{}",
            r.stdout
        );
        if !command.is_empty() {
            let example = format!("fluxcb {}", command.join(" "));
            assert!(
                r.stdout.contains(&example),
                "{command:?} --help shows no `{example}` example:\n{}",
                r.stdout
            );
        }
    }
}

#[tokio::test]
async fn keys_and_secrets_print_tables_or_json() {
    let app = spawn_app().await;

    let created = on_store(
        &app,
        &[
            "keys", "create", "--tenant", "acme", "--name", "acme-ci", "--output", "json",
        ],
    )
    .await;
    created.assert_code(0, "keys create --output json");
    let key = created.json();
    assert_eq!(key["name"], "acme-ci");
    assert_eq!(key["tenant"], "acme");
    assert_eq!(key["role"], "tenant");
    assert_eq!(key["revoked_at"], Value::Null);
    let plain = key["key"].as_str().unwrap().to_owned();
    assert!(plain.starts_with("fcb_"), "{plain}");
    // The key works at once against the server.
    client_at(&app.url(""), &plain, &["list"])
        .await
        .assert_code(0, "list with the new key");

    // Human mode keeps stdout to the key alone, for `key=$(fluxcb keys create ...)`.
    let human = on_store(
        &app,
        &["keys", "create", "--tenant", "acme", "--name", "acme-2"],
    )
    .await;
    human.assert_code(0, "keys create");
    assert_eq!(human.stdout.lines().count(), 1, "{}", human.stdout);
    assert!(human.stdout.starts_with("fcb_"), "{}", human.stdout);
    assert!(human.stderr.contains("shown only once"), "{}", human.stderr);

    on_store(
        &app,
        &["keys", "create", "--tenant", "acme", "--name", "acme-ci"],
    )
    .await
    .assert_code(3, "a key name taken");

    let list = on_store(&app, &["keys", "list"]).await;
    list.assert_code(0, "keys list");
    assert_eq!(
        words(list.stdout.lines().next().unwrap()),
        ["NAME", "TENANT", "ROLE", "CREATED", "REVOKED", "ID"]
    );
    let row = words(line_with(&list.stdout, "acme-ci"));
    assert_eq!(&row[..3], ["acme-ci", "acme", "tenant"]);
    assert_eq!(row[5], "-", "not revoked: {row:?}");
    assert_eq!(row[6], key["id"].as_str().unwrap());

    let revoked = on_store(&app, &["keys", "revoke", "acme-ci", "--output", "json"]).await;
    revoked.assert_code(0, "keys revoke");
    assert_eq!(revoked.json(), json!({"revoked": "acme-ci"}));
    on_store(&app, &["keys", "revoke", "acme-ci"])
        .await
        .assert_code(2, "revoking a revoked key");
    let list = on_store(&app, &["keys", "list", "--output", "json"]).await;
    let keys = list.json();
    let ci = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "acme-ci")
        .unwrap();
    assert!(ci["revoked_at"].is_string(), "{keys}");
    assert!(
        ci.get("key").is_none(),
        "a listed key never shows the secret"
    );

    // keys create gave the tenant its first signing secret.
    let shown = on_store(
        &app,
        &["secrets", "show", "--tenant", "acme", "--output", "json"],
    )
    .await;
    shown.assert_code(0, "secrets show");
    let first = shown.json()["secrets"][0].as_str().unwrap().to_owned();
    assert_eq!(shown.json()["tenant"], "acme");
    assert!(first.starts_with("whsec_"), "{first}");
    let rotated = on_store(
        &app,
        &[
            "secrets", "rotate", "--tenant", "acme", "--grace", "1h", "--output", "json",
        ],
    )
    .await;
    rotated.assert_code(0, "secrets rotate");
    let new = rotated.json()["secret"].as_str().unwrap().to_owned();
    assert!(rotated.json()["previous_sign_until"].is_string());
    let shown = on_store(&app, &["secrets", "show", "--tenant", "acme"]).await;
    assert_eq!(
        shown.stdout.lines().collect::<Vec<_>>(),
        [new.as_str(), first.as_str()],
        "newest first"
    );
    on_store(&app, &["secrets", "rotate", "--grace", "soon"])
        .await
        .assert_code(1, "a bad --grace");
    app.stop().await;
}

#[tokio::test]
async fn redrive_dry_run_counts_what_the_redrive_then_moves() {
    let app = spawn_app().await;
    // Two receivers: ten failures in a row at one destination would open its circuit breaker
    // and hold the rest back.
    let (red_rx, blue_rx) = (TestReceiver::start().await, TestReceiver::start().await);
    let mut red = Vec::new();
    for i in 0..8 {
        // Fails once (a dead letter after its one attempt), then takes the redrive.
        let url = red_rx.url(&format!("/flaky/1/red{i}"));
        red.push(
            app.create(json!({"url": url, "max_attempts": 1, "metadata": {"team": "red"}}))
                .await,
        );
    }
    let mut blue = Vec::new();
    for i in 0..3 {
        let url = blue_rx.url(&format!("/flaky/1/blue{i}"));
        blue.push(
            app.create(json!({"url": url, "max_attempts": 1, "metadata": {"team": "blue"}}))
                .await,
        );
    }
    for id in red.iter().chain(&blue) {
        app.wait_status(id, "failed", WAIT).await;
    }

    let dry = client(
        &app,
        &[
            "redrive",
            "--dry-run",
            "--metadata",
            "team=red",
            "--output",
            "json",
        ],
    )
    .await;
    dry.assert_code(0, "redrive --dry-run");
    assert_eq!(dry.json(), json!({"moved": 0, "matched": 8}));
    let dry = client(&app, &["redrive", "--dry-run"]).await;
    assert_eq!(
        dry.stdout, "11 dead letter(s) match; nothing moved (dry run).\n",
        "{}",
        dry.stderr
    );
    for id in red.iter().chain(&blue) {
        let cb = app.get_json(&format!("/v1/callbacks/{id}")).await;
        assert_eq!(cb["status"], "failed", "a dry run moves nothing");
    }

    let moved = client(
        &app,
        &[
            "redrive",
            "--metadata",
            "team=red",
            "--batch",
            "5",
            "--output",
            "json",
        ],
    )
    .await;
    moved.assert_code(0, "redrive");
    assert_eq!(
        moved.json(),
        json!({"moved": 8}),
        "what the dry run counted"
    );
    // Not a terminal: plain progress lines instead of a bar.
    assert!(
        moved
            .stderr
            .contains("redrive: moving 8 dead letter(s), up to 5 per request"),
        "{}",
        moved.stderr
    );
    for id in &red {
        app.wait_status(id, "delivered", WAIT).await;
    }
    let left = client(&app, &["redrive", "--dry-run", "--output", "json"]).await;
    assert_eq!(left.json()["matched"], 3, "the blue ones stay");

    let moved = client(&app, &["redrive"]).await;
    moved.assert_code(0, "redrive");
    assert_eq!(moved.stdout, "Moved 3 dead letter(s) back to the queue.\n");
    for id in &blue {
        app.wait_status(id, "delivered", WAIT).await;
    }
    let none = client(&app, &["redrive", "--output", "json"]).await;
    assert_eq!(none.json(), json!({"moved": 0}));
    app.stop().await;
}

/// A server that answers every request with the status its last path segment names (`GET
/// /v1/callbacks/503` → 503), as a problem document.
struct StubServer {
    base: String,
    _task: tokio::task::JoinHandle<()>,
}

impl StubServer {
    async fn start() -> Self {
        let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            let code: u16 = uri
                .path()
                .rsplit('/')
                .next()
                .unwrap()
                .parse()
                .unwrap_or(500);
            let status = StatusCode::from_u16(code).unwrap();
            (
                status,
                [("content-type", "application/problem+json")],
                json!({"type": "about:blank", "title": "stub", "status": code,
                       "detail": format!("the stub answers {code}")})
                .to_string(),
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, _task: task }
    }
}
