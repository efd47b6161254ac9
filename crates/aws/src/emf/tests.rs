//! The exporter's lines checked against the EMF specification.
use super::*;
use metrics::{counter, describe_histogram, gauge, histogram, with_local_recorder};

const NS: &str = "fluxcb-test";
const TS: u64 = 1_700_000_000_123;

/// CloudWatch's metric units, as the EMF schema lists them.
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

fn valid_dimension_string(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| c.is_ascii() && !c.is_ascii_control())
        && !s.trim().is_empty()
}

/// Parses one line and checks it against "Specification: Embedded metric format" (and the
/// CloudWatch limits it defers to); returns the root object.
fn check_emf(line: &str) -> Map<String, Value> {
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(line.len() < 256 * 1024);
    let root = match serde_json::from_str::<Value>(line).expect("valid JSON") {
        Value::Object(root) => root,
        other => panic!("root must be an object: {other}"),
    };
    let aws = root["_aws"].as_object().expect("_aws object");
    assert_eq!(
        aws.len(),
        2,
        "_aws has Timestamp and CloudWatchMetrics only: {aws:?}"
    );
    assert!(aws["Timestamp"].is_u64(), "Timestamp in ms: {aws:?}");
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("directive array");
    assert!(!directives.is_empty());
    for directive in directives {
        let directive = directive.as_object().expect("MetricDirective object");
        assert_eq!(directive.len(), 3, "{directive:?}");
        let ns = directive["Namespace"].as_str().expect("Namespace string");
        assert!(!ns.is_empty() && ns.len() <= 255);
        let sets = directive["Dimensions"]
            .as_array()
            .expect("DimensionSet array");
        assert!(!sets.is_empty(), "at least one DimensionSet (may be empty)");
        for set in sets {
            let set = set.as_array().expect("DimensionSet is an array");
            assert!(set.len() <= MAX_DIMENSIONS);
            for key in set {
                let key = key.as_str().expect("dimension key string");
                assert!(valid_dimension_string(key, 255) && !key.starts_with(':'));
                let value = root
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("dimension {key} is a root string member"));
                assert!(valid_dimension_string(value, 1024), "{key}={value:?}");
            }
        }
        let metrics = directive["Metrics"].as_array().expect("Metrics array");
        assert!(!metrics.is_empty() && metrics.len() <= MAX_METRICS_PER_DIRECTIVE);
        let mut seen = std::collections::HashSet::new();
        for definition in metrics {
            let definition = definition.as_object().expect("MetricDefinition object");
            let name = definition["Name"].as_str().expect("Name string");
            assert!(!name.is_empty() && name.len() <= 255);
            assert!(seen.insert(name), "metric {name} defined twice");
            let unit = definition["Unit"].as_str().expect("Unit string");
            assert!(UNITS.contains(&unit), "unit {unit}");
            match root
                .get(name)
                .unwrap_or_else(|| panic!("{name} is a root member"))
            {
                Value::Number(_) => {}
                Value::Array(values) => {
                    assert!(values.len() <= MAX_VALUES_PER_METRIC);
                    assert!(values.iter().all(Value::is_number));
                }
                Value::Object(h) => {
                    assert_eq!(h.len(), 2, "Values and Counts: {h:?}");
                    let values = h["Values"].as_array().expect("Values");
                    let counts = h["Counts"].as_array().expect("Counts");
                    assert!(!values.is_empty() && values.len() <= MAX_VALUES_PER_METRIC);
                    assert_eq!(values.len(), counts.len());
                    assert!(values.iter().all(Value::is_number));
                    assert!(counts.iter().all(|c| c.as_u64().is_some_and(|c| c > 0)));
                }
                other => panic!("{name} is not a metric value: {other}"),
            }
        }
    }
    root
}

fn flush(recorder: &EmfRecorder) -> Vec<Map<String, Value>> {
    recorder
        .flush_at(TS)
        .iter()
        .map(|line| check_emf(line))
        .collect()
}

fn directive(root: &Map<String, Value>) -> &Value {
    &root["_aws"]["CloudWatchMetrics"][0]
}

fn dimensions(root: &Map<String, Value>) -> Vec<&str> {
    directive(root)["Dimensions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect()
}

/// The line with exactly these dimensions that defines `metric`.
fn line_with<'a>(
    lines: &'a [Map<String, Value>],
    dims: &[(&str, &str)],
    metric: &str,
) -> &'a Map<String, Value> {
    lines
        .iter()
        .find(|root| {
            let keys = dimensions(root);
            keys.len() == dims.len()
                && dims.iter().all(|(k, v)| keys.contains(k) && root[*k] == *v)
                && unit_of(root, metric).is_some()
        })
        .unwrap_or_else(|| panic!("no line with {dims:?} and {metric}: {lines:#?}"))
}

fn unit_of<'a>(root: &'a Map<String, Value>, metric: &str) -> Option<&'a str> {
    directive(root)["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["Name"] == metric)
        .map(|d| d["Unit"].as_str().unwrap())
}

fn recorder() -> EmfRecorder {
    EmfRecorder::new(NS).unwrap()
}

#[test]
fn vocabulary_renders_as_emf() {
    let recorder = recorder();
    let in_flight = with_local_recorder(&recorder, || {
        counter!(names::ACCEPTED).increment(5);
        counter!(names::ATTEMPTS, "outcome" => names::outcome::DELIVERED).increment(2);
        counter!(names::ATTEMPTS, "outcome" => names::outcome::DELIVERED).increment(1);
        counter!(names::ATTEMPTS, "outcome" => names::outcome::RETRIED).increment(1);
        histogram!(names::ATTEMPT_DURATION).record(0.25);
        histogram!(names::ATTEMPT_DURATION).record(0.25);
        histogram!(names::ATTEMPT_DURATION).record(1.5);
        histogram!(names::ACCEPTED_TO_DELIVERED).record(12.0);
        gauge!(names::CALLBACKS, "status" => "pending").set(7.0);
        let in_flight = gauge!(names::IN_FLIGHT);
        in_flight.increment(2.0);
        in_flight.decrement(1.0);
        in_flight
    });

    let lines = flush(&recorder);
    // Unlabeled, outcome=delivered, outcome=retried, status=pending.
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for root in &lines {
        assert_eq!(root["_aws"]["Timestamp"], TS);
        assert_eq!(directive(root)["Namespace"], NS);
    }

    let plain = line_with(&lines, &[], names::ACCEPTED);
    assert_eq!(plain[names::ACCEPTED], 5);
    assert_eq!(unit_of(plain, names::ACCEPTED), Some("Count"));
    assert_eq!(
        plain[names::ATTEMPT_DURATION],
        json!({ "Values": [0.25, 1.5], "Counts": [2, 1] })
    );
    assert_eq!(unit_of(plain, names::ATTEMPT_DURATION), Some("Seconds"));
    assert_eq!(
        plain[names::ACCEPTED_TO_DELIVERED],
        json!({ "Values": [12.0], "Counts": [1] })
    );
    assert_eq!(
        unit_of(plain, names::ACCEPTED_TO_DELIVERED),
        Some("Seconds")
    );
    assert_eq!(plain[names::IN_FLIGHT], 1.0);
    assert_eq!(unit_of(plain, names::IN_FLIGHT), Some("Count"));
    assert_eq!(directive(plain)["Dimensions"], json!([[]]));
    assert!(!plain.contains_key("outcome"));

    let delivered = line_with(&lines, &[("outcome", "delivered")], names::ATTEMPTS);
    assert_eq!(delivered[names::ATTEMPTS], 3);
    assert_eq!(directive(delivered)["Dimensions"], json!([["outcome"]]));
    assert_eq!(
        directive(delivered)["Metrics"],
        json!([{ "Name": names::ATTEMPTS, "Unit": "Count" }])
    );
    let retried = line_with(&lines, &[("outcome", "retried")], names::ATTEMPTS);
    assert_eq!(retried[names::ATTEMPTS], 1);

    let pending = line_with(&lines, &[("status", "pending")], names::CALLBACKS);
    assert_eq!(pending[names::CALLBACKS], 7.0);
    assert_eq!(unit_of(pending, names::CALLBACKS), Some("Count"));

    // Delta semantics: nothing happened since, so nothing is reported.
    assert!(recorder.flush_at(TS).is_empty());

    // The in-flight level carries over; it is reported again once written.
    in_flight.increment(1.0);
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0][names::IN_FLIGHT], 2.0);
}

#[test]
fn second_flush_reports_no_counters() {
    let recorder = recorder();
    let counter = with_local_recorder(&recorder, || {
        counter!(names::ACCEPTED).increment(3);
        counter!(names::ATTEMPTS, "outcome" => "blocked").increment(1);
        counter!(names::ACCEPTED)
    });
    assert_eq!(recorder.flush_at(TS).len(), 2);
    assert!(recorder.flush_at(TS).is_empty());
    // A held handle still counts into the next period, from zero.
    counter.increment(4);
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0][names::ACCEPTED], 4);
    assert!(recorder.flush_at(TS).is_empty());
}

#[test]
fn sweeper_vocabulary_reports_zero_increments() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        counter!(names::SWEEPER_ENQUEUED).increment(0);
        counter!(names::LEASES_RECOVERED).increment(2);
        for (queue, state, value) in [("work", "visible", 3.0), ("dead_letter", "visible", 0.0)] {
            gauge!(names::QUEUE_MESSAGES, "queue" => queue, "state" => state).set(value);
        }
    });
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let plain = line_with(&lines, &[], names::SWEEPER_ENQUEUED);
    assert_eq!(plain[names::SWEEPER_ENQUEUED], 0);
    assert_eq!(plain[names::LEASES_RECOVERED], 2);
    assert_eq!(unit_of(plain, names::SWEEPER_ENQUEUED), Some("Count"));
    let work = line_with(
        &lines,
        &[("queue", "work"), ("state", "visible")],
        names::QUEUE_MESSAGES,
    );
    assert_eq!(directive(work)["Dimensions"], json!([["queue", "state"]]));
    assert_eq!(work[names::QUEUE_MESSAGES], 3.0);
    assert_eq!(unit_of(work, names::QUEUE_MESSAGES), Some("Count"));
    let dead = line_with(
        &lines,
        &[("queue", "dead_letter"), ("state", "visible")],
        names::QUEUE_MESSAGES,
    );
    assert_eq!(dead[names::QUEUE_MESSAGES], 0.0);
    assert!(recorder.flush_at(TS).is_empty());
}

#[test]
fn gauges_keep_their_level_between_flushes() {
    let recorder = recorder();
    with_local_recorder(&recorder, || gauge!(names::IN_FLIGHT).increment(2.0));
    assert_eq!(flush(&recorder)[0][names::IN_FLIGHT], 2.0);
    // Untouched: not reported, but remembered though no handle is held.
    assert!(recorder.flush_at(TS).is_empty());
    with_local_recorder(&recorder, || gauge!(names::IN_FLIGHT).decrement(2.0));
    assert_eq!(flush(&recorder)[0][names::IN_FLIGHT], 0.0);
    // At zero with no handle it is forgotten, and starts again from zero.
    assert_eq!(recorder.registry.get_gauge_handles().len(), 0);
    with_local_recorder(&recorder, || gauge!(names::IN_FLIGHT).increment(1.0));
    assert_eq!(flush(&recorder)[0][names::IN_FLIGHT], 1.0);
    assert_eq!(recorder.registry.get_gauge_handles().len(), 1);
}

#[test]
fn idle_metrics_are_forgotten() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        counter!(names::ATTEMPTS, "outcome" => "delivered").increment(1);
        histogram!(names::ATTEMPT_DURATION).record(0.1);
    });
    assert_eq!(recorder.registry.get_counter_handles().len(), 1);
    assert_eq!(flush(&recorder).len(), 2);
    assert!(recorder.registry.get_counter_handles().is_empty());
    assert!(recorder.registry.get_histogram_handles().is_empty());
}

#[test]
fn histogram_values_are_rounded_and_split_by_hundred() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        let h = histogram!(names::ATTEMPT_DURATION);
        for i in 1..=250 {
            h.record(f64::from(i));
        }
        h.record(0.0012345);
        h.record(0.0012349);
        h.record(123_456.0);
        h.record(0.0);
    });
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let mut all_values = Vec::new();
    let mut total = 0;
    for root in &lines {
        let h = &root[names::ATTEMPT_DURATION];
        let values = h["Values"].as_array().unwrap();
        assert!(values.len() <= MAX_VALUES_PER_METRIC);
        all_values.extend(values.iter().map(|v| v.as_f64().unwrap()));
        total += h["Counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum::<u64>();
    }
    assert_eq!(total, 254);
    assert_eq!(all_values.len(), 253, "two values round alike");
    assert!(
        all_values.windows(2).all(|w| w[0] < w[1]),
        "increasing, distinct"
    );
    assert_eq!(all_values[0], 0.0);
    assert_eq!(all_values[1], 0.00123);
    assert_eq!(*all_values.last().unwrap(), 123_000.0);
    assert_eq!(lines[0][names::ATTEMPT_DURATION]["Counts"][1], 2);
    // Rounded values print short.
    let line = recorder.flush_at(TS);
    assert!(line.is_empty());
    assert_eq!(round_significant(0.123_456), 0.123);
    assert_eq!(json!(round_significant(0.1 + 0.2)).to_string(), "0.3");
    assert_eq!(round_significant(-98_765.0), -98_800.0);
}

#[test]
fn values_cloudwatch_rejects_are_dropped() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        let h = histogram!(names::ATTEMPT_DURATION);
        h.record(f64::NAN);
        h.record(f64::INFINITY);
        h.record(1e200);
        h.record(1e-200);
        h.record(2.0);
        gauge!(names::CALLBACKS, "status" => "pending").set(f64::NAN);
        histogram!(names::ACCEPTED_TO_DELIVERED).record(f64::NAN);
    });
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(
        lines[0][names::ATTEMPT_DURATION],
        json!({ "Values": [0.0, 2.0], "Counts": [1, 1] })
    );
    assert!(!lines[0].contains_key(names::ACCEPTED_TO_DELIVERED));
}

#[test]
fn label_sets_past_the_cap_fold_into_other() {
    let recorder = recorder().with_max_label_sets(3);
    with_local_recorder(&recorder, || {
        counter!(names::ACCEPTED).increment(1);
        for (i, outcome) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            counter!(names::ATTEMPTS, "outcome" => outcome).increment(i as u64 + 1);
            histogram!(names::ATTEMPT_DURATION, "outcome" => outcome).record(0.5);
        }
    });
    let lines = flush(&recorder);
    // Unlabeled, a, b, then c, d, e as one.
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let plain = line_with(&lines, &[], names::ACCEPTED);
    assert_eq!(plain[LABEL_SETS_OVERFLOWED], 3);
    assert_eq!(unit_of(plain, LABEL_SETS_OVERFLOWED), Some("Count"));
    assert_eq!(
        line_with(&lines, &[("outcome", "a")], names::ATTEMPTS)[names::ATTEMPTS],
        1
    );
    assert_eq!(
        line_with(&lines, &[("outcome", "b")], names::ATTEMPTS)[names::ATTEMPTS],
        2
    );
    let other = line_with(
        &lines,
        &[("outcome", OVERFLOW_LABEL_VALUE)],
        names::ATTEMPTS,
    );
    assert_eq!(other[names::ATTEMPTS], 3 + 4 + 5);
    assert_eq!(
        other[names::ATTEMPT_DURATION],
        json!({ "Values": [0.5], "Counts": [3] })
    );
}

#[test]
fn label_cap_default_is_a_hundred() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        for i in 0..150 {
            counter!(names::ATTEMPTS, "outcome" => format!("o{i:03}")).increment(1);
        }
    });
    let lines = flush(&recorder);
    // 100 label sets, the folded rest, and the unlabeled overflow count.
    assert_eq!(lines.len(), 102);
    let plain = line_with(&lines, &[], LABEL_SETS_OVERFLOWED);
    assert_eq!(plain[LABEL_SETS_OVERFLOWED], 50);
    let other = line_with(
        &lines,
        &[("outcome", OVERFLOW_LABEL_VALUE)],
        names::ATTEMPTS,
    );
    assert_eq!(other[names::ATTEMPTS], 50);
}

#[test]
fn dimensions_are_capped_at_thirty() {
    let recorder = recorder();
    let labels: Vec<metrics::Label> = (0..35)
        .map(|i| metrics::Label::new(format!("l{i:02}"), format!("v{i}")))
        .collect();
    with_local_recorder(&recorder, || {
        counter!(names::ACCEPTED, labels).increment(1);
    });
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 1);
    let dims = dimensions(&lines[0]);
    assert_eq!(dims.len(), MAX_DIMENSIONS);
    assert_eq!(dims[0], "l00");
    // Labels past the cap stay root members.
    assert_eq!(lines[0]["l34"], "v34");
}

#[test]
fn metrics_are_capped_at_a_hundred_per_line() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        for i in 0..150 {
            counter!(format!("m{i:03}_total"), "outcome" => "x").increment(i + 1);
        }
    });
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 2);
    let counts: Vec<usize> = lines
        .iter()
        .map(|root| directive(root)["Metrics"].as_array().unwrap().len())
        .collect();
    assert_eq!(counts, [100, 50]);
    assert_eq!(lines[1]["m149_total"], 150);
    assert!(lines.iter().all(|root| root["outcome"] == "x"));
}

#[test]
fn long_histograms_keep_lines_under_the_size_cap() {
    let mut recorder = recorder();
    recorder.max_line_bytes = 20 * 1024;
    with_local_recorder(&recorder, || {
        for m in 0..100 {
            let h = histogram!(format!("h{m:03}_seconds"));
            for i in 0..100 {
                h.record(1.0 + f64::from(i) * 0.01 + f64::from(m) * 1e-6);
            }
        }
    });
    let lines = recorder.flush_at(TS);
    assert!(lines.len() > 1);
    for line in &lines {
        assert!(line.len() <= recorder.max_line_bytes, "{}", line.len());
        check_emf(line);
    }
}

#[test]
fn dimension_strings_are_sanitized() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        counter!(names::ATTEMPTS, "outcome" => "").increment(1);
        counter!(names::ATTEMPTS, ":status" => "é\n").increment(1);
        counter!(names::ATTEMPTS, "_aws" => "x", "outcome" => "ok").increment(1);
    });
    let lines = flush(&recorder);
    assert_eq!(lines.len(), 3);
    line_with(&lines, &[("outcome", "_")], names::ATTEMPTS);
    line_with(&lines, &[("_status", "__")], names::ATTEMPTS);
    // `_aws` cannot be a label; the rest of the set is.
    line_with(&lines, &[("outcome", "ok")], names::ATTEMPTS);
}

#[test]
fn units() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        describe_histogram!("db_latency", Unit::Milliseconds, "query latency");
        histogram!("db_latency").record(3.0);
        gauge!("queue_depth").set(4.0);
        histogram!("payload_bytes").record(300.0);
        counter!("things").increment(1);
    });
    let lines = flush(&recorder);
    let root = &lines[0];
    assert_eq!(unit_of(root, "db_latency"), Some("Milliseconds"));
    assert_eq!(unit_of(root, "queue_depth"), Some("None"));
    assert_eq!(unit_of(root, "payload_bytes"), Some("Bytes"));
    assert_eq!(unit_of(root, "things"), Some("Count"));
}

#[test]
fn namespaces_are_checked() {
    assert!(EmfRecorder::new("fluxcb").is_ok());
    assert!(EmfRecorder::new("fluxcb/prod #1: a-b_c.d").is_ok());
    let long = "x".repeat(256);
    for bad in ["", "   ", "AWS/Lambda", "fluxcb!", "é", long.as_str()] {
        assert_eq!(
            EmfRecorder::new(bad).unwrap_err(),
            EmfError::Namespace(bad.to_owned())
        );
    }
}

#[test]
fn concurrent_recording_loses_nothing() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 20_000;
    let recorder = recorder();
    let mut counted = 0;
    let mut recorded = 0;
    let mut tally = |lines: Vec<String>| {
        for line in lines {
            let root = check_emf(&line);
            counted += root.get(names::ACCEPTED).map_or(0, |v| v.as_u64().unwrap());
            if let Some(h) = root.get(names::ATTEMPT_DURATION) {
                recorded += h["Counts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .sum::<u64>();
            }
        }
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let recorder = &recorder;
                scope.spawn(move || {
                    for i in 0..PER_THREAD {
                        with_local_recorder(recorder, || {
                            counter!(names::ACCEPTED).increment(1);
                            histogram!(names::ATTEMPT_DURATION).record((t * i) as f64);
                        });
                    }
                })
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            tally(recorder.flush_at(TS));
        }
    });
    tally(recorder.flush_at(TS));
    assert_eq!(counted, THREADS * PER_THREAD);
    assert_eq!(recorded, THREADS * PER_THREAD);
}

#[test]
fn write_to_emits_newline_terminated_lines() {
    let recorder = recorder();
    with_local_recorder(&recorder, || {
        counter!(names::ACCEPTED).increment(1);
        counter!(names::ATTEMPTS, "outcome" => "delivered").increment(1);
    });
    let mut out = Vec::new();
    recorder.write_to(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    lines.iter().for_each(|line| {
        check_emf(line);
    });
    let mut out = Vec::new();
    recorder.write_to(&mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn install_sets_the_global_recorder_once() {
    let recorder = install("fluxcb-install-test").unwrap();
    assert_eq!(recorder.namespace(), "fluxcb-install-test");
    assert_eq!(install("again").unwrap_err(), EmfError::AlreadyInstalled);
    assert_eq!(
        installed().map(EmfRecorder::namespace),
        Some("fluxcb-install-test")
    );
    // Macros outside a local recorder reach the global one.
    std::thread::spawn(|| counter!("fluxcb_install_probe_total").increment(2))
        .join()
        .unwrap();
    // Other tests may record through the global recorder too; find the probe's line.
    let probes: Vec<Value> = recorder
        .flush_at(TS)
        .iter()
        .filter_map(|line| check_emf(line).remove("fluxcb_install_probe_total"))
        .collect();
    assert_eq!(probes, [2]);
    flush_to_stdout().unwrap();
}
