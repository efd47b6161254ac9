//! API client commands: they talk to a running server over HTTP and print its JSON answer.
//! A problem answer is printed to stderr and the command fails.
use std::collections::BTreeMap;

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Map, Value};

use crate::cli::{ClientArgs, SendArgs};

fn request(c: &ClientArgs, method: Method, path: &str) -> Result<RequestBuilder, String> {
    let key = c
        .api_key
        .as_deref()
        .ok_or("an API key is needed: pass --api-key or set FLUXCB_API_KEY")?;
    Ok(reqwest::Client::new()
        .request(method, format!("{}{path}", c.server.trim_end_matches('/')))
        .bearer_auth(key))
}

async fn finish(req: RequestBuilder) -> Result<(), String> {
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the server: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(())
    } else {
        Err(format!("the server answered {status}:\n{pretty}"))
    }
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

pub async fn send(args: SendArgs) -> Result<(), String> {
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
    let mut req = request(&args.client, Method::POST, "/v1/callbacks")?.json(&body);
    if let Some(k) = &args.idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    finish(req).await
}

pub async fn get(c: &ClientArgs, id: &str) -> Result<(), String> {
    finish(request(c, Method::GET, &format!("/v1/callbacks/{id}"))?).await
}

pub async fn list(c: &ClientArgs, query: &[(&str, String)]) -> Result<(), String> {
    finish(request(c, Method::GET, "/v1/callbacks")?.query(query)).await
}

pub async fn action(c: &ClientArgs, id: &str, verb: &str) -> Result<(), String> {
    finish(request(
        c,
        Method::POST,
        &format!("/v1/callbacks/{id}/{verb}"),
    )?)
    .await
}

pub async fn redrive(
    c: &ClientArgs,
    host: Option<String>,
    metadata: Option<String>,
    tenant: Option<String>,
) -> Result<(), String> {
    let mut body = Map::new();
    for (k, v) in [("host", host), ("metadata", metadata), ("tenant", tenant)] {
        if let Some(v) = v {
            body.insert(k.into(), json!(v));
        }
    }
    finish(request(c, Method::POST, "/v1/dead-letters/redrive")?.json(&body)).await
}
