//! fluxcb's access to the legacy service's PostgreSQL table, `callme_callback` (with
//! `authtoken_token` and `auth_user` for the API tokens).
//!
//! While both systems run, fluxcb hands out integer ids from the legacy table's own sequence and
//! checks `external_id` uniqueness against it ([`LegacyTable`]), so that either side can insert
//! at any time; the import reads the rows in id order ([`LegacyDb::rows_after`]).
//!
//! # Connection
//! One connection, shared: the traffic is an occasional `nextval` or an import batch, not a
//! query load that would need a pool. A connection lost to a database restart or a terminated
//! backend is reopened once and the query retried: every query here is a read, or `nextval`,
//! whose retry at worst leaves a gap in the ids, which the legacy table already tolerates.
//!
//! **TLS to the legacy database is not supported yet**: connections are plain TCP (or a Unix
//! socket). `sslmode=prefer` (the default) connects without TLS; `sslmode=require` is refused.
//!
//! # JSON fidelity
//! `headers` and `payload` are `jsonb`. They are read as text and parsed here rather than with
//! `serde_json`'s own number parser, which without its `float_roundtrip` feature (now on in this
//! workspace, for the same reason) rounds about one in nine 17-digit fractions, such as
//! `14.400704887186233`, to a neighbouring `f64`. Numbers come out as the legacy sender's Python
//! reads them:
//! - integers within `i64`/`u64` exactly;
//! - fractions as the correctly rounded `f64` (Python's `float`), so digits beyond `f64`'s
//!   precision are lost, as they are for the legacy sender;
//! - **lossy**: integers beyond 64 bits, which Python keeps exact, become the nearest `f64`
//!   (exact up to 2^53, then 17 significant digits), and an integer beyond `f64`'s range makes
//!   the row fail to decode ([`LegacyDbError::Decode`] names it);
//! - `jsonb` has already normalised the text: `1e16` is stored as `10000000000000000`, and so
//!   reads as an integer.
//!
//! Object keys come out sorted (`serde_json`'s map, since `preserve_order` is off), not in
//! `jsonb` order; fluxcb renders legacy bodies in `jsonb` order itself, so nothing depends on it.
//! A SQL `NULL` payload is `None`; a JSON `null` is `Some(Value::Null)`.

pub mod compare;
mod decode;
pub mod export;
pub mod import;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluxcb_core::ports::{LegacyTable, StoreError};

use crate::decode::decode_row;
use tokio::sync::Mutex;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// Without it, connecting to a host that drops packets waits for the kernel's TCP timeout
/// (minutes), and every caller waiting on an id waits with it.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shown in `pg_stat_activity`, so an operator can tell fluxcb's session from the legacy
/// services' own.
const APPLICATION_NAME: &str = "fluxcb-migrate";

const ROW_COLUMNS: &str = "id, url, method, headers::text AS headers, payload::text AS payload, \
    external_id, callback_time, status, attempts, max_attempts, last_response_code, last_error, \
    sent_at, created_at, updated_at";

#[derive(Debug, thiserror::Error)]
pub enum LegacyDbError {
    /// The URL does not parse; the message never repeats the URL, which may hold a password.
    #[error("invalid legacy database URL: {0}")]
    Url(String),
    #[error("legacy database: TLS is not supported yet; use sslmode=disable or sslmode=prefer")]
    TlsUnsupported,
    /// Could not connect, or lost the connection again after reconnecting once.
    #[error("legacy database {target} unreachable: {}", Chain(.cause))]
    Unreachable {
        target: String,
        /// Not a `#[source]`: the message already carries its text, which tokio-postgres's own
        /// `Display` leaves out ("db error"), and reporters would print it twice.
        cause: tokio_postgres::Error,
    },
    /// The server refused a query (missing table, permissions).
    #[error("legacy database {target}: {}", Chain(.cause))]
    Query {
        target: String,
        cause: tokio_postgres::Error,
    },
    /// One row holds something this crate cannot represent; its id lets an import report it and
    /// continue after it.
    #[error("legacy database: row {id}, column {column}: {message}")]
    Decode {
        id: i64,
        column: &'static str,
        message: String,
    },
}

impl From<LegacyDbError> for StoreError {
    fn from(error: LegacyDbError) -> Self {
        match error {
            LegacyDbError::Unreachable { .. } => StoreError::Unavailable(error.to_string()),
            _ => StoreError::Internal(error.to_string()),
        }
    }
}

pub use fluxcb_core::legacy::row::LegacyRow;

/// A Django REST Framework API token and the user it authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyToken {
    pub key: String,
    pub user: String,
    pub created: DateTime<Utc>,
}

/// The legacy database. Clones share one connection.
#[derive(Clone)]
pub struct LegacyDb {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// `user@host:port/db`, for error messages: the password never appears.
    target: String,
    /// Swapped for a new client when the connection is lost; the lock also keeps concurrent
    /// callers from opening a connection each.
    client: Mutex<Arc<Client>>,
}

impl std::fmt::Debug for LegacyDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyDb")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl LegacyDb {
    /// Connects (spawning the connection task); a clear error naming host/db when it fails.
    /// Never logs the password.
    pub async fn connect(url: &str) -> Result<Self, LegacyDbError> {
        let mut config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| LegacyDbError::Url(Chain(&e).to_string()))?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(LegacyDbError::TlsUnsupported);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        let target = describe(&config);
        let client = open(&config, &target).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                target,
                client: Mutex::new(Arc::new(client)),
            }),
        })
    }

    /// The highest id in callme_callback (0 when empty).
    pub async fn max_id(&self) -> Result<i64, LegacyDbError> {
        let row = self
            .run(|c| async move {
                c.query_one("SELECT COALESCE(max(id), 0) FROM callme_callback", &[])
                    .await
            })
            .await?;
        Ok(row.get(0))
    }

    /// Moves the table's id sequence so that the next `nextval` is greater than `id`, and never
    /// backwards: fluxcb calls it after taking ids of its own, while the legacy API may be
    /// taking ids too.
    ///
    /// One statement, so the window in which a concurrent `nextval` could pass `id` between the
    /// check and the `setval` is as short as the server can make it; `setval` cannot be made
    /// conditional any other way without locking out the legacy writers.
    pub async fn advance_sequence_past(&self, id: i64) -> Result<(), LegacyDbError> {
        // The next nextval returns last_value + 1 once the sequence has been used, its start
        // value before (pg_sequence_last_value is NULL then).
        const SQL: &str = "SELECT setval(seq, $1, true) \
            FROM (SELECT pg_get_serial_sequence('callme_callback', 'id')::regclass AS seq) s \
            WHERE $1 >= COALESCE(pg_sequence_last_value(seq) + 1, \
                (SELECT seqstart FROM pg_sequence WHERE seqrelid = seq))";
        self.run(|c| async move { c.query(SQL, &[&id]).await })
            .await?;
        Ok(())
    }

    /// Writes a row back into the legacy table with its own id (a rollback hands fluxcb's
    /// callbacks back): inserted, or updated where the row is there already (one imported
    /// earlier). Idempotent, so a rollback can be rerun.
    pub async fn write_back(&self, row: &LegacyRow) -> Result<(), LegacyDbError> {
        const SQL: &str = "INSERT INTO callme_callback (id, url, method, headers, payload, \
            external_id, callback_time, status, attempts, max_attempts, last_response_code, \
            last_error, sent_at, created_at, updated_at) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
            ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, method = EXCLUDED.method, \
            headers = EXCLUDED.headers, payload = EXCLUDED.payload, \
            external_id = EXCLUDED.external_id, callback_time = EXCLUDED.callback_time, \
            status = EXCLUDED.status, attempts = EXCLUDED.attempts, \
            max_attempts = EXCLUDED.max_attempts, last_response_code = EXCLUDED.last_response_code, \
            last_error = EXCLUDED.last_error, sent_at = EXCLUDED.sent_at, \
            updated_at = EXCLUDED.updated_at";
        self.run(|c| async move {
            c.execute(
                SQL,
                &[
                    &row.id,
                    &row.url,
                    &row.method,
                    &row.headers,
                    &row.payload,
                    &row.external_id,
                    &row.callback_time,
                    &row.status,
                    &row.attempts,
                    &row.max_attempts,
                    &row.last_response_code,
                    &row.last_error,
                    &row.sent_at,
                    &row.created_at,
                    &row.updated_at,
                ],
            )
            .await
        })
        .await?;
        Ok(())
    }

    /// Rows with id > `after`, ascending, at most `batch` of them: call again with the last id
    /// to page through the table in constant memory (keyset pagination, so rows inserted
    /// meanwhile are picked up and none is read twice).
    pub async fn rows_after(
        &self,
        after: i64,
        batch: u32,
    ) -> Result<Vec<LegacyRow>, LegacyDbError> {
        let sql =
            format!("SELECT {ROW_COLUMNS} FROM callme_callback WHERE id > $1 ORDER BY id LIMIT $2");
        let limit = i64::from(batch);
        let rows = self
            .run(|c| {
                let sql = &sql;
                async move { c.query(sql.as_str(), &[&after, &limit]).await }
            })
            .await?;
        rows.iter().map(decode_row).collect()
    }

    pub async fn row(&self, id: i64) -> Result<Option<LegacyRow>, LegacyDbError> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM callme_callback WHERE id = $1");
        let row = self
            .run(|c| {
                let sql = &sql;
                async move { c.query_opt(sql.as_str(), &[&id]).await }
            })
            .await?;
        row.as_ref().map(decode_row).transpose()
    }

    /// API tokens with their user names (authtoken_token join auth_user), oldest first.
    pub async fn tokens(&self) -> Result<Vec<LegacyToken>, LegacyDbError> {
        let rows = self
            .run(|c| async move {
                c.query(
                    "SELECT t.key, u.username, t.created FROM authtoken_token t \
                     JOIN auth_user u ON u.id = t.user_id ORDER BY t.created, t.key",
                    &[],
                )
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| LegacyToken {
                key: r.get(0),
                user: r.get(1),
                created: r.get(2),
            })
            .collect())
    }

    pub async fn count_by_status(&self) -> Result<BTreeMap<String, u64>, LegacyDbError> {
        let rows = self
            .run(|c| async move {
                c.query(
                    "SELECT status, count(*) FROM callme_callback GROUP BY status",
                    &[],
                )
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    u64::try_from(r.get::<_, i64>(1)).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Runs `op` on the current connection, and once more on a fresh one if the connection
    /// turned out to be gone.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, LegacyDbError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client().await?;
        match op(client.clone()).await {
            Err(e) if is_connection_error(&e) => {
                tracing::warn!(
                    target = %self.inner.target,
                    error = %Chain(&e),
                    "legacy database connection lost; reconnecting once"
                );
                let client = self.reconnect(&client).await?;
                op(client).await.map_err(|e| self.error(e))
            }
            result => result.map_err(|e| self.error(e)),
        }
    }

    /// The current client, replaced first if its connection has already ended (a restart seen
    /// by the connection task before any query noticed).
    async fn client(&self) -> Result<Arc<Client>, LegacyDbError> {
        let current = self.inner.client.lock().await.clone();
        if current.is_closed() {
            self.reconnect(&current).await
        } else {
            Ok(current)
        }
    }

    async fn reconnect(&self, stale: &Arc<Client>) -> Result<Arc<Client>, LegacyDbError> {
        let mut current = self.inner.client.lock().await;
        if !Arc::ptr_eq(&current, stale) && !current.is_closed() {
            // Another caller reconnected while this one waited for the lock.
            return Ok(current.clone());
        }
        let fresh = Arc::new(open(&self.inner.config, &self.inner.target).await?);
        *current = fresh.clone();
        Ok(fresh)
    }

    fn error(&self, cause: tokio_postgres::Error) -> LegacyDbError {
        let target = self.inner.target.clone();
        if is_connection_error(&cause) {
            LegacyDbError::Unreachable { target, cause }
        } else {
            LegacyDbError::Query { target, cause }
        }
    }
}

#[async_trait]
impl LegacyTable for LegacyDb {
    async fn next_ids(&self, count: u32) -> Result<Vec<i64>, StoreError> {
        let count = i32::try_from(count)
            .map_err(|_| StoreError::Internal(format!("{count} ids asked for at once")))?;
        let rows = self
            .run(|c| async move {
                c.query(
                    "SELECT nextval(pg_get_serial_sequence('callme_callback', 'id')) \
                     FROM generate_series(1, $1)",
                    &[&count],
                )
                .await
            })
            .await?;
        let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        // Each nextval is larger than the one before, but SQL promises no row order.
        ids.sort_unstable();
        Ok(ids)
    }

    async fn external_id_exists(&self, external_id: &str) -> Result<bool, StoreError> {
        let row = self
            .run(|c| async move {
                c.query_one(
                    "SELECT EXISTS (SELECT 1 FROM callme_callback WHERE external_id = $1)",
                    &[&external_id],
                )
                .await
            })
            .await?;
        Ok(row.get(0))
    }

    async fn newest(
        &self,
        statuses: Option<&[&str]>,
        external_id: Option<&str>,
        limit: u64,
    ) -> Result<(u64, Vec<LegacyRow>), StoreError> {
        let statuses: Option<Vec<String>> =
            statuses.map(|s| s.iter().map(|x| (*x).to_owned()).collect());
        let external_id = external_id.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // NULL parameters switch a filter off, so one statement serves every combination.
        let filter =
            "($1::text[] IS NULL OR status = ANY($1)) AND ($2::text IS NULL OR external_id = $2)";
        let count_sql = format!("SELECT count(*) FROM callme_callback WHERE {filter}");
        let rows_sql = format!(
            "SELECT {ROW_COLUMNS} FROM callme_callback WHERE {filter} ORDER BY id DESC LIMIT $3"
        );
        let (statuses, external_id) = (&statuses, &external_id);
        let count = self
            .run(|c| {
                let sql = &count_sql;
                async move { c.query_one(sql.as_str(), &[statuses, external_id]).await }
            })
            .await?;
        let rows = self
            .run(|c| {
                let sql = &rows_sql;
                async move {
                    c.query(sql.as_str(), &[statuses, external_id, &limit])
                        .await
                }
            })
            .await?;
        let rows = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
        Ok((count.get::<_, i64>(0).max(0) as u64, rows))
    }
}

async fn open(config: &Config, target: &str) -> Result<Client, LegacyDbError> {
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|cause| LegacyDbError::Unreachable {
                target: target.to_owned(),
                cause,
            })?;
    let target = target.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            // The next query sees the client closed and reconnects.
            tracing::warn!(%target, error = %Chain(&error), "legacy database connection ended");
        }
    });
    Ok(client)
}

/// Connection-level failures, after which a new connection may succeed: the socket failed, the
/// client is closed, or the server ended the session (terminated backend, shutdown, restart).
fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code);
    }
    std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
}

/// An error with its causes, `: `-separated.
struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut target = String::new();
    if let Some(user) = config.get_user() {
        target.push_str(user);
        target.push('@');
    }
    target.push_str(&hosts.join(","));
    if !ports.is_empty() {
        target.push(':');
        target.push_str(&ports.join(","));
    }
    target.push('/');
    target.push_str(config.get_dbname().unwrap_or(""));
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_never_show_the_password() {
        let config: Config = "postgres://ops:s3cret@db.internal:6543/legacy"
            .parse()
            .unwrap();
        assert_eq!(describe(&config), "ops@db.internal:6543/legacy");
    }
}
