//! The one-step delivery shared by every deployment. [`attempt_delivery`] sends one attempt and
//! decides what follows; the local dispatcher calls it and records the outcome itself (after
//! freeing the destination's slot). [`deliver_and_record`] does both, for workers with nothing
//! to do in between, such as the Lambda SQS consumer.
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::attempt::{Attempt, SendOutcome};
use chrono::{DateTime, Utc};

use crate::callback::Callback;
use crate::notify::{follow_ups, FollowUpSettings, NotifyTarget};
use crate::ports::{CallbackStore, Clock, OutboundRequest, Sender, StoreError};
use crate::retry::{Decision, RetryPolicy};
use crate::signing::{signature_header, SigningSecret};

pub const USER_AGENT: &str = concat!("fluxcb/", env!("CARGO_PKG_VERSION"));

/// What signs a delivery: the tenant's Standard Webhooks secrets, and the legacy shared secret
/// (configured once for the installation) for callbacks in the legacy wire format.
#[derive(Clone, Copy, Debug)]
pub struct SigningKeys<'a> {
    pub standard: &'a [SigningSecret],
    pub legacy: Option<&'a [u8]>,
}

impl<'a> SigningKeys<'a> {
    pub fn standard(standard: &'a [SigningSecret]) -> Self {
        Self {
            standard,
            legacy: None,
        }
    }
}

/// The request for one attempt: the caller's headers, then ours (which callers cannot set).
pub fn build_request(
    callback: &Callback,
    keys: SigningKeys<'_>,
    timestamp: i64,
) -> OutboundRequest {
    let id = callback.id.to_string();
    let format = callback.spec.wire_format;
    let legacy = match (format.includes_legacy(), callback.legacy_id, keys.legacy) {
        (true, Some(legacy_id), Some(secret)) => Some((legacy_id, secret)),
        _ => None,
    };
    let body = match legacy {
        // The legacy sender sent the payload (null when there was none) as Python renders it.
        Some(_) => {
            let value = match &callback.spec.payload {
                crate::callback::Payload::Json(bytes) => {
                    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
                }
                _ => serde_json::Value::Null,
            };
            crate::legacy::render_body(&value)
        }
        None => callback.spec.payload.bytes().to_vec(),
    };
    let mut headers: Vec<(String, String)> = match legacy {
        Some((legacy_id, secret)) => {
            crate::legacy::headers(&callback.spec.headers, legacy_id, timestamp, &body, secret)
        }
        None => {
            let mut h: Vec<(String, String)> = callback
                .spec
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(ct) = callback.spec.payload.content_type() {
                h.push(("content-type".into(), ct.to_owned()));
            }
            h
        }
    };
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        headers.push(("user-agent".into(), USER_AGENT.into()));
    }
    // Standard Webhooks headers unless the callback is in the legacy format only (and can be
    // sent in it: a legacy id and the legacy secret are both there).
    if format.includes_standard() || legacy.is_none() {
        headers.push(("webhook-id".into(), id.clone()));
        headers.push(("webhook-timestamp".into(), timestamp.to_string()));
        if !keys.standard.is_empty() {
            headers.push((
                "webhook-signature".into(),
                signature_header(keys.standard, &id, timestamp, &body),
            ));
        }
    }
    OutboundRequest {
        url: callback.spec.url.clone(),
        method: callback.spec.method,
        headers,
        body,
        timeout: Duration::from_millis(callback.timeout_ms.into()),
    }
}

#[derive(Clone, Debug)]
pub struct StepOutcome {
    pub attempt: Attempt,
    pub decision: Decision,
}

/// Sends one attempt of a claimed callback and decides what follows. Does not persist.
pub async fn attempt_delivery(
    callback: &Callback,
    sender: &dyn Sender,
    keys: SigningKeys<'_>,
    policy: &RetryPolicy,
    clock: &dyn Clock,
) -> StepOutcome {
    let span = attempt_span(callback);
    let step = attempt_delivery_in_span(callback, sender, keys, policy, clock)
        .instrument(span.clone())
        .await;
    record_attempt_outcome(&span, &step);
    step
}

/// One span per attempt, for logs and trace export alike. It names the receiver by host only:
/// the URL's path and query, the headers and the payload may carry the caller's secrets.
/// Numbers are signed because OTLP has no unsigned integers (exporters turn those into text).
fn attempt_span(callback: &Callback) -> tracing::Span {
    tracing::info_span!(
        "delivery_attempt",
        otel.name = "delivery attempt",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        callback_id = %callback.id,
        tenant = %callback.tenant,
        server.address = callback.spec.url.host_str().unwrap_or_default(),
        http.request.method = callback.spec.method.as_str(),
        attempt = i64::from(callback.attempts_made + 1),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        outcome = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    )
}

fn record_attempt_outcome(span: &tracing::Span, step: &StepOutcome) {
    if let Some(code) = step.attempt.status_code {
        span.record("http.response.status_code", i64::from(code));
    }
    if let Some(error) = step.attempt.error {
        span.record("error.type", error.as_str());
    }
    let outcome = match step.decision {
        Decision::Delivered => "delivered",
        Decision::RetryAt(_) => "retry",
        Decision::DeadLetter(_) => "dead_letter",
    };
    span.record("outcome", outcome);
    span.record(
        "duration_ms",
        i64::try_from(step.attempt.duration_ms).unwrap_or(i64::MAX),
    );
    if step.decision != Decision::Delivered {
        span.record("otel.status_code", "error");
    }
}

async fn attempt_delivery_in_span(
    callback: &Callback,
    sender: &dyn Sender,
    keys: SigningKeys<'_>,
    policy: &RetryPolicy,
    clock: &dyn Clock,
) -> StepOutcome {
    let started_at = clock.now();
    let request = build_request(callback, keys, started_at.timestamp());
    let timer = Instant::now();
    let mut outcome: SendOutcome = sender.send(request).await;
    if outcome.duration.is_zero() {
        outcome.duration = timer.elapsed();
    }
    let number = callback.attempts_made + 1;
    let attempt = Attempt::from_outcome(number, started_at, &outcome);
    let decision = policy.decide(number, callback.max_attempts, &outcome, clock.now());
    StepOutcome { attempt, decision }
}

/// What follows an attempt besides its own transition: the notifications it calls for.
#[derive(Clone, Copy, Debug)]
pub struct Aftermath<'a> {
    pub notify: Option<&'a NotifyTarget>,
    pub settings: &'a FollowUpSettings,
}

impl Aftermath<'_> {
    pub fn rows(
        &self,
        callback: &Callback,
        step: &StepOutcome,
        now: DateTime<Utc>,
    ) -> Vec<Callback> {
        follow_ups(
            callback,
            &step.attempt,
            &step.decision,
            self.notify,
            self.settings,
            now,
        )
    }
}

/// [`attempt_delivery`], then records the attempt, its transition and its notifications in
/// the store.
pub async fn deliver_and_record(
    callback: &Callback,
    store: &dyn CallbackStore,
    sender: &dyn Sender,
    keys: SigningKeys<'_>,
    policy: &RetryPolicy,
    aftermath: Aftermath<'_>,
    clock: &dyn Clock,
) -> Result<StepOutcome, StoreError> {
    let step = attempt_delivery(callback, sender, keys, policy, clock).await;
    let now = clock.now();
    let follow_ups = aftermath.rows(callback, &step, now);
    store
        .record_attempt(
            &callback.id,
            step.attempt.clone(),
            step.decision,
            now,
            &follow_ups,
        )
        .await?;
    Ok(step)
}
