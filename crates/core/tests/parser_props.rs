//! Robustness of everything that parses caller or receiver input, with arbitrary input from
//! proptest: nothing panics, and what is accepted round-trips. These run in every `cargo test`;
//! the coverage-guided fuzz targets in `fuzz/` (`bash scripts/fuzz.sh`) search the same parsers
//! with libFuzzer. `PROPTEST_CASES=100000 cargo test -p fluxcb-core --test parser_props` runs
//! these longer.
use chrono::Utc;
use fluxcb_core::callback::NewCallback;
use fluxcb_core::legacy::{self, api, django_url};
use fluxcb_core::signing::{verify, SigningSecret};
use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON, nested a few levels, with hostile strings.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z:/.@#?%0-9\\[\\]\\\\ \t]{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("url".to_owned()),
                    Just("method".to_owned()),
                    Just("headers".to_owned()),
                    Just("payload".to_owned()),
                    Just("external_id".to_owned()),
                    Just("callback_time".to_owned()),
                    Just("max_attempts".to_owned()),
                    any::<String>(),
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_legacy_api_rules_never_panic_and_accepted_input_is_consistent(body in json()) {
        if let Ok(create) = api::validate_create(&body) {
            prop_assert!((1..=20).contains(&create.max_attempts));
            prop_assert!(matches!(create.url.scheme(), "http" | "https" | "ftp" | "ftps"));
            let spec = create.spec();
            prop_assert_eq!(spec.max_attempts, Some(create.max_attempts));
        }
    }

    #[test]
    fn the_django_url_check_never_panics(raw in any::<String>()) {
        if let Ok(stored) = django_url::validate(&raw) {
            prop_assert_eq!(stored.trim(), stored.as_str());
            prop_assert!(!stored.is_empty());
        }
    }

    #[test]
    fn url_like_strings_never_panic(raw in "[hHtTpPsSfF]{0,5}:?/{0,3}[a-zA-Z0-9.:@\\[\\]%#?/\\\\-]{0,60}") {
        let _ = django_url::validate(&raw);
        let _ = fluxcb_core::callback::validate_url(&raw);
    }

    #[test]
    fn callback_validation_never_panics(
        url in any::<String>(),
        method in proptest::option::of(any::<String>()),
        payload in proptest::option::of(json()),
        body in proptest::option::of(any::<String>()),
        wire in proptest::option::of("[a-z_]{0,20}"),
        headers in prop::collection::btree_map(any::<String>(), any::<String>(), 0..4),
    ) {
        let input = NewCallback {
            url,
            method,
            headers,
            payload,
            body,
            wire_format: wire,
            ..NewCallback::default()
        };
        let _ = input.validate(Utc::now());
    }

    #[test]
    fn the_legacy_body_renders_any_json_as_json(value in json()) {
        let body = legacy::render_body(&value);
        let back: Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&body))))?;
        // ASCII only, as Python's ensure_ascii makes it.
        prop_assert!(body.is_ascii());
        // Same value, up to how Python prints floats (a float may come back as an int).
        prop_assert_eq!(canonical(&back), canonical(&value));
    }

    #[test]
    fn datetime_parsing_never_panics(raw in any::<String>()) {
        let _ = api::parse_datetime(&raw);
    }

    #[test]
    fn signature_headers_of_any_shape_never_verify_by_accident(header in any::<String>()) {
        let secret = SigningSecret::generate();
        let body: &[u8] = b"{}";
        let standard = verify(&secret, "msg_1", 1_700_000_000, body, &header, 1_700_000_000, 300);
        let old = legacy::verify(b"secret", 1_700_000_000, body, &header);
        prop_assert!(!standard && !old, "{header:?} verified");
    }
}

/// Numbers compared as f64 (the legacy rendering prints an integral float ≥ 1e16 as an int,
/// and `jsonb` has no negative zero).
fn canonical(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .map(|f| if f == 0.0 { 0.0 } else { f })
            .map(|f| Value::String(format!("{f:e}")))
            .unwrap_or(Value::Null),
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        other => other.clone(),
    }
}
