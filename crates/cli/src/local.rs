//! `serve`, and the commands that run against the embedded store directly: keys, secrets,
//! backup.
use std::path::{Path, PathBuf};

use chrono::Utc;
use fluxcb_core::auth::{ApiKey, PlainKey, Role};
use fluxcb_core::ports::{KeyStore, NewApiKey, SecretStore};
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::tenant::TenantId;
use fluxcb_http::dto::rfc3339;
use fluxcb_store_sqlite::{OpenError, SqliteStore};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{App, StartError};
use crate::cli::{KeysCommand, SecretsCommand, StoreArgs};
use crate::config::{self, Config, Overrides};
use crate::exit::{Exit, Failure};
use crate::output::{print_json, Output, Table};

pub async fn serve(config: Config) -> Result<(), Failure> {
    let settings = config.validate()?;
    let app = App::build(&settings).await.map_err(|e| {
        let exit = match e {
            StartError::Store(OpenError::InUse(_)) => Exit::Conflict,
            StartError::LegacyDb(_) => Exit::Unavailable,
            _ => Exit::Error,
        };
        Failure::new(exit, e.to_string())
    })?;
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
        .map_err(|e| Failure::from(format!("server error: {e}")))
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

/// A key as `GET /v1/keys` shows it (and, right after creation, the key itself).
fn key_json(k: &ApiKey, plain: Option<&str>) -> serde_json::Value {
    let mut v = json!({
        "id": k.id,
        "name": k.name,
        "tenant": k.tenant.to_string(),
        "role": k.role.to_string(),
        "created_at": rfc3339(k.created_at),
        "revoked_at": k.revoked_at.map(rfc3339),
    });
    if let Some(plain) = plain {
        v["key"] = json!(plain);
    }
    v
}

pub async fn keys(file: Option<&Path>, cmd: KeysCommand) -> Result<(), Failure> {
    match cmd {
        KeysCommand::Create {
            tenant: t,
            name,
            role,
            store,
            output,
        } => {
            let store = open_store(file, store)?;
            let tenant = TenantId::parse_for_key(&t)?;
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
                .await?;
            if store.active_secrets(&tenant, Utc::now()).await?.is_empty() {
                store
                    .add_secret(&tenant, &SigningSecret::generate(), Utc::now())
                    .await?;
            }
            match output.output {
                Output::Json => print_json(&key_json(&key, Some(plain.expose()))),
                Output::Human => {
                    eprintln!(
                        "Created key {} ({}) for tenant {} with role {}. It is shown only once:",
                        key.id, key.name, key.tenant, key.role
                    );
                    println!("{}", plain.expose());
                }
            }
            Ok(())
        }
        KeysCommand::List { store, output } => {
            let store = open_store(file, store)?;
            let keys = store.list_keys().await?;
            match output.output {
                Output::Json => print_json(&json!(keys
                    .iter()
                    .map(|k| key_json(k, None))
                    .collect::<Vec<_>>())),
                Output::Human => {
                    let mut table =
                        Table::new(&["NAME", "TENANT", "ROLE", "CREATED", "REVOKED", "ID"]);
                    let short =
                        |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%SZ").to_string();
                    for k in &keys {
                        table.row(vec![
                            k.name.clone(),
                            k.tenant.to_string(),
                            k.role.to_string(),
                            short(k.created_at),
                            k.revoked_at.map(short).unwrap_or_else(|| "-".into()),
                            k.id.clone(),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { key, store, output } => {
            let store = open_store(file, store)?;
            if !store.revoke_key(&key).await? {
                return Err(Failure::new(
                    Exit::NotFound,
                    format!("no live key with id or name `{key}`"),
                ));
            }
            match output.output {
                Output::Json => print_json(&json!({ "revoked": key })),
                Output::Human => eprintln!(
                    "Revoked {key}. Running servers stop accepting it within a few seconds."
                ),
            }
            Ok(())
        }
    }
}

pub async fn secrets(file: Option<&Path>, cmd: SecretsCommand) -> Result<(), Failure> {
    match cmd {
        SecretsCommand::Rotate {
            tenant: t,
            grace,
            store,
            output,
        } => {
            let store = open_store(file, store)?;
            let grace = humantime::parse_duration(&grace).map_err(|e| format!("--grace: {e}"))?;
            let secret = SigningSecret::generate();
            let retire =
                Utc::now() + chrono::Duration::from_std(grace).map_err(|e| e.to_string())?;
            store.add_secret(&tenant(&t)?, &secret, retire).await?;
            match output.output {
                Output::Json => print_json(&json!({
                    "tenant": t,
                    "secret": secret.expose(),
                    "previous_sign_until": rfc3339(retire),
                })),
                Output::Human => {
                    eprintln!(
                        "New signing secret for tenant {t}; the previous ones keep signing until {retire}:"
                    );
                    println!("{}", secret.expose());
                }
            }
            Ok(())
        }
        SecretsCommand::Show {
            tenant: t,
            store,
            output,
        } => {
            let store = open_store(file, store)?;
            let secrets: Vec<String> = store
                .active_secrets(&tenant(&t)?, Utc::now())
                .await?
                .iter()
                .map(SigningSecret::expose)
                .collect();
            match output.output {
                Output::Json => print_json(&json!({ "tenant": t, "secrets": secrets })),
                Output::Human => {
                    for s in secrets {
                        println!("{s}");
                    }
                }
            }
            Ok(())
        }
    }
}

pub fn backup(file: Option<&Path>, store: StoreArgs, out: &Path) -> Result<(), Failure> {
    let data_dir = data_dir(file, store)?;
    if out.exists() {
        return Err(Failure::new(
            Exit::Conflict,
            format!("{} already exists; choose a new file", out.display()),
        ));
    }
    if !data_dir.join(fluxcb_store_sqlite::DB_FILE).exists() {
        return Err(Failure::new(
            Exit::NotFound,
            format!("no store in {}", data_dir.display()),
        ));
    }
    fluxcb_store_sqlite::backup(&data_dir, out).map_err(|e| e.to_string())?;
    eprintln!("Backed up {} to {}", data_dir.display(), out.display());
    Ok(())
}

pub fn restore(file: Option<&Path>, store: StoreArgs, from: &Path) -> Result<(), Failure> {
    let data_dir = data_dir(file, store)?;
    let lock = fluxcb_store_sqlite::DataDirLock::acquire(&data_dir).map_err(|e| {
        let exit = match e {
            OpenError::InUse(_) => Exit::Conflict,
            _ => Exit::Error,
        };
        Failure::new(exit, e.to_string())
    })?;
    let restored = fluxcb_store_sqlite::restore(&lock, from).map_err(|e| e.to_string())?;
    eprintln!("Restored {} into {}", from.display(), data_dir.display());
    if let Some(previous) = restored.previous {
        eprintln!("The replaced store is kept as {}", previous.display());
    }
    Ok(())
}
