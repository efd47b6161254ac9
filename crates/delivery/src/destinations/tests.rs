use super::*;

const DEST: &str = "http://127.0.0.1:9";

fn dest() -> &'static str {
    DEST
}

#[test]
fn concurrency_limit_defers_the_extra_attempt() {
    let d = Destinations::new(DestinationLimits {
        max_in_flight: 2,
        ..Default::default()
    });
    let now = Instant::now();
    assert!(d.try_enter(dest(), &d.limits.entry(), now).is_ok());
    assert!(d.try_enter(dest(), &d.limits.entry(), now).is_ok());
    assert!(d.try_enter(dest(), &d.limits.entry(), now).is_err());
    d.finish(dest(), Verdict::Healthy, now);
    assert!(d.try_enter(dest(), &d.limits.entry(), now).is_ok());
}

/// Callbacks turned away at the limit get turns one freed slot apart (up to one round of
/// the slots ahead), so a backlog behind a slow destination comes back spread out, not all
/// at once.
#[test]
fn turned_away_callbacks_come_back_one_freed_slot_apart() {
    let d = Destinations::new(DestinationLimits {
        max_in_flight: 2,
        ..Default::default()
    });
    let limits = d.limits.entry();
    let t0 = Instant::now();
    // Nothing measured yet: the spacing is the busy wait shared by the slots.
    assert!(d.try_enter(dest(), &limits, t0).is_ok());
    assert!(d.try_enter(dest(), &limits, t0).is_ok());
    assert_eq!(
        d.try_enter(dest(), &limits, t0).unwrap_err() - t0,
        Duration::from_millis(50)
    );
    // At the limit, a slot frees every 500 ms (a slow receiver) and is taken at once.
    for i in 1..=4u64 {
        let at = t0 + Duration::from_millis(500 * i);
        d.finish(dest(), Verdict::Healthy, at);
        assert!(d.try_enter(dest(), &limits, at).is_ok());
    }
    let now = t0 + Duration::from_millis(2_000);
    // ... at most one round of the slots ahead (2 × 500 ms).
    for (k, turn_ms) in [500u64, 1_000, 1_000].into_iter().enumerate() {
        let wait = d.try_enter(dest(), &limits, now).unwrap_err() - now;
        let expected = Duration::from_millis(turn_ms);
        assert!(
            wait.abs_diff(expected) < Duration::from_millis(1),
            "turn {}: {wait:?}",
            k + 1
        );
    }
    // Below the limit, nobody waits.
    d.finish(dest(), Verdict::Healthy, now);
    assert!(d.try_enter(dest(), &limits, now).is_ok());
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
        d.try_enter(dest(), &d.limits.entry(), t0).unwrap();
        d.finish(dest(), Verdict::Unhealthy, t0);
    }
    let until = d.try_enter(dest(), &d.limits.entry(), t0).unwrap_err();
    assert_eq!(until, t0 + Duration::from_secs(10));
    assert!(d.health(t0)[0].circuit_open);
    // After the open period one probe goes through, a second waits for its verdict.
    let t1 = t0 + Duration::from_secs(11);
    d.try_enter(dest(), &d.limits.entry(), t1).unwrap();
    assert!(d.try_enter(dest(), &d.limits.entry(), t1).is_err());
    // A failed probe reopens for twice as long.
    d.finish(dest(), Verdict::Unhealthy, t1);
    assert_eq!(
        d.try_enter(dest(), &d.limits.entry(), t1).unwrap_err(),
        t1 + Duration::from_secs(20)
    );
    // A successful probe closes it.
    let t2 = t1 + Duration::from_secs(21);
    d.try_enter(dest(), &d.limits.entry(), t2).unwrap();
    d.finish(dest(), Verdict::Healthy, t2);
    assert!(d.try_enter(dest(), &d.limits.entry(), t2).is_ok());
}

/// Found by the network-fault test: 64 attempts in flight when the network went away all
/// failed after the breaker had opened, and each one used to reopen it for twice as long,
/// so one outage pushed the wait to its five-minute maximum.
#[test]
fn a_burst_of_failures_in_flight_opens_the_breaker_once() {
    let d = Destinations::new(DestinationLimits::default());
    let t0 = Instant::now();
    for _ in 0..64 {
        d.try_enter(dest(), &d.limits.entry(), t0).unwrap();
    }
    for _ in 0..64 {
        d.finish(dest(), Verdict::Unhealthy, t0);
    }
    assert_eq!(
        d.try_enter(dest(), &d.limits.entry(), t0).unwrap_err(),
        t0 + DestinationLimits::default().open_for
    );
}

#[test]
fn the_rate_limit_spreads_attempts_and_gives_each_deferred_one_its_own_turn() {
    let d = Destinations::new(DestinationLimits::default());
    let limits = EntryLimits {
        rate_per_second: Some(10.0),
        ..d.limits.entry()
    };
    let t0 = Instant::now();
    let step = Duration::from_millis(100);
    d.try_enter(dest(), &limits, t0).unwrap();
    d.finish(dest(), Verdict::Healthy, t0);
    // The next three wait for the next three slots, not all for the first.
    let waits: Vec<_> = (0..3)
        .map(|_| d.try_enter(dest(), &limits, t0).unwrap_err() - t0)
        .collect();
    assert_eq!(waits, [step, step * 2, step * 3]);
    // At the slot, one goes through and the next waits a whole interval.
    let t1 = t0 + step;
    d.try_enter(dest(), &limits, t1).unwrap();
    assert!(d.try_enter(dest(), &limits, t1).unwrap_err() >= t1 + step);
    // Without a limit nothing waits.
    let free = d.limits.entry();
    for _ in 0..10 {
        d.try_enter("http://other:80", &free, t0).unwrap();
    }
}

#[test]
fn a_destination_threshold_of_its_own_applies() {
    let d = Destinations::new(DestinationLimits::default());
    let strict = EntryLimits {
        failure_threshold: 2,
        open_for: Duration::from_secs(1),
        ..d.limits.entry()
    };
    let t0 = Instant::now();
    for _ in 0..2 {
        d.try_enter(dest(), &strict, t0).unwrap();
        d.finish(dest(), Verdict::Unhealthy, t0);
    }
    assert_eq!(
        d.try_enter(dest(), &strict, t0).unwrap_err(),
        t0 + Duration::from_secs(1)
    );
    assert!(d.health_of(dest(), t0).unwrap().circuit_open);
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

#[test]
fn gauges_name_the_top_destinations_sum_the_rest_and_zero_the_quiet() {
    let d = Destinations::new(DestinationLimits {
        failure_threshold: 1,
        ..Default::default()
    });
    let now = Instant::now();
    let at = |port: u16| format!("http://127.0.0.1:{port}");
    // Port 1 fails (breaker opens); ports 2..=4 each hold one attempt in flight.
    d.try_enter(&at(1), &d.limits.entry(), now).unwrap();
    d.finish(&at(1), Verdict::Unhealthy, now);
    for p in 2..=4 {
        d.try_enter(&at(p), &d.limits.entry(), now).unwrap();
    }
    let g = d.gauges(now, 2);
    assert_eq!(g.len(), 3, "{g:?}");
    assert_eq!(g[0].destination, "http://127.0.0.1:1");
    assert_eq!((g[0].circuits_open, g[0].in_flight), (1, 0));
    assert_eq!(g[1].in_flight, 1);
    assert_eq!(
        g[2].destination,
        fluxcb_core::metric_names::OTHER_DESTINATIONS
    );
    assert_eq!((g[2].circuits_open, g[2].in_flight), (0, 2));
    // The attempts finish and the breaker's time passes: names published before read zero.
    for p in 2..=4 {
        d.finish(&at(p), Verdict::Healthy, now);
    }
    let later = now + Duration::from_secs(3600);
    let g = d.gauges(later, 2);
    let quiet: Vec<_> = g
        .iter()
        .filter(|x| x.destination != fluxcb_core::metric_names::OTHER_DESTINATIONS)
        .collect();
    assert!(
        quiet
            .iter()
            .all(|x| x.circuits_open == 0 && x.in_flight == 0),
        "{g:?}"
    );
    assert!(quiet.iter().any(|x| x.destination == "http://127.0.0.1:1"));
}
