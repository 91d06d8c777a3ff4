//! The data directory and its lock. The audit chain must have a single writer,
//! so every command that writes audit events holds an exclusive lock on
//! `<data>/tokenwatch.lock` for as long as it runs.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{bail, Context, Result};

pub struct DataDirLock {
    _file: File,
}

pub fn ensure(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", dir.display()))?;
    }
    Ok(())
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<DataDirLock> {
        ensure(dir)?;
        let path = dir.join("tokenwatch.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another tokenwatch process (probably `tokenwatch serve`) is using {}; stop it first, or make this change through the running server",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}
