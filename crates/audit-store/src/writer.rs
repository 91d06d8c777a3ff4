//! The store handle and its single group-commit writer thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use futures_channel::oneshot;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::chain::{self, Mac, RowFields, GENESIS};
use crate::checkpoint::{self, Sequence};
use crate::ecs::SecurityLog;
use crate::evidence;
use crate::index::{self, IndexProgress, IndexerHandle};
use crate::integrity::{self, IntegrityHandle, IntegrityHealth, IntegrityState};
use crate::keys::{self, Keys};
use crate::reader::AuditReader;
use crate::watch::FileIdentity;
use crate::{
    kinds, model::now_us, AlertStatus, DetectionCommit, NewAlert, NewEvent, Outcome, StoreConfig,
    StoreError, MAX_EVIDENCE,
};

/// What `open_accepting_loss` recorded.
#[derive(Clone, Debug)]
pub struct AcceptedLoss {
    /// What was lost, as the refusal said it.
    pub message: String,
    /// The id of the `audit.loss_accepted` event.
    pub event_id: i64,
}

/// Rows deleted per retention transaction, so the writer never stalls for long.
const PRUNE_CHUNK: usize = 20_000;

/// How often an idle writer checks that `audit.db` is still the file it opened
/// (a busy one checks after every commit).
const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

type AckTx<T> = oneshot::Sender<Result<T, StoreError>>;

/// An event after the submitting thread did the expensive, order-independent work.
pub(crate) struct Prepared {
    ev: NewEvent,
    detail: String,
    content_mac: Mac,
}

// The big variant is the hot one (a single event); boxing it would cost an allocation
// per event to shrink the rare control messages.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Prepared, AckTx<i64>),
    Events(Vec<Prepared>, AckTx<Vec<i64>>),
    Alert(NewAlert, AckTx<i64>),
    /// A detector's alerts for a stretch of the record and its new cursor, together.
    Detection(DetectionCommit, AckTx<()>),
    AlertStatus {
        id: i64,
        status: AlertStatus,
        actor: String,
        note: Option<String>,
        ack: AckTx<()>,
    },
    /// Sign the head now, as a checkpoint of this kind (`head` or `loss`).
    Checkpoint(&'static str, AckTx<i64>),
    Prune(AckTx<u64>),
    Shutdown,
}

/// A pending acknowledgement: resolves once the transaction holding the record has
/// committed (or failed). Await it from async code, or [`Ack::wait`] from a thread.
#[must_use = "the record is only known to be durable once the Ack resolves to Ok"]
pub struct Ack<T>(oneshot::Receiver<Result<T, StoreError>>);

impl<T> Future for Ack<T> {
    type Output = Result<T, StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            // The writer dropped the sender without answering: it is gone.
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(StoreError::WriterGone)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Ack<T> {
    pub(crate) fn from_receiver(r: oneshot::Receiver<Result<T, StoreError>>) -> Self {
        Ack(r)
    }

    /// Blocks the current thread until the commit (or its failure).
    pub fn wait(self) -> Result<T, StoreError> {
        block_on(self)
    }
}

struct ThreadWaker(Thread);
impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Arc::new(ThreadWaker(thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => thread::park(),
        }
    }
}

/// What `/healthz` reports about the store.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub struct Health {
    /// False after a failed commit, until a later one succeeds.
    pub writable: bool,
    pub last_error: Option<String>,
    /// Messages waiting in the writer queue.
    pub queue_depth: usize,
    pub events_committed: u64,
    /// Transactions committed since start: `events_committed / commits` is how many
    /// events each group commit carried.
    pub commits: u64,
    pub last_commit_us: Option<i64>,
    /// Committed events not yet in the query index (queries stay exact, only slower).
    pub index_lag: u64,
    /// The indexer's last failure, until a pass succeeds.
    pub index_error: Option<String>,
    /// The running chain and page checks.
    pub integrity: IntegrityHealth,
}

#[derive(Default)]
struct HealthState {
    writable: bool,
    last_error: Option<String>,
    last_commit_us: Option<i64>,
}

struct WatchInner {
    latest: Mutex<i64>,
    cv: Condvar,
}

/// Wakes subscribers (the plugin host) after each commit.
#[derive(Clone)]
pub struct CommitWatch(Arc<WatchInner>);

impl CommitWatch {
    /// The id of the newest committed event (0 if none).
    pub fn latest(&self) -> i64 {
        *self.0.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until an event with id > `id` has committed or `timeout` passes, and
    /// returns the newest committed id either way.
    pub fn wait_for_commit_after(&self, id: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        let mut g = self.0.latest.lock().unwrap_or_else(|p| p.into_inner());
        while *g <= id {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .0
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *g
    }

    fn publish(&self, id: i64) {
        let mut g = self.0.latest.lock().unwrap_or_else(|p| p.into_inner());
        if id > *g {
            *g = id;
            self.0.cv.notify_all();
        }
    }
}

pub(crate) struct Shared {
    pub(crate) keys: Keys,
    health: Mutex<HealthState>,
    committed: AtomicU64,
    commits: AtomicU64,
    /// Time of each successful group commit (the transaction, its fsync and the
    /// file check), for `/metrics`.
    commit_latency: prom_text::Histogram,
    watch: CommitWatch,
    index: Arc<IndexProgress>,
    pub(crate) integrity: Mutex<IntegrityState>,
}

/// The open audit store: owns the writer thread. Call [`AuditStore::shutdown`] to drain
/// the queue and write a final checkpoint (dropping it does the same, ignoring errors).
pub struct AuditStore {
    cfg: StoreConfig,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    handle: Option<JoinHandle<Result<(), StoreError>>>,
    checkpointer: Option<(Sender<()>, JoinHandle<()>)>,
    indexer: Option<IndexerHandle>,
    integrity: Option<IntegrityHandle>,
}

/// Submits records to the writer thread. Cheap to clone; Send + Sync.
#[derive(Clone)]
pub struct AuditWriter {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
}

pub(crate) fn open_rw(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    if let Some(dir) = cfg.db_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io("cannot create database directory", dir, e))?;
    }
    let conn = Connection::open(&cfg.db_path)?;
    conn.busy_timeout(cfg.busy_timeout)?;
    // Refuse a newer database before changing anything about it.
    crate::schema::check_not_newer(&conn)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::InvalidArgument(format!(
            "{}: SQLite refused WAL mode (got {mode}); is it on a network file system?",
            cfg.db_path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", cfg.synchronous.pragma())?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    // WAL checkpoints normally run inside the committing thread; the checkpointer thread
    // does them instead (on the other core). This high limit is only a safety net
    // should that thread fall behind.
    conn.pragma_update(None, "wal_autocheckpoint", 65_536)?;
    Ok(conn)
}

/// Copies committed WAL pages into the database file in the background, so the
/// writer thread spends its time committing rather than checkpointing.
fn spawn_checkpointer(cfg: &StoreConfig) -> Result<(Sender<()>, JoinHandle<()>), StoreError> {
    let conn = Connection::open(&cfg.db_path)?;
    conn.busy_timeout(Duration::from_millis(100))?;
    let (stop, rx) = bounded::<()>(1);
    let h = thread::Builder::new()
        .name("audit-wal-checkpoint".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_millis(200)) {
                // PASSIVE never blocks the writer or readers; a failure is retried next tick.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "background WAL checkpoint failed; will retry");
                }
            }
        })
        .map_err(|e| StoreError::io("cannot start WAL checkpoint thread for", &cfg.db_path, e))?;
    Ok((stop, h))
}

impl AuditStore {
    /// Opens (creating if needed) the database, keys and checkpoint folders, migrates the
    /// schema, and starts the writer thread. Refuses a record that does not extend its
    /// newest signed checkpoint, or that is missing while its keys or checkpoints exist
    /// ([`StoreError::LostHistory`]).
    pub fn open(cfg: StoreConfig) -> Result<AuditStore, StoreError> {
        Self::open_checked(cfg, None).map(|(s, _)| s)
    }

    /// Opens the store like [`AuditStore::open`], but where rows were lost, records the
    /// loss instead of refusing: an `audit.loss_accepted` event (with `reason`, `actor`
    /// and the missing range, chained like any event) and a signed `loss` checkpoint
    /// that later checkpoints extend. `None` when nothing was lost.
    pub fn open_accepting_loss(
        cfg: StoreConfig,
        reason: &str,
        actor: &str,
    ) -> Result<(AuditStore, Option<AcceptedLoss>), StoreError> {
        if reason.trim().is_empty() {
            return Err(StoreError::InvalidArgument(
                "a reason is required to accept a loss of audit history".into(),
            ));
        }
        Self::open_checked(cfg, Some((reason, actor)))
    }

    fn open_checked(
        cfg: StoreConfig,
        accept: Option<(&str, &str)>,
    ) -> Result<(AuditStore, Option<AcceptedLoss>), StoreError> {
        if cfg.queue_capacity == 0 || cfg.max_batch == 0 {
            return Err(StoreError::InvalidArgument(
                "queue_capacity and max_batch must be at least 1".into(),
            ));
        }
        if cfg.retention.is_some_and(|r| r.is_zero()) {
            return Err(StoreError::InvalidArgument(
                "a retention of zero would delete every event; use None to keep events forever"
                    .into(),
            ));
        }
        let folders = checkpoint::folders(&cfg.checkpoint_dir, &cfg.checkpoint_mirrors);
        let missing = evidence::missing_record(&cfg, checkpoint::any(&folders));
        if let (Some(loss), None) = (&missing, accept) {
            return Err(StoreError::LostHistory(loss.message.clone()));
        }
        let mut conn = open_rw(&cfg)?;
        crate::schema::migrate(&mut conn)?;
        let (next_id, head) = chain_head(&conn)?;
        // New keys for a record that already holds rows would make it unverifiable.
        let keys = if next_id > 1 {
            keys::load(&cfg.key_dir)?
        } else {
            keys::load_or_create(&cfg.key_dir)?
        };
        checkpoint::ensure_dirs(&folders, &keys)?;
        let (newest, damaged) = match accept {
            None => (checkpoint::newest(&folders, keys.public_key())?, Vec::new()),
            Some(_) => checkpoint::newest_setting_aside_damaged(&folders, keys.public_key())?,
        };
        let loss = match missing {
            Some(l) => Some(l),
            None => evidence::compare(&conn, &cfg.db_path, newest.as_ref(), next_id - 1)?,
        };
        let loss = evidence::with_damaged(loss, damaged);
        if let (Some(l), None) = (&loss, accept) {
            return Err(StoreError::LostHistory(l.message.clone()));
        }
        let signed = match (&loss, &newest) {
            (None, Some(e)) => Some((
                e.body.last_id,
                hex::decode(&e.body.last_hash).unwrap_or_default(),
            )),
            _ => None,
        };
        let ckpt = Sequence::open(folders, newest.as_ref());
        let security_log = match &cfg.security_log_dir {
            Some(d) => Some(SecurityLog::open(d)?),
            None => None,
        };
        let watch = CommitWatch(Arc::new(WatchInner {
            latest: Mutex::new(next_id - 1),
            cv: Condvar::new(),
        }));
        let shared = Arc::new(Shared {
            keys,
            health: Mutex::new(HealthState {
                writable: true,
                ..Default::default()
            }),
            committed: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_latency: prom_text::Histogram::new(prom_text::LATENCY_BOUNDS),
            watch,
            index: Arc::new(IndexProgress::default()),
            integrity: Mutex::default(),
        });
        let identity = FileIdentity::capture(&cfg.db_path)
            .map_err(|e| StoreError::io("cannot examine", &cfg.db_path, e))?;
        let (tx, rx) = bounded(cfg.queue_capacity);
        let now = Instant::now();
        let mut w = Writer {
            conn,
            cfg: cfg.clone(),
            shared: shared.clone(),
            next_id,
            head,
            needs_resync: false,
            ckpt,
            checkpointed_id: -1,
            last_checkpoint: now,
            next_prune: now,
            security_log,
            signed,
            identity,
            lost: None,
            next_file_check: now + FILE_CHECK_EVERY,
        };
        let handle = thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::io("cannot start audit writer thread for", &cfg.db_path, e))?;
        let checkpointer = Some(spawn_checkpointer(&cfg)?);
        let indexer = Some(index::spawn(
            &cfg,
            shared.watch.clone(),
            shared.index.clone(),
        )?);
        let writer = AuditWriter {
            shared: shared.clone(),
            tx: tx.clone(),
        };
        let integrity = integrity::spawn(&cfg, shared.clone(), writer)?;
        let store = AuditStore {
            cfg,
            shared,
            tx,
            handle: Some(handle),
            checkpointer,
            indexer,
            integrity,
        };
        let accepted = match (loss, accept) {
            (Some(l), Some((reason, actor))) => Some(store.record_loss(l, reason, actor)?),
            _ => None,
        };
        Ok((store, accepted))
    }

    /// Records an accepted loss: the event first (so the loss checkpoint can sign it as
    /// its head), then the `loss` checkpoint.
    fn record_loss(
        &self,
        loss: evidence::Loss,
        reason: &str,
        actor: &str,
    ) -> Result<AcceptedLoss, StoreError> {
        let mut detail = loss.detail;
        detail["reason"] = reason.into();
        detail["actor"] = actor.into();
        let ev = NewEvent::new(crate::kinds::AUDIT_LOSS_ACCEPTED, crate::Outcome::Success)
            .with_reason(detail["what"].as_str().unwrap_or("lost").to_owned())
            .with_username(actor)
            .with_detail(detail);
        let event_id = self.writer().record_blocking(ev)?;
        let (a, r) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(checkpoint::LOSS, a))
            .map_err(|_| StoreError::WriterGone)?;
        Ack(r).wait()?;
        tracing::warn!(
            event_id,
            reason,
            actor,
            "a loss of audit history was accepted and recorded"
        );
        Ok(AcceptedLoss {
            message: loss.message,
            event_id,
        })
    }

    pub fn writer(&self) -> AuditWriter {
        AuditWriter {
            shared: self.shared.clone(),
            tx: self.tx.clone(),
        }
    }

    /// A reader with its own read-only connection(s).
    pub fn reader(&self) -> Result<AuditReader, StoreError> {
        AuditReader::open(&self.cfg.db_path)
    }

    /// How long each group commit took (successful ones), in seconds.
    pub fn commit_latency(&self) -> &prom_text::Histogram {
        &self.shared.commit_latency
    }

    pub fn health(&self) -> Health {
        let h = self.shared.health.lock().unwrap_or_else(|p| p.into_inner());
        let indexed = self.shared.index.indexed_id.load(Ordering::Relaxed);
        Health {
            writable: h.writable,
            last_error: h.last_error.clone(),
            queue_depth: self.tx.len(),
            events_committed: self.shared.committed.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
            last_commit_us: h.last_commit_us,
            index_lag: u64::try_from(self.shared.watch.latest() - indexed).unwrap_or(0),
            index_error: self
                .shared
                .index
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            integrity: self
                .shared
                .integrity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .health(),
        }
    }

    /// Runs the integrity checks now (normally every `integrity_interval`) and
    /// returns what they found.
    pub fn check_integrity_now(&self) -> Result<IntegrityHealth, StoreError> {
        self.integrity
            .as_ref()
            .ok_or_else(|| StoreError::InvalidArgument("integrity checks are disabled".into()))?
            .check_now()?;
        Ok(self.health().integrity)
    }

    /// Waits until every event committed so far is in the query index; returns the
    /// index's watermark. Queries are exact without it; this only makes them fast.
    pub fn index_now(&self) -> Result<i64, StoreError> {
        self.indexer.as_ref().ok_or(StoreError::WriterGone)?.sync()
    }

    pub fn committed_watch(&self) -> CommitWatch {
        self.shared.watch.clone()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Writes a signed checkpoint of the chain head now; returns its last id.
    pub fn checkpoint_now(&self) -> Result<i64, StoreError> {
        let (a, r) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(checkpoint::HEAD, a))
            .map_err(|_| StoreError::WriterGone)?;
        Ack(r).wait()
    }

    /// Runs retention now (normally it runs every `retention_interval`) and waits until
    /// the query index has let go of the pruned rows too; returns rows pruned.
    pub fn prune_now(&self) -> Result<u64, StoreError> {
        let (a, r) = oneshot::channel();
        self.tx
            .send(Msg::Prune(a))
            .map_err(|_| StoreError::WriterGone)?;
        let n = Ack(r).wait()?;
        self.index_now()?;
        Ok(n)
    }

    /// Commits everything queued, writes a final checkpoint and stops the writer.
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        // First: it records through the writer.
        if let Some(mut i) = self.integrity.take() {
            i.stop();
        }
        if let Some((stop, h)) = self.checkpointer.take() {
            drop(stop);
            let _ = h.join();
        }
        let Some(h) = self.handle.take() else {
            return Ok(());
        };
        // If the send fails the thread is already gone; join tells us why.
        let _ = self.tx.send(Msg::Shutdown);
        let r = match h.join() {
            Ok(r) => r,
            Err(_) => Err(StoreError::WriterGone),
        };
        // After the writer, so its last pass sees every committed event.
        if let Some(mut ix) = self.indexer.take() {
            ix.stop();
        }
        // The indexer's read-only attachment may have been the record's last
        // connection, and a read-only connection leaves the WAL behind: fold it into
        // the database file now, so a plain copy of `audit.db` is a complete backup.
        // Never create the file: if it was deleted while running, an empty one in its
        // place would hide that.
        if let Ok(c) =
            Connection::open_with_flags(&self.cfg.db_path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        {
            if let Err(e) = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "final WAL checkpoint of the audit record failed");
            }
        }
        r
    }
}

impl Drop for AuditStore {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "audit store shutdown failed");
        }
    }
}

/// The expensive, order-independent part of recording an event: its content MAC.
fn prepare(keys: &Keys, mut ev: NewEvent) -> Result<Prepared, StoreError> {
    if ev.time_us == 0 {
        ev.time_us = now_us();
    }
    let detail = serde_json::to_string(&ev.detail)?;
    let content_mac = RowFields::of(&ev, &detail).content_mac(&keys.hmac);
    Ok(Prepared {
        ev,
        detail,
        content_mac,
    })
}

impl AuditWriter {
    fn prepare(&self, ev: NewEvent) -> Result<Prepared, StoreError> {
        prepare(&self.shared.keys, ev)
    }

    fn send(&self, m: Msg) -> Result<(), StoreError> {
        // Blocks while the queue is full: back-pressure, never a drop.
        self.tx.send(m).map_err(|_| StoreError::WriterGone)
    }

    /// Queues one event; the returned [`Ack`] resolves to its id after commit.
    /// Blocks while the queue is full.
    pub fn submit(&self, ev: NewEvent) -> Result<Ack<i64>, StoreError> {
        let p = self.prepare(ev)?;
        let (a, r) = oneshot::channel();
        self.send(Msg::Event(p, a))?;
        Ok(Ack(r))
    }

    /// Records one event and resolves only after the transaction holding it committed.
    ///
    /// Waiting for the commit does not block the executor. Only when the writer queue is
    /// full does the submission itself block (briefly) the calling thread: that is the
    /// back-pressure the design wants, since every request is waiting on the same store.
    pub async fn record(&self, ev: NewEvent) -> Result<i64, StoreError> {
        self.submit(ev)?.await
    }

    pub fn record_blocking(&self, ev: NewEvent) -> Result<i64, StoreError> {
        self.submit(ev)?.wait()
    }

    /// Records several events in one queue message; they commit together, ids in order.
    pub fn record_many_blocking(&self, evs: Vec<NewEvent>) -> Result<Vec<i64>, StoreError> {
        if evs.is_empty() {
            return Ok(Vec::new());
        }
        let ps = evs
            .into_iter()
            .map(|e| self.prepare(e))
            .collect::<Result<Vec<_>, _>>()?;
        let (a, r) = oneshot::channel();
        self.send(Msg::Events(ps, a))?;
        Ack(r).wait()
    }

    /// Inserts an alert, or adds to the open alert with the same `(detector, group_key)`.
    /// Returns the alert id. Blocking.
    pub fn insert_alert(&self, a: NewAlert) -> Result<i64, StoreError> {
        self.submit_alert(a)?.wait()
    }

    /// Queues an alert like [`AuditWriter::insert_alert`] without waiting for the
    /// commit; the [`Ack`] resolves to the alert id. Blocks while the queue is full.
    pub fn submit_alert(&self, a: NewAlert) -> Result<Ack<i64>, StoreError> {
        let (t, r) = oneshot::channel();
        self.send(Msg::Alert(a, t))?;
        Ok(Ack(r))
    }

    /// Queues a detector's alerts together with its new cursor: one transaction
    /// stores both or neither. See [`DetectionCommit`].
    pub fn submit_detection(&self, d: DetectionCommit) -> Result<Ack<()>, StoreError> {
        let (t, r) = oneshot::channel();
        self.send(Msg::Detection(d, t))?;
        Ok(Ack(r))
    }

    pub fn update_alert_status(
        &self,
        id: i64,
        status: AlertStatus,
        actor: &str,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let (t, r) = oneshot::channel();
        self.send(Msg::AlertStatus {
            id,
            status,
            actor: actor.to_owned(),
            note: note.map(str::to_owned),
            ack: t,
        })?;
        Ack(r).wait()
    }
}

/// Next id and chain head from the database: the newest row, else the retention
/// anchor, else the genesis value.
fn chain_head(conn: &Connection) -> Result<(i64, Mac), StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let row = match row {
        Some(r) => Some(r),
        None => conn
            .query_row(
                "SELECT last_pruned_id, last_pruned_hash FROM chain_anchor WHERE singleton = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
    };
    match row {
        None => Ok((1, GENESIS)),
        Some((id, h)) => {
            // A malformed head hash means tampering; chaining on from zeros keeps writing
            // (never refuse to record) and verify will name the row.
            let head = chain::to_array(&h).unwrap_or(GENESIS);
            Ok((id + 1, head))
        }
    }
}

const INSERT_EVENT: &str =
    "INSERT INTO events (id, time_us, kind, outcome, reason, subject, username, client_ip,
    user_agent, method, path, jti, kid, alg, token_fp, source, detail, content_mac, hash)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

enum Done {
    Id(i64),
    Ev(i64, Mac),
    Evs(Vec<(i64, Mac)>),
    Unit,
    Refused(StoreError),
}

struct Writer {
    conn: Connection,
    cfg: StoreConfig,
    shared: Arc<Shared>,
    next_id: i64,
    head: Mac,
    needs_resync: bool,
    ckpt: Sequence,
    checkpointed_id: i64,
    last_checkpoint: Instant,
    next_prune: Instant,
    security_log: Option<SecurityLog>,
    /// The newest head this store signed or found signed (id, chain hash). A head
    /// checkpoint is written only if the record still holds that row unchanged.
    signed: Option<(i64, Vec<u8>)>,
    /// `audit.db` as opened, checked before every acknowledgement.
    identity: FileIdentity,
    /// Set for good once the file changed underneath: every later batch is refused.
    lost: Option<String>,
    next_file_check: Instant,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) -> Result<(), StoreError> {
        let mut batch: Vec<Msg> = Vec::with_capacity(self.cfg.max_batch);
        loop {
            let first = match rx.recv_timeout(self.next_timer()) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                // Every AuditWriter and the store are gone: nothing more can arrive.
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut shutdown = false;
            if let Some(m) = first {
                batch.push(m);
                while batch.len() < self.cfg.max_batch {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
            }
            let mut control = Vec::new();
            let mut work = Vec::with_capacity(batch.len());
            for m in batch.drain(..) {
                match m {
                    Msg::Shutdown => shutdown = true,
                    Msg::Checkpoint(..) | Msg::Prune(_) => control.push(m),
                    m => work.push(m),
                }
            }
            if !work.is_empty() {
                self.commit(work);
            }
            for m in control {
                match m {
                    Msg::Checkpoint(kind, a) => {
                        let _ = a.send(self.checkpoint(kind).map(|_| self.next_id - 1));
                    }
                    Msg::Prune(a) => {
                        let _ = a.send(self.prune());
                    }
                    _ => {}
                }
            }
            if shutdown {
                // Commit whatever was queued before the shutdown request.
                loop {
                    let rest: Vec<Msg> = rx.try_iter().take(self.cfg.max_batch).collect();
                    if rest.is_empty() {
                        break;
                    }
                    let rest = rest
                        .into_iter()
                        .filter(|m| {
                            matches!(
                                m,
                                Msg::Event(..)
                                    | Msg::Events(..)
                                    | Msg::Alert(..)
                                    | Msg::Detection(..)
                                    | Msg::AlertStatus { .. }
                            )
                        })
                        .collect::<Vec<_>>();
                    self.commit(rest);
                }
                break;
            }
            self.timers();
        }
        self.checkpoint(checkpoint::HEAD)?;
        if self.lost.is_some() {
            self.set_aside_wal();
        }
        Ok(())
    }

    fn next_timer(&self) -> Duration {
        let mut due =
            (self.last_checkpoint + self.cfg.checkpoint_interval).min(self.next_file_check);
        if self.cfg.retention.is_some() {
            due = due.min(self.next_prune);
        }
        due.saturating_duration_since(Instant::now())
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if now >= self.next_file_check {
            self.next_file_check = now + FILE_CHECK_EVERY;
            self.file_still_ours();
        }
        if now >= self.last_checkpoint + self.cfg.checkpoint_interval {
            if let Err(e) = self.checkpoint(checkpoint::HEAD) {
                tracing::error!(error = %e, "writing audit checkpoint failed");
            }
        }
        if self.cfg.retention.is_some() && now >= self.next_prune {
            match self.prune() {
                // A full chunk means more is due: continue right after the next batch.
                Ok(n) if n as usize >= PRUNE_CHUNK => {}
                Ok(_) => self.next_prune = now + self.cfg.retention_interval,
                Err(e) => {
                    tracing::error!(error = %e, "audit retention failed; will retry");
                    self.next_prune = now + self.cfg.retention_interval;
                }
            }
        }
    }

    fn set_health(&self, err: Option<String>) {
        let mut h = self.shared.health.lock().unwrap_or_else(|p| p.into_inner());
        match err {
            Some(e) => {
                h.writable = false;
                h.last_error = Some(e);
            }
            None => {
                if !h.writable {
                    tracing::info!("audit store is writable again");
                }
                h.writable = true;
                h.last_commit_us = Some(now_us());
            }
        }
    }

    fn commit(&mut self, work: Vec<Msg>) {
        if let Some(msg) = &self.lost {
            let msg = msg.clone();
            return self.refuse(work, &msg);
        }
        if self.needs_resync {
            match chain_head(&self.conn) {
                Ok((n, h)) => {
                    self.next_id = n;
                    self.head = h;
                    self.needs_resync = false;
                }
                Err(e) => return self.fail(work, &e),
            }
        }
        let started = Instant::now();
        match self.apply(&work) {
            Ok((done, next_id, head)) => {
                self.next_id = next_id;
                self.head = head;
                // Committed, but into the file at the path? If not, nobody is told
                // "recorded": the rows are in the rescue copy, the callers get 503.
                if !self.file_still_ours() {
                    let msg = self.lost.clone().unwrap_or_default();
                    return self.refuse(work, &msg);
                }
                self.set_health(None);
                self.shared.commit_latency.observe(started.elapsed());
                self.after_commit(work, done);
            }
            Err(e) => {
                self.needs_resync = true;
                self.fail(work, &e)
            }
        }
    }

    fn fail(&mut self, work: Vec<Msg>, e: &StoreError) {
        let msg = e.to_string();
        tracing::error!(error = %msg, records = work.len(), "audit commit failed; callers get an error and the store is marked unwritable");
        self.set_health(Some(msg.clone()));
        self.refuse(work, &msg);
    }

    /// Answers every caller in `work` with "not recorded".
    fn refuse(&mut self, work: Vec<Msg>, msg: &str) {
        for m in work {
            let err = || StoreError::Unwritable(msg.to_owned());
            match m {
                Msg::Event(_, a) | Msg::Alert(_, a) => drop(a.send(Err(err()))),
                Msg::Events(_, a) => drop(a.send(Err(err()))),
                Msg::Detection(_, a) => drop(a.send(Err(err()))),
                Msg::AlertStatus { ack, .. } => drop(ack.send(Err(err()))),
                _ => {}
            }
        }
    }

    /// One IMMEDIATE transaction for the whole batch. Returns per-message results and
    /// the new chain position; nothing in `self` changes until the commit succeeded.
    fn apply(&mut self, work: &[Msg]) -> Result<(Vec<Done>, i64, Mac), StoreError> {
        let key = &self.shared.keys.hmac;
        let mut next = self.next_id;
        let mut head = self.head;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut done = Vec::with_capacity(work.len());
        {
            let mut ins = tx.prepare_cached(INSERT_EVENT)?;
            let mut put = |p: &Prepared| -> Result<(i64, Mac), StoreError> {
                let id = next;
                let h = chain::link(key, &head, id, &p.content_mac);
                let e = &p.ev;
                ins.execute(params![
                    id,
                    e.time_us,
                    e.kind,
                    e.outcome.as_str(),
                    e.reason,
                    e.subject,
                    e.username,
                    e.client_ip,
                    e.user_agent,
                    e.method,
                    e.path,
                    e.jti,
                    e.kid,
                    e.alg,
                    e.token_fp,
                    e.source,
                    p.detail,
                    &p.content_mac[..],
                    &h[..]
                ])?;
                head = h;
                next += 1;
                Ok((id, h))
            };
            for m in work {
                done.push(match m {
                    Msg::Event(p, _) => {
                        let (id, h) = put(p)?;
                        Done::Ev(id, h)
                    }
                    Msg::Events(ps, _) => {
                        Done::Evs(ps.iter().map(&mut put).collect::<Result<_, _>>()?)
                    }
                    Msg::Alert(a, _) => Done::Id(upsert_alert(&tx, a)?),
                    Msg::Detection(d, _) => {
                        for a in &d.alerts {
                            upsert_alert(&tx, a)?;
                        }
                        tx.prepare_cached(
                            "INSERT INTO detector_cursors (detector, last_event_id, updated_us)
                             VALUES (?1, ?2, ?3)
                             ON CONFLICT(detector) DO UPDATE SET last_event_id = excluded.last_event_id,
                             updated_us = excluded.updated_us",
                        )?
                        .execute(params![d.detector, d.last_event_id, now_us()])?;
                        Done::Unit
                    }
                    Msg::AlertStatus {
                        id,
                        status,
                        actor,
                        note,
                        ..
                    } => match set_alert_status(&tx, *id, *status, actor, note.as_deref())? {
                        Ok(()) => Done::Unit,
                        Err(refused) => Done::Refused(refused),
                    },
                    _ => Done::Unit,
                });
            }
        }
        tx.commit()?;
        Ok((done, next, head))
    }

    fn after_commit(&mut self, work: Vec<Msg>, done: Vec<Done>) {
        let mut n_events = 0u64;
        let mut last = 0;
        for (m, d) in work.iter().zip(&done) {
            match (m, d) {
                (Msg::Event(p, _), Done::Ev(id, h)) => {
                    self.note_event(*id, p, h);
                    n_events += 1;
                    last = *id;
                }
                (Msg::Events(ps, _), Done::Evs(ids)) => {
                    for (p, (id, h)) in ps.iter().zip(ids) {
                        self.note_event(*id, p, h);
                    }
                    n_events += ids.len() as u64;
                    last = ids.last().map_or(last, |x| x.0);
                }
                (Msg::Alert(a, _), Done::Id(id)) => {
                    if let Some(log) = &mut self.security_log {
                        log.add_alert(*id, a);
                    }
                }
                _ => {}
            }
        }
        if let Some(log) = &mut self.security_log {
            if let Err(e) = log.flush() {
                tracing::warn!(error = %e, "writing the ECS security log failed (the audit store itself is fine)");
            }
        }
        // Counters and the commit watch move before any caller is acknowledged,
        // so an acknowledged caller never sees health lag behind its own event.
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        if n_events > 0 {
            self.shared.committed.fetch_add(n_events, Ordering::Relaxed);
            self.shared.watch.publish(last);
        }
        for (m, d) in work.into_iter().zip(done) {
            match (m, d) {
                (Msg::Event(_, a), Done::Ev(id, _)) => drop(a.send(Ok(id))),
                (Msg::Events(_, a), Done::Evs(ids)) => {
                    drop(a.send(Ok(ids.into_iter().map(|x| x.0).collect())))
                }
                (Msg::Alert(_, a), Done::Id(id)) => drop(a.send(Ok(id))),
                (Msg::AlertStatus { ack, .. }, Done::Unit) => drop(ack.send(Ok(()))),
                (Msg::Detection(_, a), Done::Unit) => drop(a.send(Ok(()))),
                (Msg::AlertStatus { ack, .. }, Done::Refused(e)) => drop(ack.send(Err(e))),
                _ => {}
            }
        }
    }

    fn note_event(&mut self, id: i64, p: &Prepared, hash: &Mac) {
        if let Some(log) = &mut self.security_log {
            log.add(id, &p.ev, hash);
        }
    }

    fn checkpoint(&mut self, kind: &'static str) -> Result<(), StoreError> {
        self.last_checkpoint = Instant::now();
        let last_id = self.next_id - 1;
        let forced = kind == checkpoint::LOSS;
        if !forced && (last_id == self.checkpointed_id || last_id < 1 || self.needs_resync) {
            return Ok(());
        }
        if !forced {
            if let Some((id, hash)) = &self.signed {
                if !evidence::still_holds(&self.conn, *id, hash)? {
                    let msg = format!(
                        "refusing to sign a checkpoint: the audit record no longer holds row {id} as signed \
                         before (rows were removed or rewritten underneath the server)"
                    );
                    tracing::error!("{msg}");
                    self.set_health(Some(msg.clone()));
                    return Err(StoreError::LostHistory(msg));
                }
            }
        }
        let anchor: i64 = self
            .conn
            .query_row(
                "SELECT last_pruned_id FROM chain_anchor WHERE singleton = 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        self.ckpt.write(
            &self.shared.keys,
            kind,
            last_id,
            &self.head,
            last_id - anchor,
            now_us(),
        )?;
        self.checkpointed_id = last_id;
        self.signed = Some((last_id, self.head.to_vec()));
        Ok(())
    }

    /// Deletes up to [`PRUNE_CHUNK`] of the oldest events older than the retention age.
    /// A signed `prune` checkpoint authorising the deletion is written *before* the
    /// delete, so a crash in between leaves extra rows, never an unexplained gap.
    fn prune(&mut self) -> Result<u64, StoreError> {
        let Some(retention) = self.cfg.retention else {
            return Ok(0);
        };
        if let Some(msg) = &self.lost {
            return Err(StoreError::Unwritable(msg.clone()));
        }
        let cutoff =
            now_us().saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX));
        let (anchor_id, pruned_total): (i64, i64) = self
            .conn
            .query_row(
                "SELECT last_pruned_id, pruned_total FROM chain_anchor WHERE singleton = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0));
        // Prune a prefix by id: the chain is in id order, and an anchor is one row.
        // Ids are also the order of recording, so this removes rows by the time they
        // were recorded as well as by their own time: see `PrunedRange`.
        let mut upto: Option<(i64, Vec<u8>)> = None;
        let mut n = 0u64;
        let mut times = (i64::MAX, i64::MIN);
        {
            let mut st = self.conn.prepare_cached(
                "SELECT id, time_us, hash FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = st.query(params![anchor_id, PRUNE_CHUNK as i64])?;
            while let Some(r) = rows.next()? {
                let t: i64 = r.get(1)?;
                if t >= cutoff {
                    break;
                }
                upto = Some((r.get(0)?, r.get(2)?));
                times = (times.0.min(t), times.1.max(t));
                n += 1;
            }
        }
        let Some((x, hash)) = upto else { return Ok(0) };
        self.ckpt.write(
            &self.shared.keys,
            checkpoint::PRUNE,
            x,
            &hash,
            pruned_total + n as i64,
            now_us(),
        )?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM events WHERE id > ?1 AND id <= ?2",
            [anchor_id, x],
        )?;
        tx.execute(
            "INSERT INTO chain_anchor (singleton, last_pruned_id, last_pruned_hash, pruned_total, updated_us)
             VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT(singleton) DO UPDATE SET last_pruned_id = excluded.last_pruned_id,
               last_pruned_hash = excluded.last_pruned_hash, pruned_total = excluded.pruned_total,
               updated_us = excluded.updated_us",
            params![x, hash, pruned_total + n as i64, now_us()],
        )?;
        tx.commit()?;
        tracing::info!(
            rows = n,
            first_id = anchor_id + 1,
            last_id = x,
            "pruned audit events past retention"
        );
        self.record_own(pruned_event(anchor_id + 1, x, n, times, cutoff));
        Ok(n)
    }

    /// After a lost file: closes the connection, then moves its WAL aside (see
    /// [`FileIdentity::set_aside_wal`]).
    fn set_aside_wal(&mut self) {
        match Connection::open_in_memory() {
            Ok(c) => drop(std::mem::replace(&mut self.conn, c)),
            Err(e) => return tracing::error!(error = %e, "could not close the lost audit database"),
        }
        let suffix = format!(".lost-{}", now_us() / 1_000_000);
        if let Some(p) = self.identity.set_aside_wal(&suffix) {
            tracing::warn!(path = %p.display(), "moved the lost database's write-ahead log aside (its commits are in the rescue copy)");
        }
    }

    /// Commits an event of the store's own (no caller waits for it).
    fn record_own(&mut self, ev: NewEvent) {
        match prepare(&self.shared.keys, ev) {
            Ok(p) => {
                let (ack, _) = oneshot::channel();
                self.commit(vec![Msg::Event(p, ack)]);
            }
            Err(e) => tracing::error!(error = %e, "could not prepare the store's own audit event"),
        }
    }

    /// True while `audit.db` at its path is still the file this writer commits to.
    /// The first time it is not, the store fails closed for good (see [`Writer::lose_file`]).
    fn file_still_ours(&mut self) -> bool {
        if self.lost.is_some() {
            return false;
        }
        match self.identity.check() {
            Ok(()) => true,
            Err(what) => {
                self.lose_file(what);
                false
            }
        }
    }

    /// The file changed underneath: save what this connection still reaches (the
    /// unlinked or displaced file, with its WAL) to a rescue copy beside it, and refuse
    /// every later write until restart.
    fn lose_file(&mut self, what: String) {
        let rescue = rescue_path(&self.cfg.db_path);
        let saved = match self
            .conn
            .execute("VACUUM INTO ?1", [rescue.to_string_lossy().as_ref()])
        {
            Ok(_) => format!(
                "every event committed so far was saved to {}; restore it as audit.db",
                rescue.display()
            ),
            Err(e) => format!(
                "saving the events committed so far to {} failed: {e}",
                rescue.display()
            ),
        };
        let msg = format!(
            "{what}: audited requests are refused until tokenwatch is restarted with the record restored ({saved})"
        );
        tracing::error!(error = %msg, "the audit record changed underneath the running server; failing closed");
        self.set_health(Some(msg.clone()));
        self.lost = Some(msg);
    }
}

/// `audit.db.rescued-<unix seconds>` beside `audit.db`.
fn rescue_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(format!(".rescued-{}", now_us() / 1_000_000));
    std::path::PathBuf::from(s)
}

/// The `audit.pruned` event: which ids went, and the event times they spanned.
fn pruned_event(first: i64, last: i64, rows: u64, times: (i64, i64), cutoff: i64) -> NewEvent {
    let t = crate::rfc3339_us;
    let mut ev = NewEvent::new(kinds::AUDIT_PRUNED, Outcome::Success);
    ev.detail = serde_json::json!({
        "first_id": first,
        "last_id": last,
        "rows": rows,
        "oldest_event": t(times.0),
        "newest_event": t(times.1),
        "cutoff": t(cutoff),
    });
    ev
}

fn upsert_alert(tx: &rusqlite::Transaction<'_>, a: &NewAlert) -> Result<i64, StoreError> {
    let now = now_us();
    let t = if a.time_us == 0 { now } else { a.time_us };
    let open: Option<(i64, String, String)> = tx
        .prepare_cached("SELECT id, evidence, severity FROM alerts WHERE detector = ?1 AND group_key = ?2 AND status = 'open'")?
        .query_row(params![a.detector, a.group_key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match open {
        Some((id, ev, sev)) => {
            let mut evidence: Vec<i64> = serde_json::from_str(&ev).unwrap_or_default();
            for e in &a.evidence {
                if evidence.len() >= MAX_EVIDENCE {
                    break;
                }
                if !evidence.contains(e) {
                    evidence.push(*e);
                }
            }
            let sev = sev
                .parse()
                .map_or(a.severity, |s: crate::Severity| s.max(a.severity));
            tx.prepare_cached(
                "UPDATE alerts SET evidence = ?2, count = count + 1, severity = ?3, summary = ?4,
                 subject = coalesce(?5, subject), client_ip = coalesce(?6, client_ip), updated_at_us = ?7 WHERE id = ?1",
            )?
            .execute(params![
                id,
                serde_json::to_string(&evidence)?,
                sev.as_str(),
                a.summary,
                a.subject,
                a.client_ip,
                now.max(t)
            ])?;
            Ok(id)
        }
        None => {
            let mut evidence = a.evidence.clone();
            evidence.truncate(MAX_EVIDENCE);
            tx.prepare_cached(
                "INSERT INTO alerts (time_us, updated_at_us, detector, rule, severity, subject, client_ip, summary, group_key, evidence)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                t,
                a.detector,
                a.rule,
                a.severity.as_str(),
                a.subject,
                a.client_ip,
                a.summary,
                a.group_key,
                serde_json::to_string(&evidence)?
            ])?;
            Ok(tx.last_insert_rowid())
        }
    }
}

/// Outer error: the transaction failed. Inner error: this one request is refused.
fn set_alert_status(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    status: AlertStatus,
    actor: &str,
    note: Option<&str>,
) -> Result<Result<(), StoreError>, StoreError> {
    let row: Option<(String, String, String)> = tx
        .prepare_cached("SELECT detector, group_key, status FROM alerts WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((detector, group_key, current)) = row else {
        return Ok(Err(StoreError::AlertNotFound(id)));
    };
    if status == AlertStatus::Open && current != "open" {
        let other: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM alerts WHERE detector = ?1 AND group_key = ?2 AND status = 'open'",
            )?
            .query_row(params![detector, group_key], |r| r.get(0))
            .optional()?;
        if let Some(other) = other {
            return Ok(Err(StoreError::InvalidArgument(format!(
                "cannot reopen alert {id}: alert {other} is already open for the same incident"
            ))));
        }
    }
    let now = now_us();
    tx.prepare_cached(
        "UPDATE alerts SET status = ?2, status_by = ?3, status_at_us = ?4, status_note = ?5, updated_at_us = ?4 WHERE id = ?1",
    )?
    .execute(params![id, status.as_str(), actor, now, note])?;
    Ok(Ok(()))
}
