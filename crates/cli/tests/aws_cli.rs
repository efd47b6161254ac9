//! The AWS backend's command-line interface, as other tooling uses it: `fluxcb aws bootstrap`
//! prints FLUXCB_DYNAMODB_TABLE, FLUXCB_SQS_QUEUE_URL and FLUXCB_SQS_DLQ_URL, and
//! `fluxcb serve --backend aws` runs on exactly those variables (against moto).
mod common;

use std::time::Duration;

use common::{fluxcb_command, ServeProcess, TestReceiver, PROCESS_API_KEY};
use serde_json::{json, Value};

#[tokio::test]
async fn bootstrap_prints_the_variables_that_serve_backend_aws_runs_on() {
    if common::aws::endpoint().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("cli{}", std::process::id());
    let out = fluxcb_command(dir.path())
        .args(["aws", "bootstrap", "--prefix", &prefix])
        .output()
        .expect("run fluxcb aws bootstrap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "FLUXCB_DYNAMODB_TABLE",
            "FLUXCB_SQS_QUEUE_URL",
            "FLUXCB_SQS_DLQ_URL"
        ]
    );
    assert_eq!(vars[0].1, format!("{prefix}-callbacks"));
    // Running it again changes nothing (the same names come back).
    let again = fluxcb_command(dir.path())
        .args(["aws", "bootstrap", "--prefix", &prefix])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);

    let rx = TestReceiver::start().await;
    let mut env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("FLUXCB_BACKEND", "aws"));
    env.push(("FLUXCB_SWEEP_INTERVAL", "1s"));
    let data = dir.path().join("unused-data-dir");
    let log = dir.path().join("serve.log");
    let server = ServeProcess::start(&data, &log, None, &env).await;
    let http = reqwest::Client::new();
    let r = http
        .post(server.url("/v1/callbacks"))
        .bearer_auth(PROCESS_API_KEY)
        .json(&json!({"url": rx.url("/ok/cli"), "payload": {"via": "serve --backend aws"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = rx.wait_for("/ok/cli", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("webhook-id"), Some(id.as_str()));
    // The embedded store was never touched: the data directory does not exist.
    assert!(
        !data.exists(),
        "serve --backend aws created {}",
        data.display()
    );
    // The attempt is logged after the receiver answers: give the line a moment to be written.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = std::fs::read_to_string(&log).unwrap();
        if logs
            .lines()
            .any(|l| l.contains(&id) && l.contains("callback_id"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line names the callback: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
}
