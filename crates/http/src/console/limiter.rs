//! Failed console logins, counted per client address: [`MAX_FAILURES`] within [`WINDOW`] and
//! the next attempt from that address is refused with `429` and `Retry-After` until the oldest
//! of them leaves the window. A success clears the address's record.
//!
//! The address is the peer of the TCP connection when the server knows it (`fluxcb serve`),
//! else the last `X-Forwarded-For` entry: the one the nearest proxy (API Gateway) added, which
//! the client cannot choose. Behind a proxy that hides every client behind its own address,
//! they all share one budget.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;

pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond it, the quiet ones are dropped first.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// `Err(retry_after)` when this address has used up its failures.
    pub fn check(&self, addr: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().expect("limiter poisoned");
        let Some(times) = map.get_mut(addr) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() < MAX_FAILURES {
            if times.is_empty() {
                map.remove(addr);
            }
            return Ok(());
        }
        let oldest = *times.front().expect("at least MAX_FAILURES entries");
        let wait = WINDOW.saturating_sub(now.duration_since(oldest));
        // Whole seconds, at least one: what Retry-After can say.
        Err(Duration::from_secs(
            wait.as_secs_f64().ceil().max(1.0) as u64
        ))
    }

    pub fn failed(&self, addr: &str, now: Instant) {
        let mut map = self.failures.lock().expect("limiter poisoned");
        if map.len() >= MAX_ADDRESSES && !map.contains_key(addr) {
            map.retain(|_, t| t.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if map.len() >= MAX_ADDRESSES {
                map.clear();
            }
        }
        let times = map.entry(addr.to_owned()).or_default();
        times.push_back(now);
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }

    pub fn succeeded(&self, addr: &str) {
        self.failures.lock().expect("limiter poisoned").remove(addr);
    }
}

/// The client address a login is counted against.
pub fn client_address(parts: &Parts) -> String {
    if let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        return addr.ip().to_string();
    }
    parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|s| !s.is_empty())
        .map_or_else(|| "unknown".to_owned(), |s| s.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_a_minute_then_429_until_the_oldest_expires() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert!(l.check("1.2.3.4", t0).is_ok(), "attempt {i}");
            l.failed("1.2.3.4", t0 + Duration::from_secs(i as u64));
        }
        let wait = l
            .check("1.2.3.4", t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(
            l.check("5.6.7.8", t0).is_ok(),
            "other addresses are not affected"
        );
        assert!(l.check("1.2.3.4", t0 + Duration::from_secs(60)).is_ok());
        l.failed("1.2.3.4", t0 + Duration::from_secs(60));
        assert!(l.check("1.2.3.4", t0 + Duration::from_secs(60)).is_err());
        l.succeeded("1.2.3.4");
        assert!(l.check("1.2.3.4", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn the_address_is_the_peer_or_the_last_forwarded_entry() {
        let req = axum::http::Request::builder()
            .header("x-forwarded-for", "10.0.0.1, 203.0.113.9")
            .body(())
            .unwrap();
        let (mut parts, _) = req.into_parts();
        assert_eq!(client_address(&parts), "203.0.113.9");
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
        assert_eq!(client_address(&parts), "127.0.0.1");
        let (parts, _) = axum::http::Request::new(()).into_parts();
        assert_eq!(client_address(&parts), "unknown");
    }
}
