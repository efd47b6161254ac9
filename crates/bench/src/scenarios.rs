//! The scenarios. Each starts what it needs (a fresh fluxcb on an empty data directory, the
//! receiver, or the trivial server), measures, stops it all, and returns its rows.
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::api::{self, Api};
use crate::clock;
use crate::httpd::Receiver;
use crate::load::{self, ClosedLoop, LoadResult};
use crate::procs::{self, Proc};
use crate::report::{Cpu, Goal, Percentiles, Run};

/// Where callbacks that must never be delivered during a run point: the discard port, which
/// nothing listens on here. They are scheduled far enough ahead that it is never dialled.
pub(crate) const NOWHERE: &str = "http://127.0.0.1:9/never";

pub struct Opts {
    pub fluxcb_bin: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub batch_size: usize,
    pub batch_connections: usize,
    pub payload_bytes: usize,
    pub ingest_due: bool,
    pub deliver_count: u64,
    pub deliver_lead: Option<Duration>,
    pub rate: f64,
    pub e2e_duration: Duration,
    pub e2e_connections: usize,
    pub memory_count: u64,
    pub server_env: Vec<(String, String)>,
}

/// The trivial server's figures from the same repetition, for the ratios.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ceiling {
    pub single_rps: f64,
    pub batch_rps: f64,
}

pub(crate) struct Snapshot {
    server: procs::ProcSample,
    bench_cpu: f64,
    machine_cpu: f64,
    pub(crate) at: Instant,
}

pub(crate) fn snapshot(pid: u32) -> Snapshot {
    Snapshot {
        server: procs::sample(pid),
        bench_cpu: procs::self_cpu_seconds(),
        machine_cpu: procs::machine_busy_seconds(),
        at: Instant::now(),
    }
}

/// Preloads `count` callbacks scheduled 300 days ahead (batches of 1,000 over 4 connections) and
/// lets the store settle (checkpoints, idle dispatcher) before memory and disk are read:
/// the count written, the preload's seconds and its CPU.
pub(crate) async fn preload_held(
    o: &Opts,
    server: &procs::Proc,
    count: u64,
) -> Result<(u64, f64, Cpu), String> {
    let item = api::callback(
        NOWHERE,
        Some(&api::rfc3339_in(Duration::from_secs(300 * 24 * 3600))),
        api::padded_payload(o.payload_bytes),
    );
    let a = snapshot(server.pid);
    let (loaded, preload_s) = api::preload(server.addr, &item, count, 1000, 4).await?;
    let b = snapshot(server.pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok((loaded, preload_s, cpu_between(&a, &b)))
}

pub(crate) fn cpu_between(a: &Snapshot, b: &Snapshot) -> Cpu {
    let server_s = b.server.cpu_s - a.server.cpu_s;
    let bench_s = b.bench_cpu - a.bench_cpu;
    Cpu {
        server_s,
        bench_s,
        others_s: (b.machine_cpu - a.machine_cpu - server_s - bench_s).max(0.0),
        window_s: (b.at - a.at).as_secs_f64(),
    }
}

/// Runs `fut` and reads the CPU counters at `from` and `until`, the measured window.
pub(crate) async fn windowed<F: Future>(
    pid: u32,
    from: Instant,
    until: Instant,
    fut: F,
) -> (F::Output, Cpu) {
    let sampler = async {
        tokio::time::sleep_until(from.into()).await;
        let a = snapshot(pid);
        tokio::time::sleep_until(until.into()).await;
        let b = snapshot(pid);
        cpu_between(&a, &b)
    };
    tokio::join!(fut, sampler)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub(crate) fn fill(run: &mut Run, result: &LoadResult, items_per_request: u64, cpu: Cpu) {
    let secs = result.elapsed.as_secs_f64();
    run.requests = result.tally.ok;
    run.items = result.tally.ok * items_per_request;
    run.seconds = secs;
    run.throughput = run.items as f64 / secs;
    run.errors = result.tally.error_count();
    run.error_detail = result.tally.errors.clone();
    run.latency = Percentiles::of(&result.tally.latency_us);
    run.cpu = cpu;
}

/// Reads the server's memory and log, then stops it.
pub(crate) async fn finish(run: &mut Run, server: Proc) {
    memory(run, server.pid);
    let (problems, last) = server.log_problems();
    if problems > 0 {
        run.fact("server_log_warnings", problems);
        run.notes
            .push(format!("last server warning: {}", last.unwrap_or_default()));
    }
    server.stop().await;
}

fn memory(run: &mut Run, pid: u32) {
    let s = procs::sample(pid);
    run.server_rss_mb = mb(s.rss_kb);
    run.server_peak_rss_mb = mb(s.hwm_kb);
}

pub(crate) fn single_body(o: &Opts, url: &str, deliver_at: Option<&str>) -> Bytes {
    let cb = api::callback(url, deliver_at, api::padded_payload(o.payload_bytes));
    Bytes::from(serde_json::to_vec(&cb).expect("JSON"))
}

fn batch_body(o: &Opts, deliver_at: Option<&str>) -> Bytes {
    let cb = api::callback(NOWHERE, deliver_at, api::padded_payload(o.payload_bytes));
    api::batch_body(&cb, o.batch_size)
}

fn post(addr: std::net::SocketAddr, path: &'static str, body: Bytes) -> load::MakeRequest {
    let auth = api::auth();
    Arc::new(move |_, _| load::request(Method::POST, addr, path, Some(&auth), body.clone()))
}

async fn timed_closed_loop(
    o: &Opts,
    server: &Proc,
    connections: usize,
    path: &'static str,
    body: Bytes,
) -> (LoadResult, Cpu) {
    let start = Instant::now();
    let cfg = ClosedLoop {
        connections,
        start,
        warmup: o.warmup,
        duration: o.duration,
        budget: None,
        fresh_connections: false,
    };
    let from = start + o.warmup;
    windowed(
        server.pid,
        from,
        from + o.duration,
        load::closed_loop(server.addr, cfg, post(server.addr, path, body), None),
    )
    .await
}

fn scheduled_ahead() -> String {
    api::rfc3339_in(Duration::from_secs(30 * 24 * 3600))
}

/// The trivial 202 server under the same load, bodies and connections as both ingest
/// scenarios.
pub async fn ceiling(o: &Opts, rep: usize) -> Result<(Vec<Run>, Ceiling), String> {
    let server = procs::start_trivial().await?;
    let at = scheduled_ahead();
    let (single, cpu) = timed_closed_loop(
        o,
        &server,
        o.connections,
        "/v1/callbacks",
        single_body(o, NOWHERE, Some(&at)),
    )
    .await;
    let mut a = Run::new("ingest", "ceiling", rep, "requests/s");
    fill(&mut a, &single, 1, cpu);
    a.latency_name = "request to answer (closed loop)".into();
    a.fact("connections", o.connections);
    let (batch, cpu) = timed_closed_loop(
        o,
        &server,
        o.batch_connections,
        "/v1/callbacks/batch",
        batch_body(o, Some(&at)),
    )
    .await;
    let mut b = Run::new("ingest-batch", "ceiling", rep, "callbacks/s");
    fill(&mut b, &batch, o.batch_size as u64, cpu);
    b.latency_name = "request to answer (closed loop)".into();
    b.fact("connections", o.batch_connections);
    b.fact("batch_size", o.batch_size);
    b.fact(
        "requests_per_s",
        batch.tally.ok as f64 / o.duration.as_secs_f64(),
    );
    memory(&mut a, server.pid);
    memory(&mut b, server.pid);
    let ceiling = Ceiling {
        single_rps: a.throughput,
        batch_rps: b.throughput,
    };
    server.stop().await;
    Ok((vec![a, b], ceiling))
}

fn compare(run: &mut Run, ceiling: Option<&Ceiling>, pick: fn(&Ceiling) -> f64, what: &str) {
    if let Some(c) = ceiling {
        let base = pick(c);
        if base > 0.0 {
            run.ratio_to_ceiling = Some(run.throughput / base);
            run.ceiling_ref = Some(format!("{what}: {base:.0}/s"));
        }
    }
}

pub async fn ingest(o: &Opts, rep: usize, ceiling: Option<&Ceiling>) -> Result<Run, String> {
    let receiver = Receiver::start().await.map_err(|e| e.to_string())?;
    let (url, at) = if o.ingest_due {
        (receiver.url("/ingest"), None)
    } else {
        (NOWHERE.to_owned(), Some(scheduled_ahead()))
    };
    let server = procs::start_fluxcb(&o.fluxcb_bin, &o.server_env).await?;
    let (result, cpu) = timed_closed_loop(
        o,
        &server,
        o.connections,
        "/v1/callbacks",
        single_body(o, &url, at.as_deref()),
    )
    .await;
    let mut run = Run::new("ingest", "fluxcb", rep, "requests/s");
    fill(&mut run, &result, 1, cpu);
    run.latency_name = "request to 202 (closed loop: queueing at saturation)".into();
    run.fact("connections", o.connections);
    run.fact(
        "request_body_bytes",
        single_body(o, &url, at.as_deref()).len(),
    );
    if o.ingest_due {
        run.fact("delivered_during_run", receiver.seen.count());
        run.notes
            .push("callbacks were due at once: the dispatcher delivered while ingesting".into());
    } else {
        run.notes.push(
            "callbacks scheduled 30 days ahead: ingest alone, no deliveries during the run".into(),
        );
    }
    compare(&mut run, ceiling, |c| c.single_rps, "trivial 202 server");
    // Issue 6's target: at least 40 % of the trivial server's rate in the same repetition.
    if let (64, Some(ratio)) = (o.connections, run.ratio_to_ceiling) {
        run.goal = Some(Goal {
            text: ">= 40% of the trivial server at 64 connections".into(),
            met: ratio >= 0.40 && run.errors == 0,
        });
    }
    finish(&mut run, server).await;
    Ok(run)
}

pub async fn ingest_batch(o: &Opts, rep: usize, ceiling: Option<&Ceiling>) -> Result<Run, String> {
    let server = procs::start_fluxcb(&o.fluxcb_bin, &o.server_env).await?;
    let at = scheduled_ahead();
    let body = batch_body(o, Some(&at));
    let body_len = body.len();
    let (result, cpu) =
        timed_closed_loop(o, &server, o.batch_connections, "/v1/callbacks/batch", body).await;
    let mut run = Run::new("ingest-batch", "fluxcb", rep, "callbacks/s");
    fill(&mut run, &result, o.batch_size as u64, cpu);
    run.latency_name = "batch request to 202 (closed loop)".into();
    run.fact("connections", o.batch_connections);
    run.fact("batch_size", o.batch_size);
    run.fact("request_body_bytes", body_len);
    run.fact(
        "requests_per_s",
        result.tally.ok as f64 / o.duration.as_secs_f64(),
    );
    compare(
        &mut run,
        ceiling,
        |c| c.batch_rps,
        "trivial 202 server, same batches",
    );
    run.goal = Some(Goal {
        text: ">= 50,000 callbacks/s".into(),
        met: run.throughput >= 50_000.0 && run.errors == 0,
    });
    finish(&mut run, server).await;
    Ok(run)
}

pub async fn deliver(o: &Opts, rep: usize, ceiling: Option<&Ceiling>) -> Result<Run, String> {
    let count = o.deliver_count;
    let receiver = Receiver::start().await.map_err(|e| e.to_string())?;
    let server = procs::start_fluxcb(&o.fluxcb_bin, &o.server_env).await?;
    let mut run = Run::new("deliver", "fluxcb", rep, "deliveries/s");
    // Due a little after the preload should end, so that the backlog is all there first and
    // the dispatcher then drains it with nothing else going on.
    let lead = o
        .deliver_lead
        .unwrap_or_else(|| Duration::from_secs_f64(2.0 + count as f64 / 10_000.0));
    let due = Instant::now() + lead;
    let item = api::callback(
        &receiver.url("/deliver"),
        Some(&api::rfc3339_in(lead)),
        api::padded_payload(o.payload_bytes),
    );
    let (loaded, preload_s) = api::preload(server.addr, &item, count, 1000, 4).await?;
    run.fact("backlog", loaded);
    run.fact("preload_s", (preload_s * 100.0).round() / 100.0);
    let early = receiver.seen.count();
    if Instant::now() > due || early > 0 {
        run.notes.push(format!(
            "the preload overran the due time ({early} delivered before it ended): pass a longer --deliver-lead-ms"
        ));
    }
    tokio::time::sleep_until(due.into()).await;
    let a = snapshot(server.pid);
    let limit = due + Duration::from_secs(60) + Duration::from_millis(count);
    while receiver.seen.count() < count && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Seen by the receiver is not yet recorded: wait until the API has no callback left in a
    // non-final state, i.e. every attempt's outcome is in the store.
    let mut api = Api::new(server.addr);
    api.wait_settled(limit).await?;
    let b = snapshot(server.pid);
    let recorded_s = (b.at - due).as_secs_f64();
    let seen = &receiver.seen;
    let first = seen.first_ns.load(Ordering::Relaxed);
    let last = seen.last_ns.load(Ordering::Relaxed);
    let (delivered, single) = api.census("delivered").await?;
    let (failed, _) = api.census("failed").await?;
    let mut checked = 0;
    for id in api.ids("delivered", 5).await? {
        let cb = api.get(&format!("/v1/callbacks/{id}")).await?;
        let attempts = cb["attempts"].as_array().cloned().unwrap_or_default();
        if attempts.len() == 1 && attempts[0]["status_code"] == json!(200) {
            checked += 1;
        }
    }
    run.requests = delivered;
    run.items = delivered;
    run.seconds = recorded_s;
    run.throughput = delivered as f64 / recorded_s;
    run.cpu = cpu_between(&a, &b);
    run.errors = count.saturating_sub(delivered) + failed;
    run.fact("received", seen.count());
    run.fact(
        "duplicates_received",
        seen.duplicates.load(Ordering::Relaxed),
    );
    run.fact(
        "receiver_rate_first_to_last_per_s",
        (seen.count() as f64 / ((last.saturating_sub(first)) as f64 / 1e9)).round(),
    );
    run.fact(
        "first_arrival_after_due_ms",
        (first as f64 - clock::ns_of(due) as f64) / 1e6,
    );
    run.fact("api_delivered", delivered);
    run.fact("api_delivered_with_exactly_one_attempt", single);
    run.fact("api_failed", failed);
    run.fact("spot_checked_attempt_records_ok", format!("{checked}/5"));
    run.notes.push(
        "throughput = backlog / (due time -> API shows none scheduled, pending or delivering)"
            .into(),
    );
    compare(
        &mut run,
        ceiling,
        |c| c.single_rps,
        "trivial 202 server, single requests",
    );
    let recorded = delivered == count && single == count && failed == 0 && checked == 5;
    run.goal = Some(Goal {
        text: ">= 10,000 deliveries/s, every attempt recorded".into(),
        met: run.throughput >= 10_000.0 && recorded,
    });
    finish(&mut run, server).await;
    Ok(run)
}

pub async fn memory_scenario(o: &Opts, rep: usize) -> Result<Run, String> {
    let count = o.memory_count;
    let server = procs::start_fluxcb(&o.fluxcb_bin, &o.server_env).await?;
    let baseline = procs::sample(server.pid);
    let (loaded, preload_s, cpu) = preload_held(o, &server, count).await?;
    let settled = procs::sample(server.pid);
    let mut api = Api::new(server.addr);
    let scheduled = api.any_in("scheduled").await?;
    let pending = api.any_in("pending").await?;
    let delivering = api.any_in("delivering").await?;
    let data = server.data_dir();
    let db = procs::file_bytes(&data.join("fluxcb.db"));
    let wal = procs::file_bytes(&data.join("fluxcb.db-wal"));
    let total = procs::dir_bytes(&data);
    let mut run = Run::new("memory", "fluxcb", rep, "callbacks/s");
    run.requests = loaded.div_ceil(1000);
    run.items = loaded;
    run.seconds = preload_s;
    run.throughput = loaded as f64 / preload_s;
    run.cpu = cpu;
    run.server_rss_mb = mb(settled.rss_kb);
    run.server_peak_rss_mb = mb(settled.hwm_kb);
    run.fact("callbacks_held", loaded);
    run.fact(
        "state",
        "scheduled (deliver_at 300 days ahead: queued, not yet due)",
    );
    run.fact(
        "api_sees_scheduled/pending/delivering",
        format!("{scheduled}/{pending}/{delivering}"),
    );
    run.fact(
        "rss_at_start_mb",
        (mb(baseline.rss_kb) * 10.0).round() / 10.0,
    );
    run.fact(
        "rss_after_preload_mb",
        (mb(settled.rss_kb) * 10.0).round() / 10.0,
    );
    run.fact(
        "rss_anon_after_preload_mb",
        (mb(settled.rss_anon_kb) * 10.0).round() / 10.0,
    );
    run.fact("peak_rss_mb", (mb(settled.hwm_kb) * 10.0).round() / 10.0);
    run.fact("data_dir_bytes", total);
    run.fact("db_bytes", db);
    run.fact("wal_bytes", wal);
    run.fact(
        "data_dir_bytes_per_callback",
        (total as f64 / loaded as f64).round(),
    );
    run.notes.push(
        "throughput is the preload's batch ingest rate (1,000 per batch, 4 connections)".into(),
    );
    let goal_rss = if count >= 1_000_000 {
        Some(Goal {
            text: "resident memory < 150 MB with 1,000,000 callbacks pending".into(),
            met: mb(settled.rss_kb) < 150.0,
        })
    } else {
        None
    };
    run.goal = goal_rss;
    let (problems, _) = server.log_problems();
    if problems > 0 {
        run.fact("server_log_warnings", problems);
    }
    server.stop().await;
    Ok(run)
}
