//! The `fluxcb` binary's library: configuration, the `serve` composition root, and the
//! commands. `main.rs` only parses arguments and calls [`run`].

pub mod app;
#[cfg(feature = "aws")]
pub mod aws_backend;
pub mod cli;
mod client;
pub mod config;
mod demo;
pub mod exit;
mod help;
mod local;
pub mod logging;
mod migrate;
pub mod output;
mod progress;
mod redrive;
pub mod telemetry;
mod upstream;

use std::process::ExitCode;

use clap::Parser;

use exit::{Exit, Failure};
use output::Output;

pub fn main_entry() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own code for a usage error is 2, which here means "not found".
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Error.code()
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let output = cli.command.output();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fluxcb: cannot start the async runtime: {e}");
            return Exit::Error.code();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("fluxcb: {}", failure.message);
            // A failed check has printed its report as the one document already.
            if output == Output::Json && failure.exit != Exit::CheckFailed {
                output::print_json(&failure.to_json());
            }
            failure.exit.code()
        }
    }
}

pub async fn run(cli: cli::Cli) -> Result<(), Failure> {
    use cli::Command::*;
    let file = cli.config.as_deref();
    let log_format = cli.log_format.clone();
    match cli.command {
        Demo(args) => Ok(demo::run(args, log_format).await?),
        Serve {
            listen,
            store,
            backend,
            otlp_endpoint,
        } => {
            let config = config::load(
                file,
                config::Overrides {
                    listen,
                    data_dir: store.data_dir,
                    backend,
                    log_format,
                    otlp_endpoint,
                },
            )?;
            telemetry::init(&config).map_err(|e| e.to_string())?;
            let served = local::serve(config).await;
            telemetry::shutdown(telemetry::SHUTDOWN_FLUSH).await;
            served
        }
        Keys(cmd) => local::keys(file, cmd).await,
        Migrate(cmd) => migrate::run(file, cmd).await,
        #[cfg(feature = "aws")]
        Aws(cli::AwsCommand::Bootstrap { prefix }) => {
            let clients = fluxcb_aws::AwsClients::from_env().await;
            let resources = fluxcb_aws::bootstrap::bootstrap(&clients, &prefix)
                .await
                .map_err(|e| format!("aws bootstrap: {e}"))?;
            print!("{}", resources.as_env());
            Ok(())
        }
        #[cfg(feature = "aws")]
        Aws(cli::AwsCommand::RedriveDlq { max }) => {
            let config = config::load(
                file,
                config::Overrides {
                    backend: Some("aws".into()),
                    ..config::Overrides::default()
                },
            )?;
            let settings = config.validate()?;
            let parts = aws_backend::AwsParts::from_env(&settings)
                .await
                .map_err(|e| e.to_string())?;
            let r = parts
                .queue
                .redrive_dead_letters(max)
                .await
                .map_err(|e| format!("redrive: {e}"))?;
            println!(
                "moved {} message(s) back to the work queue; {} unusable message(s) left on the DLQ",
                r.moved, r.kept
            );
            Ok(())
        }
        Secrets(cmd) => local::secrets(file, cmd).await,
        Backup { store, out } => local::backup(file, store, &out),
        Restore { store, from } => local::restore(file, store, &from),
        Send(args) => client::send(args).await,
        Get { id, client, output } => client::get(&client, &id, output.output).await,
        List {
            status,
            host,
            metadata,
            cursor,
            limit,
            client,
            output,
        } => {
            let mut query = Vec::new();
            for (k, v) in [
                ("status", status),
                ("host", host),
                ("metadata", metadata),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            client::list(&client, &query, output.output).await
        }
        Cancel { id, client, output } => {
            client::action(&client, &id, "cancel", output.output).await
        }
        Retry { id, client, output } => client::action(&client, &id, "retry", output.output).await,
        Redrive(args) => redrive::run(args).await,
    }
}
