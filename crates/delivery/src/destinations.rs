//! Protecting receivers (and our capacity) per destination: a concurrency limit, and a circuit
//! breaker that stops sending to a destination after consecutive failures. Callbacks held back
//! by either are deferred, not failed: no attempt is counted against them.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fluxcb_core::attempt::ErrorCode;
use fluxcb_core::callback::Destination;
use fluxcb_core::retry::Decision;

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

#[derive(Default, Debug)]
struct State {
    in_flight: usize,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// Number of times the breaker has opened without a success since.
    openings: u32,
    probing: bool,
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

pub struct Destinations {
    limits: DestinationLimits,
    states: Mutex<HashMap<Destination, State>>,
}

impl Destinations {
    pub fn new(limits: DestinationLimits) -> Self {
        Self {
            limits,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for one attempt, or says until when to wait.
    pub fn try_enter(&self, dest: &Destination, now: Instant) -> Result<(), Instant> {
        let mut states = self.states.lock().expect("destinations poisoned");
        let st = states.entry(dest.clone()).or_default();
        if let Some(until) = st.open_until {
            if until > now {
                return Err(until);
            }
            // Half-open: one probe at a time decides whether the breaker closes.
            if st.probing {
                return Err(now + self.limits.busy_retry);
            }
            st.probing = true;
        }
        if st.in_flight >= self.limits.max_in_flight {
            return Err(now + self.limits.busy_retry);
        }
        st.in_flight += 1;
        Ok(())
    }

    /// Releases the slot taken by [`Self::try_enter`] and learns from the outcome.
    pub fn finish(&self, dest: &Destination, verdict: Verdict, now: Instant) {
        let mut states = self.states.lock().expect("destinations poisoned");
        let Some(st) = states.get_mut(dest) else {
            return;
        };
        st.in_flight = st.in_flight.saturating_sub(1);
        let was_probe = std::mem::take(&mut st.probing);
        match verdict {
            Verdict::Healthy => {
                st.consecutive_failures = 0;
                st.open_until = None;
                st.openings = 0;
            }
            Verdict::Unhealthy => {
                st.consecutive_failures += 1;
                if was_probe || st.consecutive_failures >= self.limits.failure_threshold {
                    let factor = 2u32.saturating_pow(st.openings.min(16));
                    let open_for = self
                        .limits
                        .open_for
                        .saturating_mul(factor)
                        .min(self.limits.max_open_for);
                    if st.open_until.is_none_or(|u| u <= now) {
                        tracing::warn!(destination = %dest, ?open_for, "circuit opened");
                    }
                    st.open_until = Some(now + open_for);
                    st.openings += 1;
                }
            }
            Verdict::Neutral => {}
        }
        if st.in_flight == 0 && st.consecutive_failures == 0 && st.open_until.is_none() {
            states.remove(dest);
        }
    }

    /// Destinations with anything to report (in flight, failing or open), for operators.
    pub fn health(&self, now: Instant) -> Vec<DestinationHealth> {
        let states = self.states.lock().expect("destinations poisoned");
        let mut out: Vec<_> = states
            .iter()
            .map(|(d, s)| DestinationHealth {
                destination: d.to_string(),
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
mod tests {
    use super::*;

    fn dest() -> Destination {
        Destination::of(&"http://127.0.0.1:9/".parse().unwrap())
    }

    #[test]
    fn concurrency_limit_defers_the_extra_attempt() {
        let d = Destinations::new(DestinationLimits {
            max_in_flight: 2,
            ..Default::default()
        });
        let now = Instant::now();
        assert!(d.try_enter(&dest(), now).is_ok());
        assert!(d.try_enter(&dest(), now).is_ok());
        assert!(d.try_enter(&dest(), now).is_err());
        d.finish(&dest(), Verdict::Healthy, now);
        assert!(d.try_enter(&dest(), now).is_ok());
    }

    #[test]
    fn breaker_opens_after_threshold_then_probes_once() {
        let limits = DestinationLimits {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            ..Default::default()
        };
        let d = Destinations::new(limits);
        let t0 = Instant::now();
        for _ in 0..3 {
            d.try_enter(&dest(), t0).unwrap();
            d.finish(&dest(), Verdict::Unhealthy, t0);
        }
        let until = d.try_enter(&dest(), t0).unwrap_err();
        assert_eq!(until, t0 + Duration::from_secs(10));
        assert!(d.health(t0)[0].circuit_open);
        // After the open period one probe goes through, a second waits for its verdict.
        let t1 = t0 + Duration::from_secs(11);
        d.try_enter(&dest(), t1).unwrap();
        assert!(d.try_enter(&dest(), t1).is_err());
        // A failed probe reopens for twice as long.
        d.finish(&dest(), Verdict::Unhealthy, t1);
        assert_eq!(
            d.try_enter(&dest(), t1).unwrap_err(),
            t1 + Duration::from_secs(20)
        );
        // A successful probe closes it.
        let t2 = t1 + Duration::from_secs(21);
        d.try_enter(&dest(), t2).unwrap();
        d.finish(&dest(), Verdict::Healthy, t2);
        assert!(d.try_enter(&dest(), t2).is_ok());
    }

    #[test]
    fn client_errors_do_not_trip_the_breaker() {
        let retry = Decision::RetryAt(chrono::Utc::now());
        assert_eq!(
            Verdict::of(Some(400), Some(ErrorCode::HttpStatus), &retry),
            Verdict::Neutral
        );
        assert_eq!(
            Verdict::of(Some(503), Some(ErrorCode::HttpStatus), &retry),
            Verdict::Unhealthy
        );
        assert_eq!(
            Verdict::of(None, Some(ErrorCode::Timeout), &retry),
            Verdict::Unhealthy
        );
    }
}
