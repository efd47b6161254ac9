//! DRF's `PageNumberPagination` links: absolute URLs built from the request, with the other
//! query parameters kept and sorted as Django's `replace_query_param` leaves them.
use axum::http::{HeaderMap, Uri};
use fluxcb_core::legacy::api::engine_statuses;
use fluxcb_core::ports::LegacyListFilter;

use super::error::LegacyError;

/// The list parameters, read as Django's `QueryDict.get` reads them (the last of repeated
/// values); an empty filter value is no filter.
pub struct ListQuery {
    pub status: Option<String>,
    pub external_id: Option<String>,
    pub page: Option<String>,
}

impl ListQuery {
    pub fn of(uri: &Uri) -> Self {
        let pairs: Vec<(String, String)> = uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let last = |name: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        Self {
            status: last("status").filter(|s| !s.is_empty()),
            external_id: last("external_id").filter(|s| !s.is_empty()),
            page: last("page"),
        }
    }

    pub fn filter(&self) -> LegacyListFilter {
        LegacyListFilter {
            statuses: self.status.as_deref().map(engine_statuses),
            external_id: self.external_id.clone(),
            owner: None,
        }
    }
}

/// The page a `?page=` value asks for, given how many pages there are (DRF: a number, or
/// `last`; anything else, or a page past the end, is "Invalid page.").
pub fn page_number(raw: Option<&str>, pages: u64) -> Result<u64, LegacyError> {
    let n = match raw {
        None => 1,
        Some("last") => pages,
        Some(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| LegacyError::InvalidPage)?,
    };
    if n < 1 || n > pages {
        return Err(LegacyError::InvalidPage);
    }
    Ok(n)
}

/// Number of pages for `count` items; an empty list still has its one (empty) page.
pub fn pages(count: u64, size: u64) -> u64 {
    count.div_ceil(size).max(1)
}

/// The link to page `n` (`None` for page 1: DRF removes the parameter instead).
pub fn link(headers: &HeaderMap, uri: &Uri, n: Option<u64>) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let mut pairs: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(k, _)| k != "page")
                .collect()
        })
        .unwrap_or_default();
    if let Some(n) = n {
        pairs.push(("page".into(), n.to_string()));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let sep = if query.is_empty() { "" } else { "?" };
    format!("http://{host}{}{sep}{query}", uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_numbers_follow_drf() {
        assert_eq!(page_number(None, 1).unwrap(), 1);
        assert_eq!(page_number(Some("last"), 4).unwrap(), 4);
        assert!(page_number(Some("5"), 4).is_err());
        assert!(page_number(Some("0"), 4).is_err());
        assert!(page_number(Some("x"), 4).is_err());
        assert_eq!(pages(0, 50), 1);
        assert_eq!(pages(101, 50), 3);
    }

    #[test]
    fn links_keep_other_parameters_sorted() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "h:8000".parse().unwrap());
        let uri: Uri = "/api/callbacks/?status=pending&page=2&a=1".parse().unwrap();
        assert_eq!(
            link(&headers, &uri, Some(3)),
            "http://h:8000/api/callbacks/?a=1&page=3&status=pending"
        );
        assert_eq!(
            link(&headers, &uri, None),
            "http://h:8000/api/callbacks/?a=1&status=pending"
        );
    }
}
