//! One vocabulary of metric names for every deployment: the local `/metrics` endpoint exports
//! them in Prometheus format, and the AWS functions will write the same names as CloudWatch
//! Embedded Metric Format lines. Labels are bounded: outcomes and statuses only, never tenants
//! or destinations.

/// Counter: callbacks durably accepted.
pub const ACCEPTED: &str = "fluxcb_callbacks_accepted_total";
/// Counter, label `outcome`: what each attempt led to.
pub const ATTEMPTS: &str = "fluxcb_attempts_total";
/// Histogram (seconds): one attempt, connect to last byte read.
pub const ATTEMPT_DURATION: &str = "fluxcb_attempt_duration_seconds";
/// Histogram (seconds): accepted to delivered, for delivered callbacks.
pub const ACCEPTED_TO_DELIVERED: &str = "fluxcb_accepted_to_delivered_seconds";
/// Gauge, label `status`: callbacks stored in each state (sampled at scrape time).
pub const CALLBACKS: &str = "fluxcb_callbacks";
/// Gauge: attempts in flight right now.
pub const IN_FLIGHT: &str = "fluxcb_deliveries_in_flight";

/// Gauge, labels `queue` (`work`, `dead_letter`) and `state` (`visible`, `delayed`,
/// `in_flight`): messages on the SQS queues (AWS only, sampled by the sweeper).
pub const QUEUE_MESSAGES: &str = "fluxcb_queue_messages";
/// Counter: messages the sweeper sent for callbacks that had none (long waits, lost sends).
pub const SWEEPER_ENQUEUED: &str = "fluxcb_sweeper_enqueued_total";
/// Counter: in-flight callbacks returned to waiting after their worker's lease ran out.
pub const LEASES_RECOVERED: &str = "fluxcb_leases_recovered_total";
/// Counter: updates of the console's statistics counters that failed (AWS only). The callback
/// or attempt they counted is recorded all the same; the console's figures are short by it.
/// Operational events (the breaker's) dropped by their per-node caps.
pub const OPS_EVENTS_DROPPED: &str = "fluxcb_ops_events_dropped_total";
pub const STATS_UPDATES_FAILED: &str = "fluxcb_stats_updates_failed_total";

/// Gauge, label `destination` (scheme://host:port, the top destinations only; the rest summed
/// under [`OTHER_DESTINATIONS`]): 1 while the destination's circuit breaker is open (per process).
pub const DESTINATION_CIRCUIT_OPEN: &str = "fluxcb_destination_circuit_open";
/// Gauge, label `destination`: attempts in flight to the destination (per process).
pub const DESTINATION_IN_FLIGHT: &str = "fluxcb_destination_in_flight";
/// The `destination` label of everything beyond the top destinations.
pub const OTHER_DESTINATIONS: &str = "_other";
/// How many destinations get their own label value; bounds the series count.
pub const TOP_DESTINATIONS: usize = 20;

/// The `outcome` label values of [`ATTEMPTS`].
pub mod outcome {
    pub const DELIVERED: &str = "delivered";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const BLOCKED: &str = "blocked";
}

/// Histogram buckets (seconds) shared by both latency histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];
