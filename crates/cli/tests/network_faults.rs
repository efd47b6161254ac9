//! Network faults on loopback, in a network namespace of the test's own: the server, the
//! receiver and the client all live in it, and mid-run its loopback interface goes down (every
//! connection to the receiver fails: unreachable, resets, timeouts) and comes back. Deliveries
//! resume by themselves and nothing is lost.
//!
//! The namespace belongs to one thread: `unshare(CLONE_NEWNET)` there, then a single-threaded
//! runtime on it; threads and processes it starts inherit the namespace. Needs CAP_SYS_ADMIN
//! (CI runs as root); skips with a message elsewhere, except under `CI=true`.
mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{spawn_app_with, TestReceiver};
use serde_json::{json, Value};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?}");
}

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {why}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPING network faults: {why} ***\n"
    );
}

#[test]
fn deliveries_resume_after_the_network_comes_back() {
    let outcome = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which owns no sockets yet.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("the `ip` command is missing".into());
        }
        ip(&["link", "set", "lo", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run());
        Ok(())
    })
    .join()
    .expect("the namespaced test thread");
    if let Err(why) = outcome {
        skip(&why);
    }
}

async fn run() {
    const TOTAL: usize = 200;
    let app = spawn_app_with(|c| {
        c.retry_schedule = "100ms,200ms,400ms".into();
        c.max_attempts = 30;
        c.timeout_ms = 500;
    })
    .await;
    let receiver = TestReceiver::start().await;
    let target = receiver.url("/hang/20");
    let mut acked = BTreeSet::new();
    for chunk in 0..(TOTAL / 50) {
        let items: Vec<Value> = (0..50)
            .map(|i| json!({"url": target, "payload": {"n": chunk * 50 + i}}))
            .collect();
        let r = app
            .post("/v1/callbacks/batch", &json!({ "callbacks": items }))
            .await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        for c in v["callbacks"].as_array().unwrap() {
            acked.insert(c["id"].as_str().unwrap().to_owned());
        }
    }
    // Down while deliveries are on the wire, for longer than a few retries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.received().len() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ip(&["link", "set", "lo", "down"]);
    let seen_at_fault = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ip(&["link", "set", "lo", "up"]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let seen: BTreeSet<String> = receiver
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        if acked.is_subset(&seen) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost = acked.difference(&delivered).count();
    // The failed attempts during the outage are in the audit trail.
    let failed: Value = app.get_json("/v1/callbacks?status=failed").await;
    let mut connect_errors = 0;
    for id in acked.iter().take(TOTAL) {
        let v = app.get_json(&format!("/v1/callbacks/{id}")).await;
        connect_errors += v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["error"].is_string())
            .count();
    }
    eprintln!(
        "network fault: {TOTAL} acknowledged, {seen_at_fault} requests seen before the fault, \
         lost {lost}, failed attempts during the outage {connect_errors}"
    );
    assert_eq!(
        lost, 0,
        "every callback delivered after the network came back"
    );
    assert_eq!(
        failed["data"].as_array().map(Vec::len),
        Some(0),
        "none dead-lettered"
    );
    assert!(
        connect_errors > 0,
        "the outage was seen by some attempts (else it hit an idle moment)"
    );
    app.stop().await;
}
