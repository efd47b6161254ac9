//! `fluxcb migrate`: the migration commands (the runbook, docs/migration.md, says when to run
//! each). They open fluxcb's records directly, like `keys`, so they work while `serve` runs:
//! the embedded store, or with `--backend aws` (`FLUXCB_BACKEND=aws`) the AWS backend's table,
//! with the settings `serve --backend aws` uses. Every command takes the store ports, so both
//! backends run the same code.
use std::path::Path;
use std::time::Duration;

use fluxcb_core::ports::{CallbackStore, KeyStore, SecretStore};
use fluxcb_core::target::TargetPolicy;
use fluxcb_migrate::compare::{compare, CompareOptions};
use fluxcb_migrate::import::{import, ImportOptions, ImportReport, Stores};
use fluxcb_migrate::{LegacyDb, LegacyDbError};
use fluxcb_store_sqlite::SqliteStore;

use crate::cli::{MigrateCommand, MigrateStoreArgs};
use crate::config::{self, Backend, Overrides, Settings};
use crate::exit::{Exit, Failure};
use crate::output::{print_json, Output};
use crate::progress::ProgressLine;

/// fluxcb's records as the migrate commands see them.
enum Records {
    Sqlite(SqliteStore),
    #[cfg(feature = "aws")]
    Aws(std::sync::Arc<fluxcb_aws::store::DynamoStore>),
}

impl Records {
    async fn open(settings: &Settings) -> Result<Self, String> {
        match settings.backend {
            Backend::Sqlite => SqliteStore::open(&settings.data_dir)
                .map(Records::Sqlite)
                .map_err(|e| e.to_string()),
            #[cfg(feature = "aws")]
            Backend::Aws => crate::aws_backend::AwsParts::from_env(settings)
                .await
                .map(|parts| Records::Aws(parts.store))
                .map_err(|e| e.to_string()),
            // `validate` refuses the AWS backend in a build without it.
            #[cfg(not(feature = "aws"))]
            Backend::Aws => Err("this build has no AWS backend".into()),
        }
    }

    fn callbacks(&self) -> &dyn CallbackStore {
        match self {
            Records::Sqlite(s) => s,
            #[cfg(feature = "aws")]
            Records::Aws(s) => s.as_ref(),
        }
    }

    fn keys(&self) -> &dyn KeyStore {
        match self {
            Records::Sqlite(s) => s,
            #[cfg(feature = "aws")]
            Records::Aws(s) => s.as_ref(),
        }
    }

    fn secrets(&self) -> &dyn SecretStore {
        match self {
            Records::Sqlite(s) => s,
            #[cfg(feature = "aws")]
            Records::Aws(s) => s.as_ref(),
        }
    }
}

/// Connects to the legacy database; an unreachable one is exit code 4 (try again), a bad URL 1.
async fn connect(url: &str) -> Result<LegacyDb, Failure> {
    LegacyDb::connect(url).await.map_err(|e| {
        let exit = match e {
            LegacyDbError::Unreachable { .. } => Exit::Unavailable,
            _ => Exit::Error,
        };
        Failure::new(exit, e.to_string())
    })
}

pub async fn run(file: Option<&Path>, cmd: MigrateCommand) -> Result<(), Failure> {
    match cmd {
        MigrateCommand::Export {
            legacy_db,
            wait,
            output,
            store,
        } => {
            let records = Records::open(&settings(file, &store)?).await?;
            let db = connect(&legacy_db).await?;
            let report =
                fluxcb_migrate::export::export(&db, records.callbacks(), Duration::from_secs(wait))
                    .await
                    .map_err(|e| e.to_string())?;
            match output.output {
                Output::Json => {
                    print_json(&serde_json::to_value(&report).expect("reports serialise"))
                }
                Output::Human => {
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
            let settings = settings(file, &store)?;
            let defaults = settings.callback_defaults();
            let records = Records::open(&settings).await?;
            let db = connect(&legacy_db).await?;
            let options = ImportOptions {
                take_ownership,
                dry_run,
                batch: batch.clamp(1, 5_000),
                after,
                defaults,
            };
            let bar = ProgressLine::new("import", "rows");
            let report = import(
                &db,
                Stores {
                    callbacks: records.callbacks(),
                    keys: records.keys(),
                    secrets: records.secrets(),
                },
                &options,
                &mut |p| bar.update(p.done, p.total, Some(last_legacy_id(p.last_id))),
            )
            .await;
            bar.finish();
            let report = report.map_err(|e| e.to_string())?;
            print_report(&report, output.output);
            if report.skipped.is_empty() {
                Ok(())
            } else {
                Err(Failure::new(
                    Exit::CheckFailed,
                    format!(
                        "{} row(s) were not imported; see the report",
                        report.skipped.len()
                    ),
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
            let records = Records::open(&settings).await?;
            let db = connect(&legacy_db).await?;
            let options = CompareOptions {
                batch: batch.clamp(1, 5_000),
                legacy_secret,
                policy: TargetPolicy::with_allowed(settings.allow_private_targets.clone()),
                threshold,
                samples,
                resolve_timeout,
            };
            let bar = ProgressLine::new("compare", "rows");
            let report = compare(&db, records.callbacks(), &options, &mut |p| {
                bar.update(p.done, p.total, Some(last_legacy_id(p.last_id)))
            })
            .await;
            bar.finish();
            let report = report.map_err(|e| e.to_string())?;
            match output.output {
                Output::Json => {
                    print_json(&serde_json::to_value(&report).expect("reports serialise"))
                }
                Output::Human => print!("{}", report.human(samples)),
            }
            if report.passed {
                Ok(())
            } else {
                Err(Failure::new(
                    Exit::CheckFailed,
                    format!(
                        "{} difference(s) between the legacy table and fluxcb, more than the \
                         threshold of {}: {}",
                        report.differences,
                        report.threshold,
                        report.breakdown()
                    ),
                ))
            }
        }
    }
}

/// The configuration as `serve` would see it (file, `FLUXCB_*`, --data-dir, --backend).
fn settings(file: Option<&Path>, store: &MigrateStoreArgs) -> Result<Settings, String> {
    config::load(
        file,
        Overrides {
            data_dir: store.store.data_dir.clone(),
            backend: store.backend.clone(),
            ..Overrides::default()
        },
    )?
    .validate()
}

fn last_legacy_id(id: i64) -> String {
    format!("last legacy id {id}")
}

fn print_report(report: &ImportReport, output: Output) {
    match output {
        Output::Json => print_json(&serde_json::to_value(report).expect("reports serialise")),
        Output::Human => {
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
    }
}
