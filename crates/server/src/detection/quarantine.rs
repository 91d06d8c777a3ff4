//! Plugins that crashed or hung the detection process, kept in `state.db`
//! by file name and content hash: a quarantined file is not loaded again
//! (not even after a restart) until its content changes or an admin
//! re-enables it.

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use crate::state::{now_secs, sha256_hex, StateDb};

/// A quarantine entry.
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub sha256: String,
    pub plugin: Option<String>,
    pub reason: String,
}

pub(crate) fn file_key(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// SHA-256 of the file's content, or `None` when it cannot be read.
pub(crate) fn content_hash(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256_hex(&b))
}

pub(crate) fn get(state: &StateDb, path: &Path) -> rusqlite::Result<Option<Quarantined>> {
    state
        .conn()
        .query_row(
            "SELECT sha256, plugin, reason FROM plugin_quarantine WHERE file = ?1",
            [file_key(path)],
            |r| {
                Ok(Quarantined {
                    sha256: r.get(0)?,
                    plugin: r.get(1)?,
                    reason: r.get(2)?,
                })
            },
        )
        .optional()
}

pub(crate) fn put(
    state: &StateDb,
    path: &Path,
    sha256: &str,
    plugin: Option<&str>,
    reason: &str,
) -> rusqlite::Result<()> {
    state.conn().execute(
        "INSERT INTO plugin_quarantine (file, sha256, plugin, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(file) DO UPDATE SET sha256 = excluded.sha256, plugin = excluded.plugin,
         reason = excluded.reason, at = excluded.at",
        params![file_key(path), sha256, plugin, reason, now_secs()],
    )?;
    Ok(())
}

pub(crate) fn clear(state: &StateDb, path: &Path) -> rusqlite::Result<()> {
    state.conn().execute(
        "DELETE FROM plugin_quarantine WHERE file = ?1",
        [file_key(path)],
    )?;
    Ok(())
}

/// The quarantine reason for `path` when its current content is the one
/// quarantined (for `tokenwatch plugins list`).
pub fn reason_for(state: &StateDb, path: &Path) -> Option<String> {
    let q = get(state, path).ok().flatten()?;
    (content_hash(path)? == q.sha256).then_some(q.reason)
}
