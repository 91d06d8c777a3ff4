//! Noticing the record's file changing underneath the running store.
//!
//! SQLite keeps writing through its open file descriptors, so a deleted, replaced or
//! truncated `audit.db` does not make a commit fail: the writer would go on
//! acknowledging events into an unlinked inode that vanishes at shutdown. The writer
//! therefore compares the path with what it opened (device, inode, and a size that
//! never shrinks: the record is append-only and never vacuumed) after every commit,
//! before anyone is acknowledged, and once a second when idle.

use std::path::{Path, PathBuf};

/// Device and inode of a file, as captured when the store opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// What the store opened: `audit.db` and its `-wal`.
pub(crate) struct FileIdentity {
    db: PathBuf,
    wal: PathBuf,
    db_id: FileId,
    wal_id: Option<FileId>,
    /// The largest size seen; the file only grows while the store runs.
    db_size: u64,
}

impl FileIdentity {
    /// Captures the files as they are now: call right after the connection opened them.
    pub(crate) fn capture(db: &Path) -> std::io::Result<FileIdentity> {
        let wal = wal_path(db);
        let m = std::fs::metadata(db)?;
        Ok(FileIdentity {
            db_id: id_of(&m),
            db_size: m.len(),
            wal_id: std::fs::metadata(&wal).ok().map(|m| id_of(&m)),
            db: db.to_owned(),
            wal,
        })
    }

    /// `Err` names the file and what changed, in words an operator can act on.
    pub(crate) fn check(&mut self) -> Result<(), String> {
        let m = match std::fs::metadata(&self.db) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "{} was deleted while the server was running",
                    self.db.display()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "{} can no longer be examined: {e}",
                    self.db.display()
                ))
            }
        };
        if id_of(&m) != self.db_id {
            return Err(format!(
                "{} was replaced by another file while the server was running",
                self.db.display()
            ));
        }
        if m.len() < self.db_size {
            return Err(format!(
                "{} was truncated while the server was running ({} bytes, was {})",
                self.db.display(),
                m.len(),
                self.db_size
            ));
        }
        self.db_size = m.len();
        self.check_wal()
    }

    /// Once the database file was lost: moves the WAL (and its shared-memory index)
    /// out of the way if it is still the one this store wrote, so that neither a
    /// replacement at the path nor a restored rescue copy is opened with it (SQLite
    /// would replay its frames onto the wrong database). Call after the store's
    /// connections closed. Returns where it went.
    pub(crate) fn set_aside_wal(&self, suffix: &str) -> Option<PathBuf> {
        let ours = std::fs::metadata(&self.wal).ok().map(|m| id_of(&m)) == self.wal_id;
        if !ours || self.wal_id.is_none() {
            return None;
        }
        let aside = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        let wal_aside = aside(&self.wal);
        std::fs::rename(&self.wal, &wal_aside).ok()?;
        let mut shm = self.db.as_os_str().to_owned();
        shm.push("-shm");
        let shm = PathBuf::from(shm);
        let _ = std::fs::rename(&shm, aside(&shm));
        Some(wal_aside)
    }

    /// The WAL holds the newest commits until they are copied into the database; it
    /// stays in place (same inode) while the store has it open.
    fn check_wal(&mut self) -> Result<(), String> {
        let now = std::fs::metadata(&self.wal).ok().map(|m| id_of(&m));
        match (self.wal_id, now) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(_), None) => Err(format!(
                "{} (the write-ahead log holding the newest commits) was deleted while the server was running",
                self.wal.display()
            )),
            (Some(_), Some(_)) => Err(format!(
                "{} (the write-ahead log) was replaced by another file while the server was running",
                self.wal.display()
            )),
            // Not there at open (SQLite creates it with the first write): adopt it.
            (None, n) => {
                self.wal_id = n;
                Ok(())
            }
        }
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

#[cfg(unix)]
fn id_of(m: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId {
        dev: m.dev(),
        ino: m.ino(),
    }
}

#[cfg(not(unix))]
fn id_of(_: &std::fs::Metadata) -> FileId {
    // No inode numbers: only deletion and truncation are noticed.
    FileId { dev: 0, ino: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, PathBuf, FileIdentity) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        std::fs::write(&db, b"0123456789").unwrap();
        std::fs::write(wal_path(&db), b"wal").unwrap();
        let id = FileIdentity::capture(&db).unwrap();
        (dir, db, id)
    }

    #[test]
    fn unchanged_and_growing_files_pass() {
        let (_d, db, mut id) = fresh();
        assert_eq!(id.check(), Ok(()));
        std::fs::write(&db, b"0123456789abcdef").unwrap();
        assert_eq!(id.check(), Ok(()));
    }

    #[test]
    fn deleted_replaced_and_truncated_files_are_named() {
        let (d, db, mut id) = fresh();
        std::fs::remove_file(&db).unwrap();
        assert!(id.check().unwrap_err().contains("audit.db was deleted"));

        let (_d2, db, mut id) = fresh();
        let other = d.path().join("other.db");
        std::fs::write(&other, b"0123456789").unwrap();
        std::fs::rename(&other, &db).unwrap();
        assert!(id.check().unwrap_err().contains("replaced by another file"));

        let (_d3, db, mut id) = fresh();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .unwrap()
            .set_len(4)
            .unwrap();
        assert!(id.check().unwrap_err().contains("truncated"));

        let (_d4, db, mut id) = fresh();
        std::fs::remove_file(wal_path(&db)).unwrap();
        assert!(id.check().unwrap_err().contains("write-ahead log"));
    }
}
