use std::time::Duration;

use super::*;

#[test]
fn defaults_validate() {
    let s = Config::default().validate().unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.retry.schedule.len(), 10);
}

#[test]
fn an_otlp_endpoint_is_a_base_url_and_the_ratio_a_share() {
    let with = |endpoint: &str, ratio: f64| {
        Config {
            otlp_endpoint: endpoint.into(),
            otlp_sample_ratio: ratio,
            ..Config::default()
        }
        .trace_export()
    };
    assert_eq!(
        with("http://127.0.0.1:4318/", 0.25),
        Ok(Some(TraceExport {
            traces_url: Some("http://127.0.0.1:4318/v1/traces".into()),
            sample_ratio: 0.25
        }))
    );
    assert_eq!(
        with("https://otel.example.com/otlp", 1.0)
            .unwrap()
            .unwrap()
            .traces_url
            .as_deref(),
        Some("https://otel.example.com/otlp/v1/traces")
    );
    let err = with("127.0.0.1:4318", 1.0).unwrap_err();
    assert!(err.contains("FLUXCB_OTLP_ENDPOINT"), "{err}");
    let err = Config {
        otlp_sample_ratio: 1.5,
        ..Config::default()
    }
    .validate()
    .unwrap_err();
    assert!(err.contains("FLUXCB_OTLP_SAMPLE_RATIO"), "{err}");
}

/// The documented example must stay true: it spells out exactly the defaults.
#[test]
fn the_example_file_states_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fluxcb.example.toml");
    let from_file = load(Some(&path), Overrides::default()).unwrap();
    assert_eq!(
        serde_json::to_value(&from_file).unwrap(),
        serde_json::to_value(Config::default()).unwrap()
    );
}

#[test]
fn a_claim_lease_must_outlast_an_attempt_and_its_recording() {
    let with = |lease: &str, timeout_ms: u32| {
        Config {
            aws_claim_lease: lease.into(),
            timeout_ms,
            ..Config::default()
        }
        .validate()
    };
    assert_eq!(
        Config::default().validate().unwrap().aws_claim_lease,
        Duration::from_secs(90)
    );
    // The attempt timeout plus 5 s is the shortest lease allowed.
    assert_eq!(
        with("6s", 1_000).unwrap().aws_claim_lease,
        Duration::from_secs(6)
    );
    let err = with("5999ms", 1_000).unwrap_err();
    assert!(
        err.contains("aws_claim_lease (FLUXCB_AWS_CLAIM_LEASE)") && err.contains("6s"),
        "{err}"
    );
    // The default lease leaves room for the longest timeout there is (60 s).
    assert!(with("90s", fluxcb_core::callback::MAX_TIMEOUT_MS).is_ok());
    let err = with("19s", 15_000).unwrap_err();
    assert!(err.contains("timeout_ms, 15000 ms"), "{err}");
    // Not a duration: one message, not a second one about its length.
    let err = with("soon", 1_000).unwrap_err();
    assert_eq!(err.matches("aws_claim_lease").count(), 1, "{err}");
    assert!(err.contains("not a duration"), "{err}");
}

#[test]
fn every_bad_value_is_reported_by_name() {
    let c = Config {
        listen: "nowhere".into(),
        retry_schedule: "1s,soon".into(),
        allow_private_targets: "10.0.0.0/33".into(),
        signing_secret: Some("nope".into()),
        ..Config::default()
    };
    let err = c.validate().unwrap_err();
    for needle in [
        "FLUXCB_LISTEN",
        "FLUXCB_RETRY_SCHEDULE",
        "FLUXCB_ALLOW_PRIVATE_TARGETS",
        "FLUXCB_SIGNING_SECRET",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
}
