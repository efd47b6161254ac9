//! Waking the dispatcher early for new work, and only when the work is due before the
//! dispatcher would look anyway.
//!
//! Under steady ingest of callbacks due later (scheduled ones, or anything while the loop is
//! idle), waking on every accepted callback made the dispatcher run a round (two store reads on
//! the blocking pool) per request for nothing: about 15 % of the server's CPU in the `ingest`
//! benchmark. The dispatcher publishes when its sleep ends; a notification for callbacks all
//! due at or after that is dropped, because the loop looks at that time anyway.
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// `looks_at_ms` while the loop runs: it will look at the store again before it sleeps.
const AWAKE: i64 = i64::MAX;
/// `pending_ms` with nothing reported.
const NOTHING: i64 = i64::MAX;

/// Reports go two ways so that a busy loop is not woken over and over: while the loop runs,
/// the earliest reported due time is only recorded, and the loop checks it as it goes to
/// sleep; while it sleeps, a report due before the end of its sleep wakes it. Both sides write
/// their own atomic and then read the other's (sequentially consistent), so a report racing
/// the loop's going to sleep is seen by at least one of them.
#[derive(Debug)]
pub struct DispatcherWake {
    notify: Notify,
    /// Unix milliseconds at which the sleeping loop looks again, or [`AWAKE`].
    looks_at_ms: AtomicI64,
    /// The earliest due time reported since the loop last went to sleep.
    pending_ms: AtomicI64,
}

impl Default for DispatcherWake {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            looks_at_ms: AtomicI64::new(AWAKE),
            pending_ms: AtomicI64::new(NOTHING),
        }
    }
}

impl DispatcherWake {
    /// New work becomes due at `due_at` (each of them), committed before this call.
    pub fn work_due(&self, due_at: impl IntoIterator<Item = DateTime<Utc>>) {
        let Some(earliest) = due_at.into_iter().map(|at| at.timestamp_millis()).min() else {
            return;
        };
        self.pending_ms.fetch_min(earliest, Ordering::SeqCst);
        let looks_at = self.looks_at_ms.load(Ordering::SeqCst);
        if looks_at != AWAKE && earliest < looks_at {
            self.notify.notify_one();
        }
    }

    /// Wakes the loop whatever it planned (its own deliveries made work).
    pub fn now(&self) {
        self.notify.notify_one();
    }

    /// The loop means to sleep until `until` (on its clock), having looked at the store since
    /// it last woke. False when work reported meanwhile is due before then: look again instead.
    pub(crate) fn going_to_sleep(&self, until: DateTime<Utc>) -> bool {
        let until = until.timestamp_millis();
        self.looks_at_ms.store(until, Ordering::SeqCst);
        let pending = self.pending_ms.swap(NOTHING, Ordering::SeqCst);
        if pending < until {
            self.looks_at_ms.store(AWAKE, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The loop woke (or decided not to sleep).
    pub(crate) fn awake(&self) {
        self.looks_at_ms.store(AWAKE, Ordering::SeqCst);
    }

    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(wake: &DispatcherWake) -> bool {
        tokio::time::timeout(Duration::from_millis(20), wake.notified())
            .await
            .is_ok()
    }

    fn in_ms(ms: i64) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(ms)
    }

    #[tokio::test]
    async fn a_sleeping_loop_is_woken_only_by_work_due_before_it_looks() {
        let wake = DispatcherWake::default();
        assert!(wake.going_to_sleep(in_ms(500)));

        wake.work_due([in_ms(30 * 86_400_000)]);
        assert!(
            !woken(&wake).await,
            "a callback due in 30 days woke the loop"
        );

        wake.work_due([in_ms(30 * 86_400_000), in_ms(0)]);
        assert!(
            woken(&wake).await,
            "a callback due now did not wake the loop"
        );

        wake.work_due(std::iter::empty());
        assert!(!woken(&wake).await);
    }

    #[tokio::test]
    async fn work_reported_while_the_loop_runs_is_checked_as_it_goes_to_sleep() {
        let wake = DispatcherWake::default();
        wake.awake();
        // Reports while awake never wake it (a loop under steady ingest would never rest)...
        wake.work_due([in_ms(30 * 86_400_000)]);
        wake.work_due([in_ms(100)]);
        assert!(!woken(&wake).await);
        // ...but one due before the planned sleep ends keeps it from sleeping.
        assert!(
            !wake.going_to_sleep(in_ms(500)),
            "work due in 100 ms was slept past"
        );
        // Reported work is consumed by that check; only later work due earlier matters.
        wake.work_due([in_ms(30 * 86_400_000)]);
        assert!(wake.going_to_sleep(in_ms(500)));
        wake.awake();
        wake.now();
        assert!(woken(&wake).await, "now() must always wake");
    }
}
