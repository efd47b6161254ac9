//! What the commands print: `--output human` (aligned tables for lists, key/value blocks for
//! one item) or `--output json` (exactly one JSON document on stdout, for scripts). Messages
//! meant for a person (hints, confirmations) go to stderr in both modes, so stdout holds only
//! the result.
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use serde_json::Value;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and key/value blocks for people.
    #[default]
    Human,
    /// One JSON document on stdout, for scripts (on failure {"error": {...}}).
    Json,
}

/// Prints `value` as the one JSON document of a `--output json` run.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialise")
    );
}

/// Columns aligned to their widest cell, two spaces apart; the last column is not padded.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let last = row.len() - 1;
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                out.push_str(cell);
                if i < last {
                    out.push_str(&" ".repeat(w - cell.chars().count() + 2));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// `label  value` lines with the values aligned; empty values are left out.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let shown: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    let width = shown.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    shown
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// At most `max` characters, the cut marked with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// An RFC 3339 time from the API as `2026-01-02 03:04:05Z`; `-` for none.
pub fn when(value: &Value) -> String {
    match value.as_str() {
        None => "-".into(),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| {
                t.with_timezone(&Utc)
                    .format("%Y-%m-%d %H:%M:%SZ")
                    .to_string()
            })
            .unwrap_or_else(|_| s.to_owned()),
    }
}

/// Host (with a non-default port) and path of a target URL, without scheme and query: what
/// tells callbacks apart in a list.
pub fn host_and_path(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(port) => format!("{host}:{port}{}", u.path()),
                None => format!("{host}{}", u.path()),
            }
        }
        Err(_) => url.to_owned(),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `name=value, …` of a JSON object (metadata, headers).
fn pairs(value: &Value, sep: &str) -> String {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}{sep}{}", text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The widest URL column of a callback list before it is cut.
const URL_COLUMN: usize = 60;

/// A page of `GET /v1/callbacks` as a table.
pub fn callback_table(page: &Value) -> String {
    let mut table = Table::new(&["ID", "STATUS", "ATTEMPTS", "NEXT ATTEMPT", "URL"]);
    for cb in page["data"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&cb["id"]),
            text(&cb["status"]),
            format!("{}/{}", cb["attempts_made"], cb["max_attempts"]),
            when(&cb["next_attempt_at"]),
            truncate(&host_and_path(&text(&cb["url"])), URL_COLUMN),
        ]);
    }
    table.render()
}

/// One callback (`GET /v1/callbacks/{id}`, or the answer of cancel and retry) as a key/value
/// block, followed by its attempt timeline when the answer has one.
pub fn callback_detail(cb: &Value) -> String {
    let attempts = format!(
        "{} of {}",
        cb["attempts_made"].as_u64().unwrap_or(0),
        cb["max_attempts"].as_u64().unwrap_or(0)
    );
    let created = match cb["created_by"].as_str() {
        Some(by) => format!("{} by {by}", when(&cb["created_at"])),
        None => when(&cb["created_at"]),
    };
    let payload = match (&cb["payload"], &cb["body"]) {
        (Value::Null, Value::Null) => String::new(),
        (Value::Null, body) => truncate(&text(body), 200),
        (payload, _) => truncate(&payload.to_string(), 200),
    };
    let optional_time = |v: &Value| if v.is_null() { String::new() } else { when(v) };
    let mut out = key_values(&[
        ("id", text(&cb["id"])),
        ("status", text(&cb["status"])),
        ("url", text(&cb["url"])),
        ("method", text(&cb["method"])),
        ("tenant", text(&cb["tenant"])),
        ("attempts", attempts),
        ("next attempt", when(&cb["next_attempt_at"])),
        ("deliver at", optional_time(&cb["deliver_at"])),
        ("last error", text(&cb["last_error"])),
        ("created", created),
        ("updated", optional_time(&cb["updated_at"])),
        ("metadata", pairs(&cb["metadata"], "=")),
        ("headers", pairs(&cb["headers"], ": ")),
        ("content type", text(&cb["content_type"])),
        ("payload", payload),
        ("wire format", text(&cb["wire_format"])),
        ("legacy id", text(&cb["legacy_id"])),
        ("external id", text(&cb["external_id"])),
    ]);
    if let Some(attempts) = cb["attempts"].as_array() {
        out.push('\n');
        if attempts.is_empty() {
            out.push_str("No attempts yet.\n");
        } else {
            out.push_str("Attempts\n");
            out.push_str(&attempt_table(attempts));
        }
    }
    out
}

/// The attempt timeline, oldest first: when, how long, and what came back.
fn attempt_table(attempts: &[Value]) -> String {
    let mut table = Table::new(&["#", "STARTED", "DURATION", "RESULT"]);
    for a in attempts {
        // An answer's status code says it all (its detail, "HTTP 500 …", repeats it); an
        // attempt without one (timeout, connect, dns, tls, …) says why with its detail.
        let error = a["error"].as_str().filter(|e| *e != "http_status");
        let result = match (&a["status_code"], error) {
            (Value::Number(code), None) => format!("{code}"),
            (Value::Number(code), Some(error)) => format!("{code} {error}"),
            (_, Some(error)) => error.to_owned(),
            (_, None) => "-".into(),
        };
        let result = match (error, a["error_detail"].as_str()) {
            (Some(_), Some(detail)) if !detail.is_empty() => {
                format!("{result}: {}", truncate(detail, 80))
            }
            _ => result,
        };
        table.row(vec![
            text(&a["number"]),
            when(&a["started_at"]),
            format!("{} ms", a["duration_ms"].as_u64().unwrap_or(0)),
            result,
        ]);
    }
    // Indented under the "Attempts" heading.
    table.render().lines().map(|l| format!("  {l}\n")).collect()
}

/// The answer of `POST /v1/callbacks`.
pub fn accepted(answer: &Value) -> String {
    key_values(&[
        ("id", text(&answer["id"])),
        ("status", text(&answer["status"])),
        ("next attempt", when(&answer["next_attempt_at"])),
        ("legacy id", text(&answer["legacy_id"])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_aligns_columns_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["cb_1".into(), "pending".into()]);
        t.row(vec!["cb_long_id".into(), "failed".into()]);
        assert_eq!(
            t.render(),
            "ID          STATUS\ncb_1        pending\ncb_long_id  failed\n"
        );
    }

    #[test]
    fn urls_lose_scheme_and_query_and_long_ones_are_cut() {
        assert_eq!(
            host_and_path("https://example.com/hooks/orders?x=1"),
            "example.com/hooks/orders"
        );
        assert_eq!(
            host_and_path("http://127.0.0.1:8081/ok"),
            "127.0.0.1:8081/ok"
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
    }

    #[test]
    fn times_are_shown_to_the_second_in_utc() {
        assert_eq!(
            when(&json!("2026-03-04T05:06:07.890+01:00")),
            "2026-03-04 04:06:07Z"
        );
        assert_eq!(when(&Value::Null), "-");
    }

    #[test]
    fn a_detail_block_ends_with_the_attempt_timeline() {
        let cb = json!({
            "id": "cb_1", "status": "failed", "url": "https://example.com/h",
            "attempts_made": 1, "max_attempts": 1, "metadata": {"team": "red"},
            "attempts": [{"number": 1, "started_at": "2026-01-01T00:00:00.000Z",
                          "duration_ms": 12, "status_code": 500, "error": "http_status",
                          "error_detail": null}]
        });
        let text = callback_detail(&cb);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "id            cb_1", "aligned to `next attempt`");
        assert!(lines.contains(&"metadata      team=red"), "{text}");
        assert!(
            !text.contains("legacy id"),
            "empty values are left out: {text}"
        );
        assert!(
            text.contains("  1  2026-01-01 00:00:00Z  12 ms     500\n"),
            "{text}"
        );
    }
}
