//! The interfaces adapters implement. They are shaped so that both an embedded SQL store and
//! DynamoDB + SQS fit: every state change is a transition applied conditionally on the current
//! state, ingest is one atomic write of callbacks plus their idempotency record, and claiming
//! takes a lease so a crashed worker's callbacks come back by themselves.
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use url::Url;

use crate::attempt::{Attempt, SendOutcome};
use crate::auth::{ApiKey, Role};
use crate::callback::{Callback, Method};
use crate::destination::{DestinationId, RegisteredDestination};
use crate::event::Event;
use crate::id::CallbackId;
use crate::retry::Decision;
use crate::signing::SigningSecret;
use crate::status::Status;
use crate::tenant::{Scope, TenantId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Transient overload (locked database, full queue). Callers answer 503 with `Retry-After`.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// The store cannot accept writes right now (disk full, read-only). Also a 503.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The item is too big for the store (DynamoDB's 400 KB item limit). Nothing was written.
    #[error("too large for the store: {0}")]
    TooLarge(String),
    /// The request asks for something this backend does not serve (a list filter without an
    /// index on DynamoDB, say), refused rather than answered with a full scan.
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    #[error("store failure: {0}")]
    Internal(String),
}

/// Stored with the callbacks it created, so a repeated request gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: String,
    /// Hash of what makes two requests "the same": method, path and body.
    pub fingerprint: String,
    pub response_status: u16,
    pub response_body: Vec<u8>,
}

pub struct IngestBatch {
    pub tenant: TenantId,
    pub callbacks: Vec<Callback>,
    pub idempotency: Option<IdempotencyRecord>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum IngestResult {
    /// Durably committed.
    Accepted,
    /// The key was used before with the same request: here is the original answer.
    Replayed { status: u16, body: Vec<u8> },
    /// The key was used before with a different request.
    KeyReused,
}

#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    /// Exact host name of the target URL.
    pub host: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// `metadata[key] == value`.
    pub metadata: Option<(String, String)>,
    /// Admin only: narrow to one tenant.
    pub tenant: Option<TenantId>,
    /// Callers' callbacks unless asked otherwise.
    pub kind: crate::notify::KindFilter,
}

#[derive(Clone, Debug)]
pub struct PageRequest {
    /// Return items strictly older than this id (newest first).
    pub cursor: Option<CallbackId>,
    pub limit: u32,
}

pub struct CallbackPage {
    pub items: Vec<Callback>,
    pub next_cursor: Option<CallbackId>,
}

/// What the legacy API's list filters on: `?status=` (one legacy status can stand for several
/// engine states) and `?external_id=`.
#[derive(Clone, Debug, Default)]
pub struct LegacyListFilter {
    /// Engine states to include; `None` for all. An empty list matches nothing (an unknown
    /// legacy status name, which the legacy service answered with an empty page).
    pub statuses: Option<Vec<Status>>,
    pub external_id: Option<String>,
    /// Only callbacks this side delivers, or only mirrors (`None`: both).
    pub owner: Option<crate::callback::Owner>,
}

/// One page of the legacy API's page-number pagination, with the total it counts.
pub struct LegacyPage {
    pub count: u64,
    pub items: Vec<Callback>,
}

/// What the console's overview asks for: traffic in `[since, until)` in buckets of `bucket`.
#[derive(Clone, Debug)]
pub struct StatsRequest {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub bucket: Duration,
    /// Admin only: narrow to one tenant (a tenant scope narrows anyway).
    pub tenant: Option<TenantId>,
}

/// One bucket of [`DeliveryStats`]: callbacks accepted (created) and attempts that started in
/// `[start, start + bucket)`, by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsBucket {
    pub start: DateTime<Utc>,
    pub accepted: u64,
    /// Attempts that got a 2xx.
    pub delivered: u64,
    /// Attempts that did not (whatever followed: a retry or a dead letter).
    pub failed: u64,
    /// Failed attempts after which the callback was dead-lettered.
    pub dead_lettered: u64,
}

/// Attempt duration percentiles over a window (nearest rank), in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyPercentiles {
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Attempts to one host (the target URL's host name) over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DestinationStats {
    pub host: String,
    pub attempts: u64,
    pub failed: u64,
    pub avg_ms: f64,
    pub max_ms: u64,
}

/// Traffic over a window, for the console's overview and destinations pages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryStats {
    /// Every bucket of the window, oldest first, empty ones included.
    pub buckets: Vec<StatsBucket>,
    /// `None` when no attempt started in the window.
    pub latency: Option<LatencyPercentiles>,
    /// Callbacks dead-lettered now (status `failed`), whenever they failed.
    pub dead_letters: u64,
    /// Every host attempted in the window, most attempted first.
    pub destinations: Vec<DestinationStats>,
}

/// Dead letters sharing a host and an error code (the code of their last error, or
/// `unknown`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterGroup {
    pub host: String,
    pub error: String,
    pub count: u64,
    /// When the newest of them was last updated (dead-lettered).
    pub latest: DateTime<Utc>,
}

pub struct CallbackDetail {
    pub callback: Callback,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug)]
pub enum ActionResult {
    Done(Box<Callback>),
    NotFound,
    /// The callback is in a state the action cannot start from.
    WrongState(Status),
    /// The legacy service owns it (a mirror): act on it there.
    OwnedByLegacy,
}

/// What an import did with one legacy row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    Inserted,
    /// A mirror refreshed from the legacy row, or taken over (`--take-ownership`).
    Updated,
    Unchanged,
    /// fluxcb owns this callback already (taken over earlier): the legacy row is stale.
    OwnedHere,
    /// Not imported, with the reason (an `external_id` another callback has, say).
    Skipped(String),
}

#[async_trait]
pub trait CallbackStore: Send + Sync + 'static {
    async fn ingest(&self, batch: IngestBatch) -> Result<IngestResult, StoreError>;
    async fn get(
        &self,
        scope: &Scope,
        id: &CallbackId,
    ) -> Result<Option<CallbackDetail>, StoreError>;
    async fn list(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<CallbackPage, StoreError>;
    async fn events(
        &self,
        scope: &Scope,
        id: &CallbackId,
    ) -> Result<Option<Vec<Event>>, StoreError>;
    async fn cancel(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
    ) -> Result<ActionResult, StoreError>;
    async fn retry(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
    ) -> Result<ActionResult, StoreError>;
    /// Moves failed callbacks matching the filter back to pending: every one, or at most
    /// `limit` (which ones go first is up to the store), so that a caller can move many in
    /// short steps instead of one long write. Returns how many moved; fewer than `limit`
    /// means none were left to move when the store looked.
    async fn redrive(
        &self,
        scope: &Scope,
        filter: &ListFilter,
        actor: &str,
        limit: Option<u32>,
    ) -> Result<u64, StoreError>;

    /// Claims one callback if it is due at `now` (a queue message names it), leasing it until
    /// `lease_until`. `None` when it is not due, already in flight, finished or gone: the
    /// message is then stale and can be dropped.
    async fn claim(
        &self,
        id: &CallbackId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Callback>, StoreError>;
    /// Records an attempt and applies the transition its decision calls for. `follow_ups`
    /// (notifications, see [`crate::notify::follow_ups`]) are stored in the same write, only
    /// if the transition applies, and once: a row whose id exists already is left as it is.
    async fn record_attempt(
        &self,
        id: &CallbackId,
        attempt: Attempt,
        decision: Decision,
        now: DateTime<Utc>,
        follow_ups: &[Callback],
    ) -> Result<(), StoreError>;
    /// Returns claimed callbacks to pending without counting an attempt.
    async fn defer(&self, items: Vec<(CallbackId, DateTime<Utc>)>) -> Result<(), StoreError>;
    /// Returns to pending every delivering callback whose lease ended before `now`
    /// (all of them when `now` is far in the future: used at start-up).
    async fn recover_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Deletes finished callbacks last updated before `before`, and idempotency records older
    /// than `idempotency_before`, at most `limit` callbacks per call.
    async fn purge(
        &self,
        before: DateTime<Utc>,
        idempotency_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// Succeeds when the store can take writes.
    async fn check_writable(&self) -> Result<(), StoreError>;
    /// Reserves `count` consecutive integer ids for callbacks in the legacy wire format and
    /// returns the first. Never hands out an id twice; gaps are allowed (like a SQL sequence).
    async fn allocate_legacy_ids(&self, count: u32) -> Result<i64, StoreError>;
    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError>;

    /// The callback the legacy API knows by this integer id.
    async fn get_by_legacy_id(
        &self,
        _scope: &Scope,
        _legacy_id: i64,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        Err(StoreError::Unsupported(
            "the legacy API is not served by this backend yet".into(),
        ))
    }
    /// Callbacks with a legacy id, newest (highest id) first, `limit` from `offset`, and how
    /// many match in all: the legacy API's page-number pagination.
    async fn list_legacy(
        &self,
        _scope: &Scope,
        _filter: &LegacyListFilter,
        _offset: u64,
        _limit: u32,
    ) -> Result<LegacyPage, StoreError> {
        Err(StoreError::Unsupported(
            "the legacy API is not served by this backend yet".into(),
        ))
    }
    /// Whether a callback of this tenant carries this `external_id`.
    async fn external_id_exists(
        &self,
        _tenant: &TenantId,
        _external_id: &str,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unsupported(
            "the legacy API is not served by this backend yet".into(),
        ))
    }
    /// Copies rows from the legacy table, keyed on their legacy id: new ones are inserted,
    /// mirrors (owner legacy) are refreshed, or taken over when the row comes with owner
    /// fluxcb; callbacks fluxcb already owns are left alone. One outcome per row, in order.
    async fn import_legacy(&self, _rows: Vec<Callback>) -> Result<Vec<ImportOutcome>, StoreError> {
        Err(StoreError::Unsupported(
            "importing from legacy is not served by this backend yet".into(),
        ))
    }
    /// Moves the legacy id sequence past `id` (never back), so ids fluxcb hands out after an
    /// import never collide with imported ones.
    async fn advance_legacy_ids_past(&self, _id: i64) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "the legacy id sequence is not served by this backend yet".into(),
        ))
    }
    /// The rollback's fence: every unfinished callback fluxcb owns that has a legacy id becomes a
    /// mirror (owner legacy), so no new attempt starts; attempts already in flight finish and
    /// are recorded, but schedule nothing here. Returns every callback awaiting hand-back: the
    /// ones fenced now (as they were before) and any an interrupted earlier run fenced but did
    /// not mark handed back.
    async fn fence_for_handback(&self, _now: DateTime<Utc>) -> Result<Vec<Callback>, StoreError> {
        Err(StoreError::Unsupported(
            "handing callbacks back to legacy is not served by this backend yet".into(),
        ))
    }
    /// The callback is in the legacy table now: no longer awaiting hand-back; recorded in its
    /// audit trail with `detail`.
    async fn mark_handed_back(
        &self,
        _id: &CallbackId,
        _detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "handing callbacks back to legacy is not served by this backend yet".into(),
        ))
    }
    /// Appends to a callback's audit trail (a shadow run's would-be request, a hand-back).
    async fn record_event(
        &self,
        _id: &CallbackId,
        _kind: crate::event::EventKind,
        _actor: &str,
        _detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "recording events is not served by this backend yet".into(),
        ))
    }
    /// The migration switch as last set at runtime (`PUT /v1/admin/migration`), shared by every
    /// node; `None` until it is first set.
    async fn migration_state(
        &self,
    ) -> Result<Option<crate::migration::MigrationState>, StoreError> {
        Ok(None)
    }
    async fn set_migration_state(
        &self,
        _state: crate::migration::MigrationState,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "changing the migration mode at runtime is not served by this backend yet".into(),
        ))
    }
    /// How many callbacks [`Self::redrive`] would move with this filter (its dry run): dead
    /// letters fluxcb owns. The default pages through [`Self::list`]; stores with an index
    /// override it.
    async fn count_redrivable(
        &self,
        scope: &Scope,
        filter: &ListFilter,
    ) -> Result<u64, StoreError> {
        let filter = ListFilter {
            status: Some(Status::Failed),
            ..filter.clone()
        };
        let mut count = 0;
        let mut cursor = None;
        loop {
            let page = self
                .list(scope, &filter, &PageRequest { cursor, limit: 500 })
                .await?;
            count += page
                .items
                .iter()
                .filter(|cb| cb.owner == crate::callback::Owner::Fluxcb)
                .count() as u64;
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(count),
            }
        }
    }
    /// Traffic over a window: accepted callbacks and attempts by outcome per bucket, attempt
    /// latency percentiles, dead letters, and per-host figures (the console's overview).
    async fn stats(
        &self,
        _scope: &Scope,
        _request: &StatsRequest,
    ) -> Result<DeliveryStats, StoreError> {
        Err(StoreError::Unsupported(
            "delivery statistics are not served by this backend yet".into(),
        ))
    }
    /// Dead letters matching `filter` (its status is ignored), grouped by host and error code,
    /// largest groups first.
    async fn dead_letter_groups(
        &self,
        _scope: &Scope,
        _filter: &ListFilter,
    ) -> Result<Vec<DeadLetterGroup>, StoreError> {
        Err(StoreError::Unsupported(
            "grouping dead letters is not served by this backend yet".into(),
        ))
    }
    /// Whether callbacks may carry an `ordering_key` here.
    fn supports_ordering_keys(&self) -> bool {
        false
    }
    /// Releases a key held after a dead letter (policy `hold`): its next waiting callback
    /// becomes due. Whether it was held.
    async fn release_ordering_key(
        &self,
        _tenant: &TenantId,
        _key: &str,
        _now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unsupported(
            "ordering keys are not served by this backend yet".into(),
        ))
    }
    /// Claims a callback for an immediate attempt whatever its due time (the legacy API's
    /// `send` action): a scheduled or pending one as it is, a failed one with one more attempt
    /// allowed. Records the operator action. `WrongState` when it is delivering or finished.
    async fn claim_now(
        &self,
        _scope: &Scope,
        _id: &CallbackId,
        _actor: &str,
        _now: DateTime<Utc>,
        _lease_until: DateTime<Utc>,
    ) -> Result<ActionResult, StoreError> {
        Err(StoreError::Unsupported(
            "sending now is not served by this backend yet".into(),
        ))
    }
}

/// A store that is also its own queue (the embedded store): workers poll it for due callbacks.
/// Queue-backed stores (DynamoDB + SQS) do not implement it; their workers are handed ids.
#[async_trait]
pub trait PolledStore: CallbackStore {
    /// Claims up to `limit` due callbacks of one tenant, oldest due first, leasing them until
    /// `lease_until`.
    async fn claim_due(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        limit: u32,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Callback>, StoreError>;
    /// Tenants that have callbacks due at `now`, so the dispatcher can take turns between them.
    async fn tenants_with_due(&self, now: DateTime<Utc>) -> Result<Vec<TenantId>, StoreError>;
    /// The earliest `next_attempt_at` among waiting callbacks.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
}

pub struct NewApiKey {
    pub name: String,
    pub tenant: TenantId,
    pub role: Role,
    pub hash: String,
}

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    async fn find_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey, StoreError>;
    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// Revokes by id or name; false when no live key matched.
    async fn revoke_key(&self, id_or_name: &str) -> Result<bool, StoreError>;
    async fn has_admin_key(&self) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Secrets that sign right now, newest first.
    async fn active_secrets(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Vec<SigningSecret>, StoreError>;
    /// Adds a secret; the ones already active keep signing until `retire_old_at`.
    async fn add_secret(
        &self,
        tenant: &TenantId,
        secret: &SigningSecret,
        retire_old_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// Registered destinations. Reads are served by every backend (none registered by default);
/// a backend without registrations refuses the writes.
#[async_trait]
pub trait DestinationStore: Send + Sync + 'static {
    /// Whether registrations can be written here.
    fn supports_registration(&self) -> bool {
        false
    }
    /// Every registration of the tenant, in no particular order.
    async fn list_destinations(
        &self,
        _tenant: &TenantId,
    ) -> Result<Vec<RegisteredDestination>, StoreError> {
        Ok(Vec::new())
    }
    async fn get_destination(
        &self,
        _id: &DestinationId,
    ) -> Result<Option<RegisteredDestination>, StoreError> {
        Ok(None)
    }
    /// `Conflict` when the tenant already has a registration with the same match.
    async fn create_destination(&self, _d: &RegisteredDestination) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "registering destinations is not served by this backend yet".into(),
        ))
    }
    /// Replaces the registration if it is still at `expected_revision`; `Conflict` if another
    /// change came first (or the new match is taken), `Ok(false)` if it is gone.
    async fn update_destination(
        &self,
        _d: &RegisteredDestination,
        _expected_revision: u64,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unsupported(
            "registering destinations is not served by this backend yet".into(),
        ))
    }
    /// Whether there was one to delete.
    async fn delete_destination(&self, _id: &DestinationId) -> Result<bool, StoreError> {
        Err(StoreError::Unsupported(
            "registering destinations is not served by this backend yet".into(),
        ))
    }
}

/// A console session as a [`SessionStore`] keeps it. The store never sees the session id itself,
/// only its SHA-256 (so a copy of the store or a memory dump holds no usable cookie).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the API key that logged in: the key is looked up again on every request, so
    /// revoking it ends its sessions.
    pub key_hash: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// Where console sessions live: in one process's memory for `fluxcb serve` on the embedded
/// store, in the table on AWS so that every API instance (Lambda runs many) knows every session.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Keeps `session` under `id_hash` until its `expires_at`.
    async fn put_session(&self, id_hash: &str, session: &ConsoleSession) -> Result<(), StoreError>;
    /// The session under `id_hash` if it is still live at `now` (an expired one is never
    /// returned, whether or not it has been cleaned up yet).
    async fn session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>, StoreError>;
    /// Ends the session (logout, or its key was revoked). Ending one that is gone is no error.
    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError>;
}

/// A committed callback and when it is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub id: CallbackId,
    pub tenant: TenantId,
    pub at: DateTime<Utc>,
}

impl Due {
    /// A freshly written callback: due at its first attempt's time.
    pub fn of(callback: &Callback) -> Self {
        Self {
            id: callback.id,
            tenant: callback.tenant.clone(),
            at: callback.next_attempt_at.unwrap_or(callback.created_at),
        }
    }
}

/// Hands due work to workers. Told after a callback is committed (or sent back by an operator),
/// never before: the store is the source of truth, and a lost notification only delays a
/// callback until the store is next polled or swept. Locally it wakes the dispatcher; on AWS
/// it sends SQS messages.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// `due` lists callbacks and when each is due; an empty list means "look again" (several
    /// callbacks changed, e.g. a bulk redrive).
    async fn notify(&self, due: &[Due]) -> Result<(), StoreError>;
}

/// The legacy service's table while it is still in use (`FLUXCB_LEGACY_DATABASE_URL`): rows
/// created through the legacy API take their integer ids from its own sequence, and an
/// `external_id` must be unique across both sides, so that either side can insert at any time.
#[async_trait]
pub trait LegacyTable: Send + Sync + 'static {
    /// `count` fresh ids from the legacy table's sequence (`nextval`), in increasing order.
    /// Unreachable database: [`StoreError::Unavailable`].
    async fn next_ids(&self, count: u32) -> Result<Vec<i64>, StoreError>;
    /// Whether a legacy row carries this `external_id`.
    async fn external_id_exists(&self, external_id: &str) -> Result<bool, StoreError>;
    /// The newest `limit` rows (highest id first) matching the legacy list filters, and how
    /// many match in all: the legacy side of a merged listing in split mode.
    async fn newest(
        &self,
        statuses: Option<&[&str]>,
        external_id: Option<&str>,
        limit: u64,
    ) -> Result<(u64, Vec<crate::legacy::row::LegacyRow>), StoreError>;
}

/// Makes one attempt of a callback the caller has claimed, now, and records it (the legacy
/// API's synchronous `send`).
#[async_trait]
pub trait SendNow: Send + Sync + 'static {
    async fn send_claimed(&self, callback: &Callback) -> Result<(), StoreError>;
}

/// A request ready to go on the wire.
#[derive(Clone, Debug)]
pub struct OutboundRequest {
    pub url: Url,
    pub method: Method,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

#[async_trait]
pub trait Sender: Send + Sync + 'static {
    /// Never fails: every way an attempt can go wrong is part of the outcome.
    async fn send(&self, request: OutboundRequest) -> SendOutcome;
}

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
