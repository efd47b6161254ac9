//! API robustness: Schemathesis (PyPI) generates requests from the server's own
//! `/openapi.json` (valid and invalid ones, single calls and sequences) and checks that no
//! answer is a 5xx and that every answer matches the description: documented status codes,
//! content types, headers and bodies. Capped in CI; for a longer run:
//! `FLUXCB_SCHEMATHESIS_EXAMPLES=1000 cargo test -p fluxcb --test schemathesis -- --nocapture`.
//!
//! Revoking keys is left out: the generated sequences would revoke the very admin key the run
//! authenticates with, and every later call would only prove that revocation works.
mod common;

use std::process::Command;

use common::spawn_app_with;

fn schemathesis() -> Option<String> {
    let candidates = [
        std::env::var("FLUXCB_VENV").ok(),
        std::env::var("HOME")
            .ok()
            .map(|h| format!("{h}/.cache/fluxcb/venv")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|venv| format!("{venv}/bin/schemathesis"))
        .find(|bin| std::path::Path::new(bin).is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let Some(bin) = schemathesis() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but schemathesis is not installed (.ci/requirements.txt)");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPING schemathesis: not installed ***\n"
        );
        return;
    };
    let app = spawn_app_with(|_| {}).await;
    let examples = std::env::var("FLUXCB_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into());
    let report = tempfile::tempdir().unwrap();
    let spec = app.url("/openapi.json");
    let key = app.key.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args([
                "run",
                &spec,
                "--max-examples",
                &examples,
                "--seed",
                "20261126",
            ])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance",
            ])
            .args(["--exclude-method", "DELETE"])
            .arg("--report-dir")
            .arg(report.path())
            // It keeps a cache (`.schemathesis/`) in its working directory.
            .current_dir(report.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("generated") || l.contains("failures") || l.contains("passed"))
        .collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}
