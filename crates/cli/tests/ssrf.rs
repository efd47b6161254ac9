//! The SSRF guard, end to end: with the default policy (public addresses only), every spelling
//! of a loopback address is refused at the connector, recorded as `blocked_target`, not
//! retried, and a canary listening on that port sees no connection at all.
//!
//! Only loopback spellings are dialled here: if the guard were broken, the traffic would stay
//! on this machine. Private, link-local and other ranges are covered by the policy's table test
//! in `fluxcb-core` (target.rs), which dials nothing.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::spawn_app_with;
use serde_json::json;
use tokio::net::TcpListener;

async fn canary(addr: &str, hits: Arc<AtomicUsize>) -> Option<u16> {
    let listener = TcpListener::bind(addr).await.ok()?;
    let port = listener.local_addr().ok()?.port();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    });
    Some(port)
}

#[tokio::test]
async fn every_spelling_of_loopback_is_blocked_before_connecting() {
    let app = spawn_app_with(|c| c.allow_private_targets = String::new()).await;
    let hits = Arc::new(AtomicUsize::new(0));
    let port = canary("127.0.0.1:0", hits.clone()).await.expect("canary");
    // Same port on ::1 when the machine has IPv6 loopback; the test still runs without it.
    let v6 = canary(&format!("[::1]:{port}"), hits.clone())
        .await
        .is_some();
    let spellings = [
        format!("http://127.0.0.1:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://0x7f000001:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://017700000001:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://127.0.1:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://0:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::ffff:7f00:1]:{port}/"),
        format!("http://[::127.0.0.1]:{port}/"),
        format!("http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/"),
        format!("http://①②⑦.0.0.1:{port}/"),
        format!("http://127.0.0.1.:{port}/"),
    ];
    let mut ids = Vec::new();
    for url in &spellings {
        let r = app
            .post("/v1/callbacks", &json!({"url": url, "max_attempts": 5}))
            .await;
        if r.status() == 400 {
            // Refused at ingest is fine too (not a valid URL): nothing can be dialled.
            continue;
        }
        assert_eq!(r.status(), 202, "{url}");
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push((url.clone(), v["id"].as_str().unwrap().to_owned()));
    }
    assert!(
        ids.len() >= spellings.len() - 2,
        "most spellings are valid URLs"
    );
    for (url, id) in &ids {
        let v = app.wait_status(id, "failed", Duration::from_secs(10)).await;
        let attempts = v["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{url}: blocked targets are not retried");
        assert_eq!(attempts[0]["error"], "blocked_target", "{url}: {v}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a blocked spelling reached the canary (ipv6 canary: {v6})"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_allow_list_lets_listed_private_ranges_through() {
    let app = spawn_app_with(|c| c.allow_private_targets = "127.0.0.0/8".into()).await;
    let rx = common::TestReceiver::start().await;
    let id = app.create(json!({"url": rx.url("/ok/allowed")})).await;
    app.wait_status(&id, "delivered", Duration::from_secs(10))
        .await;
    // ::1 is not in the list: refused.
    let id6 = app
        .create(json!({"url": format!("http://[::1]:{}/ok", rx.addr.port())}))
        .await;
    let v = app
        .wait_status(&id6, "failed", Duration::from_secs(10))
        .await;
    assert_eq!(v["attempts"][0]["error"], "blocked_target");
    app.stop().await;
}
