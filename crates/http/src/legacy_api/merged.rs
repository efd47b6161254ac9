//! The legacy list in split mode: the callbacks fluxcb owns (from its store) and the ones legacy
//! owns (from the legacy table), merged by id. Both sides draw ids from the legacy table's
//! sequence, so "newest first" is well defined, and the count is the sum of both sides'.
//!
//! A page at offset N reads the newest N + 50 rows of each side, as the legacy service's own
//! offset pagination read N + 50 rows of its table.
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use fluxcb_core::auth::ApiKey;
use fluxcb_core::callback::Owner;
use fluxcb_core::legacy::api::{RowView, PAGE_SIZE};

use super::error::LegacyError;
use super::local::Page;
use super::{json, page};
use crate::AppState;

pub(super) async fn list(
    state: &AppState,
    caller: &ApiKey,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, LegacyError> {
    let Some(table) = &state.legacy_table else {
        return Err(LegacyError::Unsupported(
            "split mode needs the legacy database (FLUXCB_LEGACY_DATABASE_URL)".into(),
        ));
    };
    let query = page::ListQuery::of(uri);
    let mut filter = query.filter();
    filter.owner = Some(Owner::Fluxcb);
    let statuses: Option<Vec<&str>> = query.status.as_deref().map(|s| vec![s]);
    let external_id = query.external_id.as_deref();
    let scope = caller.scope();
    let ours = state.callbacks.list_legacy(&scope, &filter, 0, 0).await?;
    let (theirs, _) = table.newest(statuses.as_deref(), external_id, 0).await?;
    let count = ours.count + theirs;
    let size = u64::from(PAGE_SIZE);
    let pages = page::pages(count, size);
    let n = page::page_number(query.page.as_deref(), pages)?;
    let depth = n * size;
    let ours = state
        .callbacks
        .list_legacy(&scope, &filter, 0, u32::try_from(depth).unwrap_or(u32::MAX))
        .await?;
    let (_, theirs) = table
        .newest(statuses.as_deref(), external_id, depth)
        .await?;
    let mut rows: Vec<RowView> = ours
        .items
        .iter()
        .filter_map(RowView::of)
        .chain(theirs.iter().map(RowView::of_legacy_row))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.id));
    // A row taken over by fluxcb is still in the legacy table; fluxcb's copy is the live one.
    rows.dedup_by_key(|r| r.id);
    let results = rows
        .into_iter()
        .skip(((n - 1) * size) as usize)
        .take(size as usize)
        .collect();
    let body = Page {
        count,
        next: (n < pages).then(|| page::link(headers, uri, Some(n + 1))),
        previous: (n > 1).then(|| page::link(headers, uri, (n > 2).then_some(n - 1))),
        results,
    };
    Ok(json(StatusCode::OK, &body))
}
