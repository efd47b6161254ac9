//! Requests per API key: a token bucket per key (`api_rate_limit` per second, bursts of twice
//! that), so one runaway client cannot take the whole server. Per process: behind a load
//! balancer with N nodes a key gets up to N times the rate. Off when the rate is 0.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; idle full buckets are dropped first when it fills.
const MAX_KEYS: usize = 50_000;

pub struct KeyRateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl KeyRateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(per_second) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn disabled() -> Self {
        Self::new(0)
    }

    /// Takes one request's token for `key`, or says how long until one is there.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("rate limiter poisoned");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = self.per_second * now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let limiter = KeyRateLimiter::new(10);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another key is not affected.
        assert!(limiter.check("b", t0).is_ok());
        // A tenth of a second later, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check("a", t1).is_ok());
        assert!(limiter.check("a", t1).is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = KeyRateLimiter::disabled();
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(limiter.check("a", t0).is_ok());
        }
    }
}
