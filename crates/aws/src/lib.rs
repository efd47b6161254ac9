//! The serverless home: the engine's ports on DynamoDB ([`store::DynamoStore`]) and SQS
//! ([`queue::SqsQueue`]), the SQS consumer ([`deliverer`]), the [`sweeper`] that closes every
//! gap between table and queue, CloudWatch Embedded Metric Format output ([`emf`]), and the
//! [`bootstrap`] of a table and queues. Kept out of the core and the embedded store so that
//! those build without the AWS SDK.
pub mod bootstrap;
pub mod deliverer;
pub mod emf;
pub mod poller;
pub mod queue;
pub mod store;
pub mod sweeper;

use aws_config::BehaviorVersion;

/// The names other tooling depends on.
pub const ENV_TABLE: &str = "FLUXCB_DYNAMODB_TABLE";
pub const ENV_QUEUE_URL: &str = "FLUXCB_SQS_QUEUE_URL";
pub const ENV_DLQ_URL: &str = "FLUXCB_SQS_DLQ_URL";

/// Where the callback table and the queues are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsResources {
    pub table: String,
    pub queue_url: String,
    pub dlq_url: String,
}

impl AwsResources {
    /// The three variables, as `fluxcb aws bootstrap` prints them.
    pub fn as_env(&self) -> String {
        format!(
            "{ENV_TABLE}={}\n{ENV_QUEUE_URL}={}\n{ENV_DLQ_URL}={}\n",
            self.table, self.queue_url, self.dlq_url
        )
    }
}

/// SDK clients, created once per process (once per Lambda cold start).
#[derive(Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// From the standard AWS environment (region, credentials, `AWS_ENDPOINT_URL`), over our
    /// own rustls-on-ring HTTPS client.
    pub async fn from_env() -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .load()
            .await;
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
        }
    }
}
