//! The derived index: everything queries need that the record does not.
//!
//! The record (`audit.db`, table `events`) is append-only and carries no secondary
//! index, so the writer's cost per event is one row append: a B-tree index keyed by
//! username, IP or jti dirties a random page per event, and that is what capped the
//! writer. Those indexes, and the chart rollup, live instead in a second SQLite file
//! (`audit-index.db`, see [`StoreConfig::index_path`]) that one background thread fills
//! from the record in large batches, in its own transactions and under its own write
//! lock, so it never holds up a commit.
//!
//! * `ev` is a narrow copy of the filterable columns with the query indexes;
//!   `rollup` holds the chart counts; `ix_state.indexed_id` is the watermark: both hold
//!   exactly the record's events with `id <= indexed_id`, committed in one transaction.
//! * Readers attach the index and answer from it up to the watermark and from the
//!   record above it, in one read transaction, so an answer is exact however far the
//!   index lags.
//! * The index is derived data, never the evidence: `audit verify` reads only the
//!   record. It is rebuilt from the record when it is missing, from another schema
//!   version, or does not match the record (its watermark row's chain hash differs, or
//!   it is ahead of the record).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use futures_channel::oneshot;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::writer::CommitWatch;
use crate::{rollup, StoreConfig, StoreError};

/// Bumped whenever the index layout changes: an index of another version is rebuilt.
const INDEX_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE ev (
    id        INTEGER PRIMARY KEY,
    time_us   INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    reason    TEXT,
    subject   TEXT,
    username  TEXT,
    client_ip TEXT,
    jti       TEXT,
    source    TEXT NOT NULL
);
CREATE TABLE rollup (
    dim       INTEGER NOT NULL,
    level     INTEGER NOT NULL,
    bucket_us INTEGER NOT NULL,
    value     TEXT NOT NULL,
    outcome   INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (dim, level, bucket_us, value, outcome)
) WITHOUT ROWID;
CREATE TABLE ix_state (
    singleton    INTEGER PRIMARY KEY CHECK (singleton = 1),
    indexed_id   INTEGER NOT NULL,
    indexed_hash BLOB,
    pruned_id    INTEGER NOT NULL
);
INSERT INTO ix_state VALUES (1, 0, NULL, 0);
";

/// The query indexes on `ev`. Partial indexes skip NULLs, which most rows have in most
/// of these columns.
const INDEXES: &[(&str, &str)] = &[
    ("ev_time", "ev(time_us)"),
    ("ev_kind_time", "ev(kind, time_us)"),
    ("ev_outcome_time", "ev(outcome, time_us)"),
    (
        "ev_reason_time",
        "ev(reason, time_us) WHERE reason IS NOT NULL",
    ),
    (
        "ev_subject_time",
        "ev(subject, time_us) WHERE subject IS NOT NULL",
    ),
    (
        "ev_username_time",
        "ev(username, time_us) WHERE username IS NOT NULL",
    ),
    (
        "ev_ip_time",
        "ev(client_ip, time_us) WHERE client_ip IS NOT NULL",
    ),
    ("ev_jti", "ev(jti) WHERE jti IS NOT NULL"),
];

/// The columns `ev` copies from the record, in order.
pub(crate) const NARROW_COLS: &str =
    "id, time_us, kind, outcome, reason, subject, username, client_ip, jti, source";

/// Events copied per index transaction: bounds each transaction's length and size.
const CHUNK: i64 = 100_000;
/// Above this many unindexed events on an empty index, the indexes are dropped, the
/// rows copied, and the indexes built once by sorting: far faster than row by row.
const BULK_FROM: i64 = 500_000;

/// `audit.db` → `audit-index.db`, beside it.
pub(crate) fn path_for(db_path: &Path) -> PathBuf {
    let stem = db_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    db_path.with_file_name(format!("{stem}-index.db"))
}

/// A `file:` URI for `path`, read-only. Percent-encodes everything but plain path bytes
/// so names with `?`, `#` or `%` stay file names.
fn read_only_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    uri
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    // Derived data: a power cut may lose the last passes, never corrupt the file, and
    // the watermark is in the same transaction, so the lost rows are simply redone.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -131_072)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

fn remove_files(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("cannot remove the stale audit index", &p, e)),
        }
    }
    Ok(())
}

fn create_indexes(conn: &Connection) -> Result<(), StoreError> {
    for (name, on) in INDEXES {
        conn.execute_batch(&format!("CREATE INDEX IF NOT EXISTS {name} ON {on}"))?;
    }
    Ok(())
}

/// Opens the index of `cfg`'s record (creating or rebuilding it as needed) with the
/// record attached read-only as `rec`. A damaged index file is derived data: it is
/// set aside and rebuilt, never a reason not to start.
pub(crate) fn open(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    match open_as_is(cfg) {
        Err(StoreError::Sqlite(e)) if is_damaged(&e) => {
            tracing::warn!(path = %cfg.index_path().display(), error = %e, "the audit index is damaged; rebuilding it from the record");
            remove_files(&cfg.index_path())?;
            open_as_is(cfg)
        }
        r => r,
    }
}

fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn open_as_is(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    let path = cfg.index_path();
    let mut conn = open_conn(&path)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != 0 && version != INDEX_VERSION {
        tracing::warn!(found = version, known = INDEX_VERSION, path = %path.display(), "audit index has another layout; rebuilding it from the record");
        drop(conn);
        remove_files(&path)?;
        conn = open_conn(&path)?;
    }
    attach_record(&conn, &cfg.db_path)?;
    if version == INDEX_VERSION && !matches_record(&conn)? {
        tracing::warn!(path = %path.display(), "audit index does not match the record (restored or replaced database?); rebuilding it");
        drop(conn);
        remove_files(&path)?;
        conn = open_conn(&path)?;
        attach_record(&conn, &cfg.db_path)?;
    }
    let fresh: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if fresh == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        create_indexes(&tx)?;
        tx.pragma_update(None, "user_version", INDEX_VERSION)?;
        tx.commit()?;
    } else {
        // A bulk build interrupted by a crash left the indexes dropped.
        create_indexes(&conn)?;
    }
    Ok(conn)
}

fn attach_record(conn: &Connection, db_path: &Path) -> Result<(), StoreError> {
    conn.execute("ATTACH DATABASE ?1 AS rec", [read_only_uri(db_path)])?;
    Ok(())
}

/// Whether the index describes this record: its watermark row still carries the hash
/// it had when indexed (or was pruned since), and the record is not behind it.
fn matches_record(conn: &Connection) -> Result<bool, StoreError> {
    let (w, hash): (i64, Option<Vec<u8>>) = conn.query_row(
        "SELECT indexed_id, indexed_hash FROM ix_state WHERE singleton = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if w == 0 {
        return Ok(true);
    }
    let anchor = pruned_upto(conn)?;
    let row: Option<Vec<u8>> = conn
        .query_row("SELECT hash FROM rec.events WHERE id = ?1", [w], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(match row {
        Some(h) => Some(h) == hash,
        None => w <= anchor,
    })
}

fn pruned_upto(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(last_pruned_id), 0) FROM rec.chain_anchor",
        [],
        |r| r.get(0),
    )?)
}

/// Progress and trouble of the indexer, for `/healthz` and `/metrics`.
#[derive(Default)]
pub(crate) struct IndexProgress {
    pub indexed_id: AtomicI64,
    pub last_error: Mutex<Option<String>>,
}

struct Indexer {
    conn: Connection,
    progress: Arc<IndexProgress>,
    refresh: Duration,
    burst: Burst,
}

/// Detects a burst of commits, during which the indexer waits while its lag is bounded:
/// the writer and the requests waiting on it get the CPU, and the pass that follows
/// is larger, so each index page it touches serves more events.
struct Burst {
    rate: u64,
    max_lag: i64,
    sampled: Instant,
    sampled_latest: i64,
}

impl Burst {
    /// `latest`: the newest committed id now, so that what was committed before the
    /// indexer started does not count as a burst.
    fn new(rate: u64, max_lag: i64, latest: i64) -> Self {
        Burst {
            rate,
            max_lag,
            sampled: Instant::now(),
            sampled_latest: latest,
        }
    }

    /// Whether to put the next pass off, given the newest committed id and the
    /// watermark. Measures the commit rate since the previous call.
    fn defer(&mut self, latest: i64, indexed: i64) -> bool {
        let now = Instant::now();
        let secs = now.duration_since(self.sampled).as_secs_f64();
        let committed = (latest - self.sampled_latest).max(0) as f64;
        self.sampled = now;
        self.sampled_latest = latest;
        let rate = if secs > 0.0 { committed / secs } else { 0.0 };
        rate >= self.rate as f64 && latest - indexed < self.max_lag
    }
}

impl Indexer {
    fn state(&self) -> Result<(i64, i64), StoreError> {
        Ok(self.conn.query_row(
            "SELECT indexed_id, pruned_id FROM ix_state WHERE singleton = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// One pass: forgets what retention pruned from the record, then copies up to
    /// [`CHUNK`] new events. Returns how many events it copied.
    fn step(&mut self) -> Result<i64, StoreError> {
        // Deferred: it reads the record without ever taking the record's write lock.
        let tx = self.conn.transaction()?;
        let (w, pruned) = tx.query_row(
            "SELECT indexed_id, pruned_id FROM ix_state WHERE singleton = 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        let anchor = pruned_upto(&tx)?;
        if anchor > pruned {
            let upto = anchor.min(w);
            if upto > pruned {
                rollup::subtract(&tx, "ev", pruned, upto)?;
                tx.execute("DELETE FROM ev WHERE id > ?1 AND id <= ?2", [pruned, upto])?;
            }
            tx.execute(
                "UPDATE ix_state SET pruned_id = ?1 WHERE singleton = 1",
                [anchor],
            )?;
        }
        let newest: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM rec.events", [], |r| {
            r.get(0)
        })?;
        let upto = newest.min(w + CHUNK);
        if upto > w {
            tx.prepare_cached(&format!(
                "INSERT INTO ev ({NARROW_COLS}) SELECT {NARROW_COLS} FROM rec.events
                 WHERE id > ?1 AND id <= ?2"
            ))?
            .execute([w, upto])?;
            rollup::add(&tx, "ev", w, upto)?;
            tx.prepare_cached(
                "UPDATE ix_state SET indexed_id = ?1,
                 indexed_hash = (SELECT hash FROM rec.events WHERE id = ?1) WHERE singleton = 1",
            )?
            .execute([upto])?;
        }
        tx.commit()?;
        self.progress
            .indexed_id
            .store(upto.max(w), Ordering::Relaxed);
        Ok((upto - w).max(0))
    }

    /// Builds an empty index over a large record: rows first, indexes after.
    fn bulk_build(&mut self) -> Result<(), StoreError> {
        let (w, _) = self.state()?;
        let newest: i64 =
            self.conn
                .query_row("SELECT coalesce(max(id), 0) FROM rec.events", [], |r| {
                    r.get(0)
                })?;
        if w != 0 || newest - pruned_upto(&self.conn)? < BULK_FROM {
            return Ok(());
        }
        let started = Instant::now();
        tracing::info!(
            events = newest,
            "building the audit index from the record; filtered queries are slow until it is done"
        );
        for (name, _) in INDEXES {
            self.conn
                .execute_batch(&format!("DROP INDEX IF EXISTS {name}"))?;
        }
        while self.step()? > 0 {}
        let tx = self.conn.transaction()?;
        create_indexes(&tx)?;
        tx.commit()?;
        tracing::info!(
            events = newest,
            secs = started.elapsed().as_secs(),
            "audit index built"
        );
        Ok(())
    }

    /// A pass that reports its failure instead of returning it.
    fn pass(&mut self) -> i64 {
        match self.step() {
            Ok(n) => {
                *self
                    .progress
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                n
            }
            Err(e) => {
                self.failed(&e);
                0
            }
        }
    }

    fn run(mut self, watch: CommitWatch, ctl: Receiver<Ctl>) {
        lower_own_priority();
        if let Err(e) = self.bulk_build() {
            self.failed(&e);
        }
        loop {
            let copied = self.pass();
            let w = self.progress.indexed_id.load(Ordering::Relaxed);
            if copied >= CHUNK && !self.burst.defer(watch.latest(), w) {
                // Behind by more than a chunk: keep going, but still answer requests.
                match ctl.try_recv() {
                    Ok(Ctl::Sync(ack)) => drop(ack.send(self.sync_to(watch.latest()))),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => return,
                }
                continue;
            }
            // Let commits accumulate: one pass over many events touches each index
            // page once for all of them. A sync request is answered without leaving
            // this wait, so the rhythm does not depend on how often callers sync.
            loop {
                let w = self.progress.indexed_id.load(Ordering::Relaxed);
                watch.wait_for_commit_after(w, Duration::from_millis(250));
                match ctl.recv_timeout(self.refresh) {
                    Ok(Ctl::Sync(ack)) => drop(ack.send(self.sync_to(watch.latest()))),
                    Err(RecvTimeoutError::Timeout) => {
                        if !self.burst.defer(watch.latest(), w) {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        // The store is closing: a last pass, so the index is current.
                        self.pass();
                        return;
                    }
                }
            }
        }
    }

    fn sync_to(&mut self, target: i64) -> Result<i64, StoreError> {
        loop {
            let copied = self.step()?;
            let (w, _) = self.state()?;
            if w >= target || copied == 0 {
                return Ok(w);
            }
        }
    }

    fn failed(&self, e: &StoreError) {
        tracing::error!(error = %e, "updating the audit index failed; queries stay exact but slower until it recovers; will retry");
        *self
            .progress
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        thread::sleep(Duration::from_secs(1));
    }
}

/// Under a burst on a small machine the writer, whose commits callers wait for, gets
/// the CPU first; the index catches up once the burst is over (queries stay exact).
pub(crate) fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority only read their integer arguments. On Linux the
        // nice value is per thread, so this affects the indexer thread alone.
        let r = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, INDEXER_NICE)
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the audit indexer's CPU priority");
        }
    }
}

/// The indexer's nice value (0 is normal, 19 the lowest priority).
#[cfg(target_os = "linux")]
const INDEXER_NICE: libc::c_int = 10;

enum Ctl {
    /// Index everything committed so far, then answer with the watermark.
    Sync(oneshot::Sender<Result<i64, StoreError>>),
}

/// The running indexer thread; stopped (after a last pass) when dropped.
pub(crate) struct IndexerHandle {
    ctl: Option<Sender<Ctl>>,
    handle: Option<JoinHandle<()>>,
}

impl IndexerHandle {
    /// Waits until everything committed before the call is indexed.
    pub fn sync(&self) -> Result<i64, StoreError> {
        let (a, r) = oneshot::channel();
        self.ctl
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(Ctl::Sync(a))
            .map_err(|_| StoreError::WriterGone)?;
        crate::writer::Ack::from_receiver(r).wait()
    }

    pub fn stop(&mut self) {
        drop(self.ctl.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for IndexerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn spawn(
    cfg: &StoreConfig,
    watch: CommitWatch,
    progress: Arc<IndexProgress>,
) -> Result<IndexerHandle, StoreError> {
    let conn = open(cfg)?;
    let indexer = Indexer {
        conn,
        progress,
        refresh: cfg.index_refresh,
        burst: Burst::new(
            cfg.index_burst_rate,
            cfg.index_burst_max_lag,
            watch.latest(),
        ),
    };
    let (w, _) = indexer.state()?;
    indexer.progress.indexed_id.store(w, Ordering::Relaxed);
    let (ctl, rx) = bounded::<Ctl>(16);
    let handle = thread::Builder::new()
        .name("audit-indexer".into())
        .spawn(move || indexer.run(watch, rx))
        .map_err(|e| StoreError::io("cannot start the audit indexer for", &cfg.db_path, e))?;
    Ok(IndexerHandle {
        ctl: Some(ctl),
        handle: Some(handle),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_file_sits_beside_the_record() {
        assert_eq!(
            path_for(Path::new("/d/audit.db")),
            PathBuf::from("/d/audit-index.db")
        );
    }

    #[test]
    fn a_burst_defers_passes_only_while_the_lag_is_bounded() {
        let mut b = Burst::new(20_000, 500_000, 0);
        b.sampled = Instant::now() - Duration::from_millis(100);
        // 10 000 commits in 100 ms: 100 000 events/s, index 10 000 behind: wait.
        assert!(b.defer(10_000, 0));
        b.sampled = Instant::now() - Duration::from_millis(100);
        // Another 10 000 in 100 ms, but the index is 500 000 behind: index now.
        assert!(!b.defer(20_000, 20_000 - 500_000));
        b.sampled = Instant::now() - Duration::from_millis(100);
        // 100 commits in 100 ms (1 000/s) is no burst: index now.
        assert!(!b.defer(20_100, 20_000));
    }

    #[test]
    fn uri_keeps_odd_file_names_as_names() {
        assert_eq!(
            read_only_uri(Path::new("/a b/x?y#z%.db")),
            "file:/a%20b/x%3Fy%23z%25.db?mode=ro"
        );
    }
}
