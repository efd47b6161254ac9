//! The delivery state machine.
//!
//! ```text
//!  scheduled ──┐            ┌──────────── reschedule / defer / recover ─────────┐
//!      │       ├─ claim ──> delivering ── succeed ──> delivered                │
//!      │   pending <────────────┴────────────────────────────────────────────────┘
//!      │       │                └──────── dead_letter ──> failed ── retry ──> pending
//!      └───────┴── cancel ──> cancelled
//! ```
//! Callers never set a status directly: they name a [`Transition`], and each transition knows
//! the states it may start from. A move such as delivered → pending has no name, so it cannot be
//! asked for. Stores apply a transition as a conditional write on [`Transition::sources`].
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The first attempt is in the future (`deliver_at`).
    Scheduled,
    /// Due now, or waiting for its next retry at `next_attempt_at`.
    Pending,
    /// Claimed by a worker; an attempt is in flight.
    Delivering,
    Delivered,
    /// Dead-lettered: out of attempts, gone (410) or blocked. Waits for a retry or redrive.
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Scheduled,
        Status::Pending,
        Status::Delivering,
        Status::Delivered,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Pending => "pending",
            Status::Delivering => "delivering",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Terminal states are the ones retention may delete (failed stays redrivable until then).
    pub fn is_final(&self) -> bool {
        matches!(self, Status::Delivered | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}` (expected one of scheduled, pending, delivering, delivered, failed, cancelled)")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.chars().take(40).collect()))
    }
}

/// Every legal move between states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// A worker takes a due callback.
    Claim,
    /// A 2xx answer.
    Succeed,
    /// A failed attempt with attempts left: wait for `next_attempt_at`.
    Reschedule,
    /// Not attempted after all (destination busy, paused or its circuit open; shutdown): no
    /// attempt is counted.
    Defer,
    /// A worker died holding the callback; its lease ran out (or the process restarted).
    Recover,
    /// Out of attempts, 410 Gone, or a blocked target.
    DeadLetter,
    /// An operator (or the caller) cancels before delivery.
    Cancel,
    /// An operator sends a dead letter back to the queue (single retry or bulk redrive).
    Retry,
    /// An operator asks for an attempt right now, whatever the schedule (the legacy API's
    /// `send`): the caller claims the callback and makes the attempt itself.
    SendNow,
}

impl Transition {
    pub fn sources(&self) -> &'static [Status] {
        use Status::*;
        match self {
            Transition::Claim => &[Scheduled, Pending],
            Transition::Succeed
            | Transition::Reschedule
            | Transition::Defer
            | Transition::Recover
            | Transition::DeadLetter => &[Delivering],
            Transition::Cancel => &[Scheduled, Pending],
            Transition::Retry => &[Failed],
            Transition::SendNow => &[Scheduled, Pending, Failed],
        }
    }

    pub fn target(&self) -> Status {
        match self {
            Transition::Claim | Transition::SendNow => Status::Delivering,
            Transition::Succeed => Status::Delivered,
            Transition::Reschedule
            | Transition::Defer
            | Transition::Recover
            | Transition::Retry => Status::Pending,
            Transition::DeadLetter => Status::Failed,
            Transition::Cancel => Status::Cancelled,
        }
    }

    pub fn apply(&self, from: Status) -> Result<Status, IllegalTransition> {
        if self.sources().contains(&from) {
            Ok(self.target())
        } else {
            Err(IllegalTransition {
                transition: *self,
                from,
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {transition:?} a callback that is {from}")]
pub struct IllegalTransition {
    pub transition: Transition,
    pub from: Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_only_leave_by_operator_retry() {
        let all = [
            Transition::Claim,
            Transition::Succeed,
            Transition::Reschedule,
            Transition::Defer,
            Transition::Recover,
            Transition::DeadLetter,
            Transition::Cancel,
            Transition::Retry,
            Transition::SendNow,
        ];
        for t in all {
            assert!(t.apply(Status::Delivered).is_err(), "{t:?} left delivered");
            assert!(t.apply(Status::Cancelled).is_err(), "{t:?} left cancelled");
            let from_failed = t.apply(Status::Failed);
            let operator = matches!(t, Transition::Retry | Transition::SendNow);
            assert_eq!(from_failed.is_ok(), operator, "{t:?}");
        }
    }

    #[test]
    fn in_flight_callbacks_cannot_be_cancelled_or_reclaimed() {
        assert!(Transition::Cancel.apply(Status::Delivering).is_err());
        assert!(Transition::Claim.apply(Status::Delivering).is_err());
        assert_eq!(
            Transition::Claim.apply(Status::Scheduled),
            Ok(Status::Delivering)
        );
    }

    #[test]
    fn status_text_round_trips() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert!("sent".parse::<Status>().is_err());
    }
}
