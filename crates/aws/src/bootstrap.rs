//! `fluxcb aws bootstrap`: creates the callback table and the queues with the same settings as
//! `deploy/template.yaml`, for development against an emulator or a sandbox account.
use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::store::{INDEX_BY_STATUS, INDEX_BY_TENANT, INDEX_DUE};
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
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| err("attribute", e))
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
        create
            .global_secondary_indexes(index(INDEX_DUE, "due_pk", "due_sk")?)
            .global_secondary_indexes(index(INDEX_BY_TENANT, "tenant", "id")?)
            .global_secondary_indexes(index(INDEX_BY_STATUS, "tenant_status", "id")?)
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
