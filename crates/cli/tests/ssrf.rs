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

/// URLs built to confuse a parser about which host is meant, and local names: each is refused
/// at ingest, or fails as a blocked target (or a name that does not resolve), and the canary
/// behind them sees no connection.
#[tokio::test]
async fn parser_confusion_and_local_names_never_reach_loopback() {
    let app = spawn_app_with(|c| c.allow_private_targets = String::new()).await;
    let hits = Arc::new(AtomicUsize::new(0));
    let port = canary("127.0.0.1:0", hits.clone()).await.expect("canary");
    let hostile = [
        format!("http://127.0.0.1:{port}#@example.com/"),
        format!("http://127.0.0.1:{port}\\@example.com/"),
        format!("http://example.com@127.0.0.1:{port}/"),
        format!("http://example.com:80@127.0.0.1:{port}/"),
        format!("http://127.0.0.1:{port}?@example.com/"),
        format!("http://localhost.:{port}/"),
        format!("http://LOCALHOST:{port}/"),
        format!("http://LocalHost:{port}/x"),
        format!("http://127.000.000.001:{port}/"),
        format!("http://0x7F.0.0.1:{port}/"),
        format!("http://127.0.0.1:{port}/%2e%2e/"),
        format!("http://[0::1]:{port}/"),
        format!("http://[::ffff:0:127.0.0.1]:{port}/"),
        format!("http://[64:ff9b::127.0.0.1]:{port}/"),
        format!("HTTP://127.0.0.1:{port}/"),
        format!("http://\t127.0.0.1:{port}/"),
        format!("http://127.0.0.1%09:{port}/"),
        format!("http://ip6-localhost:{port}/"),
    ];
    let mut accepted = Vec::new();
    for url in &hostile {
        let r = app.post("/v1/callbacks", &json!({ "url": url })).await;
        match r.status().as_u16() {
            400 => continue,
            202 => {
                let v: serde_json::Value = r.json().await.unwrap();
                accepted.push((url.clone(), v["id"].as_str().unwrap().to_owned()));
            }
            other => panic!("{url}: {other}"),
        }
    }
    assert!(
        accepted.len() >= 10,
        "most of these are valid URLs: {accepted:?}"
    );
    for (url, id) in &accepted {
        let v = app.wait_status(id, "failed", Duration::from_secs(30)).await;
        let error = v["attempts"][0]["error"].as_str().unwrap_or_default();
        assert!(
            ["blocked_target", "dns"].contains(&error),
            "{url}: {error} ({v})"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a hostile URL reached loopback"
    );
    app.stop().await;
}

/// A receiver that answers every request with a redirect to `location`.
async fn redirecting_receiver(location: String) -> std::net::SocketAddr {
    use axum::http::{header, StatusCode};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let location = location.clone();
        async move { (StatusCode::FOUND, [(header::LOCATION, location)]) }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Even where the allow-list would let the redirect's target through, fluxcb does not follow
/// it: the 302 is the attempt's answer, and the internal address is never dialled.
#[tokio::test]
async fn redirects_to_internal_addresses_are_not_followed() {
    let app = spawn_app_with(|c| c.allow_private_targets = "127.0.0.0/8".into()).await;
    let hits = Arc::new(AtomicUsize::new(0));
    let port = canary("127.0.0.2:0", hits.clone()).await.expect("canary");
    let receiver = redirecting_receiver(format!("http://127.0.0.2:{port}/internal")).await;
    let id = app
        .create(json!({ "url": format!("http://{receiver}/hook"), "max_attempts": 2 }))
        .await;
    let v = app
        .wait_status(&id, "failed", Duration::from_secs(10))
        .await;
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a["status_code"] == 302), "{v}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
    app.stop().await;
}

/// Proxy variables in the server's environment are ignored: deliveries go straight to the
/// receiver, and the "proxy" (a canary) sees nothing.
#[tokio::test]
async fn proxy_environment_variables_are_ignored() {
    let hits = Arc::new(AtomicUsize::new(0));
    let port = canary("127.0.0.3:0", hits.clone()).await.expect("canary");
    let proxy = format!("http://127.0.0.3:{port}");
    let receiver = common::TestReceiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let vars: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|k| (k, proxy.as_str()))
    .collect();
    let server = common::ServeProcess::start(&data, &log, None, &vars).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = http
        .post(server.url("/v1/callbacks"))
        .bearer_auth(common::PROCESS_API_KEY)
        .json(&json!({ "url": receiver.url("/ok/direct") }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = receiver
        .wait_for("/ok/direct", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1, "delivered directly");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a proxy variable was used");
    server.sigterm();
}
