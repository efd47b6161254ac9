//! The console's files, compiled into the binary: hand-written HTML, CSS and JavaScript
//! modules, no build step. Served with a content hash as `ETag`, revalidated on each load
//! (`no-cache`), so a new binary's files are picked up at once and unchanged ones cost a 304.
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

pub static ASSETS: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("charts.js", JS),
    asset!("login.js", JS),
    asset!("overview.js", JS),
    asset!("callbacks.js", JS),
    asset!("detail.js", JS),
    asset!("deadletters.js", JS),
    asset!("destinations.js", JS),
    asset!("migration.js", JS),
];

pub const INDEX_HTML: &str = include_str!("assets/index.html");
pub const LOGIN_HTML: &str = include_str!("assets/login.html");

fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body.as_bytes());
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let mut response = if headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(ETAG, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_a_module_with_no_inline_handlers_or_inner_html() {
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            assert!(
                !a.body.contains("innerHTML") && !a.body.contains("outerHTML"),
                "{} builds HTML from strings",
                a.name
            );
            assert!(!a.body.contains("eval("), "{} uses eval", a.name);
            assert!(
                !a.body.contains("insertAdjacentHTML") && !a.body.contains("document.write"),
                "{}",
                a.name
            );
        }
        for html in [INDEX_HTML, LOGIN_HTML] {
            // Inline scripts, styles and handlers would be refused by the CSP anyway.
            assert!(!html.contains("<script>") && !html.contains(" onclick="));
            assert!(!html.contains("style="));
        }
    }

    #[test]
    fn the_html_names_only_assets_that_exist() {
        for html in [INDEX_HTML, LOGIN_HTML] {
            for part in html.split("/console/assets/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(ASSETS.iter().any(|a| a.name == name), "missing {name}");
            }
        }
        // And every import between modules resolves.
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            for part in a.body.split("from \"./").skip(1) {
                let name: String = part.chars().take_while(|c| *c != '"').collect();
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} imports missing {name}",
                    a.name
                );
            }
        }
    }
}
