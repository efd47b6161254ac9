//! `fluxcb migrate`: the migration commands (the runbook, docs/migration.md, says when to run
//! each). They open the store directly, like `keys`, so they work while `serve` runs.
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use fluxcb_core::callback::CallbackDefaults;
use fluxcb_core::target::TargetPolicy;
use fluxcb_migrate::compare::{compare, CompareOptions};
use fluxcb_migrate::import::{import, ImportOptions, ImportReport, Progress, Stores};
use fluxcb_migrate::LegacyDb;

use crate::cli::{MigrateCommand, StoreArgs};
use crate::config::{self, Overrides, Settings};
use crate::local::open_store;

pub async fn run(file: Option<&Path>, cmd: MigrateCommand) -> Result<(), String> {
    match cmd {
        MigrateCommand::Export {
            legacy_db,
            wait,
            output,
            store,
        } => {
            let store = open_store(file, store)?;
            let db = LegacyDb::connect(&legacy_db)
                .await
                .map_err(|e| e.to_string())?;
            let report = fluxcb_migrate::export::export(&db, &store, Duration::from_secs(wait))
                .await
                .map_err(|e| e.to_string())?;
            match output.as_str() {
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialise")
                ),
                _ => {
                    println!(
                        "Handed back {} callback(s) to the legacy table in {:.1} s",
                        report.written, report.seconds
                    );
                    for (status, n) in &report.by_status {
                        println!("  {status:<10} {n}");
                    }
                    println!(
                        "  in flight at the fence {}, still in flight after the wait {}",
                        report.in_flight, report.still_in_flight
                    );
                    println!(
                        "  the legacy id sequence continues after {}",
                        report.sequence_past
                    );
                    println!("Next: set cutover_percent to 0 (PUT /v1/admin/migration) and start the legacy worker.");
                }
            }
            if report.still_in_flight > 0 {
                eprintln!("warning: {} attempt(s) were still in flight; legacy may send those callbacks again (same id)", report.still_in_flight);
            }
            Ok(())
        }
        MigrateCommand::Import {
            legacy_db,
            take_ownership,
            dry_run,
            batch,
            after,
            output,
            store,
        } => {
            let defaults = defaults(file, &store)?;
            let store = open_store(file, store)?;
            let db = LegacyDb::connect(&legacy_db)
                .await
                .map_err(|e| e.to_string())?;
            let options = ImportOptions {
                take_ownership,
                dry_run,
                batch: batch.clamp(1, 5_000),
                after,
                defaults,
            };
            let bar = ProgressLine::new("import");
            let report = import(
                &db,
                Stores {
                    callbacks: &store,
                    keys: &store,
                    secrets: &store,
                },
                &options,
                &mut |p| bar.update(p),
            )
            .await;
            bar.finish();
            let report = report.map_err(|e| e.to_string())?;
            print_report(&report, &output)?;
            if report.skipped.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} row(s) were not imported; see the report",
                    report.skipped.len()
                ))
            }
        }
        MigrateCommand::Compare {
            legacy_db,
            legacy_secret,
            threshold,
            samples,
            batch,
            resolve_timeout,
            output,
            store,
        } => {
            if !matches!(output.as_str(), "human" | "json") {
                return Err(format!("--output must be human or json, not {output}"));
            }
            let resolve_timeout = Duration::try_from_secs_f64(resolve_timeout)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or("--resolve-timeout must be a positive number of seconds")?;
            let settings = settings(file, &store)?;
            let legacy_secret = legacy_secret
                .filter(|s| !s.is_empty())
                .map(String::into_bytes)
                .or_else(|| {
                    settings
                        .legacy_signing_secret
                        .as_deref()
                        .map(<[u8]>::to_vec)
                });
            let store = open_store(file, store)?;
            let db = LegacyDb::connect(&legacy_db)
                .await
                .map_err(|e| e.to_string())?;
            let options = CompareOptions {
                batch: batch.clamp(1, 5_000),
                legacy_secret,
                policy: TargetPolicy::with_allowed(settings.allow_private_targets.clone()),
                threshold,
                samples,
                resolve_timeout,
            };
            let bar = ProgressLine::new("compare");
            let report = compare(&db, &store, &options, &mut |p| bar.update(p)).await;
            bar.finish();
            let report = report.map_err(|e| e.to_string())?;
            match output.as_str() {
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialise")
                ),
                _ => print!("{}", report.human(samples)),
            }
            if report.passed {
                Ok(())
            } else {
                Err(format!(
                    "{} difference(s) between the legacy table and fluxcb, more than the \
                     threshold of {}: {}",
                    report.differences,
                    report.threshold,
                    report.breakdown()
                ))
            }
        }
    }
}

/// The configuration as `serve` would see it (file, `FLUXCB_*`, --data-dir).
fn settings(file: Option<&Path>, store: &StoreArgs) -> Result<Settings, String> {
    config::load(
        file,
        Overrides {
            data_dir: store.data_dir.clone(),
            ..Overrides::default()
        },
    )?
    .validate()
}

fn defaults(file: Option<&Path>, store: &StoreArgs) -> Result<CallbackDefaults, String> {
    let settings = settings(file, store)?;
    Ok(CallbackDefaults {
        max_attempts: settings.max_attempts,
        timeout_ms: settings.timeout_ms,
    })
}

/// A progress bar with rate and ETA on a terminal; a plain line every few seconds otherwise
/// (logs and CI).
struct ProgressLine {
    /// The command, named on the plain lines.
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    last_line: std::sync::Mutex<std::time::Instant>,
}

impl ProgressLine {
    fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Self {
            what,
            bar,
            last_line: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    fn update(&self, p: Progress) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total.max(p.done));
                bar.set_position(p.done);
                bar.set_message(format!("last id {}", p.last_id));
            }
            None => {
                let mut last = self.last_line.lock().expect("not poisoned");
                if last.elapsed() >= Duration::from_secs(5) {
                    *last = std::time::Instant::now();
                    eprintln!(
                        "{}: {}/{} rows, last legacy id {}",
                        self.what, p.done, p.total, p.last_id
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_report(report: &ImportReport, output: &str) -> Result<(), String> {
    match output {
        "json" => {
            println!(
                "{}",
                serde_json::to_string_pretty(report).expect("reports serialise")
            );
        }
        "human" => {
            let mode = match (report.dry_run, report.take_ownership) {
                (true, _) => "dry run: nothing written",
                (false, true) => "fluxcb owns the imported callbacks",
                (false, false) => "imported as mirrors; legacy keeps sending",
            };
            println!("Import finished in {:.1} s ({mode})", report.seconds);
            println!("  rows read        {}", report.rows_read);
            println!("  inserted         {}", report.inserted);
            println!("  updated          {}", report.updated);
            println!("  unchanged        {}", report.unchanged);
            println!("  already fluxcb's {}", report.owned_here);
            println!("  skipped          {}", report.skipped.len());
            println!(
                "  tokens           {} imported, {} already present, {} skipped",
                report.tokens_imported,
                report.tokens_existing,
                report.tokens_skipped.len()
            );
            println!("  last legacy id   {}", report.last_id);
            for (id, why) in report.skipped.iter().take(50) {
                println!("  skipped row {id}: {why}");
            }
            if report.skipped.len() > 50 {
                println!(
                    "  ... and {} more (use --output json for all)",
                    report.skipped.len() - 50
                );
            }
            for (user, why) in &report.tokens_skipped {
                println!("  skipped token of {user}: {why}");
            }
        }
        other => return Err(format!("--output must be human or json, not {other}")),
    }
    Ok(())
}
