//! The callback table on DynamoDB: one table holds callbacks, their attempts and history,
//! idempotency records, API keys and signing secrets (single-table design, so that a callback
//! and its audit trail are one partition and ingest is one transaction).
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | callback | `cb#<id>` | `cb` |
//! | attempt | `cb#<id>` | `at#<number>#<ulid>` |
//! | operator action, recovery | `cb#<id>` | `ev#<ulid>` |
//! | idempotency record | `idem#<tenant>#<key>` | `idem` |
//! | API key | `keys` | `<sha-256 of the key>` |
//! | signing secret | `secrets#<tenant>` | `<ulid>` |
//! | tenant registry | `tenants` | `<tenant>` |
//! | legacy id counter | `sequence#legacy_id` | `sequence` |
//! | legacy id pointer (names the callback) | `legacy#<legacy id>` | `legacy` |
//! | `external_id` guard (names the callback) | `external#<tenant>#<external_id>` | `external` |
//! | awaiting hand-back to legacy (names the callback) | `handback` | `<callback id>` |
//! | console session (see [`sessions`]) | `session#<sha-256 of its id>` | `session` |
//! | statistics counters (see [`stats`]) | `stats#<tenant>#<shard>` | `m#<ms>` / `h#<ms>` |
//! | ordering key head, waiting member (see [`ordering`]) | `okey#<tenant>#<key>` | `head` / `m#<seq>` |
//! | a registration's shared limits (see [`limits`]) | `dlim#<sha-256 of its limits key>` | `rate` / `conc` |
//! | a destination's circuit breaker as last recorded (see [`breakers`]) | `breakers` | `<sha-256 of its key>` |
//!
//! Indexes: `due` (`due_pk` = one of [`DUE_SHARDS`] shards, `due_sk` = `<ms>#<id>`) holds
//! every callback that waits (due time) or is in flight (lease end), so the sweeper finds what
//! needs a message with one query per shard; `by_tenant` (`tenant`, `id`) and `by_status`
//! (`tenant_status`, `id`) serve listings newest first; `by_legacy` (`tenant_status`,
//! `legacy_id`, sparse: callbacks with a legacy id only) serves the legacy API's listing, newest
//! legacy id first, with its total count.
mod admin;
mod breakers;
mod callbacks;
mod destinations;
mod handback;
mod import;
mod ingest;
mod items;
mod latency;
mod legacy;
mod limits;
mod operations;
mod ordering;
mod sessions;
pub mod stats;
mod sweep;
mod work;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use fluxcb_core::ports::StoreError;

pub use breakers::BreakerRecord;
pub use limits::{Admission, ConcurrencySlot, RATE_HORIZON};
pub use sweep::{SweepCandidate, SweepKind};
pub use work::Recorded;

/// Shards of the `due` index: one partition key would cap the sweeper's index at one
/// partition's write rate.
pub const DUE_SHARDS: u32 = 8;
/// The longest delay an SQS message can carry. Callbacks due within it get a delayed message
/// when written; later ones are left to the sweeper.
pub const MAX_QUEUE_DELAY: chrono::TimeDelta = chrono::TimeDelta::seconds(900);
/// DynamoDB's item size limit (400 KB), less room for the attributes added after ingest.
pub const MAX_ITEM_BYTES: usize = 390_000;
/// Actions in one `TransactWriteItems` call.
pub const MAX_TRANSACTION_ITEMS: usize = 100;

pub const INDEX_DUE: &str = "due";
pub const INDEX_BY_TENANT: &str = "by_tenant";
pub const INDEX_BY_STATUS: &str = "by_status";
/// Keys only, plus `expires_at` and `owner` so that counts can leave out what retention has
/// expired and filter by owner.
pub const INDEX_BY_LEGACY: &str = "by_legacy";

pub type Item = HashMap<String, AttributeValue>;

/// How long finished callbacks and idempotency records are kept. Written as each item's TTL
/// (`expires_at`), and also checked on read, since DynamoDB deletes expired items lazily.
#[derive(Clone, Copy, Debug)]
pub struct StoreRetention {
    pub callbacks: Duration,
    pub idempotency_keys: Duration,
}

impl Default for StoreRetention {
    fn default() -> Self {
        Self {
            callbacks: Duration::from_secs(7 * 86_400),
            idempotency_keys: Duration::from_secs(86_400),
        }
    }
}

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention: StoreRetention,
    /// How long a sent message may be overdue before the sweeper presumes it lost.
    sweep_grace: chrono::TimeDelta,
    /// Which `due` shard the next sweep starts with.
    sweep_turn: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Tenants this process has registered already (see `register_tenant`).
    known_tenants:
        std::sync::Arc<std::sync::Mutex<std::collections::HashSet<fluxcb_core::tenant::TenantId>>>,
    /// What a dead letter does to the later callbacks of its ordering key.
    after_dead_letter: fluxcb_core::ordering::AfterDeadLetter,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, retention: StoreRetention) -> Self {
        Self {
            client,
            table: table.into(),
            retention,
            sweep_grace: chrono::TimeDelta::minutes(2),
            sweep_turn: Default::default(),
            known_tenants: Default::default(),
            after_dead_letter: Default::default(),
        }
    }

    /// What a dead letter does to the later callbacks of its ordering key
    /// (`ordering_after_dead_letter`; default: continue).
    pub fn with_after_dead_letter(
        mut self,
        policy: fluxcb_core::ordering::AfterDeadLetter,
    ) -> Self {
        self.after_dead_letter = policy;
        self
    }

    /// Sets how long a sent message may be overdue before the sweeper presumes it lost.
    pub fn with_sweep_grace(mut self, grace: chrono::TimeDelta) -> Self {
        self.sweep_grace = grace;
        self
    }

    pub fn sweep_grace(&self) -> chrono::TimeDelta {
        self.sweep_grace
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Maps an SDK error to the store's error kinds: throttling becomes `Busy` (503 with
/// `Retry-After`), an unreachable or failing service (a 5xx answer: `InternalServerError`,
/// `ServiceUnavailable`, or one whose body names no error) `Unavailable` (also a 503: the SDK
/// has retried it already, a caller may try again later), anything else `Internal`.
pub(crate) fn store_error<E>(op: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.code().unwrap_or_default().to_owned();
    let message = e.message().unwrap_or_default().to_owned();
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            return StoreError::Unavailable(format!("{op}: DynamoDB is unreachable: {e}"))
        }
        SdkError::ServiceError(se) if se.raw().status().is_server_error() => {
            return StoreError::Unavailable(format!(
                "{op}: DynamoDB failed ({}): {code}: {message}",
                se.raw().status().as_u16()
            ))
        }
        SdkError::ResponseError(r) if r.raw().status().is_server_error() => {
            return StoreError::Unavailable(format!(
                "{op}: DynamoDB failed ({}): {e}",
                r.raw().status().as_u16()
            ))
        }
        _ => {}
    }
    match code.as_str() {
        "ProvisionedThroughputExceededException"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TransactionConflictException"
        | "TransactionInProgressException"
        | "LimitExceededException" => StoreError::Busy(format!("{op}: {code}: {message}")),
        "ResourceNotFoundException" => {
            StoreError::Unavailable(format!("{op}: the table does not exist: {message}"))
        }
        "" => StoreError::Internal(format!("{op}: {e}")),
        _ => StoreError::Internal(format!("{op}: {code}: {message}")),
    }
}

/// The reasons a cancelled transaction gives, one per action (`"None"` where that action was
/// not the cause).
pub(crate) fn cancellation_codes<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> Option<Vec<String>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match e {
        SdkError::ServiceError(se) => match se.err() {
            TransactWriteItemsError::TransactionCanceledException(c) => Some(
                c.cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_owned())
                    .collect(),
            ),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(e, SdkError::ServiceError(se) if se.err().code() == Some("ConditionalCheckFailedException"))
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service_error(code: &str) -> SdkError<PutItemError, Response> {
        answered(400, code)
    }

    fn answered(status: u16, code: &str) -> SdkError<PutItemError, Response> {
        let mut meta = ErrorMetadata::builder().message("m");
        if !code.is_empty() {
            meta = meta.code(code);
        }
        let err = PutItemError::generic(meta.build());
        let raw = Response::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    /// DynamoDB failing on its side is transient (the caller answers 503 with `Retry-After`),
    /// also when its answer names no error (an emulator's crash page, a proxy's 502).
    #[test]
    fn server_side_failures_are_unavailable_not_internal() {
        for (status, code) in [
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
            (500, ""),
            (502, ""),
        ] {
            match store_error("op", answered(status, code)) {
                StoreError::Unavailable(m) => assert!(m.contains(&status.to_string()), "{m}"),
                other => panic!("{status} {code}: {other:?}"),
            }
        }
        assert!(matches!(
            store_error("op", answered(400, "")),
            StoreError::Internal(_)
        ));
    }

    #[test]
    fn throttling_is_busy_and_a_missing_table_unavailable() {
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
            "TransactionConflictException",
        ] {
            assert!(
                matches!(store_error("op", service_error(code)), StoreError::Busy(_)),
                "{code}"
            );
        }
        assert!(matches!(
            store_error("op", service_error("ResourceNotFoundException")),
            StoreError::Unavailable(_)
        ));
        match store_error("op", service_error("ValidationException")) {
            StoreError::Internal(m) => assert!(m.contains("ValidationException"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(is_conditional_failure(&service_error(
            "ConditionalCheckFailedException"
        )));
        assert!(!is_conditional_failure(&service_error(
            "ThrottlingException"
        )));
    }
}
