//! The `fluxcb` binary's library: configuration, the `serve` composition root, and the
//! commands. `main.rs` only parses arguments and calls [`run`].

pub mod app;
#[cfg(feature = "aws")]
pub mod aws_backend;
pub mod cli;
mod client;
pub mod config;
mod demo;
mod local;
pub mod logging;
mod migrate;
mod upstream;

use std::process::ExitCode;

use clap::Parser;

pub fn main_entry() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fluxcb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fluxcb: {message}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: cli::Cli) -> Result<(), String> {
    use cli::Command::*;
    let file = cli.config.as_deref();
    let log_format = cli.log_format.clone();
    match cli.command {
        Demo(args) => demo::run(args, log_format).await,
        Serve {
            listen,
            store,
            backend,
        } => {
            let config = config::load(
                file,
                config::Overrides {
                    listen,
                    data_dir: store.data_dir,
                    backend,
                    log_format,
                },
            )?;
            logging::init(&config.log_format);
            local::serve(config).await
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
        Get { id, client } => client::get(&client, &id).await,
        List {
            status,
            host,
            metadata,
            cursor,
            limit,
            client,
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
            client::list(&client, &query).await
        }
        Cancel { id, client } => client::action(&client, &id, "cancel").await,
        Retry { id, client } => client::action(&client, &id, "retry").await,
        Redrive {
            host,
            metadata,
            tenant,
            client,
        } => client::redrive(&client, host, metadata, tenant).await,
    }
}
