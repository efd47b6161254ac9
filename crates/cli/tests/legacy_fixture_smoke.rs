//! The `LegacyPair` fixture itself: the real legacy pair takes a callback through its API and its
//! worker delivers it, signed; `stop_worker` fences the sending without stopping the API.
#[path = "common/legacy.rs"]
mod legacy;

use std::collections::HashMap;
use std::time::Duration;

use fluxcb_core::legacy as wire;
use legacy::LegacyPair;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

struct Received {
    request_line: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A loopback receiver that answers every request 200 and hands it to the test.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_owned();
                let headers: HashMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < length {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(Received {
                    request_line,
                    headers,
                    body,
                });
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn the_legacy_pair_delivers_signed_callbacks_until_its_worker_is_fenced() {
    let Some(pair) = LegacyPair::start() else {
        return;
    };
    let (receiver_url, mut received) = receiver().await;
    let http = reqwest::Client::new();
    let api = format!("{}/api/callbacks/", pair.callme_url());
    let auth = format!("Token {}", pair.token());

    let unauthenticated = http.get(&api).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let created = http
        .post(&api)
        .header("Authorization", &auth)
        .json(&json!({
            "url": format!("{receiver_url}/hook/1"),
            "payload": {"order": 1042, "name": "Zoë"},
            "headers": {"X-Row": "r1"},
            "external_id": "smoke-1",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", pair.logs());
    let row: Value = created.json().await.unwrap();
    let id = row["id"].as_i64().unwrap();
    assert_eq!(row["status"], "pending");

    let got = tokio::time::timeout(Duration::from_secs(15), received.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing delivered in 15 s:\n{}", pair.logs()))
        .unwrap();
    assert_eq!(got.request_line, "POST /hook/1 HTTP/1.1");
    assert_eq!(
        got.header("X-Flux-Callback-Id"),
        Some(id.to_string().as_str())
    );
    assert_eq!(got.header("X-Row"), Some("r1"));
    let signature = got
        .header("X-Flux-Signature")
        .expect("an X-Flux-Signature header");
    let timestamp: i64 = got.header("X-Flux-Timestamp").unwrap().parse().unwrap();
    assert!(
        wire::verify(
            pair.signing_secret().as_bytes(),
            timestamp,
            &got.body,
            signature
        ),
        "signature {signature} over {:?}",
        String::from_utf8_lossy(&got.body)
    );
    // jsonb key order (shorter keys first), non-ASCII escaped.
    assert_eq!(got.body, br#"{"name":"Zo\u00eb","order":1042}"#);

    // The fence: the API still takes callbacks, but nothing is sent any more.
    assert!(pair.worker_running());
    pair.stop_worker();
    assert!(!pair.worker_running());
    let created = http
        .post(&api)
        .header("Authorization", &auth)
        .json(&json!({"url": format!("{receiver_url}/hook/2"), "payload": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id2 = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(2_500), received.recv())
            .await
            .is_err(),
        "delivered after the worker was stopped"
    );
    let row: Value = http
        .get(format!("{api}{id2}/"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(row["status"], "pending");
    assert_eq!(row["attempts"], 0);

    // Dropping the pair stops the services and drops the database.
    drop(pair);
    assert!(
        http.get(&api).send().await.is_err(),
        "{api} still answers after the pair was dropped"
    );
}
