//! `serve`, and the commands that run against the embedded store directly: keys, secrets,
//! backup.
use std::path::{Path, PathBuf};

use chrono::Utc;
use fluxcb_core::auth::{PlainKey, Role};
use fluxcb_core::ports::{KeyStore, NewApiKey, SecretStore};
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::tenant::TenantId;
use fluxcb_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::cli::{KeysCommand, SecretsCommand, StoreArgs};
use crate::config::{self, Config, Overrides};

pub async fn serve(config: Config) -> Result<(), String> {
    let settings = config.validate()?;
    let app = App::build(&settings).await.map_err(|e| e.to_string())?;
    let addr = app.local_addr();
    if let Some(key) = &app.generated_admin_key {
        // Printed once, on stdout, so that it can be captured; only its hash is stored.
        println!("Generated an admin API key (shown only once; store it now):\n\n    {key}\n");
        println!("Try: curl -H 'Authorization: Bearer {key}' http://{addr}/v1/callbacks\n");
    }
    match &settings.aws {
        Some(aws) => {
            tracing::info!(%addr, table = %aws.table, queue = %aws.queue_url, "fluxcb is serving on AWS")
        }
        None => tracing::info!(%addr, data_dir = %settings.data_dir.display(), "fluxcb is serving"),
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight deliveries");
        signal.cancel();
    });
    app.run_until_stopped(shutdown)
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// Ctrl-C, or SIGTERM on Unix.
pub(crate) async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The data directory a store command works on: `--data-dir`, else the configuration's.
fn data_dir(file: Option<&Path>, store: StoreArgs) -> Result<PathBuf, String> {
    let config = config::load(
        file,
        Overrides {
            data_dir: store.data_dir,
            ..Overrides::default()
        },
    )?;
    Ok(config.data_dir)
}

pub(crate) fn open_store(file: Option<&Path>, store: StoreArgs) -> Result<SqliteStore, String> {
    SqliteStore::open(&data_dir(file, store)?).map_err(|e| e.to_string())
}

fn tenant(name: &str) -> Result<TenantId, String> {
    TenantId::parse(name).map_err(|e| e.to_string())
}

pub async fn keys(file: Option<&Path>, cmd: KeysCommand) -> Result<(), String> {
    match cmd {
        KeysCommand::Create {
            tenant: t,
            name,
            role,
            store,
        } => {
            let store = open_store(file, store)?;
            let tenant = tenant(&t)?;
            let role: Role = role.parse()?;
            let plain = PlainKey::generate();
            let name = name.unwrap_or_else(|| format!("{t}-{}", Utc::now().format("%Y%m%d%H%M%S")));
            let key = store
                .create_key(NewApiKey {
                    name,
                    tenant: tenant.clone(),
                    role,
                    hash: plain.hash(),
                })
                .await
                .map_err(|e| e.to_string())?;
            if store
                .active_secrets(&tenant, Utc::now())
                .await
                .map_err(|e| e.to_string())?
                .is_empty()
            {
                store
                    .add_secret(&tenant, &SigningSecret::generate(), Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            eprintln!(
                "Created key {} ({}) for tenant {} with role {}. It is shown only once:",
                key.id, key.name, key.tenant, key.role
            );
            println!("{}", plain.expose());
            Ok(())
        }
        KeysCommand::List { store } => {
            let store = open_store(file, store)?;
            let keys = store.list_keys().await.map_err(|e| e.to_string())?;
            println!(
                "{:<32} {:<24} {:<16} {:<7} {:<25} REVOKED",
                "ID", "NAME", "TENANT", "ROLE", "CREATED"
            );
            for k in keys {
                println!(
                    "{:<32} {:<24} {:<16} {:<7} {:<25} {}",
                    k.id,
                    k.name,
                    k.tenant,
                    k.role,
                    k.created_at.to_rfc3339(),
                    k.revoked_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { key, store } => {
            let store = open_store(file, store)?;
            if store.revoke_key(&key).await.map_err(|e| e.to_string())? {
                eprintln!("Revoked {key}. Running servers stop accepting it within a few seconds.");
                Ok(())
            } else {
                Err(format!("no live key with id or name `{key}`"))
            }
        }
    }
}

pub async fn secrets(file: Option<&Path>, cmd: SecretsCommand) -> Result<(), String> {
    match cmd {
        SecretsCommand::Rotate {
            tenant: t,
            grace,
            store,
        } => {
            let store = open_store(file, store)?;
            let grace = humantime::parse_duration(&grace).map_err(|e| format!("--grace: {e}"))?;
            let secret = SigningSecret::generate();
            let retire =
                Utc::now() + chrono::Duration::from_std(grace).map_err(|e| e.to_string())?;
            store
                .add_secret(&tenant(&t)?, &secret, retire)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "New signing secret for tenant {t}; the previous ones keep signing until {retire}:"
            );
            println!("{}", secret.expose());
            Ok(())
        }
        SecretsCommand::Show { tenant: t, store } => {
            let store = open_store(file, store)?;
            for s in store
                .active_secrets(&tenant(&t)?, Utc::now())
                .await
                .map_err(|e| e.to_string())?
            {
                println!("{}", s.expose());
            }
            Ok(())
        }
    }
}

pub fn backup(file: Option<&Path>, store: StoreArgs, out: &Path) -> Result<(), String> {
    let data_dir = data_dir(file, store)?;
    if out.exists() {
        return Err(format!(
            "{} already exists; choose a new file",
            out.display()
        ));
    }
    if !data_dir.join(fluxcb_store_sqlite::DB_FILE).exists() {
        return Err(format!("no store in {}", data_dir.display()));
    }
    fluxcb_store_sqlite::backup(&data_dir, out).map_err(|e| e.to_string())?;
    eprintln!("Backed up {} to {}", data_dir.display(), out.display());
    Ok(())
}

pub fn restore(file: Option<&Path>, store: StoreArgs, from: &Path) -> Result<(), String> {
    let data_dir = data_dir(file, store)?;
    let lock = fluxcb_store_sqlite::DataDirLock::acquire(&data_dir).map_err(|e| e.to_string())?;
    let restored = fluxcb_store_sqlite::restore(&lock, from).map_err(|e| e.to_string())?;
    eprintln!("Restored {} into {}", from.display(), data_dir.display());
    if let Some(previous) = restored.previous {
        eprintln!("The replaced store is kept as {}", previous.display());
    }
    Ok(())
}
