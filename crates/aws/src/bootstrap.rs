//! `fluxcb aws bootstrap`: creates the callback table and the queues with the same settings as
//! `deploy/template.yaml`, for development against an emulator or a sandbox account.
use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::store::{INDEX_BY_LEGACY, INDEX_BY_STATUS, INDEX_BY_TENANT, INDEX_DUE};
use crate::{AwsClients, AwsResources};

/// The deliverer's function timeout is 90 s; SQS's visibility timeout is at least six times
/// the consumer's timeout so a slow batch is not handed to a second consumer.
pub const VISIBILITY_TIMEOUT_SECS: u32 = 600;
/// Receives before SQS moves a message to the dead letter queue. Only a message that crashes
/// the deliverer gets that far: retries are new messages.
pub const MAX_RECEIVE_COUNT: u32 = 5;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BootstrapError(String);

fn err(op: &str, e: impl std::fmt::Display) -> BootstrapError {
    BootstrapError(format!("{op}: {e}"))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, BootstrapError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| err("key schema", e))
}

fn string_attr(name: &str) -> Result<AttributeDefinition, BootstrapError> {
    attr(name, ScalarAttributeType::S)
}

fn attr(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, BootstrapError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| err("attribute", e))
}

/// The legacy API's listing index: `tenant_status` and the numeric `legacy_id`, sparse (only
/// callbacks with a legacy id), keys, `expires_at` and `owner` only.
fn legacy_index_parts() -> Result<(Vec<KeySchemaElement>, Projection), BootstrapError> {
    Ok((
        vec![
            key("tenant_status", KeyType::Hash)?,
            key("legacy_id", KeyType::Range)?,
        ],
        Projection::builder()
            .projection_type(ProjectionType::Include)
            .non_key_attributes("expires_at")
            .non_key_attributes("owner")
            .build(),
    ))
}

fn index(name: &str, hash: &str, range: &str) -> Result<GlobalSecondaryIndex, BootstrapError> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash)?)
        .key_schema(key(range, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| err("index", e))
}

/// Creates the table (if missing) and both queues (SQS's create is idempotent for identical
/// attributes), and returns their names.
pub async fn bootstrap(clients: &AwsClients, prefix: &str) -> Result<AwsResources, BootstrapError> {
    let table = format!("{prefix}-callbacks");
    let exists = clients
        .dynamodb
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .is_ok();
    if !exists {
        let mut create = clients
            .dynamodb
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?);
        for a in [
            "pk",
            "sk",
            "due_pk",
            "due_sk",
            "tenant",
            "id",
            "tenant_status",
        ] {
            create = create.attribute_definitions(string_attr(a)?);
        }
        let (legacy_keys, legacy_projection) = legacy_index_parts()?;
        create
            .attribute_definitions(attr("legacy_id", ScalarAttributeType::N)?)
            .global_secondary_indexes(index(INDEX_DUE, "due_pk", "due_sk")?)
            .global_secondary_indexes(index(INDEX_BY_TENANT, "tenant", "id")?)
            .global_secondary_indexes(index(INDEX_BY_STATUS, "tenant_status", "id")?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(INDEX_BY_LEGACY)
                    .set_key_schema(Some(legacy_keys))
                    .projection(legacy_projection)
                    .build()
                    .map_err(|e| err("index", e))?,
            )
            .send()
            .await
            .map_err(|e| {
                err(
                    "creating the table",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e),
                )
            })?;
        wait_active(clients, &table).await?;
        clients
            .dynamodb
            .update_time_to_live()
            .table_name(&table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("expires_at")
                    .enabled(true)
                    .build()
                    .map_err(|e| err("TTL", e))?,
            )
            .send()
            .await
            .map_err(|e| {
                err(
                    "enabling TTL",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e),
                )
            })?;
    } else {
        add_legacy_index(clients, &table).await?;
    }
    let dlq_url = create_queue(
        clients,
        &format!("{prefix}-dead-letters"),
        HashMap::from([(QueueAttributeName::MessageRetentionPeriod, "1209600".into())]),
    )
    .await?;
    let dlq_arn = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| {
            err(
                "reading the DLQ",
                aws_sdk_sqs::error::DisplayErrorContext(e),
            )
        })?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| BootstrapError("the DLQ has no ARN".into()))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
    })
    .to_string();
    let queue_url = create_queue(
        clients,
        &format!("{prefix}-work"),
        HashMap::from([
            (
                QueueAttributeName::VisibilityTimeout,
                VISIBILITY_TIMEOUT_SECS.to_string(),
            ),
            (QueueAttributeName::RedrivePolicy, redrive),
        ]),
    )
    .await?;
    Ok(AwsResources {
        table,
        queue_url,
        dlq_url,
    })
}

async fn create_queue(
    clients: &AwsClients,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> Result<String, BootstrapError> {
    let out = clients
        .sqs
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes))
        .send()
        .await
        .map_err(|e| {
            err(
                "creating a queue",
                aws_sdk_sqs::error::DisplayErrorContext(e),
            )
        })?;
    out.queue_url
        .ok_or_else(|| BootstrapError("SQS returned no queue URL".into()))
}

/// Adds the `by_legacy` index to a table made before it existed, and waits until it serves.
async fn add_legacy_index(clients: &AwsClients, table: &str) -> Result<(), BootstrapError> {
    let has_index = |t: &aws_sdk_dynamodb::types::TableDescription| {
        t.global_secondary_indexes()
            .iter()
            .any(|i| i.index_name() == Some(INDEX_BY_LEGACY))
    };
    let describe =
        |clients: &AwsClients| clients.dynamodb.describe_table().table_name(table).send();
    let current = describe(clients)
        .await
        .map_err(|e| {
            err(
                "reading the table",
                aws_sdk_dynamodb::error::DisplayErrorContext(e),
            )
        })?
        .table
        .ok_or_else(|| BootstrapError(format!("table {table} has no description")))?;
    if has_index(&current) {
        return Ok(());
    }
    let (keys, projection) = legacy_index_parts()?;
    clients
        .dynamodb
        .update_table()
        .table_name(table)
        .attribute_definitions(string_attr("tenant_status")?)
        .attribute_definitions(attr("legacy_id", ScalarAttributeType::N)?)
        .global_secondary_index_updates(
            GlobalSecondaryIndexUpdate::builder()
                .create(
                    CreateGlobalSecondaryIndexAction::builder()
                        .index_name(INDEX_BY_LEGACY)
                        .set_key_schema(Some(keys))
                        .projection(projection)
                        .build()
                        .map_err(|e| err("index", e))?,
                )
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            err(
                "adding the by_legacy index",
                aws_sdk_dynamodb::error::DisplayErrorContext(e),
            )
        })?;
    // Backfilling a big table takes a while; a development table, seconds.
    for _ in 0..600 {
        let ready = describe(clients)
            .await
            .ok()
            .and_then(|o| o.table)
            .is_some_and(|t| {
                t.global_secondary_indexes().iter().any(|i| {
                    i.index_name() == Some(INDEX_BY_LEGACY)
                        && i.index_status() == Some(&IndexStatus::Active)
                })
            });
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(BootstrapError(format!(
        "the by_legacy index of {table} did not become active"
    )))
}

async fn wait_active(clients: &AwsClients, table: &str) -> Result<(), BootstrapError> {
    use aws_sdk_dynamodb::types::TableStatus;
    for _ in 0..120 {
        let status = clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .ok()
            .and_then(|o| o.table)
            .and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(BootstrapError(format!(
        "table {table} did not become active"
    )))
}
