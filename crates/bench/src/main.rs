//! `fluxcb-bench`: measures a release build of fluxcb on this machine and prints figures.
//!
//! ```text
//! cargo build --release -p fluxcb -p fluxcb-bench
//! target/release/fluxcb-bench all              # ceiling, ingest, ingest-batch, deliver, end-to-end
//! target/release/fluxcb-bench all --scale      # ... and memory with 1,000,000 callbacks
//! target/release/fluxcb-bench ingest --connections 32 --duration 20
//! target/release/fluxcb-bench console          # console page times with 1,000,000 callbacks
//! target/release/fluxcb-bench ceiling ingest deliver --legacy   # side by side with legacy
//! ```
//!
//! Everything runs on loopback and is started and stopped by the bench: a `fluxcb serve` per
//! scenario run (fresh temporary data directory, fixed admin key), a receiver that answers 200
//! (in this process), and for the ceiling a trivial server that answers 202 (a child process
//! running this binary with `--serve-202`). The load generator shares the machine's cores with
//! all of them, as the goals require. See docs/benchmarks.md for how to read the output.
mod api;
mod backlog;
mod clock;
mod console;
mod e2e;
mod flaky;
mod httpd;
mod legacy;
mod load;
mod ordered;
mod procs;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::report::Run;
use crate::scenarios::{Ceiling, Opts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// ceiling, ingest, ingest-batch, deliver, flaky-receiver, end-to-end, slow-receiver,
    /// ordered (and memory and backlog with --scale).
    All,
    /// The trivial 202 server under the ingest loads: the ratios' denominator.
    Ceiling,
    /// Single-callback POST /v1/callbacks, closed loop.
    Ingest,
    /// POST /v1/callbacks/batch, closed loop.
    IngestBatch,
    /// Drain a preloaded backlog to the loopback receiver.
    Deliver,
    /// The same backlog to a receiver that fails 30% of attempts: the cost of retries.
    FlakyReceiver,
    /// Open-loop constant rate; accepted-to-delivered latency.
    EndToEnd,
    /// end-to-end with a second destination answering in 5 s beside it.
    SlowReceiver,
    /// Resident memory and disk with --memory-count callbacks queued.
    Memory,
    /// --backlog-count callbacks held: memory, disk per callback, ingest and delivery beside
    /// them, and restart time.
    Backlog,
    /// The console's pages and data calls with --console-count callbacks stored (runs alone).
    Console,
    /// 1,000 ordering keys × 100 callbacks, 10% of first attempts failing: throughput, and
    /// order proven at the receiver.
    Ordered,
}

#[derive(Parser)]
#[command(
    name = "fluxcb-bench",
    about = "Benchmarks fluxcb on loopback and prints throughput, latency, CPU and memory"
)]
struct Cli {
    /// Scenarios to run, in this order within each repetition.
    #[arg(value_enum, default_value = "all")]
    scenarios: Vec<Scenario>,
    /// The fluxcb binary. Default: `fluxcb` next to this executable (target/release/).
    #[arg(long)]
    fluxcb_bin: Option<PathBuf>,
    /// Runs of each scenario; repetitions are interleaved so that background noise spreads
    /// over all scenarios alike.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Measured seconds of each closed-loop run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Connections for single-callback ingest.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Callbacks per batch request (1-1000).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Connections for batch ingest.
    #[arg(long, default_value_t = 16)]
    batch_connections: usize,
    /// Bytes of padding in each callback's payload.
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// Ingest callbacks due at once (delivered to the receiver during the run) instead of
    /// scheduled ahead.
    #[arg(long)]
    ingest_due: bool,
    /// Backlog size for `deliver`.
    #[arg(long, default_value_t = 50_000)]
    deliver_count: u64,
    /// How far ahead the backlog is due (must exceed the preload time). Default:
    /// 2 s + 0.1 ms per callback.
    #[arg(long)]
    deliver_lead_ms: Option<u64>,
    /// Offered rate of `end-to-end`, callbacks per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds of `end-to-end`.
    #[arg(long, default_value_t = 20)]
    e2e_duration: u64,
    /// Connection cap of the open-loop client.
    #[arg(long, default_value_t = 64)]
    e2e_connections: usize,
    /// Callbacks queued by `memory`.
    #[arg(long, default_value_t = 1_000_000)]
    memory_count: u64,
    /// Callbacks held by `backlog` (10,000,000 for issue 6's figures).
    #[arg(long, default_value_t = 1_000_000)]
    backlog_count: u64,
    /// Callbacks stored by `console` (direct SQLite inserts).
    #[arg(long, default_value_t = 1_000_000)]
    console_count: u64,
    /// Timed repetitions of each request in `console`.
    #[arg(long, default_value_t = 20)]
    console_runs: usize,
    /// With `all`: also run `memory` and `backlog` (a few minutes).
    #[arg(long)]
    scale: bool,
    /// Extra environment for fluxcb, e.g. FLUXCB_DESTINATION_MAX_IN_FLIGHT=256 (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Where to write the JSON results. Default: target/bench-results.json.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also run the legacy pair (`--legacy-dir`, on PostgreSQL at 127.0.0.1:5432) under the
    /// `ingest` and `deliver` loads in every repetition, for the "vs legacy" column.
    #[arg(long)]
    legacy: bool,
    /// The folder with the legacy pair's `run.sh`.
    #[arg(long, default_value_os_t = legacy::default_dir())]
    legacy_dir: PathBuf,
    /// `LEGACY_HOME` for `run.sh` (its venv is kept there between runs).
    #[arg(long, default_value_os_t = legacy::default_home())]
    legacy_home: PathBuf,
    /// Backlog for legacy's `deliver` (it sends a few hundred a second).
    #[arg(long, default_value_t = 5_000)]
    legacy_deliver_count: u64,
    /// Internal: serve the trivial 202 server on this address and nothing else.
    #[arg(long, hide = true)]
    serve_202: Option<SocketAddr>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

fn main() -> ExitCode {
    clock::init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Some(addr) = cli.serve_202 {
        return match runtime.block_on(httpd::run_trivial(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fluxcb-bench --serve-202: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let outcome = runtime.block_on(async {
        // Dropping the run future on a signal drops every child guard and temporary
        // directory with it: nothing the bench started outlives it.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            r = run(&cli) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
            _ = term.recv() => Err("terminated".to_owned()),
        }
    });
    // Child processes are reaped in the background; give the runtime a moment to do it.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxcb-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn default_json() -> PathBuf {
    // target/release/fluxcb-bench -> target/bench-results.json
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|t| t.join("bench-results.json")))
        .unwrap_or_else(|| PathBuf::from("bench-results.json"))
}

fn plan(cli: &Cli) -> Vec<Scenario> {
    let mut out = Vec::new();
    for s in &cli.scenarios {
        let expanded: &[Scenario] = match s {
            Scenario::All if cli.scale => &[
                Scenario::Ceiling,
                Scenario::Ingest,
                Scenario::IngestBatch,
                Scenario::Deliver,
                Scenario::FlakyReceiver,
                Scenario::EndToEnd,
                Scenario::SlowReceiver,
                Scenario::Ordered,
                Scenario::Memory,
                Scenario::Backlog,
            ],
            Scenario::All => &[
                Scenario::Ceiling,
                Scenario::Ingest,
                Scenario::IngestBatch,
                Scenario::Deliver,
                Scenario::FlakyReceiver,
                Scenario::EndToEnd,
                Scenario::SlowReceiver,
                Scenario::Ordered,
            ],
            other => std::slice::from_ref(other),
        };
        for e in expanded {
            if !out.contains(e) {
                out.push(*e);
            }
        }
    }
    // The ceiling goes first so that every fluxcb row of a repetition can be compared to it.
    out.sort_by_key(|s| *s != Scenario::Ceiling);
    out
}

async fn run(cli: &Cli) -> Result<(), String> {
    if !(1..=1000).contains(&cli.batch_size) {
        return Err("--batch-size must be 1 to 1000".into());
    }
    if cli.scenarios.contains(&Scenario::Console) {
        if cli.scenarios.len() > 1 {
            return Err("`console` runs alone".into());
        }
        let bin = cli.fluxcb_bin.clone().unwrap_or_else(|| sibling("fluxcb"));
        return console::run(&console::ConsoleOpts {
            fluxcb_bin: &bin,
            count: cli.console_count.max(1),
            runs: cli.console_runs.max(1),
            server_env: &cli.server_env,
        })
        .await;
    }
    let opts = Opts {
        fluxcb_bin: cli.fluxcb_bin.clone().unwrap_or_else(|| sibling("fluxcb")),
        duration: Duration::from_secs(cli.duration.max(1)),
        warmup: Duration::from_secs(cli.warmup),
        connections: cli.connections.max(1),
        batch_size: cli.batch_size,
        batch_connections: cli.batch_connections.max(1),
        payload_bytes: cli.payload_bytes,
        ingest_due: cli.ingest_due,
        deliver_count: cli.deliver_count.max(1),
        deliver_lead: cli.deliver_lead_ms.map(Duration::from_millis),
        rate: cli.rate,
        e2e_duration: Duration::from_secs(cli.e2e_duration.max(1)),
        e2e_connections: cli.e2e_connections.max(1),
        memory_count: cli.memory_count.max(1),
        server_env: cli.server_env.clone(),
    };
    let legacy_opts = cli.legacy.then(|| legacy::LegacyOpts {
        dir: cli.legacy_dir.clone(),
        home: cli.legacy_home.clone(),
        deliver_count: cli.legacy_deliver_count.max(1),
    });
    let machine = procs::machine();
    let started_at = chrono::Utc::now().to_rfc3339();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!(
        "machine: {} x {} | {} MB | load {}",
        machine.nproc, machine.cpu_model, machine.mem_total_mb, machine.loadavg_at_start
    );
    eprintln!("fluxcb: {}", opts.fluxcb_bin.display());
    let plan = plan(cli);
    let mut runs: Vec<Run> = Vec::new();
    for rep in 1..=cli.repeat.max(1) {
        let mut ceiling: Option<Ceiling> = None;
        let mut e2e_p99: Option<f64> = None;
        for scenario in &plan {
            eprintln!("== {scenario:?} (repetition {rep}) ...");
            let produced = match scenario {
                Scenario::Ceiling => {
                    let (rows, c) = scenarios::ceiling(&opts, rep).await?;
                    ceiling = Some(c);
                    rows
                }
                Scenario::Ingest => {
                    let mut rows = vec![scenarios::ingest(&opts, rep, ceiling.as_ref()).await?];
                    if let Some(lo) = &legacy_opts {
                        rows.push(legacy::ingest(&opts, lo, rep).await?);
                    }
                    rows
                }
                Scenario::IngestBatch => {
                    vec![scenarios::ingest_batch(&opts, rep, ceiling.as_ref()).await?]
                }
                Scenario::Deliver => {
                    let mut rows = vec![scenarios::deliver(&opts, rep, ceiling.as_ref()).await?];
                    if let Some(lo) = &legacy_opts {
                        rows.push(legacy::deliver(&opts, lo, rep).await?);
                    }
                    rows
                }
                Scenario::FlakyReceiver => vec![flaky::flaky_receiver(&opts, rep).await?],
                Scenario::EndToEnd => {
                    let run = e2e::end_to_end(&opts, rep).await?;
                    e2e_p99 = run.latency.as_ref().map(|p| p.p99_ms);
                    vec![run]
                }
                Scenario::SlowReceiver => vec![e2e::slow_receiver(&opts, rep, e2e_p99).await?],
                Scenario::Memory => vec![scenarios::memory_scenario(&opts, rep).await?],
                Scenario::Backlog => {
                    vec![backlog::backlog(&opts, rep, cli.backlog_count.max(1)).await?]
                }
                Scenario::Ordered => {
                    vec![ordered::ordered(&opts, rep, ordered::KEYS, ordered::PER_KEY).await?]
                }
                Scenario::All => unreachable!("expanded by plan()"),
                Scenario::Console => unreachable!("runs alone, before the plan"),
            };
            for r in &produced {
                eprint!("{}", report::table(std::slice::from_ref(r)));
            }
            runs.extend(produced);
        }
    }
    let mut ordered = runs.clone();
    ordered.sort_by(|a, b| {
        (rank(&a.scenario), &a.server, a.repetition).cmp(&(
            rank(&b.scenario),
            &b.server,
            b.repetition,
        ))
    });
    let summary = report::summarise(&ordered);
    println!("\n{}", report::table(&ordered));
    println!("{}", report::details(&ordered));
    println!("{}", report::summary_table(&summary));
    let path = cli.json.clone().unwrap_or_else(default_json);
    let doc = report::Report {
        machine: &machine,
        command,
        started_at,
        runs: &ordered,
        summary,
    };
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(())
}

/// Table order: by scenario, then server (ceiling before fluxcb), then repetition.
fn rank(name: &str) -> usize {
    let order = [
        "ingest",
        "ingest-batch",
        "deliver",
        "flaky-receiver",
        "end-to-end",
        "slow-receiver",
        "memory",
        "backlog",
    ];
    order.iter().position(|n| *n == name).unwrap_or(order.len())
}
