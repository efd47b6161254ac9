//! The SQS consumer: for each `deliver` message, claim the callback in the table, make one
//! attempt with the engine's shared step, record it, and send a delayed message for a retry
//! within the queue's reach. Used by the Lambda deliverer (one batch per invocation) and by the
//! container mode's poller. The table decides every callback's fate; the message's receive
//! count never does.
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::callback::{Callback, LEASE_MARGIN_MS};
use fluxcb_core::engine::{attempt_delivery, Aftermath, SigningKeys};
use fluxcb_core::message::{MessageError, QueueMessage};
use fluxcb_core::notify::FollowUpSettings;
use fluxcb_core::ports::{CallbackStore, Clock, Due, Sender, StoreError};
use fluxcb_core::retry::{Decision, RetryPolicy};
use fluxcb_delivery::destinations::{Destinations, Verdict};
use fluxcb_delivery::dispatcher::record_metrics;
use fluxcb_delivery::ops_events::{write_ready, OpsEvents};
use fluxcb_delivery::routes::{notify_target, DestinationRoutes};
use fluxcb_delivery::secrets::SecretCache;
use futures_util::future::join_all;

use crate::queue::SqsQueue;
use crate::store::{Admission, DynamoStore, Recorded, MAX_QUEUE_DELAY};

/// One received message: its id (what a partial batch failure names) and body.
#[derive(Clone, Debug)]
pub struct Record {
    pub message_id: String,
    pub body: String,
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// An attempt was made and recorded.
    Attempted,
    /// The callback is not due, in flight elsewhere, finished or gone: a duplicate or stale
    /// message, dropped.
    Stale,
    /// The destination is saturated or its circuit is open: returned to waiting with a delayed
    /// message, no attempt counted.
    Deferred,
    /// Unusable message, moved to the dead letter queue with its reason.
    Poison(String),
}

/// The time a retried attempt record must still have before its claim's lease ends: the write
/// itself, with the SDK's own retries.
const RECORD_RESERVE: Duration = Duration::from_secs(1);

pub struct Deliverer {
    pub store: Arc<DynamoStore>,
    pub queue: SqsQueue,
    pub sender: Arc<dyn Sender>,
    pub secrets: Arc<SecretCache>,
    /// The legacy services' shared secret, for callbacks in the legacy wire format.
    pub legacy_secret: Option<Arc<[u8]>>,
    pub policy: RetryPolicy,
    pub clock: Arc<dyn Clock>,
    /// Per instance: each Lambda instance (or container) keeps the circuit breaker and the
    /// installation's limits on its own, bounded overall by the event source's maximum
    /// concurrency. A registration's own rate and concurrency limits are kept in the table
    /// for all workers ([`DynamoStore::admit`]).
    pub destinations: Arc<Destinations>,
    /// Registered destinations (`None`: every callback goes by its origin under the
    /// installation's settings).
    pub routes: Option<Arc<DestinationRoutes>>,
    /// How long a claim lasts: the longest attempt plus a margin. A worker that dies holding a
    /// callback gives it back when this runs out (the sweeper recovers it). An attempt never
    /// takes longer than this minus [`LEASE_MARGIN_MS`] ([`Self::attempt_budget`]).
    pub lease: Duration,
    /// What notifications an attempt's end makes.
    pub follow_ups: Arc<FollowUpSettings>,
    /// The breaker's events, when an operational event stream is configured: written after
    /// each batch (a recovery held for its quiet period goes with a later batch).
    pub ops_events: Option<Arc<OpsEvents>>,
}

impl Deliverer {
    /// The longest attempt a claim leaves room for: the lease minus the time to record the
    /// attempt (at least the shortest timeout a callback may have, 100 ms).
    pub fn attempt_budget(&self) -> Duration {
        self.lease
            .saturating_sub(Duration::from_millis(LEASE_MARGIN_MS.into()))
            .max(Duration::from_millis(100))
    }

    /// A callback whose own timeout is longer than the lease leaves room for gets the room
    /// (less `waited`, the time it waited for a rate slot since its claim): otherwise its lease
    /// could end mid-attempt, and the sweeper would hand it to another worker while this one is
    /// still sending it.
    fn within_lease(&self, mut callback: Callback, waited: Duration) -> Callback {
        let budget = self
            .attempt_budget()
            .saturating_sub(waited)
            .max(Duration::from_millis(100));
        let budget = u32::try_from(budget.as_millis()).unwrap_or(u32::MAX);
        if callback.timeout_ms > budget {
            tracing::debug!(callback_id = %callback.id, timeout_ms = callback.timeout_ms, budget_ms = budget, "attempt timeout cut to fit the claim's lease");
            callback.timeout_ms = budget;
        }
        callback
    }

    /// Handles a batch concurrently; returns the ids of messages to return to the queue (they
    /// become visible again after the visibility timeout).
    pub async fn handle_batch(&self, records: &[Record]) -> Vec<String> {
        let results = join_all(records.iter().map(|r| self.handle(r))).await;
        self.write_ops_events().await;
        records
            .iter()
            .zip(results)
            .filter_map(|(r, result)| match result {
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(message_id = %r.message_id, error = %e, "message returned to the queue");
                    Some(r.message_id.clone())
                }
            })
            .collect()
    }

    pub async fn handle(&self, record: &Record) -> Result<Handled, StoreError> {
        let (id, tenant_hint) = match QueueMessage::decode(&record.body) {
            Ok(QueueMessage::Deliver {
                callback_id,
                tenant,
                ..
            }) => (callback_id, tenant),
            Err(MessageError::UnknownVersion(v)) => {
                // A newer worker wrote it during a rolling deploy: leave it for one.
                return Err(StoreError::Unavailable(format!(
                    "message version {v} is newer than this worker"
                )));
            }
            Err(e @ MessageError::Malformed(_)) => {
                let reason = e.to_string();
                tracing::error!(message_id = %record.message_id, reason = %reason, "unusable queue message moved to the dead letter queue");
                self.queue
                    .to_dead_letter_queue(&record.body, &reason)
                    .await?;
                return Ok(Handled::Poison(reason));
            }
        };
        let now = self.clock.now();
        let lease_until = now + chrono::Duration::from_std(self.lease).unwrap_or_default();
        let Some(callback) = self
            .store
            .claim_in(&id, tenant_hint.as_ref(), now, lease_until)
            .await?
        else {
            tracing::debug!(callback_id = %id, "stale message: the callback is not due here");
            return Ok(Handled::Stale);
        };
        let route = match &self.routes {
            // Unreadable registrations: leave it claimed, the lease brings it back.
            Some(routes) => Some(routes.route(&callback).await?),
            None => None,
        };
        let callback = match &route {
            Some(r) => r.applied_to(&callback).into_owned(),
            None => callback,
        };
        if let (Some(routes), true) = (&self.routes, route.as_ref().is_some_and(|r| r.paused)) {
            let at = now + chrono::Duration::from_std(routes.paused_recheck()).unwrap_or_default();
            return self.defer(id, &callback, at).await;
        }
        let (key, mut limits) = match &route {
            Some(r) => (r.key.clone(), r.limits.clone()),
            None => (
                callback.destination().to_string(),
                self.destinations.default_limits(),
            ),
        };
        let shared = route
            .as_ref()
            .map(|r| r.registered_limits)
            .filter(|l| l.is_set());
        if shared.is_some() {
            // The table keeps the registration's own limits for every worker; this worker's
            // copy keeps only the breaker and the installation's bound.
            let installation = self.destinations.default_limits();
            limits.rate_per_second = None;
            limits.max_in_flight = installation.max_in_flight;
        }
        let dest = key.as_str();
        if let Err(until) = self.destinations.try_enter(dest, &limits, Instant::now()) {
            let wait = until.saturating_duration_since(Instant::now());
            let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
            return self.defer(id, &callback, at).await;
        }
        let mut slot = None;
        let mut waited = Duration::ZERO;
        if let Some(shared) = shared {
            let asked = Instant::now();
            let admitted = self
                .store
                .admit(dest, shared, &id.to_string(), lease_until, self.clock.now())
                .await;
            match admitted {
                Ok(Admission::Go { wait, slot: held }) => {
                    slot = held;
                    // The slot's time is counted from the question. An answer that came after
                    // it goes at once: deferring it would give the slot up, and a store slower
                    // than the rate's interval would then never let anything through.
                    let wait = wait.saturating_sub(asked.elapsed());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    waited = asked.elapsed();
                }
                Ok(Admission::Later(at)) => {
                    self.destinations
                        .finish(dest, Verdict::Neutral, Instant::now());
                    return self.defer(id, &callback, at).await;
                }
                Err(e) => {
                    self.destinations
                        .finish(dest, Verdict::Neutral, Instant::now());
                    // Leave it claimed: the lease brings it back once the table answers again.
                    return Err(e);
                }
            }
        }
        // A wait for a rate slot comes out of the claim's lease.
        let callback = self.within_lease(callback, waited);
        let secrets = match &route {
            Some(r) => r.signing_secrets(&self.secrets, &callback.tenant).await,
            None => self.secrets.get(&callback.tenant).await,
        };
        let secrets = match secrets {
            Ok(s) => s,
            Err(e) => {
                self.destinations
                    .finish(dest, Verdict::Neutral, Instant::now());
                if let Some(slot) = slot {
                    self.store.release_slot(slot).await;
                }
                // Leave it claimed: the lease brings it back once the table answers again.
                return Err(e);
            }
        };
        let step = attempt_delivery(
            &callback,
            route
                .as_ref()
                .map_or(self.sender.as_ref(), |r| r.sender(self.sender.as_ref())),
            SigningKeys {
                standard: &secrets,
                legacy: self.legacy_secret.as_deref(),
            },
            route
                .as_ref()
                .map_or(&self.policy, |r| r.policy(&self.policy)),
            self.clock.as_ref(),
        )
        .await;
        if let Some(slot) = slot {
            self.store.release_slot(slot).await;
        }
        let verdict = Verdict::of(step.attempt.status_code, step.attempt.error, &step.decision);
        let open_before = self.destinations.open_until(dest);
        let change = self.destinations.finish(dest, verdict, Instant::now());
        let open_after = self.destinations.open_until(dest);
        if open_after != open_before {
            self.record_breaker(dest, open_after).await;
        }
        if let Some(events) = &self.ops_events {
            events.observe(
                dest,
                &callback.tenant,
                change,
                Instant::now(),
                self.clock.now(),
            );
        }
        record_metrics(&callback, &step, self.clock.now());
        tracing::info!(
            callback_id = %callback.id,
            tenant = %callback.tenant,
            attempt = step.attempt.number,
            status_code = step.attempt.status_code,
            error = step.attempt.error.map(|e| e.as_str()),
            decision = ?step.decision,
            "attempt finished"
        );
        let follow_ups = Aftermath {
            notify: notify_target(route.as_ref(), &callback).as_ref(),
            settings: &self.follow_ups,
        }
        .rows(&callback, &step, self.clock.now());
        let recorded = self
            .record_within_lease(
                &callback,
                step.attempt,
                step.decision,
                lease_until,
                &follow_ups,
            )
            .await?;
        // Written with the attempt (if its transition applied); a message for one that was
        // not is stale and dropped, and a lost send is the sweeper's.
        if !follow_ups.is_empty() {
            let due: Vec<Due> = follow_ups.iter().map(Due::of).collect();
            if let Err(e) = self.queue.send_due(&due, Utc::now()).await {
                tracing::warn!(callback_id = %id, error = %e, "could not enqueue notifications; the sweeper will");
            }
        }
        if let Some(next) = recorded.promoted {
            self.enqueue_retry(next).await;
        }
        // Not for a callback handed back to legacy during the attempt: legacy sends it.
        if let (Decision::RetryAt(at), true) = (step.decision, recorded.waits_here) {
            self.enqueue_retry(Due {
                id,
                tenant: callback.tenant.clone(),
                at,
            })
            .await;
        }
        Ok(Handled::Attempted)
    }

    /// Records an attempt that was made. A table that fails for the moment is tried again for
    /// up to the lease's margin, while the lease leaves time: an attempt whose outcome is not
    /// recorded is sent again once the lease ends, so giving up at once turns a passing store
    /// failure into a duplicate delivery.
    async fn record_within_lease(
        &self,
        callback: &Callback,
        attempt: Attempt,
        decision: Decision,
        lease_until: DateTime<Utc>,
        follow_ups: &[Callback],
    ) -> Result<Recorded, StoreError> {
        let mut pause = Duration::from_millis(50);
        let mut failures = 0u32;
        let started = Instant::now();
        let margin = Duration::from_millis(LEASE_MARGIN_MS.into());
        loop {
            let result = self
                .store
                .record_attempt_of(
                    Some(callback),
                    &callback.id,
                    attempt.clone(),
                    decision,
                    self.clock.now(),
                    follow_ups,
                )
                .await;
            let e = match result {
                Err(e @ (StoreError::Busy(_) | StoreError::Unavailable(_))) => e,
                done => {
                    if failures > 0 && done.is_ok() {
                        tracing::info!(callback_id = %callback.id, failures, "attempt recorded after the table failed");
                    }
                    return done;
                }
            };
            failures += 1;
            // Stop while a write started now still ends well before the lease does.
            let left = (lease_until - self.clock.now())
                .to_std()
                .unwrap_or_default();
            if left < pause + RECORD_RESERVE || started.elapsed() + pause > margin {
                tracing::error!(callback_id = %callback.id, error = %e, failures, "attempt made but not recorded; it will be sent again after its lease");
                return Err(e);
            }
            tracing::warn!(callback_id = %callback.id, error = %e, retry_in_ms = pause.as_millis() as u64, "recording the attempt failed; trying again within the lease");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Writes the breaker's ready events and sends their messages (a lost send is the
    /// sweeper's).
    pub async fn write_ops_events(&self) {
        let Some(events) = &self.ops_events else {
            return;
        };
        let rows = write_ready(
            events,
            self.store.as_ref(),
            Instant::now(),
            self.clock.now(),
        )
        .await;
        let due: Vec<Due> = rows.iter().map(Due::of).collect();
        if !due.is_empty() {
            if let Err(e) = self.queue.send_due(&due, Utc::now()).await {
                tracing::warn!(error = %e, "could not enqueue operational events; the sweeper will");
            }
        }
    }

    /// Records this worker's breaker of `dest` (opened, reopened or closed) in the table for
    /// the API of every instance. Best effort: a failure is logged.
    async fn record_breaker(&self, dest: &str, open_until: Option<Instant>) {
        let now = Instant::now();
        let open_until = open_until.map(|until| {
            self.clock.now()
                + chrono::Duration::from_std(until.saturating_duration_since(now))
                    .unwrap_or_default()
        });
        let failures = self
            .destinations
            .health_of(dest, now)
            .map_or(0, |h| h.consecutive_failures);
        if let Err(e) = self
            .store
            .record_breaker(dest, open_until, failures, self.clock.now())
            .await
        {
            tracing::warn!(destination = %dest, error = %e, "could not record the circuit breaker for the API");
        }
    }

    /// Returns a claimed callback to waiting until `at` (no attempt counted), with its message.
    async fn defer(
        &self,
        id: fluxcb_core::id::CallbackId,
        callback: &Callback,
        at: DateTime<Utc>,
    ) -> Result<Handled, StoreError> {
        self.store.defer(vec![(id, at)]).await?;
        self.enqueue_retry(Due {
            id,
            tenant: callback.tenant.clone(),
            at,
        })
        .await;
        Ok(Handled::Deferred)
    }

    /// A retry within 15 minutes gets its own delayed message; a later one is the sweeper's.
    /// A failed send is logged only: the sweeper re-sends once the callback is overdue.
    async fn enqueue_retry(&self, due: Due) {
        let now = Utc::now();
        if due.at - now > MAX_QUEUE_DELAY {
            return;
        }
        if let Err(e) = self.queue.send_due(std::slice::from_ref(&due), now).await {
            tracing::warn!(callback_id = %due.id, error = %e, "could not enqueue a retry; the sweeper will");
        }
    }
}
