//! The legacy receiver format, byte for byte: what `flux-callback-service` sends, so that
//! receivers verifying the old signature keep working after the migration.
//!
//! The legacy sender renders the payload with Python's `json.dumps(payload,
//! separators=(",", ":"))` after reading it back from a PostgreSQL `jsonb` column, then signs
//! `"<timestamp>.<body>"` with HMAC-SHA256 under the shared secret (its UTF-8 bytes). Three
//! things make that rendering differ from ordinary compact JSON, and [`render_body`] reproduces
//! each:
//! - object keys come in `jsonb` order: shorter keys first, then bytewise;
//! - every character outside printable ASCII is a `\uXXXX` escape (lowercase hex, surrogate
//!   pairs beyond the BMP), as `ensure_ascii` does;
//! - numbers went through Python and `jsonb numeric`: integers print as integers; fractions as
//!   Python's `repr(float)` (`1.0`, `1.5e-05`), except that an integral float of 1e16 or more
//!   comes back from `jsonb` without exponent and is then read as an integer.
pub mod api;
pub mod django_url;
pub mod row;
pub mod view;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub const HEADER_ID: &str = "X-Flux-Callback-Id";
pub const HEADER_TIMESTAMP: &str = "X-Flux-Timestamp";
pub const HEADER_SIGNATURE: &str = "X-Flux-Signature";

/// The body the legacy sender sends for this payload (as stored in `jsonb`).
pub fn render_body(payload: &Value) -> Vec<u8> {
    let mut out = String::new();
    write_value(&mut out, payload);
    out.into_bytes()
}

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Whether a receiver's `X-Flux-Signature` matches, in constant time.
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would also take a sign ("+f"), letting a second spelling of a
    // signature verify.
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The headers of one legacy delivery: the row's own headers first, then ours, which win (the
/// legacy sender builds `{**row_headers, "Content-Type": ..., ...}`).
pub fn headers(
    row_headers: &std::collections::BTreeMap<String, String>,
    legacy_id: i64,
    timestamp: i64,
    body: &[u8],
    secret: &[u8],
) -> Vec<(String, String)> {
    let ours = [
        ("Content-Type", "application/json".to_owned()),
        (HEADER_ID, legacy_id.to_string()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, signature(secret, timestamp, body)),
    ];
    let mut out: Vec<(String, String)> = row_headers
        .iter()
        // The legacy sender merged these into a case-insensitive header map, where its own
        // values won: a row's `content-type` or `x-flux-signature` never went out.
        .filter(|(k, _)| !ours.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v)));
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // jsonb's order: by length, then bytewise.
            entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, val);
            }
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&python_float_after_jsonb(f));
    }
}

/// `repr(float)` as Python prints it, after the value's trip through `jsonb numeric`: an
/// integral float of 1e16 or more comes back as an integer (jsonb prints no exponent), which
/// Python then reads as an `int`.
pub(crate) fn python_float_after_jsonb(f: f64) -> String {
    // numeric has no negative zero.
    let f = if f == 0.0 { 0.0 } else { f };
    // Rust's `{:e}` gives the shortest digits that round-trip, as Python's repr does.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    // Python switches to exponent notation when the decimal exponent is < -4 or >= 16.
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if (point as usize) >= digits.len() {
            format!(
                "{sign}{digits}{}.0",
                "0".repeat(point as usize - digits.len())
            )
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        }
    } else if exp >= 16 && (digits.len() as i32) <= exp + 1 {
        // Integral: jsonb prints it in full and Python reads it back as an int.
        format!(
            "{sign}{digits}{}",
            "0".repeat((exp + 1) as usize - digits.len())
        )
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> String {
        String::from_utf8(render_body(&v)).unwrap()
    }

    #[test]
    fn keys_come_in_jsonb_order_and_text_is_ascii_only() {
        assert_eq!(
            body(json!({"bb": 1, "a": 2, "ccc": {"z": true, "yy": null}, "ab": [1, "é"]})),
            r#"{"a":2,"ab":[1,"\u00e9"],"bb":1,"ccc":{"z":true,"yy":null}}"#
        );
        assert_eq!(
            body(json!("tab\t\"q\" \\ \u{7f} 😀 \u{1}")),
            r#""tab\t\"q\" \\ \u007f \ud83d\ude00 \u0001""#
        );
    }

    #[test]
    fn numbers_print_as_python_reads_them_back_from_jsonb() {
        let cases = [
            (json!(1), "1"),
            (json!(-7), "-7"),
            (json!(18446744073709551615u64), "18446744073709551615"),
            (json!(1.0), "1.0"),
            (json!(-0.0), "0.0"),
            (json!(1.5), "1.5"),
            (json!(100.0), "100.0"),
            (json!(0.0001), "0.0001"),
            (json!(0.00001), "1e-05"),
            (json!(1.5e-7), "1.5e-07"),
            (json!(123456.789), "123456.789"),
            (json!(1e15), "1000000000000000.0"),
            (json!(1e16), "10000000000000000"),
            (json!(1.2345678901234568e17), "123456789012345680"),
            (json!(1e300), format!("1{}", "0".repeat(300)).leak()),
            (json!(0.1), "0.1"),
        ];
        for (v, want) in cases {
            assert_eq!(body(v.clone()), want, "{v}");
        }
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let b = render_body(&json!({"order": 1}));
        let sig = signature(b"legacy-secret", 1_700_000_000, &b);
        assert!(sig.starts_with("sha256=") && sig.len() == 71);
        assert!(verify(b"legacy-secret", 1_700_000_000, &b, &sig));
        assert!(!verify(b"legacy-secret", 1_700_000_001, &b, &sig));
        assert!(!verify(b"other", 1_700_000_000, &b, &sig));
        assert!(!verify(b"legacy-secret", 1_700_000_000, b"{}", &sig));
        assert!(!verify(b"legacy-secret", 1_700_000_000, &b, "sha256=zz"));
        // Only hex digits: `from_str_radix` would take "+f" as 0x0f, a second spelling.
        assert_eq!(decode_hex("0f"), Some(vec![15]));
        assert_eq!(decode_hex("+f"), None);
        assert_eq!(decode_hex("-0"), None);
        assert!(verify(
            b"legacy-secret",
            1_700_000_000,
            &b,
            &sig.to_ascii_uppercase().replace("SHA256=", "sha256=")
        ));
    }

    #[test]
    fn our_headers_win_over_the_rows_own() {
        let row = [
            ("X-Trace".to_owned(), "t1".to_owned()),
            ("Content-Type".to_owned(), "text/plain".to_owned()),
        ]
        .into_iter()
        .collect();
        let h = headers(&row, 42, 1_700_000_000, b"{}", b"s");
        let get = |k: &str| {
            h.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("Content-Type"), ["application/json"]);
        assert_eq!(get("X-Trace"), ["t1"]);
        assert_eq!(get(HEADER_ID), ["42"]);
        assert_eq!(get(HEADER_TIMESTAMP), ["1700000000"]);
    }
}
