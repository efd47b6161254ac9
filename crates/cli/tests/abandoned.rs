//! Abandoned requests: clients that hang up in the middle of an ingest request, many times over.
//! Whatever was stored is dispatched, nothing is stored twice, nothing half-sent is stored, and
//! replaying a request with its `Idempotency-Key` finds what the abandoned one stored. (The
//! leading open-source peer was measured leaving stored messages undispatched in exactly this
//! situation.) Runs on both backends: the AWS one against moto, with fewer requests.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{spawn_on, Backend, TestApp, TestReceiver};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hangup {
    /// The whole request is written, then the connection is dropped without reading.
    AfterRequest,
    /// The request is written and its answer read: the control group.
    Never,
    /// Half the body is written, then the connection is dropped.
    MidBody,
    /// Only the headers (announcing a body) are written.
    AfterHeaders,
}

fn hangup(i: usize) -> Hangup {
    match i % 4 {
        0 => Hangup::AfterRequest,
        1 => Hangup::Never,
        2 => Hangup::MidBody,
        _ => Hangup::AfterHeaders,
    }
}

fn request(app: &TestApp, path: &str, key: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\nidempotency-key: {key}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        app.addr,
        app.key,
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn body_for(rx: &TestReceiver, i: usize) -> Vec<u8> {
    // Batches too, so that an abandoned batch is checked as well as a single callback.
    if i.is_multiple_of(3) {
        serde_json::to_vec(&json!({"callbacks": [
            {"url": rx.url(&format!("/ok/req{i}")), "payload": {"i": i, "part": 0}},
            {"url": rx.url(&format!("/ok/req{i}b")), "payload": {"i": i, "part": 1}},
        ]}))
        .unwrap()
    } else {
        serde_json::to_vec(&json!({"url": rx.url(&format!("/ok/req{i}")), "payload": {"i": i}}))
            .unwrap()
    }
}

fn path_for(i: usize) -> &'static str {
    if i.is_multiple_of(3) {
        "/v1/callbacks/batch"
    } else {
        "/v1/callbacks"
    }
}

async fn abandon(app: &TestApp, i: usize, body: &[u8]) {
    let key = format!("abandoned-{i}");
    let full = request(app, path_for(i), &key, body);
    let Ok(mut conn) = TcpStream::connect(app.addr).await else {
        return;
    };
    match hangup(i) {
        Hangup::AfterRequest => {
            let _ = conn.write_all(&full).await;
        }
        Hangup::Never => {
            let _ = conn.write_all(&full).await;
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer).await;
        }
        Hangup::MidBody => {
            let _ = conn.write_all(&full[..full.len() - body.len() / 2]).await;
        }
        Hangup::AfterHeaders => {
            let _ = conn.write_all(&full[..full.len() - body.len()]).await;
        }
    }
    drop(conn);
}

/// Every stored callback, by the receiver path it targets.
async fn stored(app: &TestApp) -> HashMap<String, Vec<Value>> {
    let mut by_path: HashMap<String, Vec<Value>> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/callbacks?limit=500&tenant=default&cursor={c}"),
            None => "/v1/callbacks?limit=500&tenant=default".into(),
        };
        let page = app.get_json(&q).await;
        for cb in page["data"].as_array().unwrap() {
            let url = cb["url"].as_str().unwrap();
            let path = url[url.find("/ok/").unwrap()..].to_owned();
            by_path.entry(path).or_default().push(cb.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return by_path,
        }
    }
}

async fn run(backend: Backend, requests: usize) {
    let Some(app) = spawn_on(backend, |_| {}).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    // A few at a time, so that hang-ups land while earlier requests are being committed.
    let bodies: Vec<Vec<u8>> = (0..requests).map(|i| body_for(&rx, i)).collect();
    for chunk in (0..requests).collect::<Vec<_>>().chunks(16) {
        let all = chunk.iter().map(|&i| abandon(&app, i, &bodies[i]));
        futures_util::future::join_all(all).await;
    }
    // Replay every request that was sent whole, with its key: the abandoned ones must find what
    // they stored (or store it now), never store it twice.
    let mut found_by_replay = 0;
    for (i, body) in bodies.iter().enumerate() {
        if !matches!(hangup(i), Hangup::AfterRequest | Hangup::Never) {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = app
                .http
                .post(app.url(path_for(i)))
                .bearer_auth(&app.key)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("abandoned-{i}"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            // 409: the abandoned request is still being processed; ask again.
            if r.status() == 409 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            assert_eq!(r.status(), 202, "replay of request {i}");
            let replayed = r.headers().get("idempotent-replayed").is_some();
            // The control group read its answer: its replay must be a replay.
            if hangup(i) == Hangup::Never {
                assert!(
                    replayed,
                    "request {i} was answered 202 but its replay stored it again"
                );
            } else if replayed {
                found_by_replay += 1;
            }
            break;
        }
    }
    // Shown with --nocapture: how many abandoned requests had been stored before their client
    // hung up (the rest were stored by the replay).
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{backend:?}: {found_by_replay} of {} requests abandoned after sending were found by their replay",
        (0..requests).filter(|&i| hangup(i) == Hangup::AfterRequest).count()
    );
    let stored = stored(&app).await;
    for i in 0..requests {
        let mut paths = vec![format!("/ok/req{i}")];
        if i.is_multiple_of(3) {
            paths.push(format!("/ok/req{i}b"));
        }
        let expected = match hangup(i) {
            Hangup::AfterRequest | Hangup::Never => 1,
            Hangup::MidBody | Hangup::AfterHeaders => 0,
        };
        for p in &paths {
            let n = stored.get(p).map_or(0, Vec::len);
            assert_eq!(n, expected, "{p} stored {n} times ({:?})", hangup(i));
        }
    }
    // Everything stored is dispatched.
    let deadline = Instant::now() + Duration::from_secs(60);
    for path in stored.keys() {
        loop {
            if !rx.received_on(path).is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{path} was stored but never delivered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_ups_mid_ingest_lose_nothing_stored_on_the_embedded_store() {
    run(Backend::Sqlite, 800).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_ups_mid_ingest_lose_nothing_stored_on_aws() {
    run(Backend::Aws, 80).await;
}
