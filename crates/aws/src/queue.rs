//! The work queue on SQS: one versioned `deliver` message per callback that comes due within
//! the queue's delay horizon. The table stays the source of truth: a message is only a hint
//! that a callback may be due, so a lost or duplicated message delays or repeats a claim,
//! never a delivery decision.
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use chrono::{DateTime, Utc};
use fluxcb_core::message::QueueMessage;
use fluxcb_core::ports::{Due, Queue, StoreError};
use futures_util::StreamExt;

use crate::store::MAX_QUEUE_DELAY;

/// SQS takes at most 10 messages per `SendMessageBatch`.
const SEND_BATCH: usize = 10;
/// `SendMessageBatch` calls in flight at once for one notification.
const CONCURRENT_SENDS: usize = 8;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq_url: String,
}

fn queue_error(op: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{op}: {e}"))
}

/// Whole seconds to delay a message due at `at`, within SQS's 0–900 s.
pub fn delay_seconds(at: DateTime<Utc>, now: DateTime<Utc>) -> i32 {
    let ms = (at - now).num_milliseconds().max(0);
    // Rounded up: a message that arrives early finds the callback not yet due.
    let secs = (ms + 999) / 1000;
    secs.min(MAX_QUEUE_DELAY.num_seconds()) as i32
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>, dlq_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dlq_url: dlq_url.into(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    pub fn dlq_url(&self) -> &str {
        &self.dlq_url
    }

    /// Sends `deliver` messages, each delayed until its callback is due (up to 15 minutes;
    /// later ones are the sweeper's). Fails if any message could not be sent.
    pub async fn send_due(&self, due: &[Due], now: DateTime<Utc>) -> Result<(), StoreError> {
        let within: Vec<Due> = due
            .iter()
            .filter(|d| d.at - now <= MAX_QUEUE_DELAY)
            .cloned()
            .collect();
        // A batch ingest of 1,000 is 100 calls: sent a few at a time, not one after another.
        let sends: Vec<_> = within
            .chunks(SEND_BATCH)
            .map(|chunk| self.send_chunk(chunk.to_vec(), now))
            .collect();
        let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(sends)
            .buffer_unordered(CONCURRENT_SENDS)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn send_chunk(&self, chunk: Vec<Due>, now: DateTime<Utc>) -> Result<(), StoreError> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, d)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(QueueMessage::deliver_for(d.id, d.tenant.clone()).encode())
                    .delay_seconds(delay_seconds(d.at, now))
                    .build()
                    .map_err(|e| queue_error("building a message", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| {
                queue_error("sending to SQS", aws_sdk_sqs::error::DisplayErrorContext(e))
            })?;
        if !out.failed.is_empty() {
            let reasons: Vec<String> = out
                .failed
                .iter()
                .map(|f| format!("{}: {}", f.code, f.message.clone().unwrap_or_default()))
                .collect();
            return Err(queue_error("sending to SQS", reasons.join("; ")));
        }
        Ok(())
    }

    /// Moves a message the deliverer cannot use to the dead letter queue, with the reason as
    /// a message attribute, so that it is neither retried forever nor silently dropped.
    pub async fn to_dead_letter_queue(&self, body: &str, reason: &str) -> Result<(), StoreError> {
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason.chars().take(1000).collect::<String>())
            .build()
            .map_err(|e| queue_error("building a message", e))?;
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(if body.is_empty() { "(empty)" } else { body })
            .message_attributes("fluxcb_reason", attribute)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                queue_error(
                    "sending to the DLQ",
                    aws_sdk_sqs::error::DisplayErrorContext(e),
                )
            })
    }

    /// Moves messages from the dead letter queue back to the work queue (after the cause, a
    /// deliverer crash say, is fixed). Messages that still cannot be decoded stay on the DLQ.
    /// `StartMessageMoveTask` would do the move server-side, but it cannot tell the two apart
    /// (and the emulator lacks it).
    pub async fn redrive_dead_letters(&self, max: usize) -> Result<DlqRedrive, StoreError> {
        let mut report = DlqRedrive::default();
        while report.moved + report.kept < max {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| {
                    queue_error(
                        "reading the DLQ",
                        aws_sdk_sqs::error::DisplayErrorContext(e),
                    )
                })?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let body = m.body.clone().unwrap_or_default();
                if QueueMessage::decode(&body).is_err() {
                    report.kept += 1;
                    continue;
                }
                self.client
                    .send_message()
                    .queue_url(&self.queue_url)
                    .message_body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        queue_error("sending to SQS", aws_sdk_sqs::error::DisplayErrorContext(e))
                    })?;
                self.client
                    .delete_message()
                    .queue_url(&self.dlq_url)
                    .receipt_handle(m.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| {
                        queue_error(
                            "deleting from the DLQ",
                            aws_sdk_sqs::error::DisplayErrorContext(e),
                        )
                    })?;
                report.moved += 1;
            }
        }
        Ok(report)
    }

    /// Approximate visible and delayed messages on the work queue and the DLQ.
    pub async fn depths(&self) -> Result<QueueDepths, StoreError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let read = |url: String| {
            let client = self.client.clone();
            async move {
                let out = client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(A::ApproximateNumberOfMessages)
                    .attribute_names(A::ApproximateNumberOfMessagesDelayed)
                    .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                    .send()
                    .await
                    .map_err(|e| {
                        queue_error(
                            "reading queue attributes",
                            aws_sdk_sqs::error::DisplayErrorContext(e),
                        )
                    })?;
                let attrs = out.attributes.unwrap_or_default();
                let get = |a: A| {
                    attrs
                        .get(&a)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                Ok::<_, StoreError>((
                    get(A::ApproximateNumberOfMessages),
                    get(A::ApproximateNumberOfMessagesDelayed),
                    get(A::ApproximateNumberOfMessagesNotVisible),
                ))
            }
        };
        let (visible, delayed, in_flight) = read(self.queue_url.clone()).await?;
        let (dlq, _, _) = read(self.dlq_url.clone()).await?;
        Ok(QueueDepths {
            visible,
            delayed,
            in_flight,
            dead_letter: dlq,
        })
    }
}

/// What a DLQ redrive did: messages sent back, and unusable ones left on the DLQ (they become
/// visible again after a minute).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DlqRedrive {
    pub moved: usize,
    pub kept: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepths {
    pub visible: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead_letter: u64,
}

#[async_trait]
impl Queue for SqsQueue {
    /// An empty list (a bulk redrive) sends nothing: the sweeper's next run enqueues those.
    async fn notify(&self, due: &[Due]) -> Result<(), StoreError> {
        self.send_due(due, Utc::now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_and_stay_within_sqs_limits() {
        let now = Utc::now();
        assert_eq!(delay_seconds(now - chrono::Duration::seconds(5), now), 0);
        assert_eq!(delay_seconds(now, now), 0);
        assert_eq!(
            delay_seconds(now + chrono::Duration::milliseconds(50), now),
            1
        );
        assert_eq!(delay_seconds(now + chrono::Duration::seconds(30), now), 30);
        assert_eq!(delay_seconds(now + chrono::Duration::hours(2), now), 900);
    }
}
