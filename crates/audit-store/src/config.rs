//! Store configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// SQLite `synchronous` setting for the WAL database.
///
/// * `Full` (default): the WAL is fsynced at every commit, so an acknowledged event
///   survives a power cut or kernel crash, not just a process crash. Group commit means
///   one fsync per *batch*, which keeps this affordable.
/// * `Normal`: fsync only at WAL checkpoints. An acknowledged event survives a process
///   crash (SIGKILL) but the last few commits may be lost on power failure. Faster.
/// * `Extra`: like `Full`, plus the directory is synced after the WAL is reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Normal,
    #[default]
    Full,
    Extra,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// Where the store lives and how it behaves.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub db_path: PathBuf,
    /// Chain HMAC key and checkpoint Ed25519 key. Keep it apart from the database
    /// (ideally another volume or a secret mount); created 0700/0600 on first open.
    pub key_dir: PathBuf,
    /// Signed checkpoints of the chain head; copy them off the machine.
    pub checkpoint_dir: PathBuf,
    /// Further folders (another disk, a mounted share) that receive a signed-note copy
    /// of every checkpoint as it is written, and are read as evidence at every open.
    pub checkpoint_mirrors: Vec<PathBuf>,
    pub synchronous: Synchronous,
    /// Messages (not events) the writer queue holds before submitters wait.
    pub queue_capacity: usize,
    /// Messages the writer commits in one transaction at most.
    pub max_batch: usize,
    /// How long the writer waits for a lock held by another process before the commit
    /// fails (and the batch is reported unwritable).
    pub busy_timeout: Duration,
    /// A signed checkpoint of the chain head is written this often (if anything changed)
    /// and at shutdown. Rows newer than the last checkpoint can be cut off undetected,
    /// so this is the window of that risk.
    pub checkpoint_interval: Duration,
    /// Events older than this are pruned. `None`: keep forever.
    pub retention: Option<Duration>,
    pub retention_interval: Duration,
    /// Write one ECS JSON line per committed event to `security.log.<date>` in this folder.
    pub security_log_dir: Option<PathBuf>,
    /// How long the indexer lets commits accumulate between passes over the query
    /// index. Queries are exact at any lag (they read unindexed rows from the record);
    /// longer means bigger, cheaper passes and slower filtered queries meanwhile.
    pub index_refresh: Duration,
    /// A burst: events committing faster than this many per second. During a burst the
    /// indexer stands aside (the CPU goes to the requests waiting on their commits) ...
    pub index_burst_rate: u64,
    /// ... until the index is this many events behind; then it indexes whatever the
    /// rate, so the unindexed tail a query must scan stays bounded.
    pub index_burst_max_lag: i64,
    /// How often the running store verifies the chain rows written since its last
    /// pass and runs SQLite's page check (`None`: never; a first pass runs at open).
    pub integrity_interval: Option<Duration>,
}

impl StoreConfig {
    /// The derived query index (`audit-index.db` beside `audit.db`). Not evidence:
    /// it is rebuilt from the record when missing or stale, so backups may skip it.
    pub fn index_path(&self) -> PathBuf {
        crate::index::path_for(&self.db_path)
    }

    /// `data/audit.db`, `data/keys/audit`, `data/checkpoints` with safe defaults
    /// (synchronous FULL, checkpoint every minute, no retention, no security log).
    pub fn in_data_dir(data_dir: &Path) -> Self {
        StoreConfig {
            db_path: data_dir.join("audit.db"),
            key_dir: data_dir.join("keys").join("audit"),
            checkpoint_dir: data_dir.join("checkpoints"),
            checkpoint_mirrors: Vec::new(),
            synchronous: Synchronous::Full,
            queue_capacity: 16_384,
            max_batch: 4096,
            busy_timeout: Duration::from_secs(5),
            checkpoint_interval: Duration::from_secs(60),
            retention: None,
            retention_interval: Duration::from_secs(3600),
            security_log_dir: None,
            index_refresh: Duration::from_millis(100),
            index_burst_rate: 20_000,
            index_burst_max_lag: 500_000,
            integrity_interval: Some(Duration::from_secs(300)),
        }
    }
}
