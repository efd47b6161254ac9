use fluxcb_core::ports::StoreError;
use rusqlite::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the store was written by a newer fluxcb (schema {found}; this build knows up to {supported}): upgrade fluxcb, or restore a backup")]
    NewerSchema { found: i64, supported: i64 },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "another fluxcb is using {0}; stop it first (only one server may use a data directory)"
    )]
    InUse(String),
    #[error("no fluxcb store at {0}")]
    NoStore(String),
    #[error("{0} is not a fluxcb backup (or it is damaged)")]
    NotABackup(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Sorts SQLite failures into the store's error kinds: what a client can retry (busy, disk full,
/// read-only: 503) versus what is a bug or corruption.
pub fn classify(err: rusqlite::Error) -> StoreError {
    let text = err.to_string();
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy(text),
        Some(
            ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(text),
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(text),
        _ => StoreError::Internal(text),
    }
}

pub fn sql(err: rusqlite::Error) -> StoreError {
    classify(err)
}
