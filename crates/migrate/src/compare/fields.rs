//! Field by field: does fluxcb's callback hold what the legacy row holds?
use chrono::{DateTime, Utc};
use fluxcb_core::callback::{Callback, Payload};
use fluxcb_core::legacy::row::LegacyRow;
use serde::Serialize;
use serde_json::{Map, Value};

/// One field whose value differs, both values as JSON (long ones shortened).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldMismatch {
    pub field: &'static str,
    pub legacy: Value,
    pub fluxcb: Value,
}

/// The fields the import copies and the legacy service never changes after an insert: url,
/// method, headers, payload, external_id, max_attempts; and callback_time while the row has
/// had no attempt (legacy moves it to the next retry's time after each failure).
///
/// Values are compared as the import maps them: a URL as the caller gave it, headers and
/// payload as JSON values (so key order and number spelling do not count), `max_attempts`
/// below 1 as 1, times to the millisecond (fluxcb's precision).
pub fn mismatches(row: &LegacyRow, cb: &Callback) -> Vec<FieldMismatch> {
    let mut out = Vec::new();
    let mut check = |field: &'static str, legacy: Value, fluxcb: Value| {
        if legacy != fluxcb {
            out.push(FieldMismatch {
                field,
                legacy: shorten(legacy),
                fluxcb: shorten(fluxcb),
            });
        }
    };
    let url = cb
        .url_as_given
        .clone()
        .unwrap_or_else(|| cb.spec.url.to_string());
    check("url", row.url.clone().into(), url.into());
    check(
        "method",
        row.method.clone().into(),
        cb.spec.method.as_str().into(),
    );
    let row_headers = match &row.headers {
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    };
    let headers: Map<String, Value> = cb
        .spec
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    check("headers", row_headers, Value::Object(headers));
    check("payload", row_payload(row), payload_value(&cb.spec.payload));
    check(
        "external_id",
        row.external_id.clone().into(),
        cb.external_id.clone().into(),
    );
    check(
        "max_attempts",
        u32::try_from(row.max_attempts).unwrap_or(1).max(1).into(),
        cb.max_attempts.into(),
    );
    if row.attempts == 0 {
        let fluxcb = cb.spec.deliver_at;
        if fluxcb.map(|t| t.timestamp_millis()) != Some(row.callback_time.timestamp_millis()) {
            check("callback_time", time(Some(row.callback_time)), time(fluxcb));
        }
    }
    out
}

/// What the legacy sender sends for the row: its payload, `null` for SQL `NULL` too.
pub fn row_payload(row: &LegacyRow) -> Value {
    row.payload.clone().unwrap_or(Value::Null)
}

/// fluxcb's payload as a JSON value; a raw body (which the legacy format cannot carry) as a
/// description, so that it never equals a legacy payload.
pub fn payload_value(payload: &Payload) -> Value {
    match payload {
        Payload::Json(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|e| Value::String(format!("<stored JSON that does not parse: {e}>"))),
        Payload::Empty => Value::Null,
        Payload::Raw {
            content_type,
            bytes,
        } => Value::String(format!(
            "<raw body, {} bytes of {content_type}>",
            bytes.len()
        )),
    }
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

/// Values longer than this (as JSON text) are shown cut, as a string.
const SHOWN: usize = 300;

pub(crate) fn shorten(v: Value) -> Value {
    if matches!(v, Value::Object(_) | Value::Array(_) | Value::String(_)) {
        let text = v.to_string();
        if text.len() > SHOWN {
            return Value::String(format!("{}… ({} bytes)", cut(&text, SHOWN), text.len()));
        }
    }
    v
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::{mirror, row};
    use serde_json::json;

    #[test]
    fn an_imported_row_matches_and_each_edit_is_named() {
        let r = row(7);
        let cb = mirror(&r);
        assert_eq!(mismatches(&r, &cb), []);

        let mut edited = r.clone();
        edited.url = "http://other.invalid/x".into();
        edited.payload = Some(json!({"n": 2}));
        edited.headers = json!({"X-A": "2"});
        edited.max_attempts = 9;
        let fields: Vec<_> = mismatches(&edited, &cb).iter().map(|m| m.field).collect();
        assert_eq!(fields, ["url", "headers", "payload", "max_attempts"]);
    }

    #[test]
    fn callback_time_counts_only_before_the_first_attempt() {
        let r = row(7);
        let cb = mirror(&r);
        let mut moved = r.clone();
        moved.callback_time += chrono::Duration::seconds(60);
        assert_eq!(mismatches(&moved, &cb)[0].field, "callback_time");
        moved.attempts = 1;
        assert_eq!(mismatches(&moved, &cb), []);
        // Microseconds fluxcb does not keep are not a difference.
        let mut fine = r.clone();
        fine.callback_time += chrono::Duration::microseconds(300);
        assert_eq!(mismatches(&fine, &cb), []);
    }

    #[test]
    fn a_null_payload_and_none_are_the_same_and_key_order_does_not_count() {
        let mut r = row(3);
        r.payload = None;
        let cb = mirror(&r);
        r.payload = Some(Value::Null);
        assert_eq!(mismatches(&r, &cb), []);
        let mut r = row(4);
        r.payload = Some(json!({"b": 1, "a": [1.5, "é"]}));
        let cb = mirror(&r);
        r.payload = serde_json::from_str(r#"{"a": [1.5, "é"], "b": 1}"#).ok();
        assert_eq!(mismatches(&r, &cb), []);
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = Value::String("é".repeat(400));
        let Value::String(shown) = shorten(long) else {
            panic!()
        };
        assert!(shown.len() < 400 && shown.ends_with("bytes)"), "{shown}");
    }
}
