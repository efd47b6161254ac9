//! Background upkeep: bring back callbacks whose worker died (expired leases), and delete
//! finished callbacks and old idempotency records past their retention.
use std::sync::Arc;
use std::time::Duration;

use fluxcb_core::ports::{CallbackStore, Clock};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Retention {
    /// How long delivered, failed and cancelled callbacks are kept.
    pub callbacks: Duration,
    /// How long an idempotency key is remembered (at least 24 hours).
    pub idempotency_keys: Duration,
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            callbacks: Duration::from_secs(30 * 24 * 3600),
            idempotency_keys: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(60),
        }
    }
}

/// Deletes at most this many callbacks per transaction, so retention never holds the writer
/// for long.
const PURGE_CHUNK: u32 = 1000;

pub async fn run(
    store: Arc<dyn CallbackStore>,
    clock: Arc<dyn Clock>,
    retention: Retention,
    shutdown: CancellationToken,
) {
    // The first pass soon after start: a process restarted more often than the interval
    // (a crash loop, frequent deploys) still honours retention.
    let mut wait = retention.interval.min(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = retention.interval;
        if let Err(e) = run_once(store.as_ref(), clock.as_ref(), &retention, &shutdown).await {
            tracing::warn!(error = %e, "maintenance pass failed");
        }
    }
}

pub async fn run_once(
    store: &dyn CallbackStore,
    clock: &dyn Clock,
    retention: &Retention,
    shutdown: &CancellationToken,
) -> Result<u64, fluxcb_core::ports::StoreError> {
    let now = clock.now();
    let recovered = store.recover_expired_leases(now).await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "returned callbacks with expired leases to pending"
        );
    }
    let before = now - chrono::Duration::from_std(retention.callbacks).unwrap_or_default();
    let keys_before =
        now - chrono::Duration::from_std(retention.idempotency_keys).unwrap_or_default();
    let mut purged = 0;
    loop {
        let n = store.purge(before, keys_before, PURGE_CHUNK).await?;
        purged += n;
        if n < u64::from(PURGE_CHUNK) || shutdown.is_cancelled() {
            break;
        }
    }
    if purged > 0 {
        tracing::info!(purged, "retention removed finished callbacks");
    }
    Ok(purged)
}
