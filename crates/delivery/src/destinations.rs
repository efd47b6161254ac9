//! Protecting receivers (and our capacity) per destination: a concurrency limit, a smoothed
//! rate limit, and a circuit breaker that stops sending to a destination after consecutive
//! failures. Callbacks held back by any of them are deferred, not failed: no attempt is counted
//! against them.
//!
//! A destination here is a key: a registration of its own (its limits apply to what it covers),
//! or an origin (`scheme://host:port`) for callbacks no registration claims.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fluxcb_core::attempt::ErrorCode;
use fluxcb_core::retry::Decision;

/// The installation's limits, for destinations without settings of their own.
#[derive(Clone, Debug)]
pub struct DestinationLimits {
    pub max_in_flight: usize,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long a breaker stays open the first time; doubles on each reopening up to
    /// `max_open_for`.
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// How long a callback waits when its destination is at its concurrency limit.
    pub busy_retry: Duration,
}

impl Default for DestinationLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            failure_threshold: 10,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            busy_retry: Duration::from_millis(100),
        }
    }
}

impl DestinationLimits {
    /// The limits of a destination without settings of its own.
    pub fn entry(&self) -> EntryLimits {
        EntryLimits {
            max_in_flight: self.max_in_flight,
            rate_per_second: None,
            failure_threshold: self.failure_threshold,
            open_for: self.open_for,
        }
    }
}

/// A circuit breaker's move between closed and open, for the operational event stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerChange {
    Opened {
        consecutive_failures: u32,
        open_for: Duration,
    },
    /// A healthy answer after `openings` openings.
    Closed { openings: u32 },
}

/// One destination's limits, as its settings resolve.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryLimits {
    pub max_in_flight: usize,
    pub rate_per_second: Option<f64>,
    pub failure_threshold: u32,
    pub open_for: Duration,
}

#[derive(Debug)]
struct State {
    limits: EntryLimits,
    in_flight: usize,
    /// The rate limiter's next free slot (GCRA's theoretical arrival time).
    next_slot: Option<Instant>,
    /// Slots promised to callbacks already deferred by the rate limit, so that each comes back
    /// at its own turn rather than all at the next one.
    promised_until: Option<Instant>,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// Number of times the breaker has opened without a success since.
    openings: u32,
    probing: bool,
    /// While at the concurrency limit: when the last attempt ended, and the smoothed time
    /// between ends (how often a slot frees up).
    last_finish: Option<Instant>,
    finish_gap: Option<Duration>,
    /// The turn promised to the last callback turned away at the concurrency limit.
    busy_promised_until: Option<Instant>,
}

/// What an attempt says about the destination's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy,
    /// Says nothing about the receiver (e.g. a blocked target, a 4xx).
    Neutral,
}

impl Verdict {
    pub fn of(status: Option<u16>, error: Option<ErrorCode>, decision: &Decision) -> Self {
        if matches!(decision, Decision::Delivered) {
            return Verdict::Healthy;
        }
        match (error, status) {
            (Some(ErrorCode::BlockedTarget), _) => Verdict::Neutral,
            (_, Some(s)) if s == 429 || s >= 500 => Verdict::Unhealthy,
            (_, Some(_)) => Verdict::Neutral,
            (Some(_), None) => Verdict::Unhealthy,
            (None, None) => Verdict::Neutral,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationHealth {
    pub destination: String,
    pub in_flight: usize,
    pub consecutive_failures: u32,
    pub circuit_open: bool,
}

impl State {
    fn new(limits: EntryLimits) -> Self {
        Self {
            limits,
            in_flight: 0,
            next_slot: None,
            promised_until: None,
            consecutive_failures: 0,
            open_until: None,
            openings: 0,
            probing: false,
            last_finish: None,
            finish_gap: None,
            busy_promised_until: None,
        }
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.consecutive_failures == 0
            && self.open_until.is_none()
            && self.next_slot.is_none_or(|t| t <= now)
            && self.promised_until.is_none_or(|t| t <= now)
            && self.busy_promised_until.is_none_or(|t| t <= now)
    }
}

/// Bounds on the spacing of callbacks turned away at a destination's concurrency limit.
const MIN_BUSY_SPACING: Duration = Duration::from_micros(10);
const MAX_BUSY_SPACING: Duration = Duration::from_secs(60);

pub struct Destinations {
    limits: DestinationLimits,
    states: Mutex<HashMap<String, State>>,
    /// Label values published by the last [`Self::publish_metrics`], so that a destination
    /// that went quiet is set back to zero rather than left at its last value.
    published: Mutex<std::collections::HashSet<String>>,
}

/// One `destination` label value and what its gauges say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationGauge {
    pub destination: String,
    /// Destinations with an open breaker (1 or 0 for a single one; a count for the rest).
    pub circuits_open: usize,
    pub in_flight: usize,
}

impl Destinations {
    pub fn new(limits: DestinationLimits) -> Self {
        Self {
            limits,
            states: Mutex::new(HashMap::new()),
            published: Default::default(),
        }
    }

    /// The gauges to publish: the `top` destinations that most need attention (open breaker,
    /// then failures, then load) by name, the rest summed under one label, and every name
    /// published last time but quiet now at zero. Bounded cardinality whatever the traffic.
    pub fn gauges(&self, now: Instant, top: usize) -> Vec<DestinationGauge> {
        let mut health = self.health(now);
        health.sort_by(|a, b| {
            b.circuit_open
                .cmp(&a.circuit_open)
                .then(b.consecutive_failures.cmp(&a.consecutive_failures))
                .then(b.in_flight.cmp(&a.in_flight))
                .then(a.destination.cmp(&b.destination))
        });
        let rest = health.split_off(top.min(health.len()));
        let mut out: Vec<DestinationGauge> = health
            .into_iter()
            .map(|h| DestinationGauge {
                destination: h.destination,
                circuits_open: usize::from(h.circuit_open),
                in_flight: h.in_flight,
            })
            .collect();
        out.push(DestinationGauge {
            destination: fluxcb_core::metric_names::OTHER_DESTINATIONS.to_owned(),
            circuits_open: rest.iter().filter(|h| h.circuit_open).count(),
            in_flight: rest.iter().map(|h| h.in_flight).sum(),
        });
        let mut published = self.published.lock().expect("published poisoned");
        let now_named: std::collections::HashSet<String> =
            out.iter().map(|g| g.destination.clone()).collect();
        for gone in published.difference(&now_named) {
            out.push(DestinationGauge {
                destination: gone.clone(),
                circuits_open: 0,
                in_flight: 0,
            });
        }
        *published = now_named;
        out
    }

    /// Sets the destination gauges (called when metrics are scraped or flushed).
    pub fn publish_metrics(&self, now: Instant) {
        use fluxcb_core::metric_names as names;
        for g in self.gauges(now, names::TOP_DESTINATIONS) {
            metrics::gauge!(names::DESTINATION_CIRCUIT_OPEN, "destination" => g.destination.clone())
                .set(g.circuits_open as f64);
            metrics::gauge!(names::DESTINATION_IN_FLIGHT, "destination" => g.destination)
                .set(g.in_flight as f64);
        }
    }

    /// The limits of a destination without settings of its own.
    pub fn default_limits(&self) -> EntryLimits {
        self.limits.entry()
    }

    /// Takes a slot for one attempt to `key` under `limits`, or says until when to wait.
    pub fn try_enter(&self, key: &str, limits: &EntryLimits, now: Instant) -> Result<(), Instant> {
        let mut states = self.states.lock().expect("destinations poisoned");
        let st = states
            .entry(key.to_owned())
            .or_insert_with(|| State::new(limits.clone()));
        // Settings changed through the API apply from the next attempt.
        st.limits = limits.clone();
        if let Some(until) = st.open_until {
            if until > now {
                return Err(until);
            }
            // Half-open: one probe at a time decides whether the breaker closes.
            if st.probing {
                return Err(now + self.limits.busy_retry);
            }
        }
        if st.in_flight >= limits.max_in_flight {
            // A slot frees about every `finish_gap`: each callback turned away takes the next
            // such turn, up to about one attempt's duration ahead (every slot turned over), so
            // a backlog behind a slow destination comes back spread over the time it takes to
            // serve, not all at once. All at once, it would be claimed and turned away again
            // and again, crowding every other destination's callbacks out of the claims.
            let slots = limits.max_in_flight.max(1) as u32;
            let spacing = st
                .finish_gap
                .unwrap_or(self.limits.busy_retry / slots)
                .clamp(MIN_BUSY_SPACING, MAX_BUSY_SPACING);
            let horizon = now + (spacing * slots).max(self.limits.busy_retry);
            let turn =
                (st.busy_promised_until.filter(|t| *t > now).unwrap_or(now) + spacing).min(horizon);
            st.busy_promised_until = Some(turn);
            return Err(turn);
        }
        if let Some(rate) = limits.rate_per_second {
            let interval = Duration::from_secs_f64(1.0 / rate);
            match st.next_slot {
                Some(slot) if slot > now => {
                    let promised = st.promised_until.filter(|p| *p > slot).unwrap_or(slot);
                    st.promised_until = Some(promised + interval);
                    return Err(promised);
                }
                _ => st.next_slot = Some(now + interval),
            }
        }
        if st.open_until.is_some() {
            st.probing = true;
        }
        st.in_flight += 1;
        Ok(())
    }

    /// Releases the slot taken by [`Self::try_enter`] and learns from the outcome. Says when
    /// the breaker opened from closed, or closed after being open (a failed probe reopening it
    /// is not a change: it was open all along).
    pub fn finish(&self, key: &str, verdict: Verdict, now: Instant) -> Option<BreakerChange> {
        let mut states = self.states.lock().expect("destinations poisoned");
        let st = states.get_mut(key)?;
        let mut change = None;
        if st.in_flight >= st.limits.max_in_flight {
            if let Some(previous) = st.last_finish {
                let gap = now.saturating_duration_since(previous);
                st.finish_gap = Some(match st.finish_gap {
                    Some(g) => g.mul_f64(0.8) + gap.mul_f64(0.2),
                    None => gap,
                });
            }
            st.last_finish = Some(now);
        } else {
            // Below the limit nobody waits for a slot: gaps measured now would mislead.
            st.last_finish = None;
        }
        st.in_flight = st.in_flight.saturating_sub(1);
        let was_probe = std::mem::take(&mut st.probing);
        match verdict {
            Verdict::Healthy => {
                if st.openings > 0 {
                    change = Some(BreakerChange::Closed {
                        openings: st.openings,
                    });
                }
                st.consecutive_failures = 0;
                st.open_until = None;
                st.openings = 0;
            }
            Verdict::Unhealthy => {
                st.consecutive_failures += 1;
                // Attempts that were already on the wire when the circuit opened keep failing
                // after it: they must not each open it again, or one burst of concurrent
                // failures would push the wait to its maximum at once. Only an opening (from
                // closed, or a failed probe) counts and lengthens the next wait.
                let already_open = st.open_until.is_some_and(|u| u > now);
                let opens = if was_probe {
                    true
                } else {
                    !already_open && st.consecutive_failures >= st.limits.failure_threshold
                };
                if opens {
                    let factor = 2u32.saturating_pow(st.openings.min(16));
                    let open_for = st
                        .limits
                        .open_for
                        .saturating_mul(factor)
                        .min(self.limits.max_open_for.max(st.limits.open_for));
                    tracing::warn!(destination = %key, ?open_for, "circuit opened");
                    st.open_until = Some(now + open_for);
                    if st.openings == 0 {
                        change = Some(BreakerChange::Opened {
                            consecutive_failures: st.consecutive_failures,
                            open_for,
                        });
                    }
                    st.openings += 1;
                }
            }
            Verdict::Neutral => {}
        }
        if st.is_idle(now) {
            states.remove(key);
        }
        change
    }

    /// Until when the breaker of `key` is open, as this node last decided (`None`: closed;
    /// a time past: open, a probe may go).
    pub fn open_until(&self, key: &str) -> Option<Instant> {
        let states = self.states.lock().expect("destinations poisoned");
        states.get(key).and_then(|s| s.open_until)
    }

    /// The live state of one destination (`None`: nothing to report).
    pub fn health_of(&self, key: &str, now: Instant) -> Option<DestinationHealth> {
        let states = self.states.lock().expect("destinations poisoned");
        states.get(key).map(|s| DestinationHealth {
            destination: key.to_owned(),
            in_flight: s.in_flight,
            consecutive_failures: s.consecutive_failures,
            circuit_open: s.open_until.is_some_and(|u| u > now),
        })
    }

    /// Destinations with anything to report (in flight, failing or open), for operators.
    pub fn health(&self, now: Instant) -> Vec<DestinationHealth> {
        let states = self.states.lock().expect("destinations poisoned");
        let mut out: Vec<_> = states
            .iter()
            .map(|(d, s)| DestinationHealth {
                destination: d.clone(),
                in_flight: s.in_flight,
                consecutive_failures: s.consecutive_failures,
                circuit_open: s.open_until.is_some_and(|u| u > now),
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

#[cfg(test)]
mod tests;
