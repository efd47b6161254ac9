//! The legacy caller contract (`flux-callme-service`'s `/api/callbacks/`): what a create
//! request is allowed to contain, with Django REST Framework's own error messages, and how a
//! stored callback looks as a legacy row. The HTTP adapter only moves bytes; the rules are here.
//!
//! The legacy service validated with a DRF `ModelSerializer`, so it accepted more than `/v1`
//! does (any header, FTP URLs, schedules years ahead, `max_attempts` up to 20 as numeric
//! strings). Callers must not notice the move, so this module accepts exactly that, and
//! delivery policy (SSRF, no redirects) is applied at send time as for every callback.
use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde_json::{Map, Value};
use url::Url;

use crate::callback::{CallbackSpec, Method, Payload, WireFormat};

pub use super::view::{render_datetime, RowView};
use crate::status::Status;

/// The legacy page size (DRF `PAGE_SIZE`).
pub const PAGE_SIZE: u32 = 50;
pub const EXTERNAL_ID_TAKEN: &str = "callback with this external id already exists.";
const REQUIRED: &str = "This field is required.";
const NOT_NULL: &str = "This field may not be null.";
const NOT_A_STRING: &str = "Not a valid string.";
const NULL_CHARACTERS: &str = "Null characters are not allowed.";
const BAD_DATETIME: &str = "Datetime has wrong format. Use one of these formats instead: \
    YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].";
const BAD_INTEGER: &str = "A valid integer is required.";
const BAD_HEADERS: &str = "Headers must be an object of string values.";

/// The legacy status a stored callback shows, and the legacy `?status=` names.
pub fn legacy_status(status: Status) -> &'static str {
    match status {
        Status::Scheduled | Status::Pending => "pending",
        Status::Delivering => "sending",
        Status::Delivered => "succeeded",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    }
}

/// The engine states a legacy status name stands for (none for a name legacy never used).
pub fn engine_statuses(legacy: &str) -> Vec<Status> {
    Status::ALL
        .into_iter()
        .filter(|s| legacy_status(*s) == legacy)
        .collect()
}

/// A create request that passed the legacy serializer's field rules.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyCreate {
    pub url: Url,
    /// The (trimmed) URL string as the caller sent it, which the API echoes.
    pub url_as_given: String,
    pub method: Method,
    pub headers: BTreeMap<String, String>,
    /// `None` for JSON `null` or no payload: the legacy sender sent `null` for both.
    pub payload: Option<Value>,
    pub external_id: Option<String>,
    pub callback_time: Option<DateTime<Utc>>,
    pub max_attempts: u32,
}

impl LegacyCreate {
    /// The callback spec the engine delivers: the legacy wire format, the caller's schedule.
    pub fn spec(&self) -> CallbackSpec {
        CallbackSpec {
            url: self.url.clone(),
            method: self.method,
            headers: self.headers.clone(),
            payload: match &self.payload {
                None => Payload::Empty,
                Some(v) => Payload::Json(serde_json::to_vec(v).expect("a Value serialises")),
            },
            deliver_at: self.callback_time,
            max_attempts: Some(self.max_attempts),
            timeout_ms: None,
            metadata: BTreeMap::new(),
            wire_format: WireFormat::Legacy,
            ordering_key: None,
            notify_url: None,
            notify_on: None,
        }
    }
}

/// DRF's validation errors: field name to messages, in the serializer's field order.
pub type FieldErrors = Vec<(String, Vec<String>)>;

/// Applies the legacy serializer's rules to a decoded JSON body.
pub fn validate_create(body: &Value) -> Result<LegacyCreate, FieldErrors> {
    let Value::Object(fields) = body else {
        return Err(vec![(
            "non_field_errors".into(),
            vec![format!(
                "Invalid data. Expected a dictionary, but got {}.",
                python_type(body)
            )],
        )]);
    };
    let mut errors: FieldErrors = Vec::new();
    let mut fail = |field: &str, messages: Vec<String>| errors.push((field.to_owned(), messages));

    let url = match fields.get("url") {
        None => Err(vec![REQUIRED.to_owned()]),
        Some(Value::Null) => Err(vec![NOT_NULL.to_owned()]),
        Some(v) => python_text(v)
            .ok_or_else(|| vec![NOT_A_STRING.to_owned()])
            .and_then(|text| super::django_url::validate(&text)),
    };
    // Django's validator and the `url` crate agree on nearly everything; where the crate
    // cannot parse what Django let through (a port above 65535), no request could be sent.
    let url = url.and_then(|given| match Url::parse(&given) {
        Ok(parsed) => Ok((parsed, given)),
        Err(_) => Err(vec!["Enter a valid URL.".to_owned()]),
    });
    let url = url.map_err(|m| fail("url", m)).ok();

    let method = match fields.get("method") {
        None => Some(Method::Post),
        Some(Value::Null) => {
            fail("method", vec![NOT_NULL.to_owned()]);
            None
        }
        Some(v) => {
            let text = python_str(v);
            match text.as_str() {
                "POST" => Some(Method::Post),
                "PUT" => Some(Method::Put),
                "PATCH" => Some(Method::Patch),
                _ => {
                    fail("method", vec![format!("\"{text}\" is not a valid choice.")]);
                    None
                }
            }
        }
    };

    let headers = match fields.get("headers") {
        None => Some(BTreeMap::new()),
        Some(Value::Null) => {
            fail("headers", vec![NOT_NULL.to_owned()]);
            None
        }
        Some(Value::Object(map)) => string_map(map).or_else(|| {
            fail("headers", vec![BAD_HEADERS.to_owned()]);
            None
        }),
        Some(_) => {
            fail("headers", vec![BAD_HEADERS.to_owned()]);
            None
        }
    };

    let payload = match fields.get("payload") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.clone()),
    };

    let external_id = match fields.get("external_id") {
        None | Some(Value::Null) => Some(None),
        Some(v) => match python_text(v) {
            None => {
                fail("external_id", vec![NOT_A_STRING.to_owned()]);
                None
            }
            Some(text) => {
                let text = python_strip(&text).to_owned();
                let mut messages = Vec::new();
                if text.chars().count() > 255 {
                    messages.push("Ensure this field has no more than 255 characters.".to_owned());
                }
                if text.contains('\0') {
                    messages.push(NULL_CHARACTERS.to_owned());
                }
                if messages.is_empty() {
                    Some(Some(text))
                } else {
                    fail("external_id", messages);
                    None
                }
            }
        },
    };

    let callback_time = match fields.get("callback_time") {
        None => Some(None),
        Some(Value::Null) => {
            fail("callback_time", vec![NOT_NULL.to_owned()]);
            None
        }
        Some(Value::String(text)) => match parse_datetime(text) {
            Some(at) => Some(Some(at)),
            None => {
                fail("callback_time", vec![BAD_DATETIME.to_owned()]);
                None
            }
        },
        Some(_) => {
            fail("callback_time", vec![BAD_DATETIME.to_owned()]);
            None
        }
    };

    let max_attempts = match fields.get("max_attempts") {
        None => Some(5),
        Some(Value::Null) => {
            fail("max_attempts", vec![NOT_NULL.to_owned()]);
            None
        }
        Some(v) => match python_int(v) {
            None => {
                fail("max_attempts", vec![BAD_INTEGER.to_owned()]);
                None
            }
            Some(n) if n > 2_147_483_647 => {
                fail(
                    "max_attempts",
                    vec!["Ensure this value is less than or equal to 2147483647.".to_owned()],
                );
                None
            }
            Some(n) if n < 0 => {
                fail(
                    "max_attempts",
                    vec!["Ensure this value is greater than or equal to 0.".to_owned()],
                );
                None
            }
            Some(n) if !(1..=20).contains(&n) => {
                fail(
                    "max_attempts",
                    vec!["Ensure this value is between 1 and 20.".to_owned()],
                );
                None
            }
            Some(n) => Some(n as u32),
        },
    };

    match (
        url,
        method,
        headers,
        external_id,
        callback_time,
        max_attempts,
    ) {
        (
            Some((url, url_as_given)),
            Some(method),
            Some(headers),
            Some(external_id),
            Some(callback_time),
            Some(max_attempts),
        ) if errors.is_empty() => Ok(LegacyCreate {
            url,
            url_as_given,
            method,
            headers,
            payload,
            external_id,
            callback_time,
            max_attempts,
        }),
        _ => Err(errors),
    }
}

/// Adds the uniqueness error DRF's `UniqueValidator` gives, in field order.
pub fn add_external_id_taken(errors: &mut FieldErrors) {
    let order = [
        "url",
        "method",
        "headers",
        "payload",
        "external_id",
        "callback_time",
        "max_attempts",
    ];
    let rank = |f: &str| order.iter().position(|o| *o == f).unwrap_or(order.len());
    let at = errors
        .iter()
        .position(|(f, _)| rank(f) > rank("external_id"))
        .unwrap_or(errors.len());
    errors.insert(
        at,
        ("external_id".into(), vec![EXTERNAL_ID_TAKEN.to_owned()]),
    );
}

fn string_map(map: &Map<String, Value>) -> Option<BTreeMap<String, String>> {
    map.iter()
        .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

/// What DRF's `CharField` makes of a JSON value: strings and numbers as text, the rest refused.
fn python_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) => Some(python_str(v)),
        _ => None,
    }
}

/// Python's `str()` of a decoded JSON value, as DRF puts it into messages.
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() => crate::legacy::python_float_after_jsonb(f),
            _ => n.to_string(),
        },
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    python_repr(&Value::String(k.clone())),
                    python_repr(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn python_repr(v: &Value) -> String {
    match v {
        Value::String(s) if s.contains('\'') && !s.contains('"') => format!("\"{s}\""),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        other => python_str(other),
    }
}

fn python_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Python's `str.strip()`: Unicode whitespace, which is what DRF trims.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// DRF `IntegerField`: `int(re.sub(r"\.0*\s*$", "", str(value)))`.
fn python_int(v: &Value) -> Option<i64> {
    let text = match v {
        Value::Bool(_) | Value::Array(_) | Value::Object(_) | Value::Null => return None,
        Value::String(s) if s.len() > 1000 => return None,
        other => python_str(other),
    };
    let trimmed_end = text.trim_end_matches(|c: char| c.is_whitespace());
    let without_fraction = match trimmed_end.rfind('.') {
        Some(dot) if trimmed_end[dot + 1..].bytes().all(|b| b == b'0') => &trimmed_end[..dot],
        _ => text.as_str(),
    };
    let digits = python_strip(without_fraction);
    let (sign, body) = match digits.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, digits.strip_prefix('+').unwrap_or(digits)),
    };
    // Python's int() also takes single underscores between digits.
    if body.is_empty()
        || body.starts_with('_')
        || body.ends_with('_')
        || body.contains("__")
        || !body.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let clean: String = body.chars().filter(|c| *c != '_').collect();
    // Anything longer than i64 is over the field's maximum anyway.
    Some(clean.parse::<i64>().map(|n| sign * n).unwrap_or(i64::MAX))
}

/// Django's `parse_datetime` as far as callers use it: ISO 8601 date, or date and time with
/// `T` or a space, optional seconds and fraction, optional `Z` or offset. A time without an
/// offset is UTC (the service's `TIME_ZONE`).
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if text.len() == 10 {
            return Some(Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN)));
        }
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(&text.replacen(' ', "T", 1)) {
        return Some(at.with_timezone(&Utc));
    }
    let normalized = text.replacen(' ', "T", 1);
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(at) = DateTime::parse_from_str(&normalized, format) {
            return Some(at.with_timezone(&Utc));
        }
    }
    let naive = normalized.strip_suffix('Z').unwrap_or(&normalized);
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(naive, format) {
            return Some(Utc.from_utc_datetime(&at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(body: Value) -> FieldErrors {
        validate_create(&body).unwrap_err()
    }

    #[test]
    fn statuses_map_both_ways() {
        for s in Status::ALL {
            assert!(engine_statuses(legacy_status(s)).contains(&s));
        }
        assert_eq!(
            engine_statuses("pending"),
            [Status::Scheduled, Status::Pending]
        );
        assert!(engine_statuses("sent").is_empty());
    }

    #[test]
    fn a_minimal_request_gets_the_legacy_defaults() {
        let ok = validate_create(&json!({"url": "  https://example.com/hook  "})).unwrap();
        assert_eq!(ok.url_as_given, "https://example.com/hook");
        assert_eq!(ok.method, Method::Post);
        assert_eq!(ok.max_attempts, 5);
        assert_eq!(ok.payload, None);
        assert_eq!(ok.spec().wire_format, WireFormat::Legacy);
    }

    #[test]
    fn field_errors_use_drf_messages_in_field_order() {
        let errs = errors_of(json!({
            "method": "GET", "headers": {"a": 1}, "max_attempts": 21,
            "callback_time": "tomorrow", "external_id": ["x"]
        }));
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "url",
                "method",
                "headers",
                "external_id",
                "callback_time",
                "max_attempts"
            ]
        );
        assert_eq!(errs[0].1, [REQUIRED]);
        assert_eq!(errs[1].1, ["\"GET\" is not a valid choice."]);
        assert_eq!(errs[5].1, ["Ensure this value is between 1 and 20."]);
        let not_dict = errors_of(json!([1]));
        assert_eq!(not_dict[0].0, "non_field_errors");
        assert_eq!(
            not_dict[0].1,
            ["Invalid data. Expected a dictionary, but got list."]
        );
    }

    #[test]
    fn integers_are_read_as_python_int_would() {
        for (v, want) in [
            (json!("7"), Some(7)),
            (json!(" 7 "), Some(7)),
            (json!("7.00"), Some(7)),
            (json!(7.0), Some(7)),
            (json!("1_0"), Some(10)),
            (json!(7.5), None),
            (json!(true), None),
            (json!("7a"), None),
            (json!("-3"), Some(-3)),
        ] {
            assert_eq!(python_int(&v), want, "{v}");
        }
    }

    #[test]
    fn datetimes_parse_like_django_and_render_like_drf() {
        let at = parse_datetime("2026-11-26T10:00:00+01:00").unwrap();
        assert_eq!(render_datetime(at), "2026-11-26T09:00:00Z");
        assert_eq!(
            render_datetime(parse_datetime("2026-11-26 10:00:00.5").unwrap()),
            "2026-11-26T10:00:00.500000Z"
        );
        assert!(parse_datetime("2026-11-26").is_some());
        assert!(parse_datetime("2026-11-26T10:00Z").is_some());
        assert!(parse_datetime("next tuesday").is_none());
    }

    #[test]
    fn uniqueness_error_goes_in_field_order() {
        let mut errs: FieldErrors = vec![
            ("url".into(), vec!["x".into()]),
            ("max_attempts".into(), vec!["y".into()]),
        ];
        add_external_id_taken(&mut errs);
        assert_eq!(errs[1].0, "external_id");
    }
}
