//! Ingest sources and the other ingest/forward bookkeeping in `state.db`:
//! per-source API keys (stored as SHA-256 hashes: they are 256-bit random
//! values, like client secrets), resumable file-import positions and the
//! forwarders' delivery cursors.

use rusqlite::{params, OptionalExtension};

use crate::state::{now_secs, sha256_hex, validate_name, StateDb, StateError};

/// Every ingest API key starts with this, so it is recognisable in a leak
/// scanner and distinguishable from a JWT in an `Authorization` header.
pub const KEY_PREFIX: &str = "twk_";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    /// The first characters of the key, to tell keys apart in a listing.
    pub key_hint: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Where a file import stopped: the byte just after the last line committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePosition {
    /// SHA-256 of the file's first line: a different first line means a
    /// different (rotated or replaced) file, which is read from the start.
    pub head_sha256: String,
    pub byte_offset: u64,
    pub line: u64,
}

impl StateDb {
    /// Creates a source and returns its API key, shown once.
    pub fn add_source(&self, name: &str) -> Result<String, StateError> {
        validate_name(name, "source name")?;
        if name == "tokenwatch" {
            return Err(StateError::Invalid(
                "the source name \"tokenwatch\" is reserved for the server's own events".into(),
            ));
        }
        let key = format!("{KEY_PREFIX}{}", crate::random_token(32));
        let hint = key[..KEY_PREFIX.len() + 4].to_string();
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO ingest_sources (name, key_sha256, key_hint, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, sha256_hex(key.as_bytes()), hint, now_secs()],
        )?;
        if inserted == 0 {
            return Err(StateError::Invalid(format!(
                "source {name:?} already exists (revoked sources keep their name; pick another)"
            )));
        }
        Ok(key)
    }

    pub fn list_sources(&self) -> Result<Vec<Source>, StateError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, key_hint, created_at, revoked_at FROM ingest_sources ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Source {
                name: r.get(0)?,
                key_hint: r.get(1)?,
                created_at: r.get(2)?,
                revoked_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a source's key now. Returns false if there is no such active source.
    pub fn revoke_source(&self, name: &str) -> Result<bool, StateError> {
        let n = self.conn().execute(
            "UPDATE ingest_sources SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![name, now_secs()],
        )?;
        Ok(n == 1)
    }

    /// The active source whose key this is, if any. The key is hashed first;
    /// the lookup is by hash, so timing tells nothing about the key.
    pub fn source_for_key(&self, key: &str) -> Result<Option<String>, StateError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT name FROM ingest_sources WHERE key_sha256 = ?1 AND revoked_at IS NULL",
        )?;
        Ok(st
            .query_row([sha256_hex(key.as_bytes())], |r| r.get(0))
            .optional()?)
    }

    pub fn file_position(&self, path: &str) -> Result<Option<FilePosition>, StateError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT head_sha256, byte_offset, line FROM ingest_files WHERE path = ?1",
                [path],
                |r| {
                    Ok(FilePosition {
                        head_sha256: r.get(0)?,
                        byte_offset: r.get::<_, i64>(1)? as u64,
                        line: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_file_position(&self, path: &str, pos: &FilePosition) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO ingest_files (path, head_sha256, byte_offset, line, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(path) DO UPDATE SET head_sha256 = ?2, byte_offset = ?3, line = ?4, updated_at = ?5",
            params![path, pos.head_sha256, pos.byte_offset as i64, pos.line as i64, now_secs()],
        )?;
        Ok(())
    }

    pub fn forward_cursor(&self, name: &str) -> Result<Option<i64>, StateError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT last_id FROM forward_cursors WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_forward_cursor(&self, name: &str, last_id: i64) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO forward_cursors (name, last_id, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET last_id = ?2, updated_at = ?3",
            params![name, last_id, now_secs()],
        )?;
        Ok(())
    }
}
