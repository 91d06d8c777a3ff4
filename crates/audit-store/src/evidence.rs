//! Checkpoints are evidence: at every open that can write, the record must extend the
//! newest signed checkpoint found in the checkpoint folder or any mirror. A record that
//! is behind it (rows cut off, an older copy put back) or diverges from it (rows
//! replaced) has lost history. The store refuses to run on it, because carrying on
//! would sign a checkpoint of the shortened chain and launder the loss, until an
//! operator records the loss (`AuditStore::open_accepting_loss`).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};
use serde_json::json;

use crate::checkpoint::Evidence;
use crate::{StoreConfig, StoreError};

/// The chain hash the record holds for row `id`: the row's own, or the retention
/// anchor's when `id` is the last pruned row.
pub(crate) fn hash_at(conn: &Connection, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    let row = conn
        .prepare_cached("SELECT hash FROM events WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if row.is_some() {
        return Ok(row);
    }
    Ok(conn
        .query_row(
            "SELECT last_pruned_hash FROM chain_anchor WHERE singleton = 1 AND last_pruned_id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Whether the record still holds row `id` with the chain hash `hash` (rows pruned by
/// retention since are taken as held: the signed prune anchor vouches for them).
pub(crate) fn still_holds(conn: &Connection, id: i64, hash: &[u8]) -> Result<bool, StoreError> {
    let anchor: i64 = conn
        .query_row(
            "SELECT last_pruned_id FROM chain_anchor WHERE singleton = 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    if id < 1 || id < anchor {
        return Ok(true);
    }
    Ok(hash_at(conn, id)?.as_deref() == Some(hash))
}

/// What was lost, in words an operator can act on, and as the detail of the
/// `audit.loss_accepted` event that records it.
#[derive(Clone, Debug)]
pub(crate) struct Loss {
    pub message: String,
    pub detail: serde_json::Value,
}

const HOW_TO_PROCEED: &str = "Restore the audit database from a backup that holds those rows, \
or record the loss with `tokenwatch audit accept-loss --reason TEXT` (the loss then stays \
visible in the record and in `tokenwatch audit verify`)";

/// Compares the record's head (`head_id`, 0 for an empty record) with the newest
/// checkpoint. `None`: the record extends it (or there is none).
pub(crate) fn compare(
    conn: &Connection,
    db_path: &Path,
    newest: Option<&Evidence>,
    head_id: i64,
) -> Result<Option<Loss>, StoreError> {
    let Some(e) = newest else { return Ok(None) };
    let cp = &e.body;
    let detail = |what: &str, from: i64, to: i64| {
        json!({
            "what": what,
            "missing_from": from,
            "missing_to": to,
            "checkpoint": { "seq": cp.seq, "kind": cp.kind, "last_id": cp.last_id,
                            "last_hash": cp.last_hash, "file": e.path.display().to_string() },
            "record_head_id": head_id,
        })
    };
    if cp.last_id > head_id {
        let message = format!(
            "the audit record {} has lost rows: its newest row is {head_id}, but signed checkpoint {} \
             (#{}, {}) recorded row {} as the chain head, so rows {}..={} are missing. {HOW_TO_PROCEED}.",
            db_path.display(),
            e.path.display(),
            cp.seq,
            cp.kind,
            cp.last_id,
            head_id + 1,
            cp.last_id
        );
        return Ok(Some(Loss {
            message,
            detail: detail("behind", head_id + 1, cp.last_id),
        }));
    }
    let have = hash_at(conn, cp.last_id)?;
    if have.as_deref().map(hex::encode).as_deref() == Some(cp.last_hash.as_str()) {
        return Ok(None);
    }
    let message = format!(
        "the audit record {} diverges from its signed checkpoint {} (#{}): row {} is not the row \
         that checkpoint signed (the record was replaced or rows were rewritten), so the history \
         from row {} on is lost. {HOW_TO_PROCEED}.",
        db_path.display(),
        e.path.display(),
        cp.seq,
        cp.last_id,
        cp.last_id
    );
    Ok(Some(Loss {
        message,
        detail: detail("diverged", cp.last_id, cp.last_id),
    }))
}

/// Checkpoint files set aside as damaged are a loss of evidence: recorded even when
/// the record extends what remains.
pub(crate) fn with_damaged(loss: Option<Loss>, damaged: Vec<String>) -> Option<Loss> {
    if damaged.is_empty() {
        return loss;
    }
    let mut l = loss.unwrap_or_else(|| Loss {
        message: "damaged checkpoint files were set aside".into(),
        detail: json!({ "what": "damaged_checkpoints" }),
    });
    l.message = format!(
        "{} (set aside as damaged: {})",
        l.message,
        damaged.join("; ")
    );
    l.detail["damaged_checkpoints"] = json!(damaged);
    Some(l)
}

/// A record that is missing while its keys or checkpoints exist was deleted or moved:
/// starting a fresh one would hide that.
pub(crate) fn missing_record(cfg: &StoreConfig, checkpoints: bool) -> Option<Loss> {
    if cfg.db_path.exists() {
        return None;
    }
    let keys = crate::keys::exist(&cfg.key_dir);
    if !keys && !checkpoints {
        return None;
    }
    let message = format!(
        "the audit record {} is missing, but {} exist: it was deleted or moved, and starting an \
         empty record would hide that. Restore it from a backup, or start a new record that says so \
         with `tokenwatch audit accept-loss --reason TEXT` (also the way to start a record with keys \
         provisioned in advance).",
        cfg.db_path.display(),
        match (keys, checkpoints) {
            (true, true) => format!("its keys ({}) and signed checkpoints", cfg.key_dir.display()),
            (true, false) => format!("its keys ({})", cfg.key_dir.display()),
            _ => "signed checkpoints of it".to_owned(),
        },
    );
    Some(Loss {
        message,
        detail: json!({ "what": "missing", "record": cfg.db_path.display().to_string(),
                        "had_keys": keys, "had_checkpoints": checkpoints }),
    })
}
