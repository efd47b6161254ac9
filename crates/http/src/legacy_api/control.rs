//! The migration switch as one node sees it: the value set at runtime (`PUT
//! /v1/admin/migration`, kept in the store so every node and every Lambda shares it), re-read
//! at most every [`REFRESH`]; before anything was set, the configured mode and percentage.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fluxcb_core::migration::MigrationState;
use fluxcb_core::ports::CallbackStore;

/// How stale a node's view of the switch may be: a change reaches every node within this
/// (plus one request's time).
pub const REFRESH: Duration = Duration::from_secs(2);

pub struct MigrationControl {
    configured: MigrationState,
    cached: Mutex<Option<(Instant, MigrationState)>>,
}

impl MigrationControl {
    pub fn new(configured: MigrationState) -> Self {
        Self {
            configured,
            cached: Mutex::new(None),
        }
    }

    pub async fn current(&self, store: &dyn CallbackStore) -> MigrationState {
        if let Some((at, state)) = *self.cached.lock().expect("not poisoned") {
            if at.elapsed() < REFRESH {
                return state;
            }
        }
        let state = match store.migration_state().await {
            Ok(stored) => stored.unwrap_or(self.configured),
            Err(e) => {
                // Keep routing as before rather than flip sides on a read error.
                tracing::warn!(error = %e, "cannot read the migration switch; keeping the last known");
                self.cached
                    .lock()
                    .expect("not poisoned")
                    .map_or(self.configured, |(_, s)| s)
            }
        };
        *self.cached.lock().expect("not poisoned") = Some((Instant::now(), state));
        state
    }

    /// After this node changed the switch: it sees the change at once.
    pub fn remember(&self, state: MigrationState) {
        *self.cached.lock().expect("not poisoned") = Some((Instant::now(), state));
    }
}
