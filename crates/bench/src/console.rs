//! `fluxcb-bench console`: how fast the console's pages answer with a million callbacks stored.
//!
//! Starts `fluxcb serve` once to create the store, stops it, fills the store with
//! `--console-count` callbacks by direct SQLite inserts (one transaction; the same rows and
//! index entries the server writes: attempts with their tenant and host, one tag row per
//! metadata entry), starts it again and times each request the console makes on its first
//! screen of each page: the HTML, the first data calls, and `/v1/callbacks?limit=50` with each
//! filter. Every request is sent `--console-runs` times in a row on one keep-alive connection
//! after one unmeasured warm-up; the table shows the median and the slowest.
//!
//! The fill, spread over the last 7 days: 10 tenants, 50 hosts, 90 % delivered (one in ten
//! after a failed first attempt), 5 % failed after 3 attempts, 3 % pending (due in a year, so
//! the dispatcher leaves them), 2 % cancelled; tags `order=<n>` (unique) and `region=eu|us|ap`;
//! one callback in a hundred with a legacy id and an `external_id`.
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HOST, LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

use crate::load::{self, Conn};
use crate::procs::{self, API_KEY};

const TENANTS: u64 = 10;
const HOSTS: u64 = 50;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// A tenant key for tenant `t3`, inserted by the fill.
const TENANT_KEY: &str = "fcb_bench_tenant_key_t3";

pub struct ConsoleOpts<'a> {
    pub fluxcb_bin: &'a Path,
    pub count: u64,
    pub runs: usize,
    pub server_env: &'a [(String, String)],
}

/// splitmix64: reproducible fills without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration in ms with a long tail: mostly 5-80 ms, a few up to seconds.
    fn latency(&mut self) -> i64 {
        let base = 5 + self.below(75) as i64;
        match self.below(100) {
            0 => base * 40,
            1..=5 => base * 5,
            _ => base,
        }
    }
}

pub async fn run(o: &ConsoleOpts<'_>) -> Result<(), String> {
    let server = procs::start_fluxcb(o.fluxcb_bin, o.server_env).await?;
    let dir = server.stop_keeping().await;
    let db = dir.path().join("data").join("fluxcb.db");
    let started = Instant::now();
    let count = o.count;
    let fill_path = db.clone();
    let (external_id, legacy_order) = tokio::task::spawn_blocking(move || fill(&fill_path, count))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("filling {}: {e}", db.display()))?;
    let fill_s = started.elapsed().as_secs_f64();
    eprintln!(
        "filled {count} callbacks in {fill_s:.1} s ({:.0}/s)",
        count as f64 / fill_s
    );
    let server = procs::start_fluxcb_in(o.fluxcb_bin, o.server_env, dir).await?;
    let result = measure(server.addr, o.runs, &external_id, legacy_order).await;
    let (problems, last) = server.log_problems();
    if problems > 0 {
        eprintln!("the server logged {problems} warnings or errors; the last: {last:?}");
    }
    server.stop().await;
    result
}

/// Returns an `external_id` and an `order` tag value that exist, for the lookups.
fn fill(db: &Path, count: u64) -> rusqlite::Result<(String, u64)> {
    let mut c = Connection::open(db)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    c.pragma_update(None, "cache_size", -400_000)?;
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - 7 * DAY_MS;
    let step = (7 * DAY_MS) as f64 / count as f64;
    let mut rng = Rng(42);
    let mut external = String::new();
    let mut order = 0;
    let tx = c.transaction()?;
    {
        for t in 0..TENANTS {
            tx.execute(
                "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)",
                params![format!("t{t}"), start],
            )?;
        }
        tx.execute(
            "INSERT INTO api_keys (id, name, tenant, role, hash, created_at) \
             VALUES ('key_bench_t3', 'bench-t3', 't3', 'tenant', ?1, ?2)",
            params![hex(&Sha256::digest(TENANT_KEY.as_bytes())), start],
        )?;
        let mut cb = tx.prepare(
            "INSERT INTO callbacks (id, tenant, status, url, host, method, headers, body_kind, \
             content_type, body, next_attempt_at, attempts_made, max_attempts, attempt_budget, \
             timeout_ms, metadata, created_at, updated_at, created_by, last_error, legacy_id, \
             external_id, last_status_code) VALUES (?1, ?2, ?3, ?4, ?5, 'POST', \
             '{\"X-Trace\":\"abc\"}', 'json', NULL, ?6, ?7, ?8, 11, 11, 15000, ?9, ?10, ?11, \
             'bench', ?12, ?13, ?14, ?15)",
        )?;
        let mut attempt = tx.prepare(
            "INSERT INTO attempts (callback_id, number, started_at, duration_ms, status_code, \
             error, error_detail, response_headers, response_body, recorded_at, to_status, \
             next_attempt_at, dead_letter_reason, tenant, host) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
             ?7, '{}', ?8, ?9, ?10, NULL, ?11, ?12, ?13)",
        )?;
        let mut tag =
            tx.prepare("INSERT INTO callback_tags (key, value, callback_id) VALUES (?1, ?2, ?3)")?;
        let body = br#"{"event":"order.paid","order":{"id":1234,"total":"99.90"}}"#.to_vec();
        for i in 0..count {
            let created = start + (i as f64 * step) as i64;
            let id = format!(
                "cb_{}",
                ulid::Ulid::from_parts(created as u64, u128::from(i) << 16 | 0xbe)
            );
            let tenant = format!("t{}", rng.below(TENANTS));
            let host = format!("h{}.example.com", rng.below(HOSTS));
            let url = format!("https://{host}/hooks/{i}");
            let region = ["eu", "us", "ap"][rng.below(3) as usize];
            let metadata = format!(r#"{{"order":"{i}","region":"{region}"}}"#);
            let roll = rng.below(100);
            let (status, attempts, next_at, last_error, last_code): (
                &str,
                u32,
                Option<i64>,
                Option<&str>,
                Option<u16>,
            ) = match roll {
                0..=89 if rng.below(10) == 0 => ("delivered", 2, None, None, Some(200)),
                0..=89 => ("delivered", 1, None, None, Some(200)),
                90..=94 => (
                    "failed",
                    3,
                    None,
                    Some("http_status: the receiver answered 503"),
                    Some(503),
                ),
                95..=97 => ("pending", 0, Some(now + 365 * DAY_MS), None, None),
                _ => ("cancelled", 0, None, None, None),
            };
            let legacy = (i % 100 == 7).then_some(i as i64 + 1);
            let ext = legacy.map(|l| format!("ext-{l}"));
            if let Some(e) = &ext {
                external = e.clone();
                order = i;
            }
            let mut t = created + 5;
            for n in 1..=attempts {
                let dur = rng.latency();
                let ok = status == "delivered" && n == attempts;
                let last = n == attempts;
                let to = match (ok, last, status) {
                    (true, _, _) => "delivered",
                    (false, true, "failed") => "failed",
                    _ => "pending",
                };
                attempt.execute(params![
                    id,
                    n,
                    t,
                    dur,
                    if ok { 200 } else { 503 },
                    (!ok).then_some("http_status"),
                    (!ok).then_some("the receiver answered 503"),
                    if ok { "ok" } else { "unavailable" },
                    t + dur,
                    to,
                    (to == "failed").then_some("attempts_exhausted"),
                    tenant,
                    host,
                ])?;
                t += dur + 5_000;
            }
            cb.execute(params![
                id,
                tenant,
                status,
                url,
                host,
                body,
                next_at,
                attempts,
                metadata,
                created,
                t.max(created),
                last_error,
                legacy,
                ext,
                last_code,
            ])?;
            tag.execute(params!["order", i.to_string(), id])?;
            tag.execute(params!["region", region, id])?;
        }
    }
    tx.commit()?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok((external, order))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn send(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    conn.ready().await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(load::REQUEST_TIMEOUT, conn.send_request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

fn get(addr: SocketAddr, path: &str, cookie: Option<&HeaderValue>) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, addr.to_string());
    if let Some(c) = cookie {
        b = b.header(COOKIE, c.clone());
    }
    b.body(Full::new(Bytes::new())).expect("a valid request")
}

/// Logs in with `key` through the console's form and returns the session cookie.
async fn login(conn: &mut Conn, addr: SocketAddr, key: &str) -> Result<HeaderValue, String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/console/login")
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("key={key}"))))
        .expect("a valid request");
    let (status, headers, _) = send(conn, req).await?;
    if status != StatusCode::SEE_OTHER || headers.get(LOCATION).is_none() {
        return Err(format!("login answered {status}"));
    }
    let cookie = headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or("login set no cookie")?;
    HeaderValue::from_str(cookie).map_err(|e| e.to_string())
}

async fn measure(
    addr: SocketAddr,
    runs: usize,
    external_id: &str,
    order: u64,
) -> Result<(), String> {
    let mut conn = load::connect(addr).await.map_err(|e| e.to_string())?;
    let admin = login(&mut conn, addr, API_KEY).await?;
    let tenant = login(&mut conn, addr, TENANT_KEY).await?;
    let now = chrono::Utc::now();
    let fmt = |t: chrono::DateTime<chrono::Utc>| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .replace('+', "%2B")
    };
    let old_hour = format!(
        "created_after={}&created_before={}",
        fmt(now - chrono::Duration::hours(73)),
        fmt(now - chrono::Duration::hours(72))
    );
    let last_day = format!("created_after={}", fmt(now - chrono::Duration::hours(24)));
    let mut first_id = String::new();
    let mut checks: Vec<(String, String, &HeaderValue)> = vec![
        ("console HTML".into(), "/console/".into(), &admin),
        ("session".into(), "/console/session".into(), &admin),
        ("stats 1h".into(), "/v1/stats?window=1h".into(), &admin),
        ("stats 1d".into(), "/v1/stats?window=1d".into(), &admin),
        (
            "stats 1h, tenant key".into(),
            "/v1/stats?window=1h".into(),
            &tenant,
        ),
        (
            "stats 1d, tenant key".into(),
            "/v1/stats?window=1d".into(),
            &tenant,
        ),
        ("list".into(), "/v1/callbacks?limit=50".into(), &admin),
        (
            "list, tenant key".into(),
            "/v1/callbacks?limit=50".into(),
            &tenant,
        ),
        (
            "list status=failed".into(),
            "/v1/callbacks?limit=50&status=failed".into(),
            &admin,
        ),
        (
            "list status=pending".into(),
            "/v1/callbacks?limit=50&status=pending".into(),
            &admin,
        ),
        (
            "list status=failed, tenant key".into(),
            "/v1/callbacks?limit=50&status=failed".into(),
            &tenant,
        ),
        (
            "list host".into(),
            "/v1/callbacks?limit=50&host=h7.example.com".into(),
            &admin,
        ),
        (
            "list host, tenant key".into(),
            "/v1/callbacks?limit=50&host=h7.example.com".into(),
            &tenant,
        ),
        (
            "list host + status=failed".into(),
            "/v1/callbacks?limit=50&host=h7.example.com&status=failed".into(),
            &admin,
        ),
        (
            "list an hour 3 days ago".into(),
            format!("/v1/callbacks?limit=50&{old_hour}"),
            &admin,
        ),
        (
            "list last day".into(),
            format!("/v1/callbacks?limit=50&{last_day}"),
            &admin,
        ),
        (
            "list an hour 3 days ago, tenant key".into(),
            format!("/v1/callbacks?limit=50&{old_hour}"),
            &tenant,
        ),
        (
            "list tag region=eu".into(),
            "/v1/callbacks?limit=50&metadata=region%3Deu".into(),
            &admin,
        ),
        (
            "list tag order=<one>".into(),
            format!("/v1/callbacks?limit=50&metadata=order%3D{order}"),
            &admin,
        ),
        (
            "list external_id".into(),
            format!("/v1/callbacks?limit=50&external_id={external_id}"),
            &admin,
        ),
        (
            "dead letters".into(),
            "/v1/dead-letters?limit=50".into(),
            &admin,
        ),
        (
            "dead-letter groups".into(),
            "/v1/dead-letters/groups".into(),
            &admin,
        ),
        (
            "dead-letter groups, tenant key".into(),
            "/v1/dead-letters/groups".into(),
            &tenant,
        ),
        ("destinations".into(), "/v1/destinations".into(), &admin),
        (
            "destination health".into(),
            "/v1/destinations/health".into(),
            &admin,
        ),
    ];
    // The id lookup needs an id: the newest callback's.
    let (status, _, body) =
        send(&mut conn, get(addr, "/v1/callbacks?limit=1", Some(&admin))).await?;
    if status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        first_id = v["data"][0]["id"].as_str().unwrap_or_default().to_owned();
    }
    checks.push((
        "list id".into(),
        format!("/v1/callbacks?limit=50&id={first_id}"),
        &admin,
    ));
    checks.push((
        "callback detail".into(),
        format!("/v1/callbacks/{first_id}"),
        &admin,
    ));
    checks.push((
        "callback events".into(),
        format!("/v1/callbacks/{first_id}/events"),
        &admin,
    ));

    println!("\n| request | median ms | slowest ms | items | under 200 ms |");
    println!("| --- | --- | --- | --- | --- |");
    let mut slow = 0;
    for (name, path, cookie) in &checks {
        let (status, _, body) = send(&mut conn, get(addr, path, Some(cookie))).await?;
        if !status.is_success() {
            return Err(format!(
                "{name}: GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let items = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"].as_array().map(Vec::len))
            .map_or_else(|| "-".to_owned(), |n| n.to_string());
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let (status, _, _) = send(&mut conn, get(addr, path, Some(cookie))).await?;
            times.push(t.elapsed());
            if !status.is_success() {
                return Err(format!("{name}: {status}"));
            }
        }
        times.sort();
        let median = times[times.len() / 2];
        let max = *times.last().unwrap_or(&Duration::ZERO);
        let ok = max < Duration::from_millis(200);
        if !ok {
            slow += 1;
        }
        println!(
            "| {name} | {:.1} | {:.1} | {items} | {} |",
            median.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
            if ok { "yes" } else { "**no**" }
        );
    }
    println!(
        "\n{} of {} requests answered in under 200 ms every time",
        checks.len() - slow,
        checks.len()
    );
    Ok(())
}
