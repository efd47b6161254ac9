//! What the legacy caller API needs from the store: rows by integer id, page-number listing
//! with a total, `external_id` lookups and the synchronous `send` claim.
use chrono::{DateTime, Utc};
use fluxcb_core::attempt::Attempt;
use fluxcb_core::id::CallbackId;
use fluxcb_core::ports::{ActionResult, CallbackDetail, LegacyListFilter, LegacyPage, StoreError};
use fluxcb_core::tenant::{Scope, TenantId};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, OptionalExtension};

use crate::error::sql;
use crate::rows::{self, ATTEMPT_COLUMNS, CALLBACK_COLUMNS};
use crate::writer::Durability;
use crate::SqliteStore;

impl SqliteStore {
    pub(crate) async fn legacy_get(
        &self,
        scope: &Scope,
        legacy_id: i64,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        let scope = scope.clone();
        self.read(move |c| {
            let callback = c
                .prepare_cached(&format!(
                    "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE legacy_id = ?1"
                ))?
                .query_row([legacy_id], rows::callback)
                .optional()?
                .filter(|cb| scope.permits(&cb.tenant));
            let Some(callback) = callback else {
                return Ok(None);
            };
            let attempts = c
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE callback_id = ?1 ORDER BY rowid"
                ))?
                .query_map([callback.id.to_string()], rows::attempt)?
                .collect::<rusqlite::Result<Vec<Attempt>>>()?;
            Ok(Some(CallbackDetail { callback, attempts }))
        })
        .await
    }

    pub(crate) async fn legacy_list(
        &self,
        scope: &Scope,
        filter: &LegacyListFilter,
        offset: u64,
        limit: u32,
    ) -> Result<LegacyPage, StoreError> {
        let mut conds = vec!["legacy_id IS NOT NULL".to_owned()];
        let mut params: Vec<Value> = Vec::new();
        if let Scope::Tenant(t) = scope {
            conds.push("tenant = ?".into());
            params.push(t.as_str().to_owned().into());
        }
        if let Some(statuses) = &filter.statuses {
            if statuses.is_empty() {
                return Ok(LegacyPage {
                    count: 0,
                    items: Vec::new(),
                });
            }
            let marks = vec!["?"; statuses.len()].join(", ");
            conds.push(format!("status IN ({marks})"));
            params.extend(statuses.iter().map(|s| Value::from(s.as_str().to_owned())));
        }
        if let Some(external_id) = &filter.external_id {
            conds.push("external_id = ?".into());
            params.push(external_id.clone().into());
        }
        let where_sql = conds.join(" AND ");
        let count_sql = format!("SELECT COUNT(*) FROM callbacks WHERE {where_sql}");
        let page_sql = format!(
            "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE {where_sql} \
             ORDER BY legacy_id DESC LIMIT {limit} OFFSET {offset}"
        );
        self.read(move |c| {
            let count: i64 = c
                .prepare_cached(&count_sql)?
                .query_row(params_from_iter(params.iter()), |r| r.get(0))?;
            let items = c
                .prepare_cached(&page_sql)?
                .query_map(params_from_iter(params.iter()), rows::callback)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(LegacyPage {
                count: count as u64,
                items,
            })
        })
        .await
    }

    pub(crate) async fn legacy_external_id_exists(
        &self,
        tenant: &TenantId,
        external_id: &str,
    ) -> Result<bool, StoreError> {
        let (tenant, external_id) = (tenant.as_str().to_owned(), external_id.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM callbacks WHERE tenant = ?1 AND external_id = ?2")?
                .query_row([&tenant, &external_id], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
        })
        .await
    }

    pub(crate) async fn legacy_send_now(
        &self,
        scope: &Scope,
        id: &CallbackId,
        actor: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<ActionResult, StoreError> {
        let (scope, id, actor) = (scope.clone(), *id, actor.to_owned());
        self.writer()
            .write(Durability::Full, move |c| {
                crate::ops::send_now(c, &scope, &id, &actor, now, lease_until).map_err(sql)
            })
            .await
    }
}
