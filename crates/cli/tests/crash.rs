//! Crash safety of `fluxcb serve` as a real process: accepted callbacks survive `kill -9` at
//! any moment (at-least-once, with duplicates bounded by what was in flight), and SIGTERM lets
//! in-flight deliveries finish so that a clean restart sends nothing twice.
mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ids_with_status, Received, ServeProcess, TestReceiver, PROCESS_API_KEY as API_KEY};
use serde_json::{json, Value};

/// The per-destination and global caps the server runs with. The global slot is held until an
/// attempt is recorded (the destination's is freed when the receiver answers), so at most this
/// many deliveries can be sent but unrecorded when it dies: the duplicates one kill may cause.
const DESTINATION_IN_FLIGHT: usize = 64;

/// A server with the destination cap above, on `data_dir`.
async fn serve(data_dir: &Path, log: &Path, addr: Option<SocketAddr>) -> ServeProcess {
    let cap = DESTINATION_IN_FLIGHT.to_string();
    ServeProcess::start(
        data_dir,
        log,
        addr,
        &[
            ("FLUXCB_DESTINATION_MAX_IN_FLIGHT", cap.as_str()),
            ("FLUXCB_MAX_IN_FLIGHT", cap.as_str()),
        ],
    )
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the API until `want` callbacks are delivered (the receiver can see a request before
/// its attempt is recorded), for at most 30 s; returns the delivered ids last seen.
async fn wait_delivered(http: &reqwest::Client, base: &str, want: usize) -> HashSet<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = ids_with_status(http, base, API_KEY, "delivered").await;
        if delivered.len() >= want || Instant::now() >= deadline {
            return delivered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged callback id → the `n` of the payload it was created with.
    acked: HashMap<String, u64>,
    /// Batch number → the ids its acknowledgement listed, in order.
    batches: HashMap<usize, Vec<String>>,
    /// Attempts that got no answer (the server died under them).
    transport_errors: usize,
    /// Answers other than 202 (e.g. 503 while the store was busy).
    refused: usize,
    /// 202s carrying `Idempotent-Replayed`: the lost answer of a committed batch.
    replayed: usize,
}

/// Rebuilt identically for a retry, so that its Idempotency-Key fingerprint matches.
fn batch_body(b: usize, per_batch: usize, target: &str) -> Value {
    let items: Vec<Value> = (0..per_batch)
        .map(|i| json!({ "url": target, "payload": { "n": b * per_batch + i } }))
        .collect();
    json!({ "callbacks": items })
}

fn batch_key(b: usize) -> String {
    format!("crash-batch-{b}")
}

/// Sends batches `next..batches` of `per_batch` callbacks, each under its own
/// Idempotency-Key, retrying until acknowledged, as a careful client would across a crash.
async fn ingest_worker(
    base: Arc<Mutex<String>>,
    next: Arc<AtomicUsize>,
    batches: usize,
    per_batch: usize,
    target: String,
    ledger: Arc<Mutex<Ledger>>,
    pace: Duration,
) {
    let http = client();
    loop {
        let b = next.fetch_add(1, Ordering::SeqCst);
        if b >= batches {
            return;
        }
        let body = batch_body(b, per_batch, &target);
        let key = batch_key(b);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "batch {b} was not accepted within 60 s"
            );
            let url = format!("{}/v1/callbacks/batch", base.lock().unwrap());
            let sent = http
                .post(url)
                .bearer_auth(API_KEY)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await;
            let r = match sent {
                Ok(r) if r.status() == 202 => r,
                Ok(_) => {
                    ledger.lock().unwrap().refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => {
                    ledger.lock().unwrap().transport_errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let replayed = r.headers().contains_key("idempotent-replayed");
            let Ok(v) = r.json::<Value>().await else {
                // The body was cut off by a kill: the request is as uncertain as an error.
                ledger.lock().unwrap().transport_errors += 1;
                continue;
            };
            let accepted = v["callbacks"].as_array().expect("callbacks array");
            assert_eq!(accepted.len(), per_batch, "batch {b}: {v}");
            let mut ledger = ledger.lock().unwrap();
            let mut ids = Vec::with_capacity(per_batch);
            for (i, a) in accepted.iter().enumerate() {
                let id = a["id"].as_str().expect("id").to_owned();
                let n = (b * per_batch + i) as u64;
                let previous = ledger.acked.insert(id.clone(), n);
                assert!(previous.is_none(), "id {id} acknowledged twice");
                ids.push(id);
            }
            ledger.batches.insert(b, ids);
            if replayed {
                ledger.replayed += 1;
            }
            break;
        }
        // Paced so that ingest is still going when the kills come.
        tokio::time::sleep(pace).await;
    }
}

fn distinct_ids(received: &[Received]) -> HashSet<String> {
    received
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_and_delivery_loses_no_acknowledged_callback() {
    const BATCHES: usize = 30;
    const PER_BATCH: usize = 100;
    const TOTAL: usize = BATCHES * PER_BATCH;
    let started = Instant::now();
    let receiver = TestReceiver::start().await;
    let target = receiver.url("/hang/50");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");

    let server = serve(&data, &log, None).await;
    let base = Arc::new(Mutex::new(server.url("")));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(ingest_worker(
                base.clone(),
                next.clone(),
                BATCHES,
                PER_BATCH,
                target.clone(),
                ledger.clone(),
                Duration::from_millis(40),
            ))
        })
        .collect();
    let acked = || ledger.lock().unwrap().acked.len();
    let seen = || distinct_ids(&receiver.received()).len();

    // Kill 1: ingest still running, deliveries on the wire.
    assert!(
        wait_until(Duration::from_secs(60), || acked() >= 900 && seen() >= 100).await,
        "no progress before the first kill: acked {}, seen {}",
        acked(),
        seen()
    );
    let (acked1, seen1) = (acked(), seen());
    let addr = server.addr;
    server.sigkill();
    eprintln!("kill 1 (during ingest): acked {acked1}/{TOTAL}, receiver had seen {seen1}");
    let server = serve(&data, &log, Some(addr)).await;
    *base.lock().unwrap() = server.url("");

    // Kill 2: ingest finished, deliveries still on the wire.
    assert!(
        wait_until(Duration::from_secs(60), || acked() == TOTAL
            && seen() >= seen1 + 100)
        .await,
        "no progress after the first restart: acked {}, seen {}",
        acked(),
        seen()
    );
    let seen2 = seen();
    let addr = server.addr;
    server.sigkill();
    eprintln!("kill 2 (after ingest): receiver had seen {seen2}/{TOTAL}");
    if seen2 >= TOTAL {
        eprintln!("note: everything was delivered before kill 2; it hit an idle server");
    }
    let server = serve(&data, &log, Some(addr)).await;
    *base.lock().unwrap() = server.url("");
    for w in workers {
        w.await.expect("ingest worker");
    }

    let expected: HashMap<String, u64> = ledger.lock().unwrap().acked.clone();
    assert_eq!(expected.len(), TOTAL);
    let all_seen = wait_until(Duration::from_secs(90), || {
        let got = distinct_ids(&receiver.received());
        expected.keys().all(|id| got.contains(id))
    })
    .await;
    let received = receiver.received();
    let got = distinct_ids(&received);
    let lost: Vec<_> = expected.keys().filter(|id| !got.contains(*id)).collect();
    assert!(
        all_seen && lost.is_empty(),
        "lost {} acknowledged callbacks, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );

    // Every request for an id carried that id's own payload; no request came for a callback
    // nobody was told about (a retried batch must replay, not create a second set).
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        let id = r.header("webhook-id").expect("webhook-id header");
        let n = expected.get(id).unwrap_or_else(|| {
            panic!("delivered {id}, which was never acknowledged to the client")
        });
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        assert_eq!(body["n"], *n, "{id} delivered with another payload");
        *per_id.entry(id).or_default() += 1;
    }
    let duplicates = received.len() - per_id.len();
    let max_repeats = per_id.values().max().copied().unwrap_or(0);

    // The store agrees: everything ends delivered, nothing else exists.
    let http = client();
    let base_now = server.url("");
    let delivered = wait_delivered(&http, &base_now, TOTAL).await;
    let not_delivered: Vec<_> = expected
        .keys()
        .filter(|id| !delivered.contains(*id))
        .take(5)
        .collect();
    assert!(
        delivered.len() == TOTAL && not_delivered.is_empty(),
        "{} of {TOTAL} delivered per the API; e.g. not: {not_delivered:?}",
        delivered.len()
    );
    for status in ["scheduled", "pending", "delivering", "failed", "cancelled"] {
        let ids = ids_with_status(&http, &base_now, API_KEY, status).await;
        assert!(ids.is_empty(), "{} callbacks {status}", ids.len());
    }

    // Idempotency records survived both kills: resending a batch from before each one gets
    // the original answer back, and creates nothing.
    for b in [0, BATCHES / 2, BATCHES - 1] {
        let r = http
            .post(format!("{base_now}/v1/callbacks/batch"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", batch_key(b))
            .json(&batch_body(b, PER_BATCH, &target))
            .send()
            .await
            .expect("resend");
        assert_eq!(r.status(), 202, "resending batch {b}");
        assert!(
            r.headers().contains_key("idempotent-replayed"),
            "batch {b} was not replayed"
        );
        let v: Value = r.json().await.unwrap();
        let ids: Vec<String> = v["callbacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(Some(&ids), ledger.lock().unwrap().batches.get(&b));
    }
    let mut count = 0;
    for status in ["delivered", "pending", "scheduled"] {
        count += ids_with_status(&http, &base_now, API_KEY, status)
            .await
            .len();
    }
    assert_eq!(count, TOTAL, "a replayed batch created callbacks");

    let l = ledger.lock().unwrap();
    eprintln!(
        "sigkill: acknowledged {TOTAL}, lost {}, duplicates {duplicates} (max {max_repeats} \
         deliveries of one id), requests {}, ingest transport errors {}, refused {}, \
         replayed batches {}, {:.1}s",
        lost.len(),
        received.len(),
        l.transport_errors,
        l.refused,
        l.replayed,
        started.elapsed().as_secs_f64()
    );
    // A delivery keeps its global slot until its attempt is recorded, so one kill can leave at
    // most the cap sent-but-unrecorded; more would mean finished work is redone.
    assert!(
        duplicates <= 2 * DESTINATION_IN_FLIGHT,
        "{duplicates} duplicates from 2 kills: more than could have been in flight"
    );
    server.sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries_so_a_restart_sends_nothing_twice() {
    const TOTAL: usize = 150;
    let started = Instant::now();
    let receiver = TestReceiver::start().await;
    let target = receiver.url("/hang/300");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let http = client();

    let mut server = serve(&data, &log, None).await;
    let items: Vec<Value> = (0..TOTAL)
        .map(|n| json!({ "url": target, "payload": { "n": n } }))
        .collect();
    let r = http
        .post(format!("{}/v1/callbacks/batch", server.url("")))
        .bearer_auth(API_KEY)
        .json(&json!({ "callbacks": items }))
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let ids: HashSet<String> = v["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), TOTAL);

    assert!(
        wait_until(Duration::from_secs(30), || receiver.received().len() >= 20).await,
        "no delivery started"
    );
    let seen_at_term = receiver.received().len();
    let term_at = Instant::now();
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).await;
    let took = term_at.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running 20 s after SIGTERM; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(
        status.success(),
        "exit status {status} after SIGTERM; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let seen_at_exit = receiver.received().len();
    assert!(
        seen_at_exit < TOTAL,
        "everything was delivered before SIGTERM took effect; nothing was in flight"
    );

    let server = serve(&data, &log, None).await;
    assert!(
        wait_until(Duration::from_secs(60), || distinct_ids(
            &receiver.received()
        )
        .is_superset(&ids))
        .await,
        "not every callback arrived after the restart: {} of {TOTAL}",
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
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).take(5).collect();

    let delivered = wait_delivered(&http, &server.url(""), TOTAL).await;
    eprintln!(
        "sigterm: {seen_at_term} requests seen at SIGTERM, {seen_at_exit} at exit, exit after \
         {:.2}s, duplicates {duplicates}, delivered {}/{TOTAL}, {:.1}s",
        took.as_secs_f64(),
        delivered.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        duplicates, 0,
        "in-flight deliveries were sent again after a graceful stop: {twice:?}"
    );
    assert_eq!(delivered, ids);
    server.sigterm();
}

/// Many `kill -9`s at random moments: during batch ingest, with deliveries on the wire, and
/// while retention deletes delivered callbacks (retention is 2 s here, so cleanup runs every
/// second). CI size: 10 kills, 3,000 callbacks. Larger, by one command:
/// `FLUXCB_CRASH_KILLS=50 FLUXCB_CRASH_BATCHES=400 cargo test --release -p fluxcb --test crash many_kills`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_kills_at_random_moments_lose_nothing_acknowledged() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let kills = env("FLUXCB_CRASH_KILLS", 10);
    let batches = env("FLUXCB_CRASH_BATCHES", 150);
    const PER_BATCH: usize = 20;
    let started = Instant::now();
    let receiver = TestReceiver::start().await;
    // Slow enough that deliveries are still on the wire through most of the kills.
    let target = receiver.url("/hang/100");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let extra = [
        ("FLUXCB_DESTINATION_MAX_IN_FLIGHT", "64"),
        ("FLUXCB_RETENTION", "2s"),
    ];
    let mut server = ServeProcess::start(&data, &log, None, &extra).await;
    let base = Arc::new(Mutex::new(server.url("")));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(ingest_worker(
                base.clone(),
                next.clone(),
                batches,
                PER_BATCH,
                target.clone(),
                ledger.clone(),
                Duration::from_millis(150),
            ))
        })
        .collect();
    // A fixed seed: the kill moments differ between kills but not between runs.
    let mut state: u64 = 0x5eed_f1ce;
    let mut moments = Vec::new();
    for k in 0..kills {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(300 + (state >> 33) % 1200);
        tokio::time::sleep(wait).await;
        let acked = ledger.lock().unwrap().acked.len();
        let seen = distinct_ids(&receiver.received()).len();
        moments.push(format!("{k}: acked {acked}, seen {seen}"));
        let addr = server.addr;
        server.sigkill();
        server = ServeProcess::start(&data, &log, Some(addr), &extra).await;
        *base.lock().unwrap() = server.url("");
    }
    for w in workers {
        w.await.expect("ingest worker");
    }
    let expected: HashMap<String, u64> = ledger.lock().unwrap().acked.clone();
    assert_eq!(expected.len(), batches * PER_BATCH);
    let all_seen = wait_until(Duration::from_secs(120), || {
        let got = distinct_ids(&receiver.received());
        expected.keys().all(|id| got.contains(id))
    })
    .await;
    let received = receiver.received();
    let got = distinct_ids(&received);
    let lost = expected.keys().filter(|id| !got.contains(*id)).count();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        let id = r.header("webhook-id").expect("webhook-id");
        let n = expected
            .get(id)
            .unwrap_or_else(|| panic!("delivered {id}, never acknowledged"));
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        assert_eq!(body["n"], *n, "{id} delivered with another payload");
        *per_id.entry(id).or_default() += 1;
    }
    let l = ledger.lock().unwrap();
    eprintln!(
        "many kills: {kills} kills, acknowledged {}, lost {lost}, duplicates {} (max {} of one \
         id), transport errors {}, refused {}, replayed batches {}, {:.1}s\n  {}",
        expected.len(),
        received.len() - per_id.len(),
        per_id.values().max().copied().unwrap_or(0),
        l.transport_errors,
        l.refused,
        l.replayed,
        started.elapsed().as_secs_f64(),
        moments.join("\n  ")
    );
    assert!(all_seen && lost == 0, "lost {lost} acknowledged callbacks");
    let purged = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("purged"))
        .count();
    eprintln!("  retention runs that deleted something: {purged}");
    server.sigterm();
}
