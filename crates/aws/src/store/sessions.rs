//! Console sessions in the callback table, so that every API instance (Lambda runs many) knows
//! a session whichever instance opened it. One item per session under the SHA-256 of its id
//! (the table never holds a usable cookie), with DynamoDB's TTL attribute for clean-up. TTL
//! deletes lazily (up to days late), so a read checks the expiry itself; reads are strongly
//! consistent, so a login or logout on one instance holds on the next request to another.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluxcb_core::ports::{ConsoleSession, SessionStore, StoreError};

use super::items::{from_ms, get_n, get_s, ms, n, s};
use super::{store_error, DynamoStore, Item};

const SESSION_SK: &str = "session";

fn session_pk(id_hash: &str) -> String {
    format!("session#{id_hash}")
}

#[async_trait]
impl SessionStore for DynamoStore {
    async fn put_session(&self, id_hash: &str, session: &ConsoleSession) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(session_pk(id_hash)));
        item.insert("sk".into(), s(SESSION_SK));
        item.insert("key_hash".into(), s(&session.key_hash));
        item.insert("csrf_token".into(), s(&session.csrf_token));
        item.insert("session_expires_ms".into(), n(ms(session.expires_at)));
        // DynamoDB's TTL attribute (epoch seconds), rounded up so it never precedes the expiry.
        item.insert("expires_at".into(), n(session.expires_at.timestamp() + 1));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("storing a console session", e))
    }

    async fn session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(session_pk(id_hash)))
            .key("sk", s(SESSION_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("reading a console session", e))?
            .item;
        let Some(item) = item else {
            return Ok(None);
        };
        let malformed = || StoreError::Internal("malformed console session item".into());
        let expires_at = from_ms(get_n(&item, "session_expires_ms").ok_or_else(malformed)?);
        if expires_at <= now {
            return Ok(None);
        }
        Ok(Some(ConsoleSession {
            key_hash: get_s(&item, "key_hash").ok_or_else(malformed)?.to_owned(),
            csrf_token: get_s(&item, "csrf_token").ok_or_else(malformed)?.to_owned(),
            expires_at,
        }))
    }

    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(session_pk(id_hash)))
            .key("sk", s(SESSION_SK))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("ending a console session", e))
    }
}
