//! What the DynamoDB store tests share: the AWS emulator (moto, through the CLI tests' helper,
//! included as is: `.ci/run` starts it and sets `FLUXCB_TEST_AWS_ENDPOINT`; without it the
//! helper starts `moto_server` if it finds one, and otherwise the tests skip loudly, except
//! under `CI=true`), a fresh table per test, and callbacks as the legacy API and the import make
//! them.
#![allow(dead_code)]

use chrono::{DateTime, Duration, Utc};
use fluxcb_aws::queue::SqsQueue;
use fluxcb_aws::store::{DynamoStore, StoreRetention};
use fluxcb_aws::AwsClients;
use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback, Owner, WireFormat};
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{CallbackStore, IngestBatch, IngestResult, StoreError};
use fluxcb_core::status::Status;
use fluxcb_core::tenant::{Scope, TenantId};
use serde_json::json;

#[path = "../../../cli/tests/common/aws.rs"]
mod moto;

/// A store on a fresh table (made as `fluxcb aws bootstrap` makes it), or `None` when the
/// emulator is missing outside CI.
pub async fn store() -> Option<DynamoStore> {
    store_with(StoreRetention::default()).await
}

pub async fn store_with(retention: StoreRetention) -> Option<DynamoStore> {
    store_and_queue_with(retention)
        .await
        .map(|(store, _)| store)
}

/// A store and the work queue made with it (fresh ones), for tests that watch messages.
pub async fn store_and_queue() -> Option<(DynamoStore, SqsQueue)> {
    store_and_queue_with(StoreRetention::default()).await
}

async fn store_and_queue_with(retention: StoreRetention) -> Option<(DynamoStore, SqsQueue)> {
    moto::endpoint()?;
    let clients = AwsClients::from_env().await;
    let prefix = format!(
        "s{}",
        CallbackId::generate().ulid().to_string().to_lowercase()
    );
    let resources = fluxcb_aws::bootstrap::bootstrap(&clients, &prefix)
        .await
        .expect("bootstrap against moto");
    let queue = SqsQueue::new(clients.sqs.clone(), resources.queue_url, resources.dlq_url);
    Some((
        DynamoStore::new(clients.dynamodb.clone(), resources.table, retention)
            .with_sweep_grace(chrono::TimeDelta::seconds(3)),
        queue,
    ))
}

/// A second handle on the same table, with other retention settings.
pub fn same_table(store: &DynamoStore, retention: StoreRetention) -> DynamoStore {
    DynamoStore::new(store.client().clone(), store.table(), retention)
        .with_sweep_grace(store.sweep_grace())
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("a valid tenant")
}

pub fn scope(name: &str) -> Scope {
    Scope::Tenant(tenant(name))
}

/// A callback as the legacy API accepts it: a legacy id and maybe an `external_id`.
pub fn legacy_callback(tenant_name: &str, legacy_id: i64, external_id: Option<&str>) -> Callback {
    legacy_callback_at(tenant_name, legacy_id, external_id, None)
}

pub fn legacy_callback_at(
    tenant_name: &str,
    legacy_id: i64,
    external_id: Option<&str>,
    deliver_at: Option<DateTime<Utc>>,
) -> Callback {
    let now = Utc::now();
    let spec = NewCallback {
        url: "https://example.com/hook".into(),
        payload: Some(json!({"n": legacy_id})),
        deliver_at,
        ..NewCallback::default()
    }
    .validate(now)
    .expect("valid callback");
    let mut cb = Callback::accept(
        CallbackId::generate(),
        tenant(tenant_name),
        spec,
        &CallbackDefaults {
            max_attempts: 3,
            timeout_ms: 2_000,
        },
        "legacy-caller".into(),
        now,
    );
    cb.legacy_id = Some(legacy_id);
    cb.external_id = external_id.map(str::to_owned);
    cb
}

/// A legacy row as `fluxcb migrate import` converts it (see `fluxcb_migrate::convert`).
pub fn imported_row(legacy_id: i64, status: Status, owner: Owner) -> Callback {
    let now = Utc::now();
    let created = now - Duration::hours(1);
    let mut cb = legacy_callback("legacy", legacy_id, None);
    cb.id = CallbackId::for_legacy_row(created, legacy_id);
    cb.created_at = created;
    cb.updated_at = now - Duration::minutes(5);
    cb.created_by = "fluxcb migrate import".into();
    cb.spec.wire_format = WireFormat::Legacy;
    cb.spec.deliver_at = Some(now - Duration::minutes(10));
    cb.status = status;
    cb.owner = owner;
    let finished = status.is_final();
    cb.next_attempt_at =
        (owner == Owner::Fluxcb && !finished).then_some(now - Duration::minutes(10));
    cb
}

pub async fn ingest(
    store: &DynamoStore,
    callbacks: Vec<Callback>,
) -> Result<IngestResult, StoreError> {
    store
        .ingest(IngestBatch {
            tenant: callbacks[0].tenant.clone(),
            callbacks,
            idempotency: None,
        })
        .await
}

/// The legacy ids of a page, in its order.
pub fn ids(items: &[Callback]) -> Vec<i64> {
    items.iter().filter_map(|c| c.legacy_id).collect()
}
