use super::*;

fn url(s: &str) -> Url {
    s.parse().unwrap()
}

fn reg(matcher: DestinationMatch) -> RegisteredDestination {
    RegisteredDestination::new(TenantId::parse("acme").unwrap(), matcher, Utc::now()).0
}

#[test]
fn origins_and_prefixes_normalise() {
    assert_eq!(
        DestinationMatch::origin("https://Example.COM").unwrap(),
        DestinationMatch::Origin("https://example.com:443".into())
    );
    assert_eq!(
        DestinationMatch::url_prefix("http://a.test:8080/hooks/").unwrap(),
        DestinationMatch::UrlPrefix("http://a.test:8080/hooks".into())
    );
    assert!(DestinationMatch::origin("https://a.test/x").is_err());
    assert!(DestinationMatch::origin("ftp://a.test").is_err());
    assert!(DestinationMatch::url_prefix("https://a.test/x?y=1").is_err());
    assert!(DestinationMatch::url_prefix("https://u:p@a.test/x").is_err());
}

#[test]
fn prefixes_match_whole_segments_only() {
    let m = DestinationMatch::url_prefix("https://a.test/hooks").unwrap();
    assert!(m.matches(&url("https://a.test/hooks")).is_some());
    assert!(m.matches(&url("https://a.test/hooks/")).is_some());
    assert!(m.matches(&url("https://a.test/hooks/x?q=1")).is_some());
    assert!(m.matches(&url("https://a.test/hooksx")).is_none());
    assert!(m.matches(&url("https://a.test:8443/hooks")).is_none());
    assert!(m.matches(&url("http://a.test/hooks")).is_none());
    let root = DestinationMatch::url_prefix("https://a.test/").unwrap();
    assert!(root.matches(&url("https://a.test/anything")).is_some());
}

#[test]
fn the_most_specific_registration_wins() {
    let regs = vec![
        reg(DestinationMatch::Any),
        reg(DestinationMatch::origin("https://a.test").unwrap()),
        reg(DestinationMatch::url_prefix("https://a.test/hooks").unwrap()),
        reg(DestinationMatch::url_prefix("https://a.test/hooks/orders").unwrap()),
    ];
    let pick = |u: &str| Matched::find(&regs, &url(u)).owner().map(|r| r.id);
    assert_eq!(pick("https://a.test/hooks/orders/1"), Some(regs[3].id));
    assert_eq!(pick("https://a.test/hooks/users"), Some(regs[2].id));
    assert_eq!(pick("https://a.test/other"), Some(regs[1].id));
    assert_eq!(pick("https://b.test/"), Some(regs[0].id));
    let m = Matched::find(&regs, &url("https://b.test/"));
    assert!(
        m.specific.is_none(),
        "`any` is the tenant's defaults, not a match"
    );
    assert!(Matched::find(&regs[1..], &url("https://b.test/"))
        .owner()
        .is_none());
}

fn callback(timeout: Option<u32>, max_attempts: Option<u32>) -> Callback {
    let spec = crate::callback::NewCallback {
        url: "https://a.test/hooks".into(),
        timeout_ms: timeout,
        max_attempts,
        ..Default::default()
    }
    .validate(Utc::now())
    .unwrap();
    Callback::accept(
        crate::id::CallbackId::generate(),
        TenantId::parse("acme").unwrap(),
        spec,
        &crate::callback::CallbackDefaults {
            max_attempts: 11,
            timeout_ms: 15_000,
        },
        "test".into(),
        Utc::now(),
    )
}

fn installation() -> InstallationDefaults {
    InstallationDefaults {
        max_attempts: 11,
        max_in_flight: 64,
        circuit_failure_threshold: 10,
        circuit_open: Duration::from_secs(10),
    }
}

#[test]
fn precedence_is_callback_then_destination_then_tenant_then_installation() {
    let specific = DestinationSettings {
        timeout_ms: Some(2_000),
        ..Default::default()
    };
    let tenant = DestinationSettings {
        timeout_ms: Some(3_000),
        max_attempts: Some(3),
        max_in_flight: Some(4),
        ..Default::default()
    };
    let merged = specific.or(&tenant);
    let own = EffectiveSettings::resolve(&callback(Some(1_000), Some(7)), &merged, &installation());
    assert_eq!(own.timeout, Duration::from_millis(1_000));
    assert_eq!(own.max_attempts, 7);
    let inherited = EffectiveSettings::resolve(&callback(None, None), &merged, &installation());
    assert_eq!(
        inherited.timeout,
        Duration::from_millis(2_000),
        "destination over tenant"
    );
    assert_eq!(inherited.max_attempts, 3, "tenant over installation");
    assert_eq!(inherited.max_in_flight, 4);
    let bare = EffectiveSettings::resolve(
        &callback(None, None),
        &DestinationSettings::default(),
        &installation(),
    );
    assert_eq!(bare.timeout, Duration::from_millis(15_000));
    assert_eq!(bare.max_attempts, 11);
    assert_eq!(bare.circuit_failure_threshold, 10);
}

#[test]
fn an_operator_retry_keeps_its_extra_budget_under_a_destination_limit() {
    let mut cb = callback(None, None);
    // Exhausted after 11, then retried by an operator: 11 more.
    cb.attempts_made = 11;
    cb.max_attempts = 22;
    let s = DestinationSettings {
        max_attempts: Some(3),
        ..Default::default()
    };
    assert_eq!(
        EffectiveSettings::resolve(&cb, &s, &installation()).max_attempts,
        14
    );
}

#[test]
fn rotation_keeps_old_secrets_signing_for_the_grace_period() {
    let mut r = reg(DestinationMatch::Any);
    let t0 = Utc::now();
    let first = r.active_secrets(t0);
    assert_eq!(first.len(), 1);
    let fresh = r.rotate_secret(t0, chrono::Duration::hours(1));
    let both = r.active_secrets(t0);
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], fresh, "newest first");
    let later = r.active_secrets(t0 + chrono::Duration::hours(2));
    assert_eq!(later, vec![fresh]);
    for _ in 0..10 {
        r.rotate_secret(t0, chrono::Duration::hours(1));
    }
    assert!(r.secrets.len() <= MAX_ACTIVE_SECRETS);
}

#[test]
fn settings_and_tls_are_validated() {
    let bad = DestinationSettings {
        rate_limit_per_second: Some(f64::NAN),
        max_in_flight: Some(0),
        timeout_ms: Some(5),
        retry_schedule_ms: Some(vec![]),
        circuit_failure_threshold: Some(0),
        ..Default::default()
    };
    let fields: Vec<_> = bad.validate().into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "rate_limit_per_second",
            "max_in_flight",
            "timeout_ms",
            "retry_schedule_ms",
            "circuit_failure_threshold"
        ]
    );
    let tls = DestinationTls {
        client_certificate_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
        ..Default::default()
    };
    assert_eq!(tls.validate().len(), 1, "a certificate without its key");
    assert!(!format!("{tls:?}").contains("BEGIN"), "Debug shows no PEM");
}

#[test]
fn ids_round_trip() {
    let id = DestinationId::generate();
    assert_eq!(id.to_string().parse::<DestinationId>().unwrap(), id);
    assert!("cb_01J".parse::<DestinationId>().is_err());
}
