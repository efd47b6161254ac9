//! The local delivery loop: claim due callbacks, tenant by tenant, and run the engine's
//! one-step delivery for each under a global cap on deliveries in flight.
//!
//! Fairness: each round splits the free capacity evenly between the tenants that have work
//! due, so one tenant's backlog cannot hold back another's. A destination at its concurrency
//! limit or with an open circuit gets its callbacks deferred, which frees their slots for
//! healthy destinations.
//!
//! Shutdown: the loop checks the token between rounds and never abandons an attempt midway;
//! in-flight attempts get [`DispatcherConfig::shutdown_grace`] to finish, and whatever is still
//! claimed afterwards is returned to pending by the caller (see `recover_expired_leases`).
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fluxcb_core::callback::Callback;
use fluxcb_core::engine::{attempt_delivery, Aftermath, SigningKeys, StepOutcome};
use fluxcb_core::metric_names as names;
use fluxcb_core::notify::FollowUpSettings;
use fluxcb_core::ports::{Clock, PolledStore, Sender};
use fluxcb_core::retry::RetryPolicy;
use fluxcb_core::retry::{DeadLetterReason, Decision};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::destinations::{Destinations, Verdict};
use crate::ops_events::{write_ready, OpsEvents};
use crate::routes::{DestinationRoutes, Route};
use crate::secrets::SecretCache;
use crate::wake::DispatcherWake;

#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    pub max_in_flight: usize,
    pub claim_batch: u32,
    /// How long a claim lasts before another worker may take the callback back. Longer than
    /// the longest allowed attempt, so a live worker's callback is never taken from it.
    pub lease: Duration,
    /// Longest sleep when nothing is due (new callbacks wake the loop at once).
    pub idle_poll: Duration,
    pub shutdown_grace: Duration,
    /// Pause after a round whose every claim was deferred.
    pub busy_pause: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            claim_batch: 256,
            lease: Duration::from_secs(120),
            idle_poll: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(30),
            busy_pause: Duration::from_millis(50),
        }
    }
}

const MIN_CLAIM: usize = 8;

#[derive(Default)]
struct Round {
    claimed: usize,
    started: usize,
}

/// Everything one delivery needs, shared by the tasks.
/// How often the breaker's ready events are written (the dispatcher's idle poll bounds it).
const OPS_EVENTS_TICK: Duration = Duration::from_millis(250);

pub struct DeliveryParts {
    pub store: Arc<dyn PolledStore>,
    pub sender: Arc<dyn Sender>,
    pub secrets: Arc<SecretCache>,
    /// The legacy services' shared secret, for callbacks in the legacy wire format.
    pub legacy_secret: Option<Arc<[u8]>>,
    pub policy: RetryPolicy,
    pub clock: Arc<dyn Clock>,
    pub destinations: Arc<Destinations>,
    pub routes: Arc<DestinationRoutes>,
    /// What notifications an attempt's end makes.
    pub follow_ups: Arc<FollowUpSettings>,
    /// The breaker's events, when an operational event stream is configured.
    pub ops_events: Option<Arc<OpsEvents>>,
}

pub struct Dispatcher {
    parts: Arc<DeliveryParts>,
    config: DispatcherConfig,
    wake: Arc<DispatcherWake>,
    /// Claimed callbacks to hand back whose deferral could not be written (a full disk, say):
    /// written at the next round rather than left leased until their lease runs out.
    unwritten_deferrals:
        std::sync::Mutex<Vec<(fluxcb_core::id::CallbackId, chrono::DateTime<Utc>)>>,
}

impl Dispatcher {
    pub fn new(
        parts: Arc<DeliveryParts>,
        config: DispatcherConfig,
        wake: Arc<DispatcherWake>,
    ) -> Self {
        Self {
            parts,
            config,
            wake,
            unwritten_deferrals: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.max_in_flight));
        let mut tasks = JoinSet::new();
        // Shrinks while claims come back deferred (their destinations are busy), so a backlog
        // behind one saturated destination is not rewritten over and over.
        let mut claim_size = self.config.claim_batch as usize;
        let mut ops_written = Instant::now();
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            if ops_written.elapsed() >= OPS_EVENTS_TICK {
                ops_written = Instant::now();
                self.write_ops_events().await;
            }
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            match self.round(free.min(claim_size), &slots, &mut tasks).await {
                Ok(Round { claimed: 0, .. }) => self.idle(&shutdown).await,
                Ok(Round { claimed, started }) => {
                    // Claim next about what could start this time: anything more would only be
                    // written back as deferred.
                    claim_size = if started < claimed {
                        (started + started / 4).max(MIN_CLAIM)
                    } else {
                        (claim_size * 2).min(self.config.claim_batch as usize)
                    };
                    if started == 0 {
                        // Everything claimed was deferred: wait for a slot to free up rather
                        // than claim the same backlog again at once; but not past new work (a
                        // callback for another destination must not wait behind a busy one).
                        let until = self.parts.clock.now()
                            + chrono::Duration::from_std(self.config.busy_pause)
                                .unwrap_or_default();
                        tokio::select! {
                            _ = tasks.join_next(), if !tasks.is_empty() => {}
                            _ = tokio::time::sleep(self.config.busy_pause) => {}
                            _ = self.wake.work_before(until) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch round failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                "waiting for in-flight deliveries before stopping"
            );
            let drained = tokio::time::timeout(self.config.shutdown_grace, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(left = tasks.len(), "deliveries still in flight after the grace period; abandoning them to be retried");
                tasks.abort_all();
            }
        }
    }

    /// Claims and starts deliveries.
    async fn round(
        &self,
        free: usize,
        slots: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Round, fluxcb_core::ports::StoreError> {
        let p = &self.parts;
        self.write_deferrals(Vec::new()).await?;
        let now = p.clock.now();
        let tenants = p.store.tenants_with_due(now).await?;
        if tenants.is_empty() {
            return Ok(Round::default());
        }
        let share = (free / tenants.len()).max(1) as u32;
        let lease_until = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let mut claimed = 0;
        let mut started = 0;
        let mut deferred = Vec::new();
        for tenant in tenants {
            let limit = share.min(self.config.claim_batch);
            let batch = p.store.claim_due(&tenant, now, limit, lease_until).await?;
            claimed += batch.len();
            for callback in batch {
                let route = match p.routes.route(&callback).await {
                    Ok(route) => route,
                    Err(e) => {
                        tracing::warn!(callback_id = %callback.id, tenant = %callback.tenant, error = %e, "cannot read the registered destinations; holding the callback back");
                        deferred.push((callback.id, Utc::now() + chrono::Duration::seconds(1)));
                        continue;
                    }
                };
                if route.paused {
                    let wait =
                        chrono::Duration::from_std(p.routes.paused_recheck()).unwrap_or_default();
                    deferred.push((callback.id, Utc::now() + wait));
                    continue;
                }
                let instant = Instant::now();
                match p.destinations.try_enter(&route.key, &route.limits, instant) {
                    Ok(()) => {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            p.destinations.finish(&route.key, Verdict::Neutral, instant);
                            deferred.push((callback.id, Utc::now()));
                            continue;
                        };
                        let parts = self.parts.clone();
                        let wake = self.wake.clone();
                        started += 1;
                        tasks.spawn(async move {
                            let in_flight = metrics::gauge!(names::IN_FLIGHT);
                            in_flight.increment(1.0);
                            let made_follow_ups = deliver(&parts, &callback, &route).await;
                            in_flight.decrement(1.0);
                            drop(permit);
                            // Its end may have made the next of its key due, or a notification:
                            // look now rather than at the next poll.
                            if callback.spec.ordering_key.is_some() || made_follow_ups {
                                wake.now();
                            }
                        });
                    }
                    Err(until) => {
                        let wait = until.saturating_duration_since(instant);
                        deferred.push((
                            callback.id,
                            Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                        ));
                    }
                }
            }
        }
        self.write_deferrals(deferred).await?;
        Ok(Round { claimed, started })
    }

    /// Hands `deferred` back to waiting, with any left over from a round whose write failed;
    /// on failure keeps them all for the next round.
    async fn write_deferrals(
        &self,
        deferred: Vec<(fluxcb_core::id::CallbackId, chrono::DateTime<Utc>)>,
    ) -> Result<(), fluxcb_core::ports::StoreError> {
        let mut all = std::mem::take(&mut *self.unwritten_deferrals.lock().expect("poisoned"));
        all.extend(deferred);
        if all.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.parts.store.defer(all.clone()).await {
            self.unwritten_deferrals
                .lock()
                .expect("poisoned")
                .extend(all);
            return Err(e);
        }
        Ok(())
    }

    /// Writes the breaker's events that are ready (a recovery once its quiet period is over).
    async fn write_ops_events(&self) {
        let p = &self.parts;
        if let Some(events) = &p.ops_events {
            if !write_ready(events, p.store.as_ref(), Instant::now(), p.clock.now())
                .await
                .is_empty()
            {
                self.wake.now();
            }
        }
    }

    async fn idle(&self, shutdown: &CancellationToken) {
        let p = &self.parts;
        let mut wait = self.config.idle_poll;
        if let Ok(Some(next)) = p.store.next_due().await {
            let until_next = (next - p.clock.now()).to_std().unwrap_or(Duration::ZERO);
            wait = wait.min(until_next.max(Duration::from_millis(1)));
        }
        let until = p.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wake.work_before(until) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// One attempt, recorded. True when its end made notifications (now due).
async fn deliver(parts: &DeliveryParts, callback: &Callback, route: &Route) -> bool {
    let secrets = match route
        .signing_secrets(&parts.secrets, &callback.tenant)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            // Without its secrets the callback cannot be signed: leave it claimed; the lease
            // brings it back once the store recovers.
            tracing::error!(callback_id = %callback.id, tenant = %callback.tenant, error = %e, "cannot load signing secrets");
            parts
                .destinations
                .finish(&route.key, Verdict::Neutral, Instant::now());
            return false;
        }
    };
    let step = attempt_delivery(
        &route.applied_to(callback),
        route.sender(parts.sender.as_ref()),
        SigningKeys {
            standard: &secrets,
            legacy: parts.legacy_secret.as_deref(),
        },
        route.policy(&parts.policy),
        parts.clock.as_ref(),
    )
    .await;
    // The receiver is done with us: free its slot now rather than after our own commit, so a
    // destination's concurrency limit bounds requests to it, not our disk's latency.
    let verdict = Verdict::of(step.attempt.status_code, step.attempt.error, &step.decision);
    let change = parts
        .destinations
        .finish(&route.key, verdict, Instant::now());
    if let Some(events) = &parts.ops_events {
        events.observe(
            &route.key,
            &callback.tenant,
            change,
            Instant::now(),
            parts.clock.now(),
        );
    }
    record_metrics(callback, &step, parts.clock.now());
    tracing::debug!(
        callback_id = %callback.id,
        tenant = %callback.tenant,
        attempt = step.attempt.number,
        status_code = step.attempt.status_code,
        error = step.attempt.error.map(|e| e.as_str()),
        decision = ?step.decision,
        "attempt finished"
    );
    let now = parts.clock.now();
    let follow_ups = Aftermath {
        notify: route.effective.notify.as_ref(),
        settings: &parts.follow_ups,
    }
    .rows(callback, &step, now);
    let recorded = parts
        .store
        .record_attempt(&callback.id, step.attempt, step.decision, now, &follow_ups)
        .await;
    if let Err(e) = recorded {
        tracing::error!(callback_id = %callback.id, tenant = %callback.tenant, error = %e, "attempt made but not recorded; it will be retried after the lease");
        return false;
    }
    !follow_ups.is_empty()
}

/// The attempt counters and latency histograms, shared by every deployment's worker.
pub fn record_metrics(callback: &Callback, step: &StepOutcome, now: chrono::DateTime<Utc>) {
    let outcome = match step.decision {
        Decision::Delivered => names::outcome::DELIVERED,
        Decision::RetryAt(_) => names::outcome::RETRIED,
        Decision::DeadLetter(DeadLetterReason::BlockedTarget) => names::outcome::BLOCKED,
        Decision::DeadLetter(_) => names::outcome::DEAD_LETTERED,
    };
    metrics::counter!(names::ATTEMPTS, "outcome" => outcome).increment(1);
    metrics::histogram!(names::ATTEMPT_DURATION).record(step.attempt.duration_ms as f64 / 1000.0);
    if step.decision == Decision::Delivered {
        let waited = (now - callback.created_at).num_milliseconds().max(0);
        metrics::histogram!(names::ACCEPTED_TO_DELIVERED).record(waited as f64 / 1000.0);
    }
}
