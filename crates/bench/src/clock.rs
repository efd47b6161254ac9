//! One monotonic time base for the whole bench process. The load generator writes send times
//! into payloads and the receiver reads them back; both live in this process, so a shared
//! `Instant` epoch gives exact differences without trusting the wall clock.
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Pins the epoch; called first thing so that every later reading is positive.
pub fn init() {
    epoch();
}

pub fn now_ns() -> u64 {
    ns_of(Instant::now())
}

pub fn ns_of(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}
