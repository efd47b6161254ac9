//! Each tenant's active signing secrets, cached briefly so that a delivery does not read the
//! store, while a rotation done by another process (`fluxcb secrets rotate`) still takes effect
//! within [`SecretCache::ttl`].
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use fluxcb_core::ports::{SecretStore, StoreError};
use fluxcb_core::signing::SigningSecret;
use fluxcb_core::tenant::TenantId;

type Entry = (Instant, Arc<Vec<SigningSecret>>);

pub struct SecretCache {
    store: Arc<dyn SecretStore>,
    ttl: Duration,
    entries: Mutex<HashMap<TenantId, Entry>>,
    /// One generation at a time in this process: concurrent first deliveries of a tenant would
    /// otherwise each make a secret and sign with their own until the cache expires.
    generating: tokio::sync::Mutex<()>,
}

impl SecretCache {
    pub fn new(store: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            entries: Mutex::new(HashMap::new()),
            generating: tokio::sync::Mutex::new(()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The tenant's secrets, newest first. A tenant without one gets one generated, so that
    /// nothing is ever sent unsigned.
    pub async fn get(&self, tenant: &TenantId) -> Result<Arc<Vec<SigningSecret>>, StoreError> {
        if let Some((at, secrets)) = self.entries.lock().expect("poisoned").get(tenant) {
            if at.elapsed() < self.ttl {
                return Ok(secrets.clone());
            }
        }
        let mut secrets = self.store.active_secrets(tenant, Utc::now()).await?;
        if secrets.is_empty() {
            let _one_at_a_time = self.generating.lock().await;
            secrets = self.store.active_secrets(tenant, Utc::now()).await?;
            if secrets.is_empty() {
                self.store
                    .add_secret(tenant, &SigningSecret::generate(), Utc::now())
                    .await?;
                // Read back: another process may have made one too, and every active
                // secret signs.
                secrets = self.store.active_secrets(tenant, Utc::now()).await?;
            }
        }
        let secrets = Arc::new(secrets);
        self.entries
            .lock()
            .expect("poisoned")
            .insert(tenant.clone(), (Instant::now(), secrets.clone()));
        Ok(secrets)
    }
}
