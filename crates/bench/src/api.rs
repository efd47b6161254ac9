//! The few fluxcb API calls the scenarios make outside the measured load: preloading a
//! backlog and reading back what the server recorded.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use http::{HeaderValue, Method};
use serde_json::{json, Value};

use crate::load::{self, ClosedLoop, Conn};
use crate::procs::API_KEY;

pub fn auth() -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {API_KEY}")).expect("an ASCII key")
}

pub fn rfc3339_in(d: Duration) -> String {
    (Utc::now() + chrono::Duration::from_std(d).expect("a short duration"))
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A callback body: `payload_bytes` of padding in the payload, so that stored and delivered
/// sizes are under the bench's control.
pub fn callback(url: &str, deliver_at: Option<&str>, payload: Value) -> Value {
    let mut cb = json!({ "url": url, "payload": payload });
    if let Some(at) = deliver_at {
        cb["deliver_at"] = json!(at);
    }
    cb
}

pub fn padded_payload(payload_bytes: usize) -> Value {
    json!({ "event": "bench.test", "pad": "x".repeat(payload_bytes) })
}

pub fn batch_body(item: &Value, size: usize) -> Bytes {
    let items: Vec<&Value> = std::iter::repeat_n(item, size).collect();
    Bytes::from(serde_json::to_vec(&json!({ "callbacks": items })).expect("JSON"))
}

pub struct Api {
    addr: SocketAddr,
    auth: HeaderValue,
    conn: Option<Conn>,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            auth: auth(),
            conn: None,
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Value, String> {
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self
                .conn
                .insert(load::connect(self.addr).await.map_err(|e| e.to_string())?),
        };
        let req = load::request(Method::GET, self.addr, path, Some(&self.auth), Bytes::new());
        let (status, body) =
            match tokio::time::timeout(load::REQUEST_TIMEOUT, load::exchange(conn, req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.conn = None;
                    return Err(format!("GET {path}: {e}"));
                }
                Err(_) => {
                    self.conn = None;
                    return Err(format!("GET {path}: timed out"));
                }
            };
        if !status.is_success() {
            return Err(format!(
                "GET {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {path}: {e}"))
    }

    /// POSTs a JSON body; the status and the decoded answer.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<(u16, Value), String> {
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self
                .conn
                .insert(load::connect(self.addr).await.map_err(|e| e.to_string())?),
        };
        let req = load::request(Method::POST, self.addr, path, Some(&self.auth), body);
        let (status, body) =
            match tokio::time::timeout(load::REQUEST_TIMEOUT, load::exchange(conn, req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.conn = None;
                    return Err(format!("POST {path}: {e}"));
                }
                Err(_) => {
                    self.conn = None;
                    return Err(format!("POST {path}: timed out"));
                }
            };
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status.as_u16(), value))
    }

    /// Whether any callback is in `status` (one index seek on the server).
    pub async fn any_in(&mut self, status: &str) -> Result<bool, String> {
        let page = self
            .get(&format!("/v1/callbacks?status={status}&limit=1"))
            .await?;
        Ok(page["data"].as_array().is_some_and(|d| !d.is_empty()))
    }

    /// Every callback in `status`, page by page: (count, how many have exactly one attempt).
    pub async fn census(&mut self, status: &str) -> Result<(u64, u64), String> {
        let (mut count, mut single) = (0, 0);
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/callbacks?status={status}&limit=500");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get(&path).await?;
            for cb in page["data"].as_array().into_iter().flatten() {
                count += 1;
                if cb["attempts_made"].as_u64() == Some(1) {
                    single += 1;
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok((count, single)),
            }
        }
    }

    /// Waits until no callback is scheduled, pending or delivering (every attempt's outcome is
    /// in the store), or until `limit`.
    pub async fn wait_settled(&mut self, limit: Instant) -> Result<(), String> {
        loop {
            let mut open = false;
            for status in ["scheduled", "pending", "delivering"] {
                open |= self.any_in(status).await?;
            }
            if !open || Instant::now() > limit {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first `n` callback ids in `status`.
    pub async fn ids(&mut self, status: &str, n: usize) -> Result<Vec<String>, String> {
        let page = self
            .get(&format!("/v1/callbacks?status={status}&limit={n}"))
            .await?;
        Ok(page["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect())
    }
}

/// Batch-ingests `count` copies of `item` and returns (accepted, seconds taken). Retries
/// batches that failed (a 503 under pressure) a few times, so the backlog is complete.
pub async fn preload(
    addr: SocketAddr,
    item: &Value,
    count: u64,
    batch_size: usize,
    connections: usize,
) -> Result<(u64, f64), String> {
    let started = Instant::now();
    let mut accepted = 0u64;
    for _round in 0..5 {
        let remaining = count - accepted;
        if remaining == 0 {
            break;
        }
        let full = remaining / batch_size as u64;
        let tail = (remaining % batch_size as u64) as usize;
        let full_body = batch_body(item, batch_size);
        let tail_body = batch_body(item, tail.max(1));
        let batches = full + u64::from(tail > 0);
        let auth = auth();
        let make: load::MakeRequest = std::sync::Arc::new(move |i, _| {
            let body = if i < full {
                full_body.clone()
            } else {
                tail_body.clone()
            };
            load::request(Method::POST, addr, "/v1/callbacks/batch", Some(&auth), body)
        });
        let items = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = items.clone();
        let on_response: load::OnResponse = std::sync::Arc::new(move |i, status, _, _| {
            if status.is_success() {
                let n = if i < full { batch_size } else { tail };
                counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let result = load::closed_loop(
            addr,
            ClosedLoop {
                connections,
                start: Instant::now(),
                warmup: Duration::ZERO,
                duration: Duration::from_secs(3600),
                budget: Some(batches),
                fresh_connections: false,
            },
            make,
            Some(on_response),
        )
        .await;
        accepted += items.load(std::sync::atomic::Ordering::Relaxed);
        let ok = result.tally.ok;
        if ok < batches {
            eprintln!(
                "  preload: {} of {batches} batches failed ({:?}); retrying",
                batches - ok,
                result.tally.errors
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if accepted < count {
        return Err(format!("preload accepted only {accepted} of {count}"));
    }
    Ok((accepted, started.elapsed().as_secs_f64()))
}
