//! Integrity checks while the store runs: the hash chain, verified incrementally,
//! and SQLite's own page check.
//!
//! A background thread (low CPU priority, like the indexer) wakes every
//! `StoreConfig::integrity_interval` and
//! * verifies the rows committed since its last pass with the same per-row logic as
//!   `audit verify` (`verify::verify_rows`). It starts from the newest signed head
//!   checkpoint, so the cost at start-up is bounded by the rows written after it,
//!   not by the size of the record;
//! * runs `PRAGMA quick_check` on a fresh read-only connection (every page of the
//!   file, read from disk rather than from the writer's cache).
//!
//! A failure is sticky until restart (damage to history does not heal): it is in
//! [`crate::Health::integrity`], counted, logged at ERROR, and recorded as an
//! `audit.integrity_failed` event naming the first bad row. Token service goes on:
//! the damage is to past history, and refusing logins would not repair it.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::json;

use crate::chain::{self, Mac, GENESIS};
use crate::checkpoint::{self, HEAD, LOSS};
use crate::model::now_us;
use crate::verify::{is_damage, verify_rows, ChainProblem};
use crate::writer::{AuditWriter, Shared};
use crate::{kinds, NewEvent, Outcome, StoreConfig, StoreError};

/// Rows a page failure is localised in, at most, by scanning for the first unreadable one.
const MAX_PAGE_CHECK_LINES: u32 = 20;

/// What `/healthz` shows of the integrity checks.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct IntegrityHealth {
    /// `ok`, `failing`, `pending` (no pass finished yet) or `disabled`.
    pub status: &'static str,
    /// Rows up to this id have verified against the chain (since the starting checkpoint).
    pub verified_id: i64,
    pub last_check_us: Option<i64>,
    /// Failures detected since start (each distinct problem once).
    pub failures: u64,
    pub failure: Option<IntegrityFailure>,
}

/// The first integrity problem found.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct IntegrityFailure {
    /// `chain` (a row does not verify) or `pages` (SQLite's page check failed).
    pub check: &'static str,
    /// The first bad row, when one can be named.
    pub row_id: Option<i64>,
    pub message: String,
}

/// The checker's state, shared with [`crate::AuditStore::health`].
#[derive(Default)]
pub(crate) struct IntegrityState {
    pub enabled: bool,
    verified: Option<(i64, Mac)>,
    pub last_check_us: Option<i64>,
    pub failures: u64,
    pub failure: Option<IntegrityFailure>,
}

impl IntegrityState {
    pub(crate) fn health(&self) -> IntegrityHealth {
        let status = match (self.enabled, &self.failure, self.last_check_us) {
            (false, _, _) => "disabled",
            (_, Some(_), _) => "failing",
            (_, None, None) => "pending",
            (_, None, Some(_)) => "ok",
        };
        IntegrityHealth {
            status,
            verified_id: self.verified.map_or(0, |v| v.0),
            last_check_us: self.last_check_us,
            failures: self.failures,
            failure: self.failure.clone(),
        }
    }
}

pub(crate) struct IntegrityHandle {
    now: Option<Sender<Sender<()>>>,
    handle: Option<JoinHandle<()>>,
}

impl IntegrityHandle {
    /// Runs a pass now and waits for it.
    pub(crate) fn check_now(&self) -> Result<(), StoreError> {
        let (tx, rx) = bounded(1);
        self.now
            .as_ref()
            .and_then(|s| s.send(tx).ok())
            .ok_or(StoreError::WriterGone)?;
        rx.recv().map_err(|_| StoreError::WriterGone)
    }

    pub(crate) fn stop(&mut self) {
        self.now.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub(crate) fn spawn(
    cfg: &StoreConfig,
    shared: Arc<Shared>,
    writer: AuditWriter,
) -> Result<Option<IntegrityHandle>, StoreError> {
    let Some(interval) = cfg.integrity_interval else {
        return Ok(None);
    };
    lock(&shared).enabled = true;
    let (now, rx) = bounded(4);
    let mut checker = Checker {
        cfg: cfg.clone(),
        shared,
        writer,
    };
    let handle = thread::Builder::new()
        .name("audit-integrity".into())
        .spawn(move || {
            crate::index::lower_own_priority();
            checker.run(interval, &rx);
        })
        .map_err(|e| StoreError::io("cannot start the integrity checker for", &cfg.db_path, e))?;
    Ok(Some(IntegrityHandle {
        now: Some(now),
        handle: Some(handle),
    }))
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, IntegrityState> {
    shared.integrity.lock().unwrap_or_else(|p| p.into_inner())
}

struct Checker {
    cfg: StoreConfig,
    shared: Arc<Shared>,
    writer: AuditWriter,
}

impl Checker {
    fn run(&mut self, interval: Duration, rx: &Receiver<Sender<()>>) {
        // The first pass at start: what was written since the newest checkpoint.
        self.pass();
        loop {
            match rx.recv_timeout(interval) {
                Ok(reply) => {
                    self.pass();
                    let _ = reply.send(());
                }
                Err(RecvTimeoutError::Timeout) => self.pass(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn pass(&mut self) {
        let found = match self.check() {
            Ok(found) => found,
            Err(StoreError::Sqlite(e)) if is_damage(&e) => Some(IntegrityFailure {
                check: "pages",
                row_id: None,
                message: format!("the audit record could not be read: {e}"),
            }),
            // Busy, locked, or the file is gone (the writer reports that itself):
            // not evidence of damage, so tried again at the next pass.
            Err(e) => {
                tracing::warn!(error = %e, "the audit integrity check could not run; will retry");
                return;
            }
        };
        let mut st = lock(&self.shared);
        st.last_check_us = Some(now_us());
        let Some(f) = found else { return };
        if st.failure.as_ref() == Some(&f) {
            return;
        }
        st.failures += 1;
        st.failure = Some(f.clone());
        drop(st);
        self.report(&f);
    }

    fn report(&self, f: &IntegrityFailure) {
        let row = f
            .row_id
            .map_or_else(|| "none named".to_owned(), |r| r.to_string());
        tracing::error!(check = f.check, first_bad_row = %row, problem = %f.message,
            "AUDIT INTEGRITY CHECK FAILED: the audit record is damaged; run `tokenwatch audit verify` and restore audit.db from a backup");
        let mut ev = NewEvent::new(kinds::AUDIT_INTEGRITY_FAILED, Outcome::Failure).with_reason(
            if f.check == "chain" {
                "chain_broken"
            } else {
                "page_check_failed"
            },
        );
        ev.detail = json!({ "check": f.check, "first_bad_row": f.row_id, "problem": f.message });
        if let Err(e) = self.writer.record_blocking(ev) {
            tracing::error!(error = %e, "the audit.integrity_failed event could not be recorded");
        }
    }

    /// One pass: the chain since the last verified row, then the pages.
    fn check(&mut self) -> Result<Option<IntegrityFailure>, StoreError> {
        let conn = Connection::open_with_flags(
            &self.cfg.db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.cfg.busy_timeout)?;
        if lock(&self.shared)
            .failure
            .as_ref()
            .is_some_and(|f| f.check == "chain")
        {
            // The chain cannot be followed past a bad row; only the pages are rechecked.
            return self.check_pages(&conn);
        }
        if let Some(f) = self.check_chain(&conn)? {
            return Ok(Some(f));
        }
        self.check_pages(&conn)
    }

    fn check_chain(&mut self, conn: &Connection) -> Result<Option<IntegrityFailure>, StoreError> {
        let tx = conn.unchecked_transaction()?;
        let anchor = anchor(&tx)?;
        let known = lock(&self.shared).verified;
        let from = match known {
            // Retention pruned past the last verified row: go on from the anchor.
            Some(v) if v.0 >= anchor.0 => v,
            _ => self.start_point(&tx, anchor)?,
        };
        let out = verify_rows(&tx, &self.shared.keys.hmac, from.0, from, &HashMap::new())?;
        lock(&self.shared).verified = Some(out.last);
        if let Some((id, e)) = out.unreadable {
            return Ok(Some(unreadable(id, &e)));
        }
        Ok(out.problem.map(chain_failure))
    }

    /// The newest signed head checkpoint the table reaches, else the retention anchor.
    fn start_point(&self, conn: &Connection, anchor: (i64, Mac)) -> Result<(i64, Mac), StoreError> {
        let max: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
        let public = self.shared.keys.public_key();
        let files = checkpoint::load_all(&self.cfg.checkpoint_dir)?;
        let since_loss = checkpoint::since_loss(&files);
        let newest = files
            .into_iter()
            .rev()
            .map(|(_, f)| f)
            .filter(|f| {
                (f.body.kind == HEAD || f.body.kind == LOSS)
                    && f.body.seq >= since_loss
                    && f.body.last_id <= max
                    && f.body.last_id > anchor.0
            })
            .find(|f| checkpoint::signature_ok(public, f));
        let hash = newest.as_ref().and_then(|f| {
            let h = hex::decode(&f.body.last_hash).ok()?;
            chain::to_array(&h)
        });
        Ok(match (newest, hash) {
            (Some(f), Some(h)) => (f.body.last_id, h),
            _ => anchor,
        })
    }

    fn check_pages(&self, conn: &Connection) -> Result<Option<IntegrityFailure>, StoreError> {
        let lines = {
            let mut st = conn.prepare(&format!("PRAGMA quick_check({MAX_PAGE_CHECK_LINES})"))?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()
        };
        let lines = match lines {
            Ok(l) => l,
            Err(e) if is_damage(&e) => vec![e.to_string()],
            Err(e) => return Err(e.into()),
        };
        if lines.len() == 1 && lines[0] == "ok" {
            return Ok(None);
        }
        Ok(Some(IntegrityFailure {
            check: "pages",
            row_id: self.first_unreadable_row(conn),
            message: format!("SQLite's page check failed: {}", lines.join("; ")),
        }))
    }

    /// Names the first row that cannot be read or does not verify, scanning the whole
    /// chain from the anchor: only done once a page check has failed.
    fn first_unreadable_row(&self, conn: &Connection) -> Option<i64> {
        let anchor = anchor(conn).ok()?;
        let out = verify_rows(
            conn,
            &self.shared.keys.hmac,
            anchor.0,
            anchor,
            &HashMap::new(),
        )
        .ok()?;
        out.unreadable
            .map(|(id, _)| id)
            .or(out.problem.map(|p| p.row_id))
    }
}

fn anchor(conn: &Connection) -> Result<(i64, Mac), StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT last_pruned_id, last_pruned_hash FROM chain_anchor WHERE singleton = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((id, h)) => (id, chain::to_array(&h).unwrap_or(GENESIS)),
        None => (0, GENESIS),
    })
}

fn chain_failure(p: ChainProblem) -> IntegrityFailure {
    IntegrityFailure {
        check: "chain",
        row_id: Some(p.row_id),
        message: format!("{:?}: {}", p.kind, p.message),
    }
}

fn unreadable(id: i64, e: &rusqlite::Error) -> IntegrityFailure {
    IntegrityFailure {
        check: "pages",
        row_id: Some(id),
        message: format!("rows from {id} on cannot be read: {e}"),
    }
}
