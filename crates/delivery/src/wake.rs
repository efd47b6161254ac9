//! Waking the dispatcher early for new work, and only when the work is due before the
//! dispatcher would look anyway.
//!
//! Under steady ingest of callbacks due later (scheduled ones, or anything while the loop is
//! idle), waking on every accepted callback made the dispatcher run a round (two store reads on
//! the blocking pool) per request for nothing: about 15 % of the server's CPU in the `ingest`
//! benchmark. Now a report still wakes the loop's task, but the loop only runs a round for work
//! due before its sleep would end anyway.
//!
//! (A first version also kept the wake-up itself from a sleeping loop by publishing the sleep's
//! end for the reporter to compare; it lost wake-ups somewhere and left callbacks waiting up to
//! a poll interval: p99 115 ms in `fluxcb-bench end-to-end`. This one checks on the loop's side,
//! after the wake-up, so no interleaving can lose a report.)
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// `pending_ms` with nothing reported.
const NOTHING: i64 = i64::MAX;

/// Every report wakes the loop's task (cheap: no store access); the sleeping loop itself drops
/// reports of work due after its sleep ends and sleeps on. A report is recorded before the
/// wake-up, so the loop always sees it: nothing is lost to a race with going to sleep.
#[derive(Debug)]
pub struct DispatcherWake {
    notify: Notify,
    /// The earliest due time (Unix milliseconds) reported since the loop last checked.
    pending_ms: AtomicI64,
}

impl Default for DispatcherWake {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
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
        self.notify.notify_one();
    }

    /// Wakes the loop whatever it planned (its own deliveries made work).
    pub fn now(&self) {
        self.pending_ms.store(i64::MIN, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Resolves when work is reported due before `until` (on the loop's clock), or due
    /// already. Reports of later work are dropped: the loop looks at the store at `until`
    /// anyway. Cancel-safe.
    pub(crate) async fn work_before(&self, until: DateTime<Utc>) {
        let until = until.timestamp_millis();
        loop {
            self.notify.notified().await;
            // Work due by now wakes even when `until` has passed: the loop's timer fires a
            // millisecond or two after it, and a callback accepted in between would wait for
            // that timer (with a busy destination's turns coming due every few milliseconds,
            // `until` is often that close: the healthy destination's p99 doubled).
            let limit = until.max(Utc::now().timestamp_millis() + 1);
            if self.pending_ms.swap(NOTHING, Ordering::SeqCst) < limit {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(wake: &DispatcherWake, until: DateTime<Utc>) -> bool {
        tokio::time::timeout(Duration::from_millis(20), wake.work_before(until))
            .await
            .is_ok()
    }

    fn in_ms(ms: i64) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(ms)
    }

    #[tokio::test]
    async fn only_work_due_before_the_sleep_ends_wakes_the_loop() {
        let wake = DispatcherWake::default();
        wake.work_due([in_ms(30 * 86_400_000)]);
        assert!(
            !woken(&wake, in_ms(500)).await,
            "a callback due in 30 days woke the loop"
        );

        wake.work_due([in_ms(30 * 86_400_000), in_ms(0)]);
        assert!(
            woken(&wake, in_ms(500)).await,
            "a callback due now did not wake the loop"
        );

        wake.work_due(std::iter::empty());
        assert!(!woken(&wake, in_ms(500)).await);
    }

    #[tokio::test]
    async fn work_due_already_wakes_a_loop_whose_sleep_should_have_ended() {
        let wake = DispatcherWake::default();
        // The loop's timer is late: its planned end has passed and work due now comes in.
        wake.work_due([in_ms(0)]);
        assert!(
            woken(&wake, in_ms(-5)).await,
            "a callback due now waited for a late timer"
        );
        // Work due later than both the sleep's end and now still does not.
        wake.work_due([in_ms(60_000)]);
        assert!(!woken(&wake, in_ms(-5)).await);
    }

    #[tokio::test]
    async fn work_reported_before_the_loop_waits_is_not_lost() {
        let wake = DispatcherWake::default();
        // Reported while the loop was busy elsewhere (no waiter yet).
        wake.work_due([in_ms(100)]);
        assert!(
            woken(&wake, in_ms(500)).await,
            "work due in 100 ms was slept past"
        );
        // Consumed by that wake-up.
        assert!(!woken(&wake, in_ms(500)).await);
        wake.now();
        assert!(woken(&wake, in_ms(500)).await, "now() must always wake");
    }
}
