//! Each tenant's registered destinations as this process last read them. Reads are refreshed
//! after [`DestinationDirectory::ttl`], so a change made through any node's API applies on every
//! node (the embedded server, each Lambda instance) within it, without a restart; the node that
//! made the change forgets its copy at once.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::destination::RegisteredDestination;
use crate::ports::{DestinationStore, StoreError};
use crate::tenant::TenantId;

/// How long a node trusts its copy of a tenant's registrations.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

type Entry = (Instant, Arc<Vec<RegisteredDestination>>);

pub struct DestinationDirectory {
    store: Arc<dyn DestinationStore>,
    ttl: Duration,
    entries: Mutex<HashMap<TenantId, Entry>>,
}

impl DestinationDirectory {
    pub fn new(store: Arc<dyn DestinationStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn store(&self) -> &Arc<dyn DestinationStore> {
        &self.store
    }

    /// The tenant's registrations. When the store fails, a copy past its time is still used
    /// (settings a few seconds old beat no deliveries); with no copy at all the error is
    /// returned and the caller holds its callbacks back.
    pub async fn registrations(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<Vec<RegisteredDestination>>, StoreError> {
        let cached = self.entries.lock().expect("poisoned").get(tenant).cloned();
        if let Some((at, regs)) = &cached {
            if at.elapsed() < self.ttl {
                return Ok(regs.clone());
            }
        }
        match self.store.list_destinations(tenant).await {
            Ok(list) => {
                let regs = Arc::new(list);
                self.entries
                    .lock()
                    .expect("poisoned")
                    .insert(tenant.clone(), (Instant::now(), regs.clone()));
                Ok(regs)
            }
            // The failure is not logged here (the core does no I/O); the store's own errors
            // surface through the callers that hold work back.
            Err(e) => cached.map(|(_, regs)| regs).ok_or(e),
        }
    }

    /// Forgets the tenant's copy, after a change made here.
    pub fn invalidate(&self, tenant: &TenantId) {
        self.entries.lock().expect("poisoned").remove(tenant);
    }
}
