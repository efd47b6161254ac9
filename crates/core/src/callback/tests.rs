use super::*;

fn input(url: &str) -> NewCallback {
    NewCallback {
        url: url.to_owned(),
        ..Default::default()
    }
}

#[test]
fn rejects_bad_urls_with_the_field_named() {
    let now = Utc::now();
    for bad in [
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "not a url",
        "file:///etc/passwd",
    ] {
        let errs = input(bad).validate(now).unwrap_err();
        assert_eq!(errs[0].field, "url", "{bad}");
    }
    let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
    assert!(input(&long).validate(now).is_err());
    // Short as given, past the limit once `<` becomes `%3C` (found by the v1_callback fuzzer).
    let grows = format!("https://example.com/{}", "<".repeat(MAX_URL_LEN / 2));
    assert!(grows.len() <= MAX_URL_LEN);
    let errs = input(&grows).validate(now).unwrap_err();
    assert!(
        errs[0].message.contains("percent-encoded"),
        "{}",
        errs[0].message
    );
    assert!(input("https://example.com/hook?a=1").validate(now).is_ok());
}

#[test]
fn reserved_headers_and_conflicting_bodies_are_refused() {
    let now = Utc::now();
    let mut cb = input("https://example.com/");
    cb.headers.insert("Host".into(), "evil".into());
    cb.headers.insert("X-Ok".into(), "fine".into());
    cb.payload = Some(serde_json::json!({"a": 1}));
    cb.body = Some("raw".into());
    let errs = cb.validate(now).unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["headers.Host", "body"]);
}

#[test]
fn json_payload_is_sent_compact() {
    let mut cb = input("https://example.com/");
    cb.payload = Some(serde_json::json!({"a": [1, 2], "b": "x"}));
    let spec = cb.validate(Utc::now()).unwrap();
    assert_eq!(spec.payload.bytes(), br#"{"a":[1,2],"b":"x"}"#);
    assert_eq!(spec.payload.content_type(), Some("application/json"));
}

#[test]
fn future_deliver_at_makes_it_scheduled() {
    let now = Utc::now();
    let mut cb = input("https://example.com/");
    cb.deliver_at = Some(now + Duration::hours(2));
    let spec = cb.validate(now).unwrap();
    let defaults = CallbackDefaults {
        max_attempts: 5,
        timeout_ms: 15_000,
    };
    let stored = Callback::accept(
        CallbackId::generate(),
        TenantId::default_tenant(),
        spec,
        &defaults,
        "k".into(),
        now,
    );
    assert_eq!(stored.status, Status::Scheduled);
    assert_eq!(stored.max_attempts, 5);
}

#[test]
fn destination_includes_default_port() {
    let url = Url::parse("https://Example.com/x").unwrap();
    assert_eq!(Destination::of(&url).as_str(), "https://example.com:443");
}
