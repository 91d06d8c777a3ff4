//! Schema and numbered migrations, version kept in `PRAGMA user_version`.
//!
//! Each step is applied inside one `BEGIN IMMEDIATE` transaction together with the
//! version bump, so a crash mid-upgrade leaves the previous version intact. A database
//! newer than this code is refused, never "repaired", and no database is ever deleted
//! or recreated.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// Version 1: the append-only tables. Frozen: never edit a shipped step, add a new one.
pub(crate) const V1: &str = "
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    time_us     INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    reason      TEXT,
    subject     TEXT,
    username    TEXT,
    client_ip   TEXT,
    user_agent  TEXT,
    method      TEXT,
    path        TEXT,
    jti         TEXT,
    kid         TEXT,
    alg         TEXT,
    token_fp    TEXT,
    source      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    content_mac BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE TABLE alerts (
    id            INTEGER PRIMARY KEY,
    time_us       INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    detector      TEXT NOT NULL,
    rule          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    subject       TEXT,
    client_ip     TEXT,
    summary       TEXT NOT NULL,
    group_key     TEXT NOT NULL,
    evidence      TEXT NOT NULL,
    count         INTEGER NOT NULL DEFAULT 1,
    status        TEXT NOT NULL DEFAULT 'open',
    status_by     TEXT,
    status_at_us  INTEGER,
    status_note   TEXT
);
CREATE UNIQUE INDEX alerts_open_incident ON alerts(detector, group_key) WHERE status = 'open';
CREATE TABLE chain_anchor (
    singleton        INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_pruned_id   INTEGER NOT NULL,
    last_pruned_hash BLOB NOT NULL,
    pruned_total     INTEGER NOT NULL,
    updated_us       INTEGER NOT NULL
);
";

/// Version 2: query indexes and the chart rollup. Partial indexes skip NULLs, which
/// most rows have in most of these columns, to keep the insert cost down.
pub(crate) const V2: &str = "
CREATE INDEX events_time ON events(time_us);
CREATE INDEX events_kind_time ON events(kind, time_us);
CREATE INDEX events_outcome_time ON events(outcome, time_us);
CREATE INDEX events_reason_time ON events(reason, time_us) WHERE reason IS NOT NULL;
CREATE INDEX events_subject_time ON events(subject, time_us) WHERE subject IS NOT NULL;
CREATE INDEX events_username_time ON events(username, time_us) WHERE username IS NOT NULL;
CREATE INDEX events_ip_time ON events(client_ip, time_us) WHERE client_ip IS NOT NULL;
CREATE INDEX events_jti ON events(jti) WHERE jti IS NOT NULL;
CREATE INDEX alerts_time ON alerts(time_us);
CREATE TABLE rollup (
    dim       INTEGER NOT NULL,
    level     INTEGER NOT NULL,
    bucket_us INTEGER NOT NULL,
    value     TEXT NOT NULL,
    outcome   INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (dim, level, bucket_us, value, outcome)
) WITHOUT ROWID;
CREATE TABLE rollup_state (
    singleton    INTEGER PRIMARY KEY CHECK (singleton = 1),
    watermark_id INTEGER NOT NULL
);
INSERT INTO rollup_state VALUES (1, 0);
";

/// Version 3: the record keeps no secondary index. Every index and the chart rollup
/// move to the derived index database (`crate::index`), which a background thread
/// maintains in large batches, so the writer only appends rows.
pub(crate) const V3: &str = "
DROP INDEX events_time;
DROP INDEX events_kind_time;
DROP INDEX events_outcome_time;
DROP INDEX events_reason_time;
DROP INDEX events_subject_time;
DROP INDEX events_username_time;
DROP INDEX events_ip_time;
DROP INDEX events_jti;
DROP TABLE rollup;
DROP TABLE rollup_state;
";

/// Version 4: how far each detector has analysed the record. Written in the same
/// transaction as the alerts of the batch it covers, so after any crash every
/// committed event is analysed exactly once per detector and no alert is stored twice.
pub(crate) const V4: &str = "
CREATE TABLE detector_cursors (
    detector      TEXT PRIMARY KEY,
    last_event_id INTEGER NOT NULL,
    updated_us    INTEGER NOT NULL
);
";

const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Refuses a database newer than this build.
pub(crate) fn check_not_newer(conn: &Connection) -> Result<i64, StoreError> {
    let found = user_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Brings the database up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let from = check_not_newer(&tx)?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(step)?;
        tracing::info!(version = i + 1, "applied audit schema migration");
    }
    if from < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}
