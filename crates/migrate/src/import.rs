//! `fluxcb migrate import`: copies the legacy table into fluxcb's store in id order, a batch at
//! a time (constant memory), then the legacy API tokens, then moves fluxcb's own legacy id
//! sequence past every imported id.
//!
//! Re-running is safe: rows are keyed on their legacy id (and each gets a deterministic
//! callback id), mirrors are refreshed, and what fluxcb already owns is left alone. When the
//! legacy database or the store fails mid-way, the error names the last row done, and
//! `--after <id>` continues from there.
use std::time::Instant;

use chrono::Utc;
use fluxcb_core::auth::{hash_key, Role};
use fluxcb_core::callback::{CallbackDefaults, Owner};
use fluxcb_core::ports::{
    CallbackStore, ImportOutcome, KeyStore, NewApiKey, SecretStore, StoreError,
};
use fluxcb_core::signing::SigningSecret;
use serde::Serialize;

use crate::{LegacyDb, LegacyDbError, LegacyRow};
use fluxcb_core::legacy::row::{callback_from_row, legacy_tenant};

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Rows become fluxcb's to deliver (after the legacy worker is stopped: the runbook's
    /// fence); otherwise they are mirrors that legacy keeps sending.
    pub take_ownership: bool,
    /// Read and convert everything, write nothing.
    pub dry_run: bool,
    pub batch: u32,
    /// Start after this legacy id (0: from the first row).
    pub after: i64,
    pub defaults: CallbackDefaults,
}

/// Where the import is, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    /// Rows in the legacy table when the import started.
    pub total: u64,
    pub last_id: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub take_ownership: bool,
    pub rows_read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Rows fluxcb had already taken over: the legacy copy is stale and was left alone.
    pub owned_here: u64,
    /// Rows not imported, with the reason: `(legacy id, reason)`.
    pub skipped: Vec<(i64, String)>,
    pub tokens_imported: u64,
    pub tokens_existing: u64,
    pub tokens_skipped: Vec<(String, String)>,
    /// The highest legacy id seen; fluxcb's own id sequence continues past it.
    pub last_id: i64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the import stopped after legacy id {after}: {source}; fix the cause and rerun with --after {after} (the import is idempotent)")]
    Legacy { after: i64, source: LegacyDbError },
    #[error("the import stopped after legacy id {after}: the store failed: {source}; rerun with --after {after} (the import is idempotent)")]
    Store { after: i64, source: StoreError },
}

pub struct Stores<'a> {
    pub callbacks: &'a dyn CallbackStore,
    pub keys: &'a dyn KeyStore,
    pub secrets: &'a dyn SecretStore,
}

pub async fn import(
    db: &LegacyDb,
    stores: Stores<'_>,
    options: &ImportOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let mut after = options.after;
    let legacy_err = |after: i64| move |source| ImportError::Legacy { after, source };
    let total: u64 = db
        .count_by_status()
        .await
        .map_err(legacy_err(after))?
        .values()
        .sum();
    let owner = if options.take_ownership {
        Owner::Fluxcb
    } else {
        Owner::Legacy
    };
    let mut report = ImportReport {
        dry_run: options.dry_run,
        take_ownership: options.take_ownership,
        last_id: after,
        ..ImportReport::default()
    };
    loop {
        let rows = match db.rows_after(after, options.batch).await {
            Ok(rows) => rows,
            // One row this crate cannot represent: read up to it one by one, report it, go on.
            Err(LegacyDbError::Decode { id, message, .. }) => {
                let mut rows = Vec::new();
                while let Some(row) = db
                    .rows_after(rows.last().map_or(after, |r: &LegacyRow| r.id), 1)
                    .await
                    .ok()
                    .and_then(|mut r| r.pop())
                    .filter(|r| r.id < id)
                {
                    rows.push(row);
                }
                report
                    .skipped
                    .push((id, format!("cannot decode: {message}")));
                report.rows_read += 1;
                let through = rows.last().map_or(id, |r| r.id.max(id));
                apply(&mut report, stores.callbacks, options, owner, rows, after).await?;
                after = through.max(id);
                report.last_id = after;
                continue;
            }
            Err(e) => return Err(legacy_err(after)(e)),
        };
        let Some(last) = rows.last().map(|r| r.id) else {
            break;
        };
        apply(&mut report, stores.callbacks, options, owner, rows, after).await?;
        after = last;
        report.last_id = last;
        progress(Progress {
            done: report.rows_read,
            total,
            last_id: last,
        });
    }
    if !options.dry_run {
        import_tokens(db, &stores, &mut report, after).await?;
        let max = db.max_id().await.map_err(legacy_err(after))?;
        stores
            .callbacks
            .advance_legacy_ids_past(max.max(report.last_id))
            .await
            .map_err(|source| ImportError::Store { after, source })?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn apply(
    report: &mut ImportReport,
    store: &dyn CallbackStore,
    options: &ImportOptions,
    owner: Owner,
    rows: Vec<LegacyRow>,
    after: i64,
) -> Result<(), ImportError> {
    let now = Utc::now();
    let mut callbacks = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        report.rows_read += 1;
        match callback_from_row(row, owner, &options.defaults, now) {
            Ok(cb) => {
                ids.push(row.id);
                callbacks.push(cb);
            }
            Err(why) => report.skipped.push((row.id, why.to_string())),
        }
    }
    if options.dry_run || callbacks.is_empty() {
        return Ok(());
    }
    let outcomes = store
        .import_legacy(callbacks)
        .await
        .map_err(|source| ImportError::Store { after, source })?;
    for (id, outcome) in ids.into_iter().zip(outcomes) {
        match outcome {
            ImportOutcome::Inserted => report.inserted += 1,
            ImportOutcome::Updated => report.updated += 1,
            ImportOutcome::Unchanged => report.unchanged += 1,
            ImportOutcome::OwnedHere => report.owned_here += 1,
            ImportOutcome::Skipped(why) => report.skipped.push((id, why)),
        }
    }
    Ok(())
}

/// Callers keep their tokens: each becomes an API key of the `legacy` tenant (stored hashed,
/// like every key), named after its legacy user.
async fn import_tokens(
    db: &LegacyDb,
    stores: &Stores<'_>,
    report: &mut ImportReport,
    after: i64,
) -> Result<(), ImportError> {
    let store_err = |source| ImportError::Store { after, source };
    let tokens = db
        .tokens()
        .await
        .map_err(|source| ImportError::Legacy { after, source })?;
    let tenant = legacy_tenant();
    for token in tokens {
        let hash = hash_key(&token.key);
        if stores
            .keys
            .find_key(&hash)
            .await
            .map_err(store_err)?
            .is_some()
        {
            report.tokens_existing += 1;
            continue;
        }
        let created = stores
            .keys
            .create_key(NewApiKey {
                name: format!("legacy-{}", token.user),
                tenant: tenant.clone(),
                role: Role::Tenant,
                hash,
            })
            .await;
        match created {
            Ok(_) => report.tokens_imported += 1,
            Err(StoreError::Conflict(why)) => report.tokens_skipped.push((token.user, why)),
            Err(e) => return Err(store_err(e)),
        }
    }
    // Callbacks moved to the Standard Webhooks format later need a tenant secret to sign with.
    let now = Utc::now();
    if stores
        .secrets
        .active_secrets(&tenant, now)
        .await
        .map_err(store_err)?
        .is_empty()
    {
        stores
            .secrets
            .add_secret(&tenant, &SigningSecret::generate(), now)
            .await
            .map_err(store_err)?;
    }
    Ok(())
}
