//! Soak: `fluxcb serve` as a real process under a steady open-loop arrival rate, while the
//! test samples the server's resident memory, open file descriptors and accepted-to-delivered
//! latency window by window. Two receivers: a healthy one (most callbacks answered at once,
//! some failing once, some answered 410) and a broken one (503 until exhausted, or a hang past
//! the timeout), whose circuit breaker opens. At the end every callback to the healthy one is
//! where the retry policy puts it with exactly the requests the policy makes, every callback
//! to the broken one is dead-lettered or held back by its breaker with each attempt recorded
//! seen by the receiver, and memory and descriptors have stopped growing.
//!
//! CI size: 20 s at 200 callbacks/s. The one-hour soak:
//! `FLUXCB_SOAK_SECS=3600 cargo test --release -p fluxcb --test soak -- --nocapture`
//! (`FLUXCB_SOAK_RATE` sets the rate; windows are a twelfth of the run, at least 5 s).
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ids_with_status, ServeProcess, TestReceiver, PROCESS_API_KEY as API_KEY};
use serde_json::{json, Value};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a callback's receiver does, chosen by its sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Behaviour {
    Ok,
    FailsOnce,
    Unavailable,
    Hangs,
    Gone,
}

impl Behaviour {
    /// Scattered, not in runs: twenty failing callbacks in a row to one origin would rightly
    /// open its circuit breaker and hold the healthy ones back with them.
    fn of(n: u64) -> Self {
        match (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100 {
            0..80 => Self::Ok,
            80..88 => Self::FailsOnce,
            88..92 => Self::Unavailable,
            92..95 => Self::Hangs,
            _ => Self::Gone,
        }
    }

    fn path(self, n: u64) -> String {
        match self {
            Self::Ok => format!("/ok/s{n}"),
            Self::FailsOnce => format!("/flaky/1/s{n}"),
            Self::Unavailable => "/status/503?retry_after=1".into(),
            Self::Hangs => "/hang/2500".into(),
            Self::Gone => "/status/410".into(),
        }
    }

    fn delivered(self) -> bool {
        matches!(self, Self::Ok | Self::FailsOnce)
    }

    /// Sent to the broken receiver, whose breaker may hold them back.
    fn broken(self) -> bool {
        matches!(self, Self::Unavailable | Self::Hangs)
    }

    /// Requests the policy makes (3 attempts at most) unless a breaker holds them back.
    fn requests(self) -> usize {
        match self {
            Self::Ok | Self::Gone => 1,
            Self::FailsOnce => 2,
            Self::Unavailable | Self::Hangs => 3,
        }
    }
}

struct Accepted {
    behaviour: Behaviour,
    at: Instant,
}

#[derive(Default)]
struct Ledger {
    accepted: HashMap<String, Accepted>,
    refused: u64,
    transport_errors: u64,
}

struct Sample {
    second: u64,
    rss_kib: u64,
    fds: usize,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_mixed_load_ends_where_the_policy_says_without_growing() {
    let secs = env("FLUXCB_SOAK_SECS", 20);
    let rate = env("FLUXCB_SOAK_RATE", 200).max(1);
    let window = (secs / 12).max(5);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log = dir.path().join("server.log");
    let rx = TestReceiver::start().await;
    let broken_rx = TestReceiver::start().await;
    let server = ServeProcess::start(&data_dir, &log, None, &[("FLUXCB_LOG_LEVEL", "warn")]).await;
    let pid = server.child.id();
    let base = server.url("");
    let client = || {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    // Ingest has a client of its own, dropped before the last sample so that its idle
    // connections do not count as the server's descriptors.
    let (ingest_http, http) = (client(), client());

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let start = Instant::now();
    let sampler = {
        let stop_at = start + Duration::from_secs(secs);
        tokio::spawn(async move {
            let mut samples = vec![Sample {
                second: 0,
                rss_kib: rss_kib(pid),
                fds: open_fds(pid),
            }];
            let mut tick = tokio::time::interval(Duration::from_secs(window));
            tick.tick().await;
            while Instant::now() < stop_at {
                tick.tick().await;
                samples.push(Sample {
                    second: start.elapsed().as_secs(),
                    rss_kib: rss_kib(pid),
                    fds: open_fds(pid),
                });
            }
            samples
        })
    };

    // Open loop: one request per tick, whatever the earlier ones are doing.
    let total = secs * rate;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..total {
        tick.tick().await;
        let behaviour = Behaviour::of(n);
        let body = json!({
            "url": if behaviour.broken() { &broken_rx } else { &rx }.url(&behaviour.path(n)),
            "payload": {"n": n},
            "max_attempts": 3,
            "timeout_ms": 1_000,
        });
        let (http, base, ledger) = (ingest_http.clone(), base.clone(), ledger.clone());
        requests.spawn(async move {
            let sent = http
                .post(format!("{base}/v1/callbacks"))
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await;
            let at = Instant::now();
            match sent {
                Ok(r) if r.status() == 202 => {
                    let v: Value = r.json().await.expect("202 body");
                    let id = v["id"].as_str().expect("id").to_owned();
                    ledger
                        .lock()
                        .unwrap()
                        .accepted
                        .insert(id, Accepted { behaviour, at });
                }
                Ok(_) => ledger.lock().unwrap().refused += 1,
                Err(_) => ledger.lock().unwrap().transport_errors += 1,
            }
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    drop(ingest_http);
    let samples = sampler.await.unwrap();

    // Drain: every callback delivered or dead-lettered.
    let (want_delivered, want_failed): (HashSet<String>, HashSet<String>) = {
        let ledger = ledger.lock().unwrap();
        let (d, f): (Vec<_>, Vec<_>) = ledger
            .accepted
            .iter()
            .partition(|(_, a)| a.behaviour.delivered());
        (
            d.into_iter().map(|(id, _)| id.clone()).collect(),
            f.into_iter().map(|(id, _)| id.clone()).collect(),
        )
    };
    let drain_start = Instant::now();
    let (delivered, failed) = loop {
        let delivered = ids_with_status(&http, &base, API_KEY, "delivered").await;
        let failed = ids_with_status(&http, &base, API_KEY, "failed").await;
        let done = delivered.len() + failed.len() >= want_delivered.len() + want_failed.len()
            || (delivered.is_superset(&want_delivered)
                && drain_start.elapsed() > Duration::from_secs(15));
        if done || drain_start.elapsed() > Duration::from_secs(60) {
            break (delivered, failed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drained_in = drain_start.elapsed();
    let final_rss = rss_kib(pid);
    let final_fds = open_fds(pid);

    // Latency of callbacks answered at once, by the window they were accepted in.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let mut first_delivery: HashMap<String, Instant> = HashMap::new();
    let mut requests_per_id: HashMap<String, usize> = HashMap::new();
    for r in rx.received().into_iter().chain(broken_rx.received()) {
        let Some(id) = r.header("webhook-id") else {
            continue;
        };
        *requests_per_id.entry(id.to_owned()).or_default() += 1;
        first_delivery.entry(id.to_owned()).or_insert(r.at);
    }
    let windows = secs.div_ceil(window) as usize;
    let mut latencies = vec![Vec::new(); windows];
    for (id, a) in &ledger.accepted {
        if a.behaviour != Behaviour::Ok {
            continue;
        }
        if let Some(at) = first_delivery.get(id) {
            let w = ((a.at - start).as_secs() / window) as usize;
            latencies[w.min(windows - 1)].push(at.saturating_duration_since(a.at));
        }
    }
    println!(
        "soak: {secs} s at {rate}/s: accepted {}, refused {}, transport errors {}, drained in {:.1} s",
        ledger.accepted.len(),
        ledger.refused,
        ledger.transport_errors,
        drained_in.as_secs_f64()
    );
    println!("  from s | RSS MiB | open fds | accepted->delivered p50 / p99 / max (ms, answered at once)");
    for (i, s) in samples.iter().enumerate() {
        let mut l = latencies.get(i).cloned().unwrap_or_default();
        l.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  {:>6} | {:>7.1} | {:>8} | {:.1} / {:.1} / {:.1} ({} callbacks)",
            s.second,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99)),
            ms(l.last().copied().unwrap_or_default()),
            l.len()
        );
    }
    println!(
        "  end    | {:>7.1} | {:>8} |",
        final_rss as f64 / 1024.0,
        final_fds
    );

    assert!(
        ledger.accepted.len() as u64 >= total * 9 / 10,
        "only {} of {total} accepted",
        ledger.accepted.len()
    );
    let missing: Vec<_> = want_delivered.difference(&delivered).take(5).collect();
    assert!(missing.is_empty(), "not delivered: {missing:?}");
    // Those not dead-lettered yet must be the broken receiver's, held back by its breaker
    // with attempts to spare, each attempt made seen by the receiver.
    let mut held = 0;
    let mut wrong = Vec::new();
    for id in want_failed.difference(&failed) {
        let v: Value = http
            .get(format!("{base}/v1/callbacks/{id}"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let behaviour = ledger.accepted[id].behaviour;
        let made = v["attempts_made"].as_u64().unwrap_or(99) as usize;
        let seen = requests_per_id.get(id).copied().unwrap_or(0);
        if behaviour.broken() && v["status"] == "pending" && made < 3 && seen == made {
            held += 1;
        } else {
            wrong.push(format!(
                "{id} ({behaviour:?}): {} after {made} attempts ({seen} seen), last error {}",
                v["status"], v["last_error"]
            ));
        }
    }
    println!(
        "  dead-lettered {} of {} to the broken receiver and the 410s; {held} held back by its circuit breaker",
        failed.len(),
        want_failed.len()
    );
    assert!(
        wrong.is_empty(),
        "not where the policy puts them: {wrong:#?}"
    );
    let never_received: Vec<_> = want_delivered
        .iter()
        .filter(|id| !requests_per_id.contains_key(*id))
        .take(5)
        .collect();
    assert!(
        never_received.is_empty(),
        "delivered but not seen: {never_received:?}"
    );
    // No crash, so no duplicates: a callback is sent again only after a failed attempt.
    let off_policy: Vec<_> = ledger
        .accepted
        .iter()
        .filter(|(id, a)| {
            let seen = requests_per_id.get(*id).copied().unwrap_or(0);
            let finished = delivered.contains(*id) || failed.contains(*id);
            if finished {
                seen != a.behaviour.requests()
            } else {
                seen > a.behaviour.requests()
            }
        })
        .take(5)
        .map(|(id, a)| (id, a.behaviour, requests_per_id.get(id)))
        .collect();
    assert!(
        off_policy.is_empty(),
        "requests not as the policy says: {off_policy:?}"
    );
    // Growth: compared with the second sample (after warm-up), not the empty process. A leak
    // per callback would show as thousands; pooled connections come and go by the hundred.
    let settled = samples.get(1).unwrap_or(&samples[0]);
    assert!(
        final_fds <= settled.fds + 256,
        "open descriptors grew from {} to {final_fds}",
        settled.fds
    );
    assert!(
        final_rss <= (settled.rss_kib * 2).max(settled.rss_kib + 64 * 1024),
        "resident memory grew from {} KiB to {final_rss} KiB",
        settled.rss_kib
    );
    server.sigkill();
}
