//! API client commands: they talk to a running server over HTTP and print its answer as a
//! table or key/value block, or with `--output json` the answer itself. An error answer
//! becomes a [`Failure`] whose exit code follows from the HTTP status.
use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Map, Value};

use crate::cli::{ClientArgs, SendArgs};
use crate::exit::{Exit, Failure};
use crate::output::{self, print_json, Output};

/// How long to wait for the connection; no overall timeout, since a redrive step may take a
/// while on a busy server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One server and key, from `--url` and `--api-key` (or FLUXCB_URL and FLUXCB_API_KEY).
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    pub fn new(c: &ClientArgs) -> Result<Self, Failure> {
        let key = c
            .api_key
            .clone()
            .ok_or("an API key is needed: pass --api-key or set FLUXCB_API_KEY")?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: c.server.trim_end_matches('/').to_owned(),
            key,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// Sends `req` and returns the JSON answer of a 2xx (`null` for an empty body).
    pub async fn call(&self, req: RequestBuilder) -> Result<Value, Failure> {
        let resp = req.send().await.map_err(|e| {
            Failure::new(
                Exit::Unavailable,
                format!(
                    "cannot reach the server at {}: {}",
                    self.base,
                    root_cause(&e)
                ),
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            Failure::new(
                Exit::Unavailable,
                format!("the server's answer was cut off: {}", root_cause(&e)),
            )
        })?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(body);
        }
        Err(Failure {
            exit: Exit::of_http_status(status.as_u16()),
            message: format!("the server answered {status}: {}", problem_summary(&body)),
            answer: Some((status.as_u16(), body)),
        })
    }
}

/// The innermost cause ("Connection refused (os error 111)"): reqwest's own message names
/// only the URL, and the layers between add nothing a reader needs.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// What an RFC 7807 problem says, on one line: its detail (or title) and the fields at fault.
fn problem_summary(body: &Value) -> String {
    let mut summary = body["detail"]
        .as_str()
        .or_else(|| body["title"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| match body {
            Value::String(s) => output::truncate(s.trim(), 200),
            Value::Null => "(no body)".into(),
            other => output::truncate(&other.to_string(), 200),
        });
    // Validation problems list the fields at fault; the detail usually names them already.
    let fields: Vec<String> = body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}: {}",
                e["field"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("?")
            )
        })
        .filter(|field| !summary.contains(field.as_str()))
        .collect();
    if !fields.is_empty() {
        summary.push_str(&format!(" ({})", fields.join("; ")));
    }
    summary
}

fn pairs(items: &[String], sep: char, what: &str) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|item| {
            item.split_once(sep)
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("{what} `{item}` should look like name{sep}value"))
        })
        .collect()
}

pub async fn send(args: SendArgs) -> Result<(), Failure> {
    let mut body = Map::new();
    body.insert("url".into(), json!(args.target));
    if let Some(p) = &args.payload {
        let v: Value =
            serde_json::from_str(p).map_err(|e| format!("--payload is not JSON: {e}"))?;
        body.insert("payload".into(), v);
    }
    for (k, v) in [
        ("body", &args.body),
        ("content_type", &args.content_type),
        ("method", &args.method),
        ("deliver_at", &args.deliver_at),
    ] {
        if let Some(v) = v {
            body.insert(k.into(), json!(v));
        }
    }
    if let Some(n) = args.max_attempts {
        body.insert("max_attempts".into(), json!(n));
    }
    if let Some(n) = args.timeout_ms {
        body.insert("timeout_ms".into(), json!(n));
    }
    if !args.headers.is_empty() {
        body.insert(
            "headers".into(),
            json!(pairs(&args.headers, ':', "--header")?),
        );
    }
    if !args.metadata.is_empty() {
        body.insert(
            "metadata".into(),
            json!(pairs(&args.metadata, '=', "--metadata")?),
        );
    }
    let api = Api::new(&args.client)?;
    let mut req = api.request(Method::POST, "/v1/callbacks").json(&body);
    if let Some(k) = &args.idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let answer = api.call(req).await?;
    match args.output.output {
        Output::Json => print_json(&answer),
        Output::Human => print!("{}", output::accepted(&answer)),
    }
    Ok(())
}

pub async fn get(c: &ClientArgs, id: &str, out: Output) -> Result<(), Failure> {
    let api = Api::new(c)?;
    let answer = api
        .call(api.request(Method::GET, &format!("/v1/callbacks/{id}")))
        .await?;
    print_callback(&answer, out);
    Ok(())
}

pub async fn list(c: &ClientArgs, query: &[(&str, String)], out: Output) -> Result<(), Failure> {
    let api = Api::new(c)?;
    let page = api
        .call(api.request(Method::GET, "/v1/callbacks").query(query))
        .await?;
    match out {
        Output::Json => print_json(&page),
        Output::Human => {
            print!("{}", output::callback_table(&page));
            if let Some(cursor) = page["next_cursor"].as_str() {
                eprintln!("More: add --cursor {cursor}");
            }
        }
    }
    Ok(())
}

/// `cancel` or `retry`: the callback as it is afterwards.
pub async fn action(c: &ClientArgs, id: &str, verb: &str, out: Output) -> Result<(), Failure> {
    let api = Api::new(c)?;
    let answer = api
        .call(api.request(Method::POST, &format!("/v1/callbacks/{id}/{verb}")))
        .await?;
    print_callback(&answer, out);
    Ok(())
}

fn print_callback(cb: &Value, out: Output) {
    match out {
        Output::Json => print_json(cb),
        Output::Human => print!("{}", output::callback_detail(cb)),
    }
}
