//! The `backlog` scenario: how fluxcb behaves with a huge number of pending callbacks. On an
//! empty store it measures single ingest; then it batch-ingests `--backlog-count` callbacks
//! scheduled far ahead (1 million by default, 10 million for issue 6's figures), and measures
//! with that backlog held: resident memory, disk bytes per callback, single ingest again,
//! delivery of a smaller due batch to a receiver, and the time from a restart to serving.
use std::time::{Duration, Instant};

use crate::api;
use crate::httpd::Receiver;
use crate::load::{self, ClosedLoop};
use crate::procs::{self, Proc};
use crate::report::{Goal, Run};
use crate::scenarios::{preload_held, single_body, windowed, Opts, NOWHERE};

/// Callbacks due at once that are delivered while the backlog is held.
const DUE_BATCH: u64 = 20_000;
/// Measured seconds of each single-ingest probe.
const PROBE: Duration = Duration::from_secs(5);

/// Single `POST /v1/callbacks` for [`PROBE`] at the bench's connections: requests per second.
async fn ingest_probe(o: &Opts, server: &Proc) -> (f64, u64) {
    let at = api::rfc3339_in(Duration::from_secs(30 * 24 * 3600));
    let body = single_body(o, NOWHERE, Some(&at));
    let auth = api::auth();
    let addr = server.addr;
    let make: load::MakeRequest = std::sync::Arc::new(move |_, _| {
        load::request(
            http::Method::POST,
            addr,
            "/v1/callbacks",
            Some(&auth),
            body.clone(),
        )
    });
    let start = Instant::now();
    let cfg = ClosedLoop {
        connections: o.connections,
        start,
        warmup: Duration::from_secs(1),
        duration: PROBE,
        budget: None,
        fresh_connections: false,
    };
    let from = start + cfg.warmup;
    let (result, _) = windowed(
        server.pid,
        from,
        from + PROBE,
        load::closed_loop(addr, cfg, make, None),
    )
    .await;
    (
        result.tally.ok as f64 / PROBE.as_secs_f64(),
        result.tally.error_count(),
    )
}

pub async fn backlog(o: &Opts, rep: usize, count: u64) -> Result<Run, String> {
    let server = procs::start_fluxcb(&o.fluxcb_bin, &o.server_env).await?;
    let (empty_rps, _) = ingest_probe(o, &server).await;
    let (loaded, preload_s, cpu) = preload_held(o, &server, count).await?;
    let held = procs::sample(server.pid);
    let data = server.data_dir();
    let disk = procs::dir_bytes(&data);
    let (full_rps, probe_errors) = ingest_probe(o, &server).await;

    // A due batch delivered while the backlog is held.
    let receiver = Receiver::start().await.map_err(|e| e.to_string())?;
    let lead = Duration::from_secs(3);
    let due_item = api::callback(
        &receiver.url("/due"),
        Some(&api::rfc3339_in(lead)),
        api::padded_payload(o.payload_bytes),
    );
    let due = Instant::now() + lead;
    api::preload(server.addr, &due_item, DUE_BATCH, 1000, 4).await?;
    tokio::time::sleep_until(due.into()).await;
    let limit = due + Duration::from_secs(120);
    while receiver.seen.count() < DUE_BATCH && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = receiver
        .seen
        .last_ns
        .load(std::sync::atomic::Ordering::Relaxed);
    let deliver_s = last.saturating_sub(crate::clock::ns_of(due)) as f64 / 1e9;
    let delivered = receiver.seen.count();

    // Restart with the backlog: from spawn to `/readyz` answering 200.
    let (problems, _) = server.log_problems();
    let dir = server.stop_keeping().await;
    let restart_began = Instant::now();
    let again = procs::start_fluxcb_in(&o.fluxcb_bin, &o.server_env, dir).await?;
    let restart_s = restart_began.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_restart = procs::sample(again.pid);

    let mut run = Run::new("backlog", "fluxcb", rep, "callbacks/s");
    run.requests = loaded.div_ceil(1000);
    run.items = loaded;
    run.seconds = preload_s;
    run.throughput = loaded as f64 / preload_s;
    run.cpu = cpu;
    run.server_rss_mb = held.rss_kb as f64 / 1024.0;
    run.server_peak_rss_mb = held.hwm_kb as f64 / 1024.0;
    run.errors = probe_errors + DUE_BATCH.saturating_sub(delivered);
    let per_callback = disk as f64 / (loaded + DUE_BATCH) as f64;
    let ratio = full_rps / empty_rps.max(1.0);
    run.fact("callbacks_held", loaded);
    run.fact("single_ingest_empty_store_per_s", empty_rps.round());
    run.fact("single_ingest_with_backlog_per_s", full_rps.round());
    run.fact("single_ingest_ratio", (ratio * 1000.0).round() / 1000.0);
    run.fact(
        "rss_with_backlog_mb",
        (held.rss_kb as f64 / 102.4).round() / 10.0,
    );
    run.fact("data_dir_bytes", disk);
    run.fact("data_dir_bytes_per_callback", per_callback.round());
    run.fact("due_batch", DUE_BATCH);
    run.fact("due_batch_delivered", delivered);
    run.fact(
        "due_batch_deliveries_per_s",
        (delivered as f64 / deliver_s.max(1e-9)).round(),
    );
    run.fact("restart_to_ready_s", (restart_s * 1000.0).round() / 1000.0);
    run.fact(
        "rss_after_restart_mb",
        (after_restart.rss_kb as f64 / 102.4).round() / 10.0,
    );
    if problems > 0 {
        run.fact("server_log_warnings", problems);
    }
    run.notes.push(format!(
        "throughput is the preload's batch ingest rate (1,000 per batch, 4 connections); the \
         backlog is scheduled 300 days ahead; payload padding {} bytes",
        o.payload_bytes
    ));
    run.goal = Some(Goal {
        text: "RSS <= 200 MB, ingest >= 70% of empty, restart <= 2 s, <= 1 KiB per callback".into(),
        met: held.rss_kb <= 200 * 1024
            && ratio >= 0.70
            && restart_s <= 2.0
            && per_callback <= 1024.0
            && run.errors == 0,
    });
    again.stop().await;
    Ok(run)
}
