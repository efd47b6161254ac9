//! Receiver chaos: a receiver that, attempt by attempt, answers 200, 500, 503 (sometimes with
//! `Retry-After`), 429, 410 or a redirect, hangs past the timeout, drips its answer too slowly,
//! sends a huge body, resets the connection after reading the request, or closes without
//! answering. A 2xx status line counts as delivered even when the body that follows is cut
//! (drip, huge): the receiver has accepted. Each callback must end exactly where the retry policy says (delivered on the first
//! 2xx, dead-lettered on 410 or when out of attempts), and its attempt log must match what the
//! receiver saw, attempt for attempt.
//!
//! The behaviour of attempt `n` of a callback is a fixed function of its `webhook-id` and `n`,
//! so the expected outcome of every callback can be computed independently of timing.
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spawn_on, Backend};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CALLBACKS: usize = 200;
const MAX_ATTEMPTS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Ok,
    HugeOk,
    Error500,
    Unavailable,
    UnavailableRetryAfter,
    TooMany,
    Gone,
    Redirect,
    Hang,
    Drip,
    Reset,
    CloseSilently,
}

impl Behaviour {
    /// A 2xx status line is the receiver's acceptance, whatever happens to the body after it
    /// (a slow drip is cut at the timeout, a huge one at the read cap).
    fn succeeds(self) -> bool {
        matches!(self, Behaviour::Ok | Behaviour::HugeOk | Behaviour::Drip)
    }
}

/// FNV-1a: a stable hash, so the plan does not depend on the process.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn behaviour(id: &str, attempt: usize) -> Behaviour {
    match fnv(&format!("{id}#{attempt}")) % 100 {
        0..=29 => Behaviour::Ok,
        30..=34 => Behaviour::HugeOk,
        35..=44 => Behaviour::Error500,
        45..=49 => Behaviour::Unavailable,
        50..=52 => Behaviour::UnavailableRetryAfter,
        53..=57 => Behaviour::TooMany,
        58..=61 => Behaviour::Gone,
        62..=69 => Behaviour::Redirect,
        70..=75 => Behaviour::Hang,
        76..=81 => Behaviour::Drip,
        82..=90 => Behaviour::Reset,
        _ => Behaviour::CloseSilently,
    }
}

/// Where the policy must leave a callback, and how many attempts it takes to get there.
fn expected(id: &str) -> (&'static str, usize) {
    for n in 1..=MAX_ATTEMPTS {
        let b = behaviour(id, n);
        if b.succeeds() {
            return ("delivered", n);
        }
        if b == Behaviour::Gone {
            return ("failed", n);
        }
    }
    ("failed", MAX_ATTEMPTS)
}

type Seen = Arc<Mutex<HashMap<String, Vec<Behaviour>>>>;

/// Reads one request (headers and `content-length` body); returns its `webhook-id`.
async fn read_request(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // Ids are case-sensitive; the lower-cased head only located the header.
    let raw = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    raw.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("webhook-id")
            .then(|| v.trim().to_owned())
    })
}

async fn serve_one(mut conn: TcpStream, seen: Seen) {
    let Some(id) = read_request(&mut conn).await else {
        return;
    };
    let b = {
        let mut seen = seen.lock().unwrap();
        let attempts = seen.entry(id.clone()).or_default();
        let b = behaviour(&id, attempts.len() + 1);
        attempts.push(b);
        b
    };
    let status = |code: &str, extra: &str| {
        format!("HTTP/1.1 {code}\r\nconnection: close\r\ncontent-length: 0\r\n{extra}\r\n")
    };
    let _ = match b {
        Behaviour::Ok => conn.write_all(status("200 OK", "").as_bytes()).await,
        Behaviour::HugeOk => {
            let body = vec![b'x'; 4 * 1024 * 1024];
            let head = format!(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            conn.write_all(&body).await
        }
        Behaviour::Error500 => {
            conn.write_all(status("500 Internal Server Error", "").as_bytes())
                .await
        }
        Behaviour::Unavailable => {
            conn.write_all(status("503 Service Unavailable", "").as_bytes())
                .await
        }
        Behaviour::UnavailableRetryAfter => {
            conn.write_all(status("503 Service Unavailable", "retry-after: 1\r\n").as_bytes())
                .await
        }
        Behaviour::TooMany => {
            conn.write_all(status("429 Too Many Requests", "").as_bytes())
                .await
        }
        Behaviour::Gone => conn.write_all(status("410 Gone", "").as_bytes()).await,
        Behaviour::Redirect => {
            conn.write_all(
                status("302 Found", "location: http://127.0.0.1:9/elsewhere\r\n").as_bytes(),
            )
            .await
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }
        Behaviour::Drip => {
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 100\r\n\r\n")
                .await;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if conn.write_all(b"x").await.is_err() {
                    break;
                }
            }
            Ok(())
        }
        Behaviour::Reset => {
            // A zero linger makes the close an RST; it does not block (only a non-zero one
            // would), which is what the deprecation is about.
            #[allow(deprecated)]
            let _ = conn.set_linger(Some(Duration::ZERO));
            Ok(())
        }
        Behaviour::CloseSilently => Ok(()),
    };
    drop(conn);
}

/// Resident memory of this process (the server runs in it), in MiB.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn size(default: usize) -> usize {
    std::env::var("FLUXCB_CHAOS_CALLBACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CI size: 200 callbacks on the embedded store, 60 on the AWS emulator. Larger:
/// `FLUXCB_CHAOS_CALLBACKS=5000 cargo test --release -p fluxcb --test chaos -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_callback_ends_where_the_policy_says_and_the_log_matches_the_receiver() {
    chaos(Backend::Sqlite, size(CALLBACKS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_the_aws_backend() {
    chaos(Backend::Aws, size(60).min(300)).await;
}

async fn chaos(backend: Backend, callbacks: usize) {
    // One receiver port per callback: the destination's circuit breaker (10 failures in a row)
    // would otherwise defer callbacks for tens of seconds, which the policy allows but this
    // test does not want to wait for.
    let seen: Seen = Arc::default();
    let mut addrs = Vec::new();
    let mut accepts = Vec::new();
    for _ in 0..callbacks {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let seen = seen.clone();
        accepts.push(tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_one(conn, seen.clone()));
            }
        }));
    }
    let Some(app) = spawn_on(backend, |c| {
        // Well under the 2 s hangs and drips, and well over what a prompt answer takes on a
        // machine busy compiling (300 ms once timed out a 200 there).
        c.timeout_ms = 1_000;
        c.retry_schedule = "50ms,100ms,150ms".into();
    })
    .await
    else {
        return;
    };
    let rss_start = rss_mib();
    let mut ids = Vec::new();
    for chunk in (0..callbacks).collect::<Vec<_>>().chunks(100) {
        let items: Vec<Value> = chunk
            .iter()
            .map(
                |&i| json!({"url": format!("http://{}/hook/{i}", addrs[i]), "max_attempts": MAX_ATTEMPTS}),
            )
            .collect();
        let r = app
            .post("/v1/callbacks/batch", &json!({ "callbacks": items }))
            .await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        ids.extend(
            v["callbacks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
    }
    // Every callback reaches a final state (bounded: 4 attempts, waits of at most ~1 s).
    let deadline = Instant::now() + Duration::from_secs(90 + callbacks as u64 / 50);
    let mut outcomes: HashMap<String, Value> = HashMap::new();
    while outcomes.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} callbacks still unfinished",
            ids.len() - outcomes.len(),
            ids.len()
        );
        for id in &ids {
            if outcomes.contains_key(id) {
                continue;
            }
            let v = app.get_json(&format!("/v1/callbacks/{id}")).await;
            if v["status"] == "delivered" || v["status"] == "failed" {
                outcomes.insert(id.clone(), v);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let mut by_behaviour: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let (status, attempts) = expected(id);
        let v = &outcomes[id];
        assert_eq!(v["status"], status, "{id}: plan {:?}", seen.get(id));
        let logged = v["attempts"].as_array().unwrap();
        assert_eq!(logged.len(), attempts, "{id}: attempt log {v}");
        let received = seen.get(id).map_or(0, Vec::len);
        assert_eq!(
            received, attempts,
            "{id}: the receiver saw {received} attempts"
        );
        for (n, a) in logged.iter().enumerate() {
            let b = seen[id][n];
            *by_behaviour.entry(format!("{b:?}")).or_default() += 1;
            let code = a["status_code"].as_u64();
            match b {
                Behaviour::Ok | Behaviour::HugeOk | Behaviour::Drip => {
                    assert_eq!(code, Some(200), "{a}")
                }
                Behaviour::Gone => assert_eq!(code, Some(410), "{a}"),
                Behaviour::Redirect => assert_eq!(code, Some(302), "{a}"),
                Behaviour::Hang => assert_eq!(a["error"], "timeout", "{a}"),
                Behaviour::Reset | Behaviour::CloseSilently => {
                    assert!(a["error"].is_string() && code.is_none(), "{a}")
                }
                _ => assert!(code.is_some_and(|c| c >= 429), "{a}"),
            }
        }
    }
    let rss_end = rss_mib();
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "chaos ({backend:?}): {} callbacks, attempts by behaviour {by_behaviour:?}, \
         resident memory {rss_start} MiB at the start, {rss_end} MiB at the end",
        ids.len()
    );
    // 4 MiB answers are read only up to the 64 KiB cap, hangs end at the timeout: memory stays
    // bounded however many callbacks go through.
    assert!(
        rss_end < rss_start + 256,
        "memory grew from {rss_start} to {rss_end} MiB"
    );
    app.stop().await;
    for a in accepts {
        a.abort();
    }
}
