//! The schema, versioned with `PRAGMA user_version` and migrated forward at open. A store
//! written by a newer fluxcb is refused rather than guessed at.
use rusqlite::Connection;

use crate::error::OpenError;

/// Each entry moves the schema from version `index` to `index + 1`. Append only.
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE callbacks (
    id              TEXT NOT NULL UNIQUE,
    tenant          TEXT NOT NULL,
    status          TEXT NOT NULL,
    url             TEXT NOT NULL,
    host            TEXT NOT NULL,
    method          TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body_kind       TEXT NOT NULL,
    content_type    TEXT,
    body            BLOB NOT NULL,
    deliver_at      INTEGER,
    next_attempt_at INTEGER,
    lease_until     INTEGER,
    attempts_made   INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    attempt_budget  INTEGER NOT NULL,
    max_attempts_override INTEGER,
    timeout_ms      INTEGER NOT NULL,
    timeout_override INTEGER,
    metadata        TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    last_error      TEXT
);
-- Claiming: per tenant, oldest due first. Partial, so finished callbacks cost nothing here.
CREATE INDEX callbacks_due ON callbacks (tenant, next_attempt_at)
    WHERE status IN ('scheduled', 'pending');
CREATE INDEX callbacks_leased ON callbacks (lease_until) WHERE status = 'delivering';
CREATE INDEX callbacks_finished ON callbacks (updated_at)
    WHERE status IN ('delivered', 'failed', 'cancelled');
CREATE INDEX callbacks_by_tenant ON callbacks (tenant, id);
CREATE INDEX callbacks_by_tenant_status ON callbacks (tenant, status, id);

CREATE TABLE attempts (
    callback_id      TEXT NOT NULL,
    number           INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    status_code      INTEGER,
    error            TEXT,
    error_detail     TEXT,
    response_headers TEXT NOT NULL,
    response_body    TEXT,
    -- What the attempt led to; with created_* on the callback row, the audit trail needs no
    -- extra row per attempt (see callbacks::events).
    recorded_at      INTEGER NOT NULL,
    to_status        TEXT,
    next_attempt_at  INTEGER,
    dead_letter_reason TEXT
);
CREATE INDEX attempts_by_callback ON attempts (callback_id);

-- Operator actions and recoveries. Creation and attempts are read from the callback and
-- attempt rows, which are never updated in place either.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    callback_id  TEXT NOT NULL,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    actor        TEXT,
    from_status  TEXT,
    to_status    TEXT,
    detail       TEXT NOT NULL
);
CREATE INDEX events_by_callback ON events (callback_id, seq);

CREATE TABLE idempotency (
    tenant      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      INTEGER NOT NULL,
    body        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_age ON idempotency (created_at);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) WITHOUT ROWID;

CREATE TABLE signing_secrets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    retire_at   INTEGER
);
CREATE INDEX signing_secrets_by_tenant ON signing_secrets (tenant, id);

-- Written by readiness checks: proves the disk takes writes right now.
CREATE TABLE heartbeat (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    at  INTEGER NOT NULL
);
"#,
    r#"
-- The legacy wire format: how a callback is framed, and the integer id legacy receivers see.
ALTER TABLE callbacks ADD COLUMN wire_format TEXT NOT NULL DEFAULT 'standard_webhooks';
ALTER TABLE callbacks ADD COLUMN legacy_id INTEGER;
CREATE UNIQUE INDEX callbacks_by_legacy_id ON callbacks (legacy_id) WHERE legacy_id IS NOT NULL;
CREATE TABLE sequences (
    name  TEXT PRIMARY KEY,
    next  INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- The legacy caller API: the caller's external_id (unique per tenant, as the legacy table's
-- column was unique), the URL as the caller wrote it, and the latest answer's status code.
ALTER TABLE callbacks ADD COLUMN external_id TEXT;
ALTER TABLE callbacks ADD COLUMN url_as_given TEXT;
ALTER TABLE callbacks ADD COLUMN last_status_code INTEGER;
-- Which system delivers it during a migration: 'legacy' rows are mirrors, never due here.
ALTER TABLE callbacks ADD COLUMN owner TEXT NOT NULL DEFAULT 'fluxcb';
-- Fenced by a rollback and not yet written to the legacy table.
ALTER TABLE callbacks ADD COLUMN handback_pending INTEGER NOT NULL DEFAULT 0;
CREATE INDEX callbacks_handback ON callbacks (id) WHERE handback_pending = 1;
CREATE UNIQUE INDEX callbacks_by_external_id ON callbacks (tenant, external_id)
    WHERE external_id IS NOT NULL;
-- Page-number listing of legacy rows, newest id first, with or without a status filter.
CREATE INDEX callbacks_by_tenant_legacy_id ON callbacks (tenant, legacy_id)
    WHERE legacy_id IS NOT NULL;
CREATE INDEX callbacks_by_tenant_status_legacy_id ON callbacks (tenant, status, legacy_id)
    WHERE legacy_id IS NOT NULL;
-- Settings changed at runtime and shared by every process (the migration switch).
CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- The console (version 4). Attempts carry their callback's tenant and host, so statistics over
-- a window read one index range without a join; rows written before are filled in here.
ALTER TABLE attempts ADD COLUMN tenant TEXT;
ALTER TABLE attempts ADD COLUMN host TEXT;
UPDATE attempts SET tenant = c.tenant, host = c.host
    FROM callbacks c WHERE c.id = attempts.callback_id;
-- Covers every aggregate of GET /v1/stats: buckets, outcomes, durations and hosts.
CREATE INDEX attempts_stats ON attempts (started_at, tenant, host, error, to_status, duration_ms);
-- Accepted callbacks per bucket, and list filters on creation time.
CREATE INDEX callbacks_by_created ON callbacks (created_at, tenant);
-- The list's destination filter: newest first within one host.
CREATE INDEX callbacks_by_host ON callbacks (host, id);
-- Dead letters grouped by host and error.
CREATE INDEX callbacks_failed ON callbacks (tenant, host, last_error, updated_at)
    WHERE status = 'failed';
-- One row per metadata tag, so a tag filter walks its own callbacks newest first.
CREATE TABLE callback_tags (
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    callback_id  TEXT NOT NULL,
    PRIMARY KEY (key, value, callback_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO callback_tags (key, value, callback_id)
    SELECT j.key, j.value, c.id FROM callbacks c, json_each(c.metadata) j
    WHERE j.type = 'text';
"#,
    r#"
-- Registered destinations (version 5): one JSON record each, read whole by every node's cache.
-- A tenant cannot register the same match twice.
CREATE TABLE destinations (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    match_key   TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    record      TEXT NOT NULL,
    UNIQUE (tenant, match_key)
);
"#,
    r#"
-- Ordered delivery per key (version 6). A callback whose key has an unfinished predecessor waits
-- with no due time (`next_attempt_at` NULL) until the predecessor finishes; this index finds a
-- key's callbacks in acceptance order.
ALTER TABLE callbacks ADD COLUMN ordering_key TEXT;
CREATE INDEX callbacks_by_ordering_key ON callbacks (tenant, ordering_key, id)
    WHERE ordering_key IS NOT NULL;
-- Keys held after a dead letter (policy `hold`) until an operator releases them or retries it.
CREATE TABLE ordering_holds (
    tenant       TEXT NOT NULL,
    key          TEXT NOT NULL,
    callback_id  TEXT NOT NULL,
    held_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
"#,
    r#"
-- Failure notifications (version 7). Rows the engine makes about another callback carry their
-- kind and source; default lists show callers' callbacks only, so the few others get an index.
ALTER TABLE callbacks ADD COLUMN kind TEXT NOT NULL DEFAULT 'callback';
ALTER TABLE callbacks ADD COLUMN source_id TEXT;
ALTER TABLE callbacks ADD COLUMN notify_url TEXT;
ALTER TABLE callbacks ADD COLUMN notify_on TEXT;
CREATE INDEX callbacks_not_callers ON callbacks (tenant, id) WHERE kind <> 'callback';
"#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> Result<(), OpenError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "migrated the store schema");
    }
    Ok(())
}
