//! `tokenwatch audit verify`: checks the chain against the key and the signed checkpoints.
//!
//! For each row, in id order, two facts are checked:
//! * `content ok`: `HMAC(k, fields)` equals the stored `content_mac`;
//! * `link ok`: `HMAC(k, prev.hash ‖ id ‖ content_mac)` equals the stored `hash`.
//!
//! | content | link | id            | verdict                                             |
//! |---------|------|---------------|-----------------------------------------------------|
//! | ok      | ok   | prev + 1      | fine                                                |
//! | bad     | ok   | any           | **edited**: fields changed after writing            |
//! | bad     | bad  | any           | **inserted** (or replaced): never made by the writer |
//! | ok      | bad  | > prev + 1    | **deleted**: a genuine row lost its predecessors    |
//! | ok      | bad  | prev + 1      | **edited**: hash column altered or rows swapped     |
//!
//! Then the newest signed `head` checkpoint must still be present with the same hash,
//! else the newest rows were cut off (**truncated**), and rows pruned by retention must
//! be covered by a signed `prune` checkpoint. Rows written after the newest checkpoint
//! can be cut off undetectably; `checkpoint_interval` bounds that window.

use std::collections::HashMap;
use std::fmt;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::chain::{self, Mac, RowFields, GENESIS};
use crate::checkpoint::{self, HEAD, LOSS, PRUNE};
use crate::{keys, StoreConfig, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    Edited,
    Inserted,
    Deleted,
    Truncated,
    /// A checkpoint file has a bad signature or the sequence of files is broken.
    BadCheckpoint,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainProblem {
    /// The first affected row (for deletions: the first missing id).
    pub row_id: i64,
    pub kind: ProblemKind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub rows_checked: u64,
    pub checkpoints_checked: u64,
    /// Losses of history an operator recorded (`audit.loss_accepted`, signed `loss`
    /// checkpoints): the record is intact since, but not complete.
    pub losses_accepted: u64,
    pub first_problem: Option<ChainProblem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.first_problem {
            None if self.losses_accepted > 0 => write!(
                f,
                "audit chain OK: {} rows and {} signed checkpoints verified; {} recorded loss(es) of \
                 history (see the audit.loss_accepted events)",
                self.rows_checked, self.checkpoints_checked, self.losses_accepted
            ),
            None => write!(
                f,
                "audit chain OK: {} rows and {} signed checkpoints verified",
                self.rows_checked, self.checkpoints_checked
            ),
            Some(p) => write!(
                f,
                "audit chain TAMPERED: {:?} at row {}: {} ({} rows checked before the problem)",
                p.kind, p.row_id, p.message, self.rows_checked
            ),
        }
    }
}

fn problem(row_id: i64, kind: ProblemKind, message: String) -> Option<ChainProblem> {
    Some(ChainProblem {
        row_id,
        kind,
        message,
    })
}

/// Verifies the whole audit chain of the store described by `cfg`. Read-only: safe
/// while the server runs. Never creates keys: missing keys are an error.
pub fn verify_chain(cfg: &StoreConfig) -> Result<VerifyReport, StoreError> {
    let keys = keys::load(&cfg.key_dir)?;
    let public = keys.public_key().to_vec();
    let conn = Connection::open_with_flags(
        &cfg.db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(cfg.busy_timeout)?;
    let version = crate::schema::check_not_newer(&conn)?;
    if version < 1 {
        return Err(StoreError::InvalidArgument(format!(
            "{} is not an audit database",
            cfg.db_path.display()
        )));
    }
    let tx = conn.unchecked_transaction()?;
    let mut report = VerifyReport {
        rows_checked: 0,
        checkpoints_checked: 0,
        losses_accepted: 0,
        first_problem: None,
    };

    // 1. The checkpoint files themselves.
    let files = checkpoint::load_all(&cfg.checkpoint_dir)?;
    let mut prev_sig: Option<&str> = None;
    let mut prev_seq = 0;
    for (path, f) in &files {
        if !checkpoint::signature_ok(&public, f) {
            report.first_problem = problem(
                f.body.last_id,
                ProblemKind::BadCheckpoint,
                format!("{} has an invalid signature", path.display()),
            );
            return Ok(report);
        }
        // A recorded loss may follow a gap: it names the damaged files it set aside.
        let linked = f.body.prev_signature.as_deref() == prev_sig && f.body.seq == prev_seq + 1;
        if !linked && f.body.kind != LOSS {
            report.first_problem = problem(
                f.body.last_id,
                ProblemKind::BadCheckpoint,
                format!("checkpoint sequence broken before {} (a checkpoint file was removed or replaced)", path.display()),
            );
            return Ok(report);
        }
        prev_sig = Some(&f.signature);
        prev_seq = f.body.seq;
        report.checkpoints_checked += 1;
    }
    // Mirrors hold signed-note copies: one newer than the primary folder's newest file
    // means checkpoint files were removed from it.
    let folders = checkpoint::folders(&cfg.checkpoint_dir, &cfg.checkpoint_mirrors);
    let newest = checkpoint::newest(&folders, &public)?;
    if let Some(e) = newest.as_ref().filter(|e| e.body.seq > prev_seq) {
        report.first_problem = problem(
            e.body.last_id,
            ProblemKind::BadCheckpoint,
            format!(
                "checkpoint #{} ({}) is missing from {}: checkpoint files were removed",
                e.body.seq,
                e.path.display(),
                cfg.checkpoint_dir.display()
            ),
        );
        return Ok(report);
    }
    // Checkpoints before the newest recorded loss describe history that is gone.
    report.losses_accepted = files.iter().filter(|(_, f)| f.body.kind == LOSS).count() as u64;
    let since_loss = checkpoint::since_loss(&files);

    // 2. Retention: the anchor must be covered by a signed prune checkpoint.
    let anchor: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT last_pruned_id, last_pruned_hash FROM chain_anchor WHERE singleton = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let max_pruned = files
        .iter()
        .filter(|(_, f)| f.body.kind == PRUNE)
        .map(|(_, f)| f.body.last_id)
        .max()
        .unwrap_or(0);
    let (prev_id, prev_hash) = match &anchor {
        Some((id, h)) => (*id, chain::to_array(h).unwrap_or(GENESIS)),
        None => (0, GENESIS),
    };
    if prev_id > max_pruned {
        report.first_problem = problem(
            max_pruned + 1,
            ProblemKind::Deleted,
            format!(
                "rows {}..={prev_id} were removed but no signed retention checkpoint covers them",
                max_pruned + 1
            ),
        );
        return Ok(report);
    }
    if let Some((_, f)) = files
        .iter()
        .find(|(_, f)| f.body.kind == PRUNE && f.body.last_id == prev_id)
    {
        if f.body.last_hash != hex::encode(prev_hash) {
            report.first_problem = problem(
                prev_id + 1,
                ProblemKind::Edited,
                "the retention anchor's hash differs from its signed checkpoint".into(),
            );
            return Ok(report);
        }
    }
    let heads: HashMap<i64, &checkpoint::File> = files
        .iter()
        .filter(|(_, f)| {
            (f.body.kind == HEAD || f.body.kind == LOSS)
                && f.body.seq >= since_loss
                && f.body.last_id > prev_id
        })
        .map(|(_, f)| (f.body.last_id, f))
        .collect();

    // 3. The rows.
    // Every row, not only those above the anchor: a row at or below it was inserted.
    let rows = verify_rows(&tx, &keys.hmac, i64::MIN, (prev_id, prev_hash), &heads)?;
    if let Some((_, e)) = rows.unreadable {
        return Err(e.into());
    }
    report.rows_checked = rows.rows_checked;
    if rows.problem.is_some() {
        report.first_problem = rows.problem;
        return Ok(report);
    }
    let last_id = rows.last.0;

    // 4. Truncation: the newest head checkpoint must still be in the table.
    if let Some((path, f)) = files
        .iter()
        .rev()
        .find(|(_, f)| (f.body.kind == HEAD || f.body.kind == LOSS) && f.body.seq >= since_loss)
    {
        if f.body.last_id > last_id {
            report.first_problem = problem(
                last_id + 1,
                ProblemKind::Truncated,
                format!(
                    "rows {}..={} are missing: signed checkpoint {} recorded row {} as the chain head",
                    last_id + 1,
                    f.body.last_id,
                    path.display(),
                    f.body.last_id
                ),
            );
        }
    }
    Ok(report)
}

/// What [`verify_rows`] found: how far the chain verified, and the first problem.
pub(crate) struct RowsOutcome {
    pub rows_checked: u64,
    /// The last row that verified (id, chain hash), or the starting point.
    pub last: (i64, Mac),
    pub problem: Option<ChainProblem>,
    /// The first id after `last` and why it could not be read (a damaged page).
    pub unreadable: Option<(i64, rusqlite::Error)>,
}

/// Checks every row with an id above `scan_after` in id order against the chain
/// ending at `from` (an id and its chain hash), stopping at the first problem. `heads`: signed head checkpoints by id that
/// the rows must match. Used by the full verification and by the running store's
/// incremental check alike.
pub(crate) fn verify_rows(
    conn: &Connection,
    hmac: &aws_lc_rs::hmac::Key,
    scan_after: i64,
    from: (i64, Mac),
    heads: &HashMap<i64, &checkpoint::File>,
) -> Result<RowsOutcome, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT id, time_us, kind, outcome, reason, subject, username, client_ip, user_agent, method, path,
                jti, kid, alg, token_fp, source, detail, content_mac, hash FROM events WHERE id > ?1 ORDER BY id",
    )?;
    let mut rows = st.query([scan_after])?;
    let mut out = RowsOutcome {
        rows_checked: 0,
        last: from,
        problem: None,
        unreadable: None,
    };
    loop {
        let checked = match rows.next() {
            Ok(Some(r)) => check_row(r, hmac, out.last, heads),
            Ok(None) => break,
            Err(e) => Err(e.into()),
        };
        let (id, hash) = match checked {
            Ok(Ok(v)) => v,
            Ok(Err(p)) => {
                out.problem = Some(p);
                return Ok(out);
            }
            Err(StoreError::Sqlite(e)) if is_damage(&e) => {
                out.unreadable = Some((out.last.0 + 1, e));
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        out.rows_checked += 1;
        out.last = (id, hash);
    }
    Ok(out)
}

/// SQLite says the file itself is damaged (not busy, locked or out of memory).
pub(crate) fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// One row against its predecessor `prev`: its id and chain hash when it is fine.
fn check_row(
    r: &rusqlite::Row<'_>,
    hmac: &aws_lc_rs::hmac::Key,
    (prev_id, prev_hash): (i64, Mac),
    heads: &HashMap<i64, &checkpoint::File>,
) -> Result<Result<(i64, Mac), ChainProblem>, StoreError> {
    let id: i64 = r.get(0)?;
    let s = |i: usize| -> rusqlite::Result<Option<&str>> {
        Ok(r.get_ref(i)?.as_str_or_null().ok().flatten())
    };
    let fields = RowFields {
        time_us: r.get(1)?,
        kind: s(2)?.unwrap_or(""),
        outcome: s(3)?.unwrap_or(""),
        reason: s(4)?,
        subject: s(5)?,
        username: s(6)?,
        client_ip: s(7)?,
        user_agent: s(8)?,
        method: s(9)?,
        path: s(10)?,
        jti: s(11)?,
        kid: s(12)?,
        alg: s(13)?,
        token_fp: s(14)?,
        source: s(15)?.unwrap_or(""),
        detail: s(16)?.unwrap_or(""),
    };
    let blob = |i: usize| -> rusqlite::Result<&[u8]> {
        Ok(r.get_ref(i)?
            .as_blob_or_null()
            .ok()
            .flatten()
            .unwrap_or_default())
    };
    let content_mac = blob(17)?;
    let hash = blob(18)?;
    let expected = prev_id + 1;
    let content_ok = chain::mac_eq(&fields.content_mac(hmac), content_mac);
    let link_ok = chain::to_array(content_mac)
        .is_some_and(|cm| chain::mac_eq(&chain::link(hmac, &prev_hash, id, &cm), hash));
    let verdict = if id <= prev_id {
        problem(
            id,
            ProblemKind::Inserted,
            format!(
                "row {id} sits at or below the retention anchor (row {prev_id}); it was inserted"
            ),
        )
    } else {
        match (content_ok, link_ok) {
            (true, true) if id == expected => None,
            (false, true) => problem(id, ProblemKind::Edited, format!("row {id} was edited after it was written: its fields no longer match its MAC")),
            (false, false) => problem(id, ProblemKind::Inserted, format!("row {id} was inserted or replaced: neither its content MAC nor its chain link verify")),
            (true, _) if id > expected => problem(
                expected,
                ProblemKind::Deleted,
                if id == expected + 1 { format!("row {expected} was deleted") } else { format!("rows {expected}..={} were deleted", id - 1) },
            ),
            (true, _) => problem(id, ProblemKind::Edited, format!("row {id}'s chain hash was altered or rows were swapped")),
        }
    };
    if let Some(p) = verdict {
        return Ok(Err(p));
    }
    if let Some(f) = heads.get(&id) {
        if f.body.last_hash != hex::encode(hash) {
            return Ok(Err(ChainProblem {
                row_id: id,
                kind: ProblemKind::Edited,
                message: format!("row {id} differs from signed checkpoint #{}", f.body.seq),
            }));
        }
    }
    Ok(Ok((id, chain::to_array(hash).unwrap_or(GENESIS))))
}
