//! The `flaky-receiver` scenario: the `deliver` backlog drained to a receiver that answers 503
//! to 30 % of attempts (each attempt drawn independently), so every callback is retried until
//! it gets through. It prices retries: deliveries per second and CPU per delivered callback
//! against `deliver` in the same repetition, with every attempt recorded.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{self, Api};
use crate::httpd::Receiver;
use crate::procs;
use crate::report::Run;
use crate::scenarios::{cpu_between, finish, snapshot, Opts};

/// Share of attempts the receiver fails.
pub const FAIL_PERCENT: u32 = 30;
/// Short retries, so that the run measures the work of retrying rather than the waits.
const RETRY_SCHEDULE: &str = "20ms,40ms,80ms,160ms,320ms,640ms,1s,1s,1s,1s";

pub async fn flaky_receiver(o: &Opts, rep: usize) -> Result<Run, String> {
    let count = o.deliver_count;
    let receiver = Receiver::start_with(FAIL_PERCENT, Duration::ZERO)
        .await
        .map_err(|e| e.to_string())?;
    let mut env = o.server_env.clone();
    env.push(("FLUXCB_RETRY_SCHEDULE".into(), RETRY_SCHEDULE.into()));
    let server = procs::start_fluxcb(&o.fluxcb_bin, &env).await?;
    let mut api = Api::new(server.addr);
    // Failures on purpose must not open the receiver's circuit breaker (10 in a row do).
    let (status, answer) = api
        .post(
            "/v1/destinations",
            bytes::Bytes::from(
                serde_json::to_vec(&json!({
                    "match": { "origin": receiver.url("") },
                    "settings": { "circuit_failure_threshold": 1000 },
                }))
                .expect("JSON"),
            ),
        )
        .await?;
    if status != 201 {
        return Err(format!("registering the receiver: {status} {answer}"));
    }
    let mut run = Run::new("flaky-receiver", "fluxcb", rep, "deliveries/s");
    let lead = o
        .deliver_lead
        .unwrap_or_else(|| Duration::from_secs_f64(2.0 + count as f64 / 10_000.0));
    let due = Instant::now() + lead;
    let item = api::callback(
        &receiver.url("/flaky"),
        Some(&api::rfc3339_in(lead)),
        api::padded_payload(o.payload_bytes),
    );
    let (loaded, _) = api::preload(server.addr, &item, count, 1000, 4).await?;
    run.fact("backlog", loaded);
    tokio::time::sleep_until(due.into()).await;
    let a = snapshot(server.pid);
    let limit = due + Duration::from_secs(120) + Duration::from_millis(count);
    while receiver.seen.count() < count && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    api.wait_settled(limit).await?;
    let b = snapshot(server.pid);
    let seconds = (b.at - due).as_secs_f64();
    let (delivered, first_try) = api.census("delivered").await?;
    let (dead, _) = api.census("failed").await?;
    let failed_attempts = receiver.seen.failed.load(Ordering::Relaxed);
    let attempts = receiver.seen.count() + failed_attempts;
    run.requests = attempts;
    run.items = delivered;
    run.seconds = seconds;
    run.throughput = delivered as f64 / seconds;
    run.cpu = cpu_between(&a, &b);
    run.errors = count.saturating_sub(delivered);
    run.fact("attempts", attempts);
    run.fact("attempts_failed_on_purpose", failed_attempts);
    run.fact("attempts_per_s", (attempts as f64 / seconds).round());
    run.fact(
        "attempts_per_delivered",
        (attempts as f64 / delivered.max(1) as f64 * 1000.0).round() / 1000.0,
    );
    run.fact("delivered_on_first_attempt", first_try);
    run.fact("dead_lettered", dead);
    run.fact(
        "server_cpu_ms_per_delivered",
        (run.cpu.server_s * 1000.0 / delivered.max(1) as f64 * 1000.0).round() / 1000.0,
    );
    run.fact(
        "duplicates_received",
        receiver.seen.duplicates.load(Ordering::Relaxed),
    );
    run.notes.push(format!(
        "{FAIL_PERCENT} % of attempts answered 503, retried after {RETRY_SCHEDULE}; throughput \
         = callbacks delivered / (due time -> none left open)"
    ));
    finish(&mut run, server).await;
    Ok(run)
}
