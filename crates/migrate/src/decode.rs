//! Legacy rows out of PostgreSQL: the columns, and `jsonb` text parsed with exact numbers
//! (see the crate documentation, "JSON fidelity").
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio_postgres::Row;

use crate::{Chain, LegacyDbError, LegacyRow};

pub(crate) fn decode_row(row: &Row) -> Result<LegacyRow, LegacyDbError> {
    let id: i64 = row.get("id");
    let bad = |column: &'static str| {
        move |e: tokio_postgres::Error| LegacyDbError::Decode {
            id,
            column,
            message: Chain(&e).to_string(),
        }
    };
    let json = |column: &'static str, text: String| {
        parse_jsonb(&text).map_err(|message| LegacyDbError::Decode {
            id,
            column,
            message,
        })
    };
    Ok(LegacyRow {
        id,
        url: row.try_get("url").map_err(bad("url"))?,
        method: row.try_get("method").map_err(bad("method"))?,
        headers: json("headers", row.try_get("headers").map_err(bad("headers"))?)?,
        payload: row
            .try_get::<_, Option<String>>("payload")
            .map_err(bad("payload"))?
            .map(|text| json("payload", text))
            .transpose()?,
        external_id: row.try_get("external_id").map_err(bad("external_id"))?,
        callback_time: row.try_get("callback_time").map_err(bad("callback_time"))?,
        status: row.try_get("status").map_err(bad("status"))?,
        attempts: row.try_get("attempts").map_err(bad("attempts"))?,
        max_attempts: row.try_get("max_attempts").map_err(bad("max_attempts"))?,
        last_response_code: row
            .try_get("last_response_code")
            .map_err(bad("last_response_code"))?,
        last_error: row.try_get("last_error").map_err(bad("last_error"))?,
        sent_at: row.try_get("sent_at").map_err(bad("sent_at"))?,
        created_at: row.try_get("created_at").map_err(bad("created_at"))?,
        updated_at: row.try_get("updated_at").map_err(bad("updated_at"))?,
    })
}

/// `jsonb`'s text output parsed with numbers as Python's `json.loads` reads them (see the crate
/// documentation): `serde_json` splits the structure and unescapes strings, each number's text
/// is converted here. Nesting costs a rescan per level, which payload-sized values can afford.
fn parse_jsonb(text: &str) -> Result<Value, String> {
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| e.to_string())?;
    from_raw(raw)
}

fn from_raw(raw: &RawValue) -> Result<Value, String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let fields: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).map_err(|e| e.to_string())?;
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, from_raw(v)?)))
                .collect::<Result<serde_json::Map<_, _>, String>>()
                .map(Value::Object)
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            items
                .into_iter()
                .map(from_raw)
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Some(b'-' | b'0'..=b'9') => number(text),
        _ => serde_json::from_str(text).map_err(|e| e.to_string()),
    }
}

fn number(text: &str) -> Result<Value, String> {
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(i) = text.parse::<i64>() {
            return Ok(i.into());
        }
        if let Ok(u) = text.parse::<u64>() {
            return Ok(u.into());
        }
    }
    // Rust's float parsing is correctly rounded, as Python's is.
    let f: f64 = text.parse().map_err(|e| format!("number {text}: {e}"))?;
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| format!("number out of range: {} digits", text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_read_as_python_reads_them() {
        // serde_json's default parser gives 14.400704887186231 for this one.
        let v = parse_jsonb(r#"{"a": 14.400704887186233, "b": [1, -2, 18446744073709551615]}"#)
            .unwrap();
        assert_eq!(
            v["a"].as_f64().unwrap().to_bits(),
            14.400704887186233f64.to_bits()
        );
        assert_eq!(v["b"], json!([1, -2, u64::MAX]));
        // Beyond 64 bits: the nearest f64.
        let v = parse_jsonb("123456789012345678901234567890").unwrap();
        assert_eq!(v.as_f64(), Some(1.2345678901234568e29));
        assert!(v.is_f64());
        // Beyond f64: an error rather than infinity.
        let huge = format!("1{}", "0".repeat(400));
        assert!(parse_jsonb(&huge).unwrap_err().contains("out of range"));
    }

    #[test]
    fn structure_strings_and_null_pass_through() {
        let text = r#"{"k": "é\n\"", "n": null, "t": true, "e": {}, "l": [[], {"x": [null]}]}"#;
        assert_eq!(
            parse_jsonb(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(parse_jsonb("null").unwrap(), Value::Null);
        assert!(parse_jsonb("{").is_err());
    }
}
