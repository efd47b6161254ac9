//! Crash accounting on the AWS backend (issue 7): `fluxcb serve --backend aws` (container mode:
//! the API, the SQS poller and the sweeper in one process, DynamoDB and SQS through the real AWS
//! SDK against moto) as a real process, killed with `kill -9` at seeded random moments while
//! clients ingest single callbacks and batches under `Idempotency-Key`s and deliveries run to a
//! loopback receiver; restarted after each kill. A ledger of every `202` is compared with what
//! the receiver saw: nothing acknowledged may be lost, and every repeat of a callback carries its
//! one `webhook-id` (and its own payload).
//!
//! A callback claimed by a killed process comes back when its claim's lease ends
//! (`aws_claim_lease`, 6 s here with a 1 s attempt timeout) and the sweeper (every second here)
//! returns it to waiting; a queue message the dead process had received but not claimed is sent
//! again once overdue by `sweep_grace` (3 s here).
//!
//! Also here: `SIGTERM` finishes what the poller has received, so a restart sends nothing twice
//! and leaves no claim for the sweeper; a callback's own timeout longer than its lease leaves
//! room for is cut to fit; an attempt whose record DynamoDB refuses for a moment (`500`s,
//! through a proxy in front of moto) is recorded within its lease, not sent twice; and a sweep
//! cut short leaves at most one chunk marked as sent without a message.
//!
//! What these tests found, since fixed: a DynamoDB `500` (moto fails a `TransactWriteItems`
//! that races another write) made ingest answer `500` instead of `503` with `Retry-After`, and
//! left an attempt that had been made unrecorded, so it was sent again after its lease; and the
//! sweeper marked every candidate before sending any message, so a process killed mid-sweep
//! (here, sweeps took seconds on a loaded emulator) left them all marked and unsent, each
//! waiting another grace period.
//!
//! CI size: 10 kills, 48 requests (16 single callbacks, 32 batches of 6: 208 callbacks), since
//! moto copies a table for every `TransactWriteItems`. Larger, with a moto running
//! (`eval "$(bash scripts/moto.sh start)"`; moto, not fluxcb, sets the pace, so a debug build
//! does), by one command:
//! `FLUXCB_CRASH_AWS_KILLS=30 FLUXCB_CRASH_AWS_REQUESTS=150 cargo test -p fluxcb --test crash_aws many_kills -- --nocapture`
//! (30 kills, 650 callbacks: 0 lost, 18 duplicates, 6.5 minutes on 2 busy cores).
mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Received, ServeProcess, TestReceiver, PROCESS_API_KEY as API_KEY};
use serde_json::{json, Value};

/// Each attempt's timeout, and the claim's lease: the shortest lease allowed for it (the
/// timeout plus 5 s to record the attempt), so that what a killed process held comes back soon.
const TIMEOUT_MS: &str = "1000";
const LEASE: &str = "6s";
/// `max_in_flight` 40: four SQS poll loops of up to 10 messages each, so at most 40 callbacks
/// are claimed by one process when it dies, which bounds the duplicates one kill can cause.
const MAX_IN_FLIGHT: usize = 40;
/// Callbacks in each batch request (every third request is a single callback instead).
const PER_BATCH: usize = 6;
/// The log line the sweeper writes for each callback whose claim ran out.
const RECOVERED_LINE: &str = "lease expired: returned to waiting";
/// The log line of an attempt whose outcome the table would not take (the emulator fails
/// some transactions under concurrent writes): sent again after its lease, by design.
const UNRECORDED_LINE: &str = "attempt made but not recorded";

/// One table and pair of queues on the emulator, and how to start `serve --backend aws` on them.
struct AwsServer {
    env: Vec<(String, String)>,
    data: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl AwsServer {
    /// `None` (having said why) when no AWS emulator can run here.
    async fn new(timeout_ms: &str, lease: &str) -> Option<Self> {
        common::aws::endpoint()?;
        let tmp = tempfile::tempdir().unwrap();
        let mut config = common::test_config(tmp.path());
        common::fresh_aws_resources(&mut config).await;
        let env = [
            ("FLUXCB_BACKEND", "aws"),
            ("FLUXCB_DYNAMODB_TABLE", config.dynamodb_table.as_str()),
            ("FLUXCB_SQS_QUEUE_URL", config.sqs_queue_url.as_str()),
            ("FLUXCB_SQS_DLQ_URL", config.sqs_dlq_url.as_str()),
            ("FLUXCB_SWEEP_INTERVAL", "1s"),
            ("FLUXCB_SWEEP_GRACE", "3s"),
            ("FLUXCB_TIMEOUT_MS", timeout_ms),
            ("FLUXCB_AWS_CLAIM_LEASE", lease),
            ("FLUXCB_MAX_IN_FLIGHT", &MAX_IN_FLIGHT.to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Some(Self {
            env,
            // Never created: the AWS backend does not touch the embedded store.
            data: tmp.path().join("unused-data-dir"),
            log: tmp.path().join("server.log"),
            _tmp: tmp,
        })
    }

    /// Reaches DynamoDB and SQS through `endpoint` instead of the emulator itself.
    fn through(mut self, endpoint: &str) -> Self {
        self.env
            .push(("AWS_ENDPOINT_URL".into(), endpoint.to_owned()));
        self
    }

    async fn start(&self, addr: Option<SocketAddr>) -> ServeProcess {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServeProcess::start(&self.data, &self.log, addr, &env).await
    }

    fn log_lines_with(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The callbacks named by the log lines that contain `needle`.
    fn callbacks_logged_with(&self, needle: &str) -> HashSet<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["callback_id"].as_str().map(str::to_owned))
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AwsServer {
    /// A failing test shows the server's warnings and errors (the log goes with the temporary
    /// directory); `FLUXCB_CRASH_AWS_KEEP_LOGS=<dir>` keeps each test's whole log there.
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("FLUXCB_CRASH_AWS_KEEP_LOGS") {
            let name = std::thread::current()
                .name()
                .unwrap_or("server")
                .replace("::", "-");
            let _ = std::fs::copy(&self.log, PathBuf::from(dir).join(format!("{name}.log")));
        }
        if std::thread::panicking() || std::env::var_os("FLUXCB_CRASH_AWS_SHOW_LOG").is_some() {
            let log = self.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                .collect();
            eprintln!(
                "server log: {} warnings and errors, the last 40:\n{}",
                lines.len(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `done` until it holds or `within` passes; returns whether it held.
async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn distinct_ids(received: &[Received]) -> HashSet<String> {
    received
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

/// Every callback id in one status.
async fn ids_with_status(http: &reqwest::Client, base: &str, status: &str) -> HashSet<String> {
    common::ids_with_status(http, base, API_KEY, status).await
}

/// POSTs `body` under `key` until it is acknowledged (a 503 while the emulator fails a
/// transaction is retried, as a client would); returns the answer.
async fn post_until_accepted(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = http
            .post(url)
            .bearer_auth(API_KEY)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        if let Ok(answer) = sent {
            let status = answer.status();
            if status == 202 {
                return answer.json().await.expect("json");
            }
            assert!(
                status == 503 || status == 409,
                "POST {url}: {status}: {}",
                answer.text().await.unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "POST {url} not accepted in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Request `r`: every third one a single callback, the others batches of [`PER_BATCH`]; the
/// payloads' `n` are unique across requests. Rebuilt identically for a retry, so that its
/// `Idempotency-Key` fingerprint matches.
fn request(r: usize, target: &str) -> (&'static str, Value) {
    let first = r * PER_BATCH;
    if r.is_multiple_of(3) {
        (
            "/v1/callbacks",
            json!({ "url": target, "payload": { "n": first } }),
        )
    } else {
        let items: Vec<Value> = (0..PER_BATCH)
            .map(|i| json!({ "url": target, "payload": { "n": first + i } }))
            .collect();
        ("/v1/callbacks/batch", json!({ "callbacks": items }))
    }
}

fn request_size(r: usize) -> usize {
    if r.is_multiple_of(3) {
        1
    } else {
        PER_BATCH
    }
}

fn request_key(r: usize) -> String {
    format!("crash-aws-{r}")
}

/// The ids an acknowledgement lists, in order (a single callback's answer is the callback).
fn acknowledged_ids(r: usize, answer: &Value) -> Vec<String> {
    if r.is_multiple_of(3) {
        vec![answer["id"].as_str().expect("id").to_owned()]
    } else {
        answer["callbacks"]
            .as_array()
            .expect("callbacks array")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_owned())
            .collect()
    }
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged callback id → the `n` of the payload it was created with.
    acked: HashMap<String, u64>,
    /// Request number → the ids its acknowledgement listed.
    requests: HashMap<usize, Vec<String>>,
    /// Attempts that got no answer, or an answer cut off (the server died under them).
    transport_errors: usize,
    /// Answers other than 202 (e.g. 503).
    refused: usize,
    /// 202s carrying `Idempotent-Replayed`: the lost answer of a committed request.
    replayed: usize,
}

/// Sends requests `next..requests`, each under its own `Idempotency-Key`, retrying until
/// acknowledged, as a careful client does across a crash.
async fn ingest_worker(
    base: Arc<Mutex<String>>,
    next: Arc<AtomicUsize>,
    requests: usize,
    target: String,
    ledger: Arc<Mutex<Ledger>>,
    pace: Duration,
) {
    let http = client();
    loop {
        let r = next.fetch_add(1, Ordering::SeqCst);
        if r >= requests {
            return;
        }
        let (path, body) = request(r, &target);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(
                Instant::now() < deadline,
                "request {r} was not accepted within 90 s"
            );
            let url = format!("{}{path}", base.lock().unwrap());
            let sent = http
                .post(url)
                .bearer_auth(API_KEY)
                .header("idempotency-key", request_key(r))
                .json(&body)
                .send()
                .await;
            let answer = match sent {
                Ok(a) if a.status() == 202 => a,
                Ok(_) => {
                    // A 503, or a 409 while the same key is still in flight: retried.
                    ledger.lock().unwrap().refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => {
                    ledger.lock().unwrap().transport_errors += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let replayed = answer.headers().contains_key("idempotent-replayed");
            let Ok(v) = answer.json::<Value>().await else {
                ledger.lock().unwrap().transport_errors += 1;
                continue;
            };
            let ids = acknowledged_ids(r, &v);
            assert_eq!(ids.len(), request_size(r), "request {r}: {v}");
            let mut ledger = ledger.lock().unwrap();
            for (i, id) in ids.iter().enumerate() {
                let n = (r * PER_BATCH + i) as u64;
                let previous = ledger.acked.insert(id.clone(), n);
                assert!(previous.is_none(), "id {id} acknowledged twice");
            }
            ledger.requests.insert(r, ids);
            if replayed {
                ledger.replayed += 1;
            }
            break;
        }
        tokio::time::sleep(pace).await;
    }
}

/// Many `kill -9`s of `serve --backend aws` at seeded random moments during ingest and delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_kills_of_serve_backend_aws_lose_nothing_acknowledged() {
    let Some(aws) = AwsServer::new(TIMEOUT_MS, LEASE).await else {
        return;
    };
    let kills = env_or("FLUXCB_CRASH_AWS_KILLS", 10);
    let requests = env_or("FLUXCB_CRASH_AWS_REQUESTS", 48);
    let total: usize = (0..requests).map(request_size).sum();
    let started = Instant::now();
    let receiver = TestReceiver::start().await;
    // Slow enough that deliveries are on the wire when the kills come.
    let target = receiver.url("/hang/200");

    let mut server = aws.start(None).await;
    let base = Arc::new(Mutex::new(server.url("")));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(ingest_worker(
                base.clone(),
                next.clone(),
                requests,
                target.clone(),
                ledger.clone(),
                Duration::from_millis(400),
            ))
        })
        .collect();
    // A fixed seed: the kill moments differ between kills but not between runs.
    let mut state: u64 = 0x0a75_c4a5;
    let mut moments = Vec::new();
    for k in 0..kills {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(700 + (state >> 33) % 1600);
        tokio::time::sleep(wait).await;
        let acked = ledger.lock().unwrap().acked.len();
        let received = receiver.received();
        let seen = distinct_ids(&received).len();
        let recent = received
            .iter()
            .filter(|r| r.at.elapsed() < Duration::from_millis(250))
            .count();
        moments.push(format!(
            "kill {}: after {:.1}s, acked {acked}/{total}, seen {seen}, {recent} requests in the last 250 ms",
            k + 1,
            started.elapsed().as_secs_f64()
        ));
        let addr = server.addr;
        server.sigkill();
        server = aws.start(Some(addr)).await;
        *base.lock().unwrap() = server.url("");
    }
    for w in workers {
        w.await.expect("ingest worker");
    }
    let ingested_after = started.elapsed();
    let expected: HashMap<String, u64> = ledger.lock().unwrap().acked.clone();
    assert_eq!(expected.len(), total);

    // The lease (6 s), a sweep (1 s) and the grace for a lost message (3 s), with room.
    let all_seen = wait_until(Duration::from_secs(60), || {
        let got = distinct_ids(&receiver.received());
        expected.keys().all(|id| got.contains(id))
    })
    .await;
    let drained_after = started.elapsed();
    let received = receiver.received();
    let got = distinct_ids(&received);
    let lost: Vec<&String> = expected.keys().filter(|id| !got.contains(*id)).collect();

    // Every request for an id carried that id's own payload, and no request came for a
    // callback nobody was told about (a retried request must replay, not create another).
    // Each payload arrived under one `webhook-id` however often it came: a repeat is the same
    // callback sent again, never a second callback.
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    let mut ids_per_n: HashMap<u64, BTreeSet<&str>> = HashMap::new();
    for r in &received {
        let id = r.header("webhook-id").expect("webhook-id header");
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        let n = body["n"].as_u64().expect("payload n");
        ids_per_n.entry(n).or_default().insert(id);
        let want = expected
            .get(id)
            .unwrap_or_else(|| panic!("delivered {id}, which was never acknowledged"));
        assert_eq!(n, *want, "{id} delivered with another payload");
        *per_id.entry(id).or_default() += 1;
    }
    let split: Vec<_> = ids_per_n.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        split.is_empty(),
        "payloads delivered under several ids: {split:?}"
    );
    let duplicates = received.len() - per_id.len();
    let max_repeats = per_id.values().max().copied().unwrap_or(0);
    let recovered = aws.log_lines_with(RECOVERED_LINE);
    let unrecorded = aws.log_lines_with(UNRECORDED_LINE);

    {
        let l = ledger.lock().unwrap();
        eprintln!(
            "aws many kills: {kills} kills, acknowledged {}, lost {}, duplicates {duplicates} \
             (max {max_repeats} deliveries of one id, each repeat with its one webhook-id), \
             leases recovered {recovered}, attempts not recorded {unrecorded}, requests {}, ingest transport errors {}, refused {}, \
             replayed {}; ingest done after {:.1}s, all seen after {:.1}s\n  {}",
            expected.len(),
            lost.len(),
            received.len(),
            l.transport_errors,
            l.refused,
            l.replayed,
            ingested_after.as_secs_f64(),
            drained_after.as_secs_f64(),
            moments.join("\n  ")
        );
    }
    if !lost.is_empty() {
        let http = client();
        for id in lost.iter().take(5) {
            let r = http
                .get(server.url(&format!("/v1/callbacks/{id}")))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap();
            eprintln!("not delivered: {}", r.text().await.unwrap_or_default());
        }
    }
    assert!(
        all_seen && lost.is_empty(),
        "lost {} acknowledged callbacks, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    // One kill leaves at most what one process had claimed; more would mean finished work is
    // redone.
    assert!(
        duplicates <= kills * MAX_IN_FLIGHT,
        "{duplicates} duplicates from {kills} kills: more than could have been in flight"
    );

    // The table agrees: everything ends delivered, nothing else exists.
    let http = client();
    let base_now = server.url("");
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let delivered = ids_with_status(&http, &base_now, "delivered").await;
        if delivered.len() >= total || Instant::now() >= deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expected_ids: HashSet<String> = expected.keys().cloned().collect();
    assert_eq!(
        delivered, expected_ids,
        "delivered per the API differs from what was acknowledged"
    );
    for status in ["scheduled", "pending", "delivering", "failed", "cancelled"] {
        let ids = ids_with_status(&http, &base_now, status).await;
        assert!(ids.is_empty(), "{} callbacks {status}: {ids:?}", ids.len());
    }

    // Idempotency records survived the kills: resending a request gets the original answer
    // back and creates nothing.
    for r in [0, 1, requests / 2, requests - 1] {
        let (path, body) = request(r, &target);
        let answer = http
            .post(format!("{base_now}{path}"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", request_key(r))
            .json(&body)
            .send()
            .await
            .expect("resend");
        assert_eq!(answer.status(), 202, "resending request {r}");
        assert!(
            answer.headers().contains_key("idempotent-replayed"),
            "request {r} was not replayed"
        );
        let v: Value = answer.json().await.unwrap();
        assert_eq!(
            Some(&acknowledged_ids(r, &v)),
            ledger.lock().unwrap().requests.get(&r)
        );
    }
    assert_eq!(
        ids_with_status(&http, &base_now, "delivered").await.len(),
        total,
        "a replayed request created callbacks"
    );
    // The kills caught callbacks claimed and in flight, which came back through their leases.
    assert!(
        kills == 0 || recovered > 0,
        "no kill caught a claimed callback: lease recovery was not exercised"
    );
    eprintln!(
        "aws many kills: checks done after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    server.sigterm();
}

/// SIGTERM on AWS: the poller stops receiving, the messages it has received are handled (their
/// attempts finish and are recorded), and the process exits; a restart then sends nothing twice
/// and has no claim to wait out. The lease is long here (30 s): a graceful stop must leave
/// nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_serve_backend_aws_finishes_claimed_attempts_so_nothing_is_sent_twice() {
    let Some(aws) = AwsServer::new("3000", "30s").await else {
        return;
    };
    let total = env_or("FLUXCB_CRASH_AWS_SIGTERM_CALLBACKS", 80);
    let started = Instant::now();
    let receiver = TestReceiver::start().await;
    // Each request hangs 1 s: those that arrived within 1 s before the signal were still on
    // the wire when it came.
    const HANG: Duration = Duration::from_millis(1000);
    let target = receiver.url(&format!("/hang/{}", HANG.as_millis()));
    let http = client();

    let mut server = aws.start(None).await;
    let mut ids = HashSet::new();
    for (b, chunk) in (0..total).collect::<Vec<_>>().chunks(40).enumerate() {
        let items: Vec<Value> = chunk
            .iter()
            .map(|n| json!({ "url": target, "payload": { "n": n } }))
            .collect();
        let v = post_until_accepted(
            &http,
            &server.url("/v1/callbacks/batch"),
            &format!("sigterm-{b}"),
            &json!({ "callbacks": items }),
        )
        .await;
        for c in v["callbacks"].as_array().unwrap() {
            ids.insert(c["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), total);

    // The signal comes while a request that arrived a moment ago is still hanging (ingest of
    // the second batch can outlast the first deliveries, so a count alone is not enough).
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got = receiver.received();
            got.len() >= 10
                && got
                    .iter()
                    .any(|r| r.at.elapsed() < Duration::from_millis(300))
        })
        .await,
        "no delivery on the wire"
    );
    let term_at = Instant::now();
    server.sigterm();
    let at_term = receiver.received();
    let seen_at_term = at_term.len();
    let on_the_wire: HashSet<String> = at_term
        .iter()
        .filter(|r| term_at.saturating_duration_since(r.at) < HANG)
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    let status = server.wait_exit(Duration::from_secs(30)).await;
    let took = term_at.elapsed();
    let status =
        status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM; log:\n{}", aws.log()));
    assert!(
        status.success(),
        "exit status {status} after SIGTERM; log:\n{}",
        aws.log()
    );
    let seen_at_exit = receiver.received().len();
    assert!(
        seen_at_exit < total,
        "everything was delivered before SIGTERM took effect; nothing was left to deliver"
    );
    assert!(
        !on_the_wire.is_empty(),
        "no attempt was on the wire at SIGTERM; the test proves nothing"
    );
    // The process waited for what it had on the wire.
    assert!(
        took >= Duration::from_millis(200),
        "exited {took:?} after SIGTERM with {} attempts on the wire",
        on_the_wire.len()
    );

    let server = aws.start(None).await;
    // With a 30 s lease, a claim left behind would show here as a wait of 30 s or more.
    assert!(
        wait_until(Duration::from_secs(90), || distinct_ids(
            &receiver.received()
        )
        .is_superset(&ids))
        .await,
        "not every callback arrived after the restart: {} of {total}",
        distinct_ids(&receiver.received()).len()
    );
    let received = receiver.received();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &received {
        let id = r.header("webhook-id").expect("webhook-id").to_owned();
        assert!(ids.contains(&id), "unknown id {id}");
        *per_id.entry(id).or_default() += 1;
    }
    let duplicates = received.len() - per_id.len();
    let twice: HashSet<String> = per_id
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    let recovered = aws.callbacks_logged_with(RECOVERED_LINE);
    // The one cause of a repeat that has nothing to do with the stop: the table refused an
    // attempt's record (the emulator fails transactions under concurrent writes) for longer
    // than the deliverer retries, so the callback went out again after its lease.
    let unrecorded = aws.callbacks_logged_with(UNRECORDED_LINE);
    eprintln!(
        "aws sigterm: {seen_at_term} requests seen at SIGTERM ({} on the wire), {seen_at_exit} \
         at exit, exit after {:.2}s, duplicates {duplicates}, leases recovered {}, attempts not \
         recorded {}, {}/{total} delivered, {:.1}s",
        on_the_wire.len(),
        took.as_secs_f64(),
        recovered.len(),
        unrecorded.len(),
        per_id.len(),
        started.elapsed().as_secs_f64()
    );
    let by_the_stop: Vec<_> = twice.difference(&unrecorded).collect();
    assert!(
        by_the_stop.is_empty(),
        "claimed deliveries were sent again after a graceful stop: {by_the_stop:?}"
    );
    let left_behind: Vec<_> = recovered.difference(&unrecorded).collect();
    assert!(
        left_behind.is_empty(),
        "a graceful stop left claims behind for the sweeper to recover: {left_behind:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = ids_with_status(&http, &server.url(""), "delivered").await;
        if delivered == ids {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} delivered per the API",
            delivered.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.sigterm();
}

/// A callback may ask for a longer timeout (up to 60 s) than the lease leaves room for: its
/// attempt is cut to the lease minus the time to record it, so the lease never ends while the
/// attempt is still on the wire (which would let the sweeper hand it to a second worker, and
/// the receiver would get it twice at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_never_outlasts_its_claims_lease() {
    let Some(aws) = AwsServer::new(TIMEOUT_MS, LEASE).await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    let server = aws.start(None).await;
    let http = client();
    let v = post_until_accepted(
        &http,
        &server.url("/v1/callbacks"),
        "long-timeout",
        &json!({
            "url": receiver.url("/hang/20000"),
            "payload": { "n": 1 },
            "timeout_ms": 60_000,
            "max_attempts": 2,
        }),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_owned();
    // Two attempts of at most 1 s each (6 s lease − 5 s), then dead-lettered. With the
    // callback's own 60 s, the first attempt would still be hanging when the lease ended, the
    // sweeper would hand the callback to another poll loop, and the receiver would answer the
    // first attempt with 200 after 20 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let r = http
            .get(server.url(&format!("/v1/callbacks/{id}")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        if v["status"] == "failed" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "not dead-lettered after two cut attempts: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{v}");
    for a in attempts {
        assert_eq!(a["error"], "timeout", "{v}");
        let ms = a["duration_ms"].as_u64().unwrap();
        assert!((900..3_000).contains(&ms), "an attempt took {ms} ms: {v}");
    }
    let got = receiver.received();
    assert_eq!(got.len(), 2, "the receiver saw {} requests", got.len());
    // The second attempt followed the first's cut (1 s) and its 50 ms retry, not a lease
    // recovery (6 s and a sweep later).
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(5),
        "the second attempt started {gap:?} after the first"
    );
    server.sigterm();
}

/// A loopback HTTP proxy in front of the emulator that answers `500` with an empty body (as a
/// failing front end might) to the next `fail` calls of one operation (`X-Amz-Target` ending
/// in `operation`: DynamoDB's `TransactWriteItems`, SQS's `SendMessageBatch`), and passes
/// everything else through.
struct FailingProxy {
    url: String,
    fail: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    operation: &'static str,
    http: reqwest::Client,
    fail: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

async fn forward(
    axum::extract::State(st): axum::extract::State<ProxyState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if target.ends_with(st.operation)
        && st
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        st.failed.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = st
        .http
        .request(method, format!("{}{path}", st.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let Ok(answer) = request.send().await else {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = axum::response::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    response.body(axum::body::Body::from(body)).unwrap()
}

impl FailingProxy {
    async fn start(upstream: &str, operation: &'static str) -> Self {
        let fail = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            operation,
            http: reqwest::Client::new(),
            fail: fail.clone(),
            failed: failed.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, fail, failed }
    }
}

/// An attempt was made and its record refused for a moment (DynamoDB answering 500 to the
/// transaction, more times than the SDK retries): the deliverer records it again within the
/// claim's lease instead of leaving the callback for the sweeper, which would send it a second
/// time once the lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_record_fails_for_a_moment_is_recorded_within_its_lease() {
    let Some(moto) = common::aws::endpoint() else {
        return;
    };
    let proxy = FailingProxy::start(&moto, ".TransactWriteItems").await;
    let Some(aws) = AwsServer::new(TIMEOUT_MS, LEASE).await else {
        return;
    };
    let aws = aws.through(&proxy.url);
    let receiver = TestReceiver::start().await;
    let server = aws.start(None).await;
    let http = client();
    let v = post_until_accepted(
        &http,
        &server.url("/v1/callbacks"),
        "record-fails",
        &json!({ "url": receiver.url("/hang/200"), "payload": { "n": 1 } }),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_owned();
    // Ingest's transaction is behind us; the next one is the attempt's record (a claim is a
    // plain update). Four failures: the SDK's three tries of the first record, and one more.
    proxy.fail.store(4, Ordering::SeqCst);
    receiver
        .wait_for("/hang/200", 1, Duration::from_secs(20))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let r = http
            .get(server.url(&format!("/v1/callbacks/{id}")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        if v["status"] == "delivered" {
            break v;
        }
        assert!(Instant::now() < deadline, "not delivered: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        proxy.failed.load(Ordering::SeqCst),
        4,
        "the record was not refused"
    );
    // Past the lease and a sweep: nothing comes back for a second delivery.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let got = receiver.received();
    let retried = aws.log_lines_with("trying again within the lease");
    eprintln!(
        "record refused {} times, retried by the deliverer {retried} times, deliveries {}",
        proxy.failed.load(Ordering::SeqCst),
        got.len()
    );
    assert_eq!(got.len(), 1, "delivered {} times", got.len());
    assert!(retried >= 1, "the deliverer did not retry the record");
    assert_eq!(aws.log_lines_with(RECOVERED_LINE), 0, "the lease ran out");
    server.sigterm();
}

/// The sweeper marks each candidate before sending its message (so that two sweepers never
/// both send), and used to mark every candidate before sending any: a sweep cut short (a
/// crash, the Lambda function's timeout under a big backlog, a failed send) left all of them
/// marked with no message, each then waiting another grace period, and a backlog too big to
/// mark within the function's timeout never moved. Now each chunk is sent as soon as it is
/// marked: a sweep whose sends fail leaves at most one chunk marked, and the rest are found
/// by the next sweep at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_cut_short_leaves_at_most_one_chunk_marked_without_a_message() {
    use fluxcb_aws::queue::SqsQueue;
    use fluxcb_aws::store::{DynamoStore, StoreRetention};
    use fluxcb_aws::sweeper::{Sweeper, CHUNK};
    use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback};
    use fluxcb_core::id::CallbackId;
    use fluxcb_core::ports::{CallbackStore, IngestBatch};
    use fluxcb_core::tenant::TenantId;

    const LOST: usize = 100;
    let Some(moto) = common::aws::endpoint() else {
        return;
    };
    let proxy = FailingProxy::start(&moto, ".SendMessageBatch").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(tmp.path());
    common::fresh_aws_resources(&mut config).await;
    let clients = fluxcb_aws::AwsClients::from_env().await;
    // Long enough that a callback marked by the failed sweep is not a candidate again while
    // the test counts them.
    let grace = chrono::TimeDelta::seconds(60);
    let store = Arc::new(
        DynamoStore::new(
            clients.dynamodb.clone(),
            config.dynamodb_table.clone(),
            StoreRetention::default(),
        )
        .with_sweep_grace(grace),
    );
    // Written as ingest writes them two minutes ago, with no message sent after: lost sends,
    // every one a candidate now that the grace period has passed.
    let now = chrono::Utc::now();
    let written = now - chrono::TimeDelta::minutes(2);
    let callbacks: Vec<Callback> = (0..LOST)
        .map(|n| {
            let spec = NewCallback {
                url: "http://127.0.0.1:9/lost".into(),
                payload: Some(json!({ "n": n })),
                ..NewCallback::default()
            }
            .validate(now)
            .unwrap();
            Callback::accept(
                CallbackId::generate(),
                TenantId::default_tenant(),
                spec,
                &CallbackDefaults {
                    max_attempts: 3,
                    timeout_ms: 1_000,
                },
                "test".into(),
                written,
            )
        })
        .collect();
    let ids: HashSet<String> = callbacks.iter().map(|c| c.id.to_string()).collect();
    store
        .ingest(IngestBatch {
            tenant: TenantId::default_tenant(),
            callbacks,
            idempotency: None,
        })
        .await
        .unwrap();
    let candidates = |store: Arc<DynamoStore>| async move {
        store
            .sweep_candidates(chrono::Utc::now(), 10_000)
            .await
            .unwrap()
            .len()
    };
    assert_eq!(candidates(store.clone()).await, LOST);

    // The sweeper's queue goes through the proxy, which refuses every send.
    let sqs = aws_sdk_sqs::Client::from_conf(
        clients
            .sqs
            .config()
            .to_builder()
            .endpoint_url(&proxy.url)
            .build(),
    );
    let sweeper = Sweeper {
        store: store.clone(),
        queue: SqsQueue::new(
            sqs,
            config.sqs_queue_url.clone(),
            config.sqs_dlq_url.clone(),
        ),
        limit: 10_000,
    };
    proxy.fail.store(usize::MAX, Ordering::SeqCst);
    assert!(sweeper.sweep_once(chrono::Utc::now()).await.is_err());
    let left = candidates(store.clone()).await;
    let marked = LOST - left;
    eprintln!(
        "sweep with failing sends: {marked} of {LOST} marked without a message, {} sends refused",
        proxy.failed.load(Ordering::SeqCst)
    );
    assert!(proxy.failed.load(Ordering::SeqCst) > 0, "no send was tried");
    assert!(
        marked <= CHUNK,
        "{marked} callbacks marked as sent with no message sent (at most one chunk, {CHUNK})"
    );

    // The queue answers again: the next sweep sends what it did not mark, and the marked
    // ones go out once their grace period has passed (a sweep a minute on). Delayed, never
    // lost.
    proxy.fail.store(0, Ordering::SeqCst);
    sweeper.sweep_once(chrono::Utc::now()).await.unwrap();
    let later = chrono::Utc::now() + grace + chrono::TimeDelta::seconds(1);
    sweeper.sweep_once(later).await.unwrap();
    let mut sent = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent.len() < LOST && Instant::now() < deadline {
        let out = clients
            .sqs
            .receive_message()
            .queue_url(&config.sqs_queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            let body: Value = serde_json::from_str(m.body().unwrap_or_default()).unwrap();
            if let Some(id) = body["callback_id"].as_str() {
                sent.insert(id.to_owned());
            }
        }
    }
    assert_eq!(sent, ids, "every lost send was made again");
}
