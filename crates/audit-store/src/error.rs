//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in the audit store. Messages name the file or setting
/// involved and never contain event contents, keys or tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused an operation (I/O error, disk full, locked, corrupt...).
    #[error("audit database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The database was written by a newer tokenwatch. It is never modified or recreated.
    #[error("audit database schema version {found} is newer than this tokenwatch (knows up to {known}); upgrade tokenwatch")]
    SchemaTooNew { found: i64, known: i64 },

    /// A file or directory of the store could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A key file is missing, malformed or unsafe.
    #[error("audit key file {path}: {message}")]
    Key { path: PathBuf, message: String },

    /// A checkpoint file could not be parsed or written.
    #[error("audit checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// The record lost rows its signed checkpoints vouch for, or is missing while its
    /// keys or checkpoints exist. The message names the range and what to do.
    #[error("{0}")]
    LostHistory(String),

    /// The transaction holding this event (or alert change) did not commit; the store
    /// keeps retrying with later batches. Callers must fail closed.
    #[error("audit store is not writable, the record was NOT committed: {0}")]
    Unwritable(String),

    /// The writer thread is gone (store shut down, or it died).
    #[error(
        "audit writer has stopped (store shut down or writer thread died); nothing was recorded"
    )]
    WriterGone,

    /// An alert id that does not exist.
    #[error("no alert with id {0}")]
    AlertNotFound(i64),

    /// A caller-supplied value is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Writing CSV failed (usually the output stream broke).
    #[error("CSV export failed: {0}")]
    Csv(#[from] csv::Error),

    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}

impl StoreError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
