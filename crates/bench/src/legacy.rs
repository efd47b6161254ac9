//! The legacy pair (`../shared/legacy`: flux-callme-service, flux-callback-service and its
//! `send_due_callbacks` worker) on PostgreSQL, as production ran it, under the same ingest and
//! delivery loads as fluxcb, so that the report can show fluxcb as multiples of legacy from the
//! same run on the same machine. Its own `run.sh` starts it (its venv lives under
//! `--legacy-home` and is kept between runs), on a fresh database that is dropped afterwards.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::Method;
use serde_json::json;

use crate::httpd::Receiver;
use crate::load::{self, ClosedLoop};
use crate::procs::{self, ProcSample};
use crate::report::{Cpu, Run};
use crate::scenarios::{fill, Opts, NOWHERE};

/// The API token `run.sh` creates for user `ops`.
const TOKEN: &str = "fluxcb-bench-legacy-token";
/// The PostgreSQL server the machine runs (trust authentication on loopback).
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

pub struct LegacyOpts {
    /// The folder holding `run.sh`.
    pub dir: PathBuf,
    /// `LEGACY_HOME`: venv, pids and logs.
    pub home: PathBuf,
    /// Rows preloaded for `deliver`.
    pub deliver_count: u64,
}

/// A running legacy pair on its own database. Stopped, and its database dropped, when dropped.
struct Legacy {
    script: PathBuf,
    home: PathBuf,
    database: String,
    callme: SocketAddr,
    stopped: bool,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn psql(database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("{POSTGRES}/{database}"))
        .args(["-c", sql])
        .output()
        .map_err(|e| format!("running psql (PostgreSQL's client is needed for --legacy): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Legacy {
    async fn start(o: &LegacyOpts) -> Result<Self, String> {
        let script = o.dir.join("run.sh");
        if !script.exists() {
            return Err(format!(
                "{} not found: run from the repository root, or pass --legacy-dir",
                script.display()
            ));
        }
        std::fs::create_dir_all(&o.home).map_err(|e| e.to_string())?;
        let database = format!("fluxcb_bench_legacy_{}", std::process::id());
        psql("postgres", &format!("DROP DATABASE IF EXISTS {database}"))?;
        psql("postgres", &format!("CREATE DATABASE {database}"))?;
        let callme = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let callback_port = free_port()?;
        let mut legacy = Self {
            script,
            home: o.home.clone(),
            database,
            callme,
            stopped: false,
        };
        let out = legacy
            .run_sh("start")
            .env("LEGACY_CALLME_PORT", callme.port().to_string())
            .env("LEGACY_CALLBACK_PORT", callback_port.to_string())
            .output()
            .map_err(|e| format!("running {}: {e}", legacy.script.display()))?;
        if !out.status.success() {
            legacy.stop();
            return Err(format!(
                "the legacy pair did not start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(legacy)
    }

    fn run_sh(&self, action: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.script)
            .arg(action)
            .env("LEGACY_HOME", &self.home)
            .env("LEGACY_TOKEN", TOKEN)
            .env(
                "LEGACY_DATABASE_URL",
                format!("{POSTGRES}/{}", self.database),
            );
        cmd
    }

    /// Every process of the pair: the two gunicorn masters, their workers, and the sender.
    fn pids(&self) -> Vec<u32> {
        let roots: Vec<u32> = ["callme", "callback", "sender"]
            .iter()
            .filter_map(|n| std::fs::read_to_string(self.home.join(format!("{n}.pid"))).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        let mut all = roots.clone();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid.is_some_and(|p| roots.contains(&p)) && !all.contains(&pid) {
                all.push(pid);
            }
        }
        all
    }

    fn sample(&self) -> ProcSample {
        self.pids()
            .iter()
            .map(|p| procs::sample(*p))
            .fold(ProcSample::default(), |a, b| ProcSample {
                cpu_s: a.cpu_s + b.cpu_s,
                rss_kb: a.rss_kb + b.rss_kb,
                hwm_kb: a.hwm_kb + b.hwm_kb,
                rss_anon_kb: a.rss_anon_kb + b.rss_anon_kb,
            })
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self.run_sh("stop").output();
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
        );
    }
}

impl Drop for Legacy {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Window {
    legacy: ProcSample,
    bench: f64,
    machine: f64,
    at: Instant,
}

fn window(legacy: &Legacy) -> Window {
    Window {
        legacy: legacy.sample(),
        bench: procs::self_cpu_seconds(),
        machine: procs::machine_busy_seconds(),
        at: Instant::now(),
    }
}

fn cpu(a: &Window, b: &Window) -> Cpu {
    let server_s = b.legacy.cpu_s - a.legacy.cpu_s;
    let bench_s = b.bench - a.bench;
    Cpu {
        server_s,
        bench_s,
        others_s: (b.machine - a.machine - server_s - bench_s).max(0.0),
        window_s: (b.at - a.at).as_secs_f64(),
    }
}

fn auth() -> HeaderValue {
    HeaderValue::from_str(&format!("Token {TOKEN}")).expect("a valid header")
}

/// `POST /api/callbacks/` at the same connections, payload and schedule as fluxcb's `ingest`
/// (a new connection per request: gunicorn's sync workers close each one, as in production).
pub async fn ingest(o: &Opts, lo: &LegacyOpts, rep: usize) -> Result<Run, String> {
    let legacy = Legacy::start(lo).await?;
    let body = Bytes::from(
        serde_json::to_vec(&json!({
            "url": NOWHERE,
            "payload": crate::api::padded_payload(o.payload_bytes),
            "callback_time": crate::api::rfc3339_in(Duration::from_secs(30 * 24 * 3600)),
        }))
        .expect("JSON"),
    );
    let addr = legacy.callme;
    let make: load::MakeRequest = Arc::new(move |_, _| {
        load::request(
            Method::POST,
            addr,
            "/api/callbacks/",
            Some(&auth()),
            body.clone(),
        )
    });
    let start = Instant::now();
    let cfg = ClosedLoop {
        connections: o.connections,
        start,
        warmup: o.warmup,
        duration: o.duration,
        budget: None,
        fresh_connections: true,
    };
    let from = start + o.warmup;
    let sampler = async {
        tokio::time::sleep_until(from.into()).await;
        let a = window(&legacy);
        tokio::time::sleep_until((from + o.duration).into()).await;
        cpu(&a, &window(&legacy))
    };
    let (result, used) = tokio::join!(load::closed_loop(addr, cfg, make, None), sampler);
    let mut run = Run::new("ingest", "legacy", rep, "requests/s");
    fill(&mut run, &result, 1, used);
    run.latency_name = "request to 201 (closed loop: queueing at saturation)".into();
    run.fact("connections", o.connections);
    memory(&mut run, &legacy);
    run.notes.push(
        "legacy on PostgreSQL (2 gunicorn workers); server CPU is the pair's processes, \
         PostgreSQL's is under `others`"
            .into(),
    );
    Ok(run)
}

/// A backlog of `deliver_count` rows due at once, drained by legacy's worker to the same
/// loopback receiver as fluxcb's `deliver`. The rows are inserted with SQL (one statement), as
/// many as the API would have made.
pub async fn deliver(o: &Opts, lo: &LegacyOpts, rep: usize) -> Result<Run, String> {
    let count = lo.deliver_count;
    let receiver = Receiver::start().await.map_err(|e| e.to_string())?;
    let legacy = Legacy::start(lo).await?;
    let lead = Duration::from_secs(2);
    let payload = crate::api::padded_payload(o.payload_bytes);
    let pad = payload["pad"].as_str().unwrap_or_default().to_owned();
    let loaded_at = Instant::now();
    psql(
        &legacy.database,
        &format!(
            "INSERT INTO callme_callback (url, method, headers, payload, callback_time, status, \
             attempts, max_attempts, last_error, created_at, updated_at) \
             SELECT '{url}', 'POST', '{{}}'::jsonb, jsonb_build_object('n', g, 'pad', '{pad}'), \
             now() + interval '{lead_ms} milliseconds', 'pending', 0, 5, '', now(), now() \
             FROM generate_series(1, {count}) g",
            url = receiver.url("/deliver"),
            lead_ms = lead.as_millis(),
        ),
    )?;
    let due = loaded_at + lead;
    tokio::time::sleep_until(due.into()).await;
    let a = window(&legacy);
    let limit = due + Duration::from_secs(600);
    while receiver.seen.count() < count && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Seen by the receiver is not yet recorded: wait for the table to say so.
    let mut succeeded = 0;
    while Instant::now() < limit {
        succeeded = psql(
            &legacy.database,
            "SELECT count(*) FROM callme_callback WHERE status = 'succeeded'",
        )?
        .parse::<u64>()
        .unwrap_or(0);
        if succeeded >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = window(&legacy);
    let mut run = Run::new("deliver", "legacy", rep, "deliveries/s");
    let first = receiver
        .seen
        .first_ns
        .load(std::sync::atomic::Ordering::Relaxed);
    let last = receiver
        .seen
        .last_ns
        .load(std::sync::atomic::Ordering::Relaxed);
    let due_ns = crate::clock::ns_of(due);
    run.requests = receiver.seen.count();
    run.items = succeeded;
    run.seconds = last.saturating_sub(due_ns) as f64 / 1e9;
    run.throughput = if run.seconds > 0.0 {
        succeeded as f64 / run.seconds
    } else {
        0.0
    };
    run.errors = count.saturating_sub(succeeded);
    run.cpu = cpu(&a, &b);
    run.latency_name = "-".into();
    run.fact("backlog", count);
    run.fact(
        "due_to_first_delivery_ms",
        (first.saturating_sub(due_ns) as f64 / 1e6).round(),
    );
    memory(&mut run, &legacy);
    run.notes.push(
        "due time to the last delivery, recorded `succeeded` in the table; one worker sends \
         one row at a time (legacy's design)"
            .into(),
    );
    Ok(run)
}

fn memory(run: &mut Run, legacy: &Legacy) {
    let s = legacy.sample();
    run.server_rss_mb = s.rss_kb as f64 / 1024.0;
    run.server_peak_rss_mb = s.hwm_kb as f64 / 1024.0;
}

/// Where `run.sh` keeps its venv between runs (outside the clone).
pub fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/fluxcb/legacy-bench")
}

pub fn default_dir() -> PathBuf {
    Path::new("../shared/legacy").to_path_buf()
}
