//! Container mode's stand-in for Lambda's SQS event source mapping: long-polls the work
//! queue, hands each batch to the [`Deliverer`], and deletes the messages it handled. Failed
//! messages are left alone and come back after the visibility timeout, as on Lambda.
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio_util::sync::CancellationToken;

use crate::deliverer::{Deliverer, Record};

#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// Concurrent receive loops, each handling up to 10 messages at a time.
    pub workers: usize,
    /// SQS long-poll wait (0–20 s).
    pub wait: Duration,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            wait: Duration::from_secs(10),
        }
    }
}

pub async fn run(deliverer: Arc<Deliverer>, config: PollerConfig, shutdown: CancellationToken) {
    let loops = (0..config.workers.max(1)).map(|_| {
        let deliverer = deliverer.clone();
        let shutdown = shutdown.clone();
        let wait = config.wait;
        tokio::spawn(async move { poll_loop(deliverer, wait, shutdown).await })
    });
    for handle in loops.collect::<Vec<_>>() {
        let _ = handle.await;
    }
}

async fn poll_loop(deliverer: Arc<Deliverer>, wait: Duration, shutdown: CancellationToken) {
    let client = deliverer.queue.client().clone();
    let url = deliverer.queue.queue_url().to_owned();
    while !shutdown.is_cancelled() {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(wait.as_secs().min(20) as i32)
                .send() => r,
        };
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(e), "receiving from SQS failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if messages.is_empty() {
            // An idle receive still sends recoveries whose quiet period has passed.
            deliverer.write_ops_events().await;
            continue;
        }
        let records: Vec<Record> = messages
            .iter()
            .map(|m| Record {
                message_id: m.message_id.clone().unwrap_or_default(),
                body: m.body.clone().unwrap_or_default(),
            })
            .collect();
        // Not cancelled midway: attempts in flight finish and are recorded before shutdown.
        let failed = deliverer.handle_batch(&records).await;
        let entries: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| !failed.contains(&m.message_id.clone().unwrap_or_default()))
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        if let Err(e) = client
            .delete_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            // The messages come back and find their callbacks no longer due: harmless.
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(e), "deleting handled messages failed");
        }
    }
}
