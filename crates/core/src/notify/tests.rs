use chrono::{Duration, Utc};

use super::*;
use crate::attempt::ErrorCode;
use crate::callback::NewCallback;
use crate::retry::DeadLetterReason;

fn defaults() -> CallbackDefaults {
    CallbackDefaults {
        max_attempts: 5,
        timeout_ms: 10_000,
    }
}

fn source(notify_url: Option<&str>, notify_on: Option<&[&str]>) -> Callback {
    let mut metadata = BTreeMap::new();
    metadata.insert("order".to_owned(), "1042".to_owned());
    let spec = NewCallback {
        url: "https://orders.test/hooks/secret-path?token=abc".into(),
        payload: Some(json!({"marker": "payload-marker"})),
        metadata,
        notify_url: notify_url.map(str::to_owned),
        notify_on: notify_on.map(|on| on.iter().map(|s| (*s).to_owned()).collect()),
        ..Default::default()
    }
    .validate(Utc::now())
    .unwrap();
    Callback::accept(
        CallbackId::generate(),
        TenantId::parse("acme").unwrap(),
        spec,
        &defaults(),
        "key".into(),
        Utc::now() - Duration::minutes(5),
    )
}

fn failed_attempt(number: u32) -> Attempt {
    Attempt {
        number,
        started_at: Utc::now(),
        duration_ms: 119,
        status_code: Some(503),
        error: Some(ErrorCode::HttpStatus),
        error_detail: Some("upstream said: token=abc".into()),
        response_headers: BTreeMap::new(),
        response_body: Some("secret body".into()),
    }
}

fn settings(ops: Option<&str>) -> FollowUpSettings {
    FollowUpSettings {
        ops: ops.map(|u| OpsStream {
            url: Url::parse(u).unwrap(),
            types: EventType::OPERATIONAL.to_vec(),
        }),
        defaults: defaults(),
    }
}

fn target(cb: &Callback) -> Option<NotifyTarget> {
    NotifyTarget::resolve(&cb.spec, None, None)
}

#[test]
fn a_dead_letter_makes_one_thin_notification_with_a_derived_id() {
    let cb = source(Some("https://notify.test/in"), None);
    let dead = Decision::DeadLetter(DeadLetterReason::Exhausted);
    let rows = follow_ups(
        &cb,
        &failed_attempt(3),
        &dead,
        target(&cb).as_ref(),
        &settings(None),
        Utc::now(),
    );
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.kind, Kind::Notification);
    assert_eq!(row.source_id, Some(cb.id));
    assert_eq!(row.tenant, cb.tenant);
    assert_eq!(row.spec.url.as_str(), "https://notify.test/in");
    assert_eq!(row.spec.wire_format, WireFormat::StandardWebhooks);
    assert_eq!(row.max_attempts, 5);
    let body: serde_json::Value = serde_json::from_slice(row.spec.payload.bytes()).unwrap();
    assert_eq!(body["type"], "callback.failed");
    assert_eq!(body["data"]["callback_id"], cb.id.to_string());
    assert_eq!(body["data"]["attempts"], 3);
    assert_eq!(body["data"]["dead_letter_reason"], "exhausted");
    assert_eq!(body["data"]["last_attempt"]["status_code"], 503);
    assert_eq!(body["data"]["last_attempt"]["error"], "http_status");
    assert_eq!(body["data"]["destination"], "https://orders.test:443");
    assert_eq!(body["data"]["metadata"]["order"], "1042");
    let text = String::from_utf8_lossy(row.spec.payload.bytes());
    for secret in ["payload-marker", "secret-path", "token", "secret body"] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
    // The same transition again names the same row; another attempt number another one.
    let again = follow_ups(
        &cb,
        &failed_attempt(3),
        &dead,
        target(&cb).as_ref(),
        &settings(None),
        Utc::now(),
    );
    assert_eq!(again[0].id, row.id);
    let later = follow_ups(
        &cb,
        &failed_attempt(4),
        &dead,
        target(&cb).as_ref(),
        &settings(None),
        Utc::now(),
    );
    assert_ne!(later[0].id, row.id);
}

#[test]
fn delivered_is_opt_in_and_retries_make_nothing() {
    let default_on = source(Some("https://notify.test/in"), None);
    let ok = Attempt {
        status_code: Some(200),
        error: None,
        ..failed_attempt(1)
    };
    let rows = follow_ups(
        &default_on,
        &ok,
        &Decision::Delivered,
        target(&default_on).as_ref(),
        &settings(None),
        Utc::now(),
    );
    assert!(rows.is_empty());
    let opted = source(Some("https://notify.test/in"), Some(&["delivered"]));
    let rows = follow_ups(
        &opted,
        &ok,
        &Decision::Delivered,
        target(&opted).as_ref(),
        &settings(None),
        Utc::now(),
    );
    assert_eq!(rows.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(rows[0].spec.payload.bytes()).unwrap();
    assert_eq!(body["type"], "callback.delivered");
    assert!(body["data"].get("dead_letter_reason").is_none());
    let retry = Decision::RetryAt(Utc::now());
    assert!(follow_ups(
        &default_on,
        &failed_attempt(1),
        &retry,
        target(&default_on).as_ref(),
        &settings(Some("https://ops.test/")),
        Utc::now()
    )
    .is_empty());
}

#[test]
fn notifications_never_notify_about_themselves() {
    let cb = source(Some("https://notify.test/in"), None);
    let dead = Decision::DeadLetter(DeadLetterReason::Exhausted);
    let rows = follow_ups(
        &cb,
        &failed_attempt(2),
        &dead,
        target(&cb).as_ref(),
        &settings(Some("https://ops.test/events")),
        Utc::now(),
    );
    assert_eq!(rows.len(), 2, "the tenant's notification and the ops event");
    for row in &rows {
        let own = NotifyTarget {
            url: Url::parse("https://notify.test/in").unwrap(),
            on: NotifyOn::DEAD_LETTERED,
        };
        assert!(follow_ups(
            row,
            &failed_attempt(5),
            &dead,
            Some(&own),
            &settings(Some("https://ops.test/events")),
            Utc::now()
        )
        .is_empty());
    }
    let ops = rows.iter().find(|r| r.kind == Kind::Operational).unwrap();
    assert_eq!(ops.tenant.as_str(), SYSTEM_TENANT);
    assert_ne!(ops.id, rows[0].id);
    let body: serde_json::Value = serde_json::from_slice(ops.spec.payload.bytes()).unwrap();
    assert_eq!(body["data"]["tenant"], "acme");
    assert!(body["data"].get("metadata").is_none());
}

#[test]
fn precedence_and_switching_off() {
    let bare = source(None, None);
    let registered = NotifyTarget::resolve(&bare.spec, Some("https://tenant.test/n"), None);
    assert_eq!(
        registered.unwrap().url.as_str(),
        "https://tenant.test/n",
        "a bare callback uses the registrations' URL"
    );
    assert!(NotifyTarget::resolve(&bare.spec, None, None).is_none());
    let silenced = source(None, Some(&[]));
    assert!(NotifyTarget::resolve(&silenced.spec, Some("https://tenant.test/n"), None).is_none());
    let own = source(Some("https://own.test/n"), None);
    let t = NotifyTarget::resolve(
        &own.spec,
        Some("https://tenant.test/n"),
        Some(NotifyOn {
            dead_lettered: true,
            delivered: true,
        }),
    )
    .unwrap();
    assert_eq!(t.url.as_str(), "https://own.test/n");
    assert!(
        t.on.delivered,
        "notify_on comes from the registration when unset"
    );
}

#[test]
fn bad_notify_fields_are_named() {
    let errs = NewCallback {
        url: "https://a.test/".into(),
        notify_url: Some("ftp://x.test/".into()),
        notify_on: Some(vec!["dead_lettered".into(), "sometimes".into()]),
        ..Default::default()
    }
    .validate(Utc::now())
    .unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["notify_url", "notify_on[1]"]);
}

#[test]
fn notify_on_round_trips_its_stored_form() {
    for on in [
        NotifyOn::NOTHING,
        NotifyOn::DEAD_LETTERED,
        NotifyOn {
            dead_lettered: true,
            delivered: true,
        },
        NotifyOn {
            dead_lettered: false,
            delivered: true,
        },
    ] {
        assert_eq!(NotifyOn::decode(&on.encode()), on);
    }
}
