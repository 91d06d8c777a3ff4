//! The tokenwatch audit store: every auth decision, durable on disk, tamper-evident,
//! fast to write, query and export.
//!
//! # Shape
//!
//! * **One writer thread** owns the only read-write SQLite connection. Callers hand it
//!   events through a bounded queue ([`AuditWriter`]); it commits whatever is queued
//!   in one `BEGIN IMMEDIATE` transaction (group commit) and only *then* acknowledges
//!   each caller. A full queue makes callers wait; nothing is ever dropped. A failed
//!   commit fails every caller in that batch, marks the store unwritable in
//!   [`Health`] and is retried with the next batch, so the server can fail closed.
//! * **Tamper evidence.** Each row carries `content_mac = HMAC(k, canonical fields)` and
//!   `hash = HMAC(k, prev_hash ‖ id ‖ content_mac)`. The key lives in `key_dir`, apart
//!   from the database. The two MACs let [`verify_chain`] tell an *edited* row (content
//!   MAC wrong, link right) from an *inserted* one (both wrong) from *deleted* rows (a
//!   genuine row whose link no longer meets its predecessor). Signed Ed25519 checkpoints
//!   of the chain head are written to `checkpoint_dir` so that cutting off the newest
//!   rows is caught too ([`ProblemKind::Truncated`]).
//! * **Readers** ([`AuditReader`]) use their own read-only connections (WAL lets them run
//!   beside the writer): keyset-paginated queries, chart aggregates served from a rollup
//!   table the writer maintains, and streamed CSV export with formula-injection defence.
//! * **Retention** prunes the oldest rows in the writer thread and records a signed
//!   anchor (the last pruned id and hash) so what remains still verifies.
//!
//! # Example
//!
//! ```
//! use audit_store::{AuditStore, NewEvent, Outcome, StoreConfig, EventFilter, kinds};
//! let dir = tempfile::tempdir().unwrap();
//! let store = AuditStore::open(StoreConfig::in_data_dir(dir.path())).unwrap();
//! let id = store
//!     .writer()
//!     .record_blocking(NewEvent::new(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure)
//!         .with_username("alice")
//!         .with_reason("bad_password"))
//!     .unwrap();
//! // Acknowledged means committed: a separate connection already sees it.
//! let page = store.reader().unwrap().query_events(&EventFilter::default(), None, 10).unwrap();
//! assert_eq!(page.items[0].id, id);
//! store.shutdown().unwrap();
//! assert!(audit_store::verify_chain(&StoreConfig::in_data_dir(dir.path())).unwrap().is_ok());
//! ```

mod chain;
mod checkpoint;
mod config;
mod ecs;
mod error;
mod evidence;
mod export;
mod index;
mod integrity;
mod keys;
mod model;
mod note;
mod reader;
mod rollup;
mod schema;
mod verify;
mod watch;
mod writer;

pub use config::{StoreConfig, Synchronous};
pub use ecs::ECS_VERSION;
pub use error::StoreError;
pub use export::{
    rfc3339_us, try_rfc3339_us, ChainRange, Exported, SafeCsv, CSV_ALERT_COLUMNS,
    CSV_EVENT_COLUMNS, CSV_IP_SUMMARY_COLUMNS, CSV_USER_SUMMARY_COLUMNS,
};
pub use integrity::{IntegrityFailure, IntegrityHealth};
pub use model::*;
pub use reader::AuditReader;
pub use schema::SCHEMA_VERSION;
pub use verify::{verify_chain, ChainProblem, ProblemKind, VerifyReport};
pub use writer::{AcceptedLoss, Ack, AuditStore, AuditWriter, CommitWatch, Health};
