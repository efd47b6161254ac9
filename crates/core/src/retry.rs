//! The retry policy: when to try again, and when to give up.
//!
//! Defaults: attempts after the first wait 5s, 30s, 2m, 10m, 30m, 1h, 3h, 6h, 12h and 24h (each
//! ±20% jitter so that a receiver that comes back is not hit by every retry at once);
//! `max_attempts` defaults to 11, about two days of trying. Past the end of the schedule the
//! last delay repeats. `Retry-After` on 429 and 503 replaces the scheduled delay, bounded by
//! [`RetryPolicy::max_retry_after`] so a receiver cannot park a callback for a year, and never
//! shorter than one second. 410 Gone and blocked targets dead-letter at once: retrying cannot
//! help.
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::attempt::{ErrorCode, SendOutcome};

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before attempt 2, 3, ...
    pub schedule: Vec<Duration>,
    /// Fraction of each delay to randomise by, in [0, 1).
    pub jitter: f64,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            schedule: parse_schedule("5s,30s,2m,10m,30m,1h,3h,6h,12h,24h")
                .expect("the default schedule parses"),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

pub const DEFAULT_MAX_ATTEMPTS: u32 = 11;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// `max_attempts` reached.
    Exhausted,
    /// The receiver answered 410 Gone.
    Gone,
    /// The target's address is refused by the SSRF policy.
    BlockedTarget,
}

impl DeadLetterReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::Exhausted => "exhausted",
            DeadLetterReason::Gone => "gone",
            DeadLetterReason::BlockedTarget => "blocked_target",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    RetryAt(DateTime<Utc>),
    DeadLetter(DeadLetterReason),
}

impl RetryPolicy {
    /// What follows attempt number `attempt` (1-based) that ended with `outcome`.
    pub fn decide(
        &self,
        attempt: u32,
        max_attempts: u32,
        outcome: &SendOutcome,
        now: DateTime<Utc>,
    ) -> Decision {
        if outcome.is_success() {
            return Decision::Delivered;
        }
        if outcome.error_code() == Some(ErrorCode::BlockedTarget) {
            return Decision::DeadLetter(DeadLetterReason::BlockedTarget);
        }
        if outcome.status_code == Some(410) {
            return Decision::DeadLetter(DeadLetterReason::Gone);
        }
        if attempt >= max_attempts {
            return Decision::DeadLetter(DeadLetterReason::Exhausted);
        }
        let delay = match (outcome.status_code, self.retry_after(outcome, now)) {
            (Some(429 | 503), Some(asked)) => asked,
            _ => self.jittered(self.scheduled_delay(attempt), &mut rand::thread_rng()),
        };
        Decision::RetryAt(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
    }

    /// The delay after attempt `attempt` (1-based) before jitter.
    pub fn scheduled_delay(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) - 1) as usize;
        self.schedule
            .get(index)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }

    pub fn jittered(&self, delay: Duration, rng: &mut impl Rng) -> Duration {
        if self.jitter <= 0.0 || delay.is_zero() {
            return delay;
        }
        let factor = rng.gen_range((1.0 - self.jitter)..(1.0 + self.jitter));
        delay.mul_f64(factor)
    }

    fn retry_after(&self, outcome: &SendOutcome, now: DateTime<Utc>) -> Option<Duration> {
        let value = outcome.headers.get("retry-after")?;
        let asked = parse_retry_after(value, now)?;
        Some(asked.clamp(Duration::from_secs(1), self.max_retry_after))
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Parses `1s,5s,30s` (any humantime durations).
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let delays = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() {
        return Err("the retry schedule needs at least one duration".to_owned());
    }
    Ok(delays)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> SendOutcome {
        SendOutcome {
            status_code: Some(code),
            error: (!(200..300).contains(&code))
                .then(|| (ErrorCode::HttpStatus, format!("HTTP {code}"))),
            ..Default::default()
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: parse_schedule("1s,10s,100s").unwrap(),
            jitter: 0.0,
            max_retry_after: Duration::from_secs(600),
        }
    }

    #[test]
    fn schedule_then_dead_letter_when_attempts_run_out() {
        let now = Utc::now();
        let p = policy();
        let at = |s: i64| Decision::RetryAt(now + chrono::Duration::seconds(s));
        assert_eq!(p.decide(1, 5, &status(500), now), at(1));
        assert_eq!(p.decide(2, 5, &status(500), now), at(10));
        assert_eq!(p.decide(3, 5, &status(500), now), at(100));
        assert_eq!(
            p.decide(4, 5, &status(500), now),
            at(100),
            "last delay repeats"
        );
        assert_eq!(
            p.decide(5, 5, &status(500), now),
            Decision::DeadLetter(DeadLetterReason::Exhausted)
        );
        assert_eq!(p.decide(1, 5, &status(204), now), Decision::Delivered);
    }

    #[test]
    fn gone_and_blocked_stop_at_once() {
        let now = Utc::now();
        let p = policy();
        assert_eq!(
            p.decide(1, 5, &status(410), now),
            Decision::DeadLetter(DeadLetterReason::Gone)
        );
        let blocked = SendOutcome::failure(ErrorCode::BlockedTarget, "127.0.0.1", Duration::ZERO);
        assert_eq!(
            p.decide(1, 5, &blocked, now),
            Decision::DeadLetter(DeadLetterReason::BlockedTarget)
        );
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let now = Utc::now();
        let p = policy();
        let mut o = status(429);
        o.headers.insert("retry-after".into(), "42".into());
        assert_eq!(
            p.decide(1, 5, &o, now),
            Decision::RetryAt(now + chrono::Duration::seconds(42))
        );
        o.headers.insert("retry-after".into(), "999999".into());
        assert_eq!(
            p.decide(1, 5, &o, now),
            Decision::RetryAt(now + chrono::Duration::seconds(600))
        );
        // Only 429 and 503 may move the schedule.
        let mut o500 = status(500);
        o500.headers.insert("retry-after".into(), "42".into());
        assert_eq!(
            p.decide(1, 5, &o500, now),
            Decision::RetryAt(now + chrono::Duration::seconds(1))
        );
    }

    #[test]
    fn retry_after_accepts_http_dates() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = RetryPolicy {
            jitter: 0.2,
            ..policy()
        };
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let d = p.jittered(Duration::from_secs(100), &mut rng);
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
        }
    }

    #[test]
    fn schedule_parsing_reports_the_bad_entry() {
        assert_eq!(parse_schedule("1s, 5s").unwrap().len(), 2);
        let err = parse_schedule("1s,soon").unwrap_err();
        assert!(err.contains("soon"), "{err}");
        assert!(parse_schedule("").is_err());
    }
}
