//! Ordered delivery per key across `kill -9` of `fluxcb serve`, on the embedded store and on
//! the AWS backend (container mode against moto): the shared cases (order under retries, dead
//! letters, concurrent writers) are in `cases/ordering_cases.rs`, run by `api` and `api_aws`.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::ordered::{assert_in_order, batch, patient, OrderedReceiver};
use common::{ServeProcess, PROCESS_API_KEY};

/// `kill -9` of the embedded server while keys are being delivered: after the restart every
/// key still goes in order; a callback in flight at the kill may arrive again, but before its
/// successors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_mid_delivery(dir.path(), &[], 20, 15).await;
}

/// The same on `serve --backend aws`: the killed process's claim comes back when its lease
/// ends (6 s here) and is still its key's turn; a waiting callback has no due time, so no
/// stale message or sweep sends it early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_survives_kill_9_on_aws() {
    if common::aws::endpoint().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    common::fresh_aws_resources(&mut config).await;
    let env = [
        ("FLUXCB_BACKEND", "aws"),
        ("FLUXCB_DYNAMODB_TABLE", config.dynamodb_table.as_str()),
        ("FLUXCB_SQS_QUEUE_URL", config.sqs_queue_url.as_str()),
        ("FLUXCB_SQS_DLQ_URL", config.sqs_dlq_url.as_str()),
        ("FLUXCB_SWEEP_INTERVAL", "1s"),
        ("FLUXCB_SWEEP_GRACE", "3s"),
        ("FLUXCB_TIMEOUT_MS", "1000"),
        ("FLUXCB_AWS_CLAIM_LEASE", "6s"),
    ];
    kill_9_mid_delivery(dir.path(), &env, 10, 10).await;
}

async fn kill_9_mid_delivery(dir: &Path, env: &[(&str, &str)], key_count: usize, per_key: u32) {
    let data = dir.join("data");
    let log = dir.join("serve.log");
    let (rx, addr) = OrderedReceiver::start(|_, seq| u32::from(seq % 5 == 3)).await;
    let keys: Vec<String> = (0..key_count).map(|k| format!("k{k}")).collect();
    let server = ServeProcess::start(&data, &log, None, env).await;
    let http = reqwest::Client::new();
    let r = http
        .post(server.url("/v1/destinations"))
        .bearer_auth(PROCESS_API_KEY)
        .json(&patient(addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for seqs in [0..per_key / 2, per_key / 2..per_key] {
        let r = http
            .post(server.url("/v1/callbacks/batch"))
            .bearer_auth(PROCESS_API_KEY)
            .json(&batch(addr, &keys, seqs))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    // Kill once about a third has been delivered.
    let total = keys.len() * per_key as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.delivered() < total / 3 {
        assert!(Instant::now() < deadline, "{} delivered", rx.delivered());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_kill = rx.delivered();
    let address = server.addr;
    server.sigkill();
    let _server = ServeProcess::start(&data, &log, Some(address), env).await;
    rx.wait_delivered(total, Duration::from_secs(90)).await;
    let arrivals = rx.arrivals();
    assert_in_order(&arrivals, per_key);
    assert!(rx.overlaps().is_empty(), "{:?}", rx.overlaps());
    let duplicates = arrivals.iter().filter(|a| a.ok).count() - total;
    eprintln!(
        "kill -9 after {at_kill} of {total} delivered: all {total} in order, {duplicates} delivered twice"
    );
}
