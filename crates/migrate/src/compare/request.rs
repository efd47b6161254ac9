//! The request fluxcb would send for a callback against the one the legacy sender would send
//! for its row, at the same timestamp.
//!
//! The legacy side is modelled on `callback/sender.py`: the body is `render_body` of the row's
//! payload; the headers are the row's own, then `Content-Type` and the three `X-Flux-*`
//! headers, merged as `requests` merges them (names case-insensitively, the later one wins, so a
//! row's own `content-type` gives way to ours). fluxcb's side is `engine::build_request`, as the
//! sender puts it on the wire (every header it lists is sent, duplicates included).
//!
//! Not compared, because they are the HTTP clients' own and no receiver verifies them:
//! `User-Agent` (`python-requests/…` against `fluxcb/…`, unless the row sets one, in which
//! case both send the row's), and what `requests` adds by default (`Accept`,
//! `Accept-Encoding`, `Connection`) or either client adds per request (`Host`,
//! `Content-Length`).
use std::collections::BTreeMap;

use fluxcb_core::callback::Callback;
use fluxcb_core::engine::{build_request, SigningKeys, USER_AGENT};
use fluxcb_core::legacy::{self, row::LegacyRow, HEADER_SIGNATURE};
use serde::Serialize;
use serde_json::Value;
use url::Url;

use super::fields::{cut, row_payload};

/// Signs both sides when no legacy secret was given: bodies and headers can still be compared,
/// signature values cannot (the report says so).
const PLACEHOLDER_SECRET: &[u8] = b"fluxcb migrate compare: no legacy secret given";

/// One way the two requests differ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestDifference {
    /// `wire_format`, `url`, `method`, `headers`, `body` or `signature`.
    pub aspect: &'static str,
    pub detail: String,
}

/// What differs between fluxcb's request for `cb` and legacy's for `row`, both at `timestamp`.
/// With `secret` `None`, signatures are only checked for presence and format.
pub fn differences(
    row: &LegacyRow,
    cb: &Callback,
    secret: Option<&[u8]>,
    timestamp: i64,
) -> Vec<RequestDifference> {
    let mut out = Vec::new();
    let mut differ =
        |aspect: &'static str, detail: String| out.push(RequestDifference { aspect, detail });
    let format = cb.spec.wire_format;
    if !format.includes_legacy() {
        differ(
            "wire_format",
            format!(
                "wire format {}: receivers would not get the legacy headers \
                 (X-Flux-Callback-Id, X-Flux-Signature) or the legacy body rendering",
                format.as_str()
            ),
        );
        return out;
    }
    if cb.legacy_id != Some(row.id) {
        differ(
            "wire_format",
            format!(
                "fluxcb's callback has legacy id {:?}, not {}: receivers would not get the \
                 legacy headers",
                cb.legacy_id, row.id
            ),
        );
        return out;
    }
    let key = secret.unwrap_or(PLACEHOLDER_SECRET);
    let fluxcb = build_request(
        cb,
        SigningKeys {
            standard: &[],
            legacy: Some(key),
        },
        timestamp,
    );

    // URL: both clients drop the fragment.
    match Url::parse(&row.url) {
        Ok(mut legacy_url) => {
            legacy_url.set_fragment(None);
            let mut ours = fluxcb.url.clone();
            ours.set_fragment(None);
            if legacy_url != ours {
                differ("url", format!("legacy {legacy_url}, fluxcb {ours}"));
            }
        }
        Err(e) => differ(
            "url",
            format!(
                "legacy {:?} does not parse ({e}), fluxcb {}",
                row.url, fluxcb.url
            ),
        ),
    }
    if row.method != fluxcb.method.as_str() {
        differ(
            "method",
            format!("legacy {}, fluxcb {}", row.method, fluxcb.method.as_str()),
        );
    }

    let body = legacy::render_body(&row_payload(row));
    if body != fluxcb.body {
        differ(
            "body",
            format!(
                "legacy {} bytes {}, fluxcb {} bytes {}",
                body.len(),
                excerpt(&body),
                fluxcb.body.len(),
                excerpt(&fluxcb.body)
            ),
        );
    }

    let row_headers = match string_headers(&row.headers) {
        Ok(h) => h,
        Err(why) => {
            differ(
                "headers",
                format!("legacy cannot send this row at all: {why}"),
            );
            return out;
        }
    };
    let legacy_headers =
        requests_merge(legacy::headers(&row_headers, row.id, timestamp, &body, key));
    let mut legacy_set = by_name(&legacy_headers);
    let mut fluxcb_set = by_name(&fluxcb.headers);
    // The clients' own User-Agent, when the row sets none.
    if !legacy_set.contains_key("user-agent")
        && fluxcb_set.get("user-agent") == Some(&vec![USER_AGENT.to_owned()])
    {
        fluxcb_set.remove("user-agent");
    }
    // In the `both` format the Standard Webhooks headers come on top of the legacy ones.
    if format.includes_standard() {
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            fluxcb_set.remove(name);
        }
    }
    let signature = HEADER_SIGNATURE.to_ascii_lowercase();
    let legacy_sig = legacy_set.remove(&signature).unwrap_or_default();
    let fluxcb_sig = fluxcb_set.remove(&signature).unwrap_or_default();
    let names: std::collections::BTreeSet<&String> =
        legacy_set.keys().chain(fluxcb_set.keys()).collect();
    let header_diffs: Vec<String> = names
        .into_iter()
        .filter(|n| legacy_set.get(*n) != fluxcb_set.get(*n))
        .map(|n| {
            format!(
                "{n}: legacy {}, fluxcb {}",
                values(legacy_set.get(n)),
                values(fluxcb_set.get(n))
            )
        })
        .collect();
    if !header_diffs.is_empty() {
        differ("headers", header_diffs.join("; "));
    }
    match secret {
        Some(_) if legacy_sig != fluxcb_sig => differ(
            "signature",
            format!(
                "X-Flux-Signature: legacy {}, fluxcb {}",
                values(Some(&legacy_sig)),
                values(Some(&fluxcb_sig))
            ),
        ),
        Some(_) => {}
        None => {
            let well_formed = |v: &str| {
                v.strip_prefix("sha256=").is_some_and(|hex| {
                    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
                })
            };
            if fluxcb_sig.len() != 1 || !well_formed(&fluxcb_sig[0]) {
                differ(
                    "signature",
                    format!(
                        "fluxcb's X-Flux-Signature is not one sha256=<hex>: {}",
                        values(Some(&fluxcb_sig))
                    ),
                );
            }
        }
    }
    out
}

/// The row's headers as the legacy sender passes them on; it cannot send a row whose header
/// values are not strings.
fn string_headers(headers: &Value) -> Result<BTreeMap<String, String>, String> {
    match headers {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!("header {k} is {other}, not a string")),
            })
            .collect(),
        other => Err(format!("headers are {other}, not an object")),
    }
}

/// What `requests` does with a header dict: one header per name, compared case-insensitively,
/// the later value (and spelling) replacing the earlier in its place.
fn requests_merge(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            Some(slot) => *slot = (name, value),
            None => out.push((name, value)),
        }
    }
    out
}

/// Lower-case name to every value sent under it, in order.
fn by_name(headers: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        out.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.clone());
    }
    out
}

fn values(v: Option<&Vec<String>>) -> String {
    match v.map(Vec::as_slice) {
        None | Some([]) => "(none)".to_owned(),
        Some([one]) => format!("{:?}", cut(one, 120)),
        Some(many) => format!(
            "{} values {:?}",
            many.len(),
            many.iter().map(|v| cut(v, 120)).collect::<Vec<_>>()
        ),
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let shown = cut(&text, 120);
    if shown.len() < text.len() {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::tests::{mirror, row};
    use fluxcb_core::callback::WireFormat;
    use serde_json::json;

    const SECRET: &[u8] = b"legacy-secret";
    const TS: i64 = 1_700_000_000;

    fn aspects(d: &[RequestDifference]) -> Vec<&'static str> {
        d.iter().map(|d| d.aspect).collect()
    }

    #[test]
    fn an_imported_row_sends_the_same_request_with_or_without_the_secret() {
        let r = row(11);
        let cb = mirror(&r);
        assert_eq!(differences(&r, &cb, Some(SECRET), TS), []);
        assert_eq!(differences(&r, &cb, None, TS), []);
        // The row's own User-Agent goes out from both.
        let mut r = row(12);
        r.headers = json!({"User-Agent": "billing/2"});
        assert_eq!(differences(&r, &mirror(&r), Some(SECRET), TS), []);
    }

    #[test]
    fn an_edited_row_differs_in_what_receivers_see() {
        let r = row(11);
        let cb = mirror(&r);
        let mut edited = r.clone();
        edited.payload = Some(json!({"n": 2}));
        assert_eq!(
            aspects(&differences(&edited, &cb, Some(SECRET), TS)),
            ["body", "signature"]
        );
        // Without the secret the body still differs; signatures are not compared.
        assert_eq!(aspects(&differences(&edited, &cb, None, TS)), ["body"]);
        let mut edited = r.clone();
        edited.url = "http://moved.invalid/hook".into();
        edited.method = "PATCH".into();
        edited.headers = json!({"X-A": "2", "X-New": "n"});
        let d = differences(&edited, &cb, Some(SECRET), TS);
        assert_eq!(aspects(&d), ["url", "method", "headers"]);
        assert!(
            d[2].detail.contains("x-a: legacy \"2\", fluxcb \"1\"")
                && d[2].detail.contains("x-new: legacy \"n\", fluxcb (none)"),
            "{}",
            d[2].detail
        );
    }

    #[test]
    fn a_callback_not_in_the_legacy_format_is_a_difference() {
        let r = row(11);
        let mut cb = mirror(&r);
        cb.spec.wire_format = WireFormat::StandardWebhooks;
        let d = differences(&r, &cb, Some(SECRET), TS);
        assert_eq!(aspects(&d), ["wire_format"]);
        assert!(d[0].detail.contains("would not get the legacy headers"));
        let mut cb = mirror(&r);
        cb.legacy_id = None;
        assert_eq!(
            aspects(&differences(&r, &cb, Some(SECRET), TS)),
            ["wire_format"]
        );
        // `both` adds the Standard Webhooks headers and keeps the legacy ones.
        let mut cb = mirror(&r);
        cb.spec.wire_format = WireFormat::Both;
        assert_eq!(differences(&r, &cb, Some(SECRET), TS), []);
    }

    /// `requests` sends one Content-Type for a row whose own headers name it in another case
    /// (the sender's own value); so does fluxcb.
    #[test]
    fn a_rows_own_reserved_header_in_another_case_matches_legacy() {
        let mut r = row(11);
        r.headers = json!({"content-type": "text/plain", "x-flux-signature": "forged"});
        let d = differences(&r, &mirror(&r), Some(SECRET), TS);
        assert_eq!(d, [], "{d:?}");
    }

    #[test]
    fn requests_merges_header_names_case_insensitively_last_wins() {
        let merged = requests_merge(vec![
            ("x-a".into(), "1".into()),
            ("X-B".into(), "2".into()),
            ("X-A".into(), "3".into()),
        ]);
        assert_eq!(
            merged,
            [("X-A".into(), "3".into()), ("X-B".into(), "2".into())]
        );
    }
}
