//! `fluxcb demo`: the first run that shows it working. It starts the same server as `serve`
//! (the [`App`] composition root) on an embedded store of its own, local receivers that fail
//! some callbacks on purpose, and a stream of sample callbacks sent through the HTTP API, and
//! prints the console URL and the API key to log in with.
//!
//! The demo's settings are its own, not the operator's (`fluxcb.toml` and `FLUXCB_*` are not
//! read): a retry schedule in seconds so retries and dead letters happen within the first
//! minute, and an SSRF allow-list naming only the demo's receivers.
mod receiver;
mod traffic;

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxcb_core::auth::PlainKey;
use fluxcb_core::signing::SigningSecret;
use tokio_util::sync::CancellationToken;

use crate::app::{App, StartError};
use crate::cli::DemoArgs;
use crate::config::Config;
use receiver::{Behaviour, Receivers};
use traffic::{Api, Plan, Sent};

/// Delays before the 2nd, 3rd and 4th attempt (the default schedule starts at 5 s and ends at
/// 24 h, too slow to watch).
const RETRY_SCHEDULE: &str = "1s,2s,4s";
const MAX_ATTEMPTS: u32 = 4;

/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub async fn run(args: DemoArgs, log_format: Option<String>) -> Result<(), String> {
    // A fresh store unless asked to keep one: the console then shows this run only.
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("fluxcb-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary data directory: {e}"))?;
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    // The receivers verify signatures with this secret, as a real receiver would.
    let secret = SigningSecret::generate();
    // A fresh store gets its admin key the way `serve`'s first start makes one. A kept store
    // has one already, shown by an earlier run, so the demo configures a new one to print
    // (which retires the previous run's).
    let configured_key = temporary
        .is_none()
        .then(|| PlainKey::generate().expose().to_owned());

    let stop_receivers = CancellationToken::new();
    let receivers = Receivers::start(secret.clone(), stop_receivers.clone())
        .await
        .map_err(|e| format!("cannot start the demo receivers: {e}"))?;

    let config = Config {
        listen: format!("127.0.0.1:{}", args.port),
        data_dir: data_dir.clone(),
        backend: "sqlite".into(),
        api_key: configured_key.clone(),
        signing_secret: Some(secret.expose()),
        allow_private_targets: receivers.allow_list(),
        retry_schedule: RETRY_SCHEDULE.into(),
        max_attempts: MAX_ATTEMPTS,
        log_format: log_format.unwrap_or_else(|| "auto".into()),
        ..Config::default()
    };
    let settings = config.validate()?;
    crate::telemetry::init(&config).map_err(|e| e.to_string())?;
    let app = App::build(&settings).await.map_err(|e| match e {
        StartError::Listen { addr, source } => format!(
            "cannot listen on {addr}: {source} (choose another port with --port N, or --port 0 for any free one)"
        ),
        other => other.to_string(),
    })?;
    let key = app
        .generated_admin_key
        .clone()
        .or(configured_key)
        .ok_or("the store made no admin key to log in with")?;
    let base = format!("http://{}", app.local_addr());
    let plan = Plan {
        per_second: args.rate,
        duration: args.duration,
        count: args.count,
    };
    print_banner(
        &base,
        &key,
        &data_dir,
        temporary.is_some(),
        &receivers,
        plan,
    );

    let stop_server = CancellationToken::new();
    let mut server = tokio::spawn(app.run_until_stopped(stop_server.clone()));
    let api = Api::new(base, key)?;
    let sent = Arc::new(Sent::default());
    let stop_traffic = CancellationToken::new();
    let started = Instant::now();
    let mut traffic = tokio::spawn(traffic::send(
        api.clone(),
        traffic::urls(&receivers),
        plan,
        sent.clone(),
        stop_traffic.clone(),
    ));
    let progress = tokio::spawn(report_progress(api, started, stop_traffic.clone()));

    let signal = crate::local::wait_for_signal();
    tokio::pin!(signal);
    let mut traffic_done = false;
    let server_ended = loop {
        tokio::select! {
            _ = &mut signal => break None,
            ended = &mut server => break Some(ended),
            _ = &mut traffic, if !traffic_done => {
                // The plan is done; the server keeps running so the console stays up.
                traffic_done = true;
                end_progress_line();
                println!(
                    "Sent {} callbacks in {}. The server keeps running so you can look around; Ctrl-C stops it.",
                    sent.accepted.load(Ordering::Relaxed),
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                );
            }
        }
    };
    end_progress_line();
    println!(
        "Stopping: the traffic, then the server (deliveries in flight finish), then the receivers."
    );
    stop_traffic.cancel();
    if !traffic_done {
        let _ = traffic.await;
    }
    let _ = progress.await;
    stop_server.cancel();
    let served = match server_ended {
        Some(ended) => ended,
        None => server.await,
    };
    // The receivers outlive the server so that its last deliveries get their answers.
    stop_receivers.cancel();
    crate::telemetry::shutdown(crate::telemetry::SHUTDOWN_FLUSH).await;
    let tally = receivers.tally.clone();
    receivers.stopped().await;
    println!(
        "Sent {} callbacks; the receivers answered {} with 2xx and {} with an error{}.",
        sent.accepted.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        match tally.bad_signatures.load(Ordering::Relaxed) {
            0 => ", and every signature verified".to_owned(),
            n => format!("; {n} requests had a signature that did not verify"),
        },
    );
    if let Some(dir) = temporary {
        let shown = dir.path().display().to_string();
        match dir.close() {
            Ok(()) => println!("Removed {shown}."),
            Err(e) => eprintln!("fluxcb demo: could not remove {shown}: {e}"),
        }
    } else {
        println!(
            "The store is kept in {}; `fluxcb demo --data-dir {}` carries on with it.",
            data_dir.display(),
            data_dir.display()
        );
    }
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("server error: {e}")),
        Err(e) => Err(format!("the server task failed: {e}")),
    }
}

fn print_banner(
    base: &str,
    key: &str,
    data_dir: &std::path::Path,
    temporary: bool,
    receivers: &Receivers,
    plan: Plan,
) {
    let store = if temporary {
        "a fresh store, removed when the demo stops; --data-dir DIR keeps one"
    } else {
        "kept when the demo stops"
    };
    let mut out = String::new();
    out.push_str(
        "fluxcb demo: the server on an embedded store of its own, four receivers on loopback\n\
         that misbehave on purpose, and sample callbacks sent through the API.\n\n",
    );
    out.push_str(&format!("  Console:  {base}/console\n"));
    out.push_str(&format!(
        "  API key:  {key}\n            (log in with it; it is also a Bearer key for {base}/v1)\n"
    ));
    out.push_str(&format!("  Data:     {} ({store})\n\n", data_dir.display()));
    out.push_str(
        "Receivers (each its own destination; deliveries may reach only these addresses):\n",
    );
    for r in &receivers.list {
        out.push_str(&format!(
            "  {:<44} {:<10} {}\n",
            r.url(),
            r.behaviour.name(),
            r.behaviour.describe()
        ));
    }
    out.push_str(&format!(
        "\nRetries after {} (±20%), {MAX_ATTEMPTS} attempts at most (serve's default: 5s … 24h, 11 attempts).\n",
        RETRY_SCHEDULE.replace(',', ", ")
    ));
    let until = match (plan.duration, plan.count) {
        (Some(d), Some(n)) => format!("for {} or {n} callbacks", humantime::format_duration(d)),
        (Some(d), None) => format!("for {}", humantime::format_duration(d)),
        (None, Some(n)) => format!("until {n} are sent"),
        (None, None) => "until Ctrl-C".into(),
    };
    out.push_str(&format!(
        "Sending {} callbacks a second {until}.\n\n",
        plan.per_second
    ));
    out.push_str(&format!(
        "What to look at in the console:\n\
         \x20 Overview       accepted, delivered and failed per minute, success ratio, dead letters\n\
         \x20 Callbacks      tag receiver=billing: some delivered on the 2nd or 3rd attempt (open one)\n\
         \x20 Dead letters   by host and error: {} (crm) at once, {} (warehouse) after {MAX_ATTEMPTS} attempts\n\
         \x20 Destinations   the warehouse's circuit breaker opens after 10 failures in a row\n\n\
         Ctrl-C stops everything.\n",
        receivers.get(Behaviour::Gone).addr.ip(),
        receivers.get(Behaviour::Down).addr.ip(),
    ));
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// Prints what the API reports every few seconds: on a terminal one line rewritten in place
/// (so the banner with the key stays on screen), otherwise a line each time.
async fn report_progress(api: Api, started: Instant, stop: CancellationToken) {
    let terminal = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        let Ok(stats) = api.get("/v1/stats?window=1h").await else {
            continue;
        };
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let totals = &stats["totals"];
        let elapsed = started.elapsed().as_secs();
        let line = format!(
            "[{}:{:02}] accepted {} · delivered {} · failed attempts {} · dead letters {}",
            elapsed / 60,
            elapsed % 60,
            n(&totals["accepted"]),
            n(&totals["delivered"]),
            n(&totals["failed"]),
            n(&stats["dead_letters"]),
        );
        if terminal {
            print!("\r\x1b[2K{line}");
        } else {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
    }
}

/// Ends the in-place progress line on a terminal before other output.
fn end_progress_line() {
    if std::io::stdout().is_terminal() {
        println!();
    }
}
