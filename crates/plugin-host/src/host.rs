//! The running host: a worker thread that owns every plugin instance, fed by
//! a bounded batch queue and a control channel, plus a folder watcher.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender, TrySendError};
use detector_api::EventView;
use notify::Watcher as _;

use crate::loader::{event_view, valid_name, Collector, Instance, Library};
use crate::{config_json, EventRecord, HostConfig, HostError, HostSink, Lifecycle, LoadError};

/// Batches that may wait for the worker. When it is full, `feed` drops the
/// batch (counted in metrics) rather than stall the audit writer that calls it.
const QUEUE_BATCHES: usize = 4096;
/// How long the folder must be quiet before a rescan, so a file still being
/// written is not loaded half-way; bounded so a busy folder still converges.
const SETTLE: Duration = Duration::from_millis(100);
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// Whether a plugin is doing its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginState {
    /// Loaded and receiving events.
    Running,
    /// Refused at load, or disabled after repeated errors; the reason.
    Failed(String),
    /// Unloaded by an operator (`disable`); a reload or a new file revives it.
    Disabled,
}

/// One plugin file as the host sees it, for `plugins list`, the UI and metrics.
#[derive(Clone, Debug)]
pub struct PluginStatus {
    /// Plugin name, or the file name when the file was refused before it had one.
    pub name: String,
    /// Version (empty when unknown).
    pub version: String,
    /// Description (empty when unknown).
    pub description: String,
    /// The file in the plugin folder.
    pub file: PathBuf,
    /// Running, failed or disabled.
    pub status: PluginState,
    /// Events delivered to the plugin.
    pub events_seen: u64,
    /// Alerts it raised.
    pub alerts_raised: u64,
    /// Errors and panics it returned (and alerts the host refused).
    pub errors: u64,
    /// Time spent inside the plugin, nanoseconds.
    pub time_spent_ns: u64,
    /// The latest error, also when the plugin still runs (e.g. a refused
    /// replacement, or one failed batch).
    pub last_error: Option<String>,
}

struct Meta {
    name: String,
    version: String,
    description: String,
    status: PluginState,
    last_error: Option<String>,
}

/// Shared between the worker (writer) and `plugins()`/`metrics_text()` (readers).
struct Entry {
    file: PathBuf,
    meta: Mutex<Meta>,
    events: AtomicU64,
    alerts: AtomicU64,
    errors: AtomicU64,
    time_ns: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks is plain status text: still valid after a
    // panic elsewhere, so poisoning is ignored rather than propagated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Entry {
    fn status(&self) -> PluginStatus {
        let m = lock(&self.meta);
        PluginStatus {
            name: m.name.clone(),
            version: m.version.clone(),
            description: m.description.clone(),
            file: self.file.clone(),
            status: m.status.clone(),
            events_seen: self.events.load(Ordering::Relaxed),
            alerts_raised: self.alerts.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            time_spent_ns: self.time_ns.load(Ordering::Relaxed),
            last_error: m.last_error.clone(),
        }
    }
}

#[derive(Default)]
struct Shared {
    entries: Mutex<BTreeMap<PathBuf, Arc<Entry>>>,
    dropped_batches: AtomicU64,
    dropped_events: AtomicU64,
    /// Id of the last event of the newest batch the worker has processed.
    processed_id: AtomicI64,
}

type Reply = Sender<Result<(), HostError>>;

enum Ctrl {
    FolderChanged,
    Reload(String, Reply),
    Disable(String, Reply),
    Shutdown,
}

/// Loads, watches and feeds detector plugins. See the crate docs.
pub struct PluginHost {
    shared: Arc<Shared>,
    data_tx: Sender<Arc<[EventRecord]>>,
    ctrl_tx: Sender<Ctrl>,
    worker: Option<JoinHandle<()>>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl PluginHost {
    /// Scan the folder, load every plugin in it (refusals are reported to
    /// `sink`, they do not fail the start), start the worker thread and, with
    /// `cfg.watch`, the folder watcher. Returns once the initial scan is done.
    pub fn start(cfg: HostConfig, sink: Arc<dyn HostSink>) -> Result<PluginHost, HostError> {
        let dir_meta =
            std::fs::metadata(&cfg.plugin_dir).map_err(|source| HostError::PluginDir {
                path: cfg.plugin_dir.clone(),
                source,
            })?;
        if !dir_meta.is_dir() {
            return Err(HostError::PluginDir {
                path: cfg.plugin_dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        std::fs::create_dir_all(&cfg.private_copy_dir).map_err(|source| {
            HostError::PrivateCopyDir {
                path: cfg.private_copy_dir.clone(),
                source,
            }
        })?;
        let shared = Arc::new(Shared::default());
        let (data_tx, data_rx) = bounded::<Arc<[EventRecord]>>(QUEUE_BATCHES);
        let (ctrl_tx, ctrl_rx) = unbounded::<Ctrl>();

        // The watcher starts before the initial scan so that no change falls
        // between the two; an early event only causes one extra rescan.
        let watcher = if cfg.watch {
            let tx = ctrl_tx.clone();
            let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                use notify::event::{AccessKind, AccessMode, EventKind};
                let relevant = match res {
                    // Our own reads (private copies) show up as access
                    // events; only a finished write matters.
                    Ok(ev) => match ev.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                        EventKind::Access(_) => false,
                        _ => true,
                    },
                    // Lost events (queue overflow): rescan to be safe.
                    Err(_) => true,
                };
                if relevant {
                    let _ = tx.send(Ctrl::FolderChanged);
                }
            })
            .map_err(|source| HostError::Watch {
                path: cfg.plugin_dir.clone(),
                source,
            })?;
            w.watch(&cfg.plugin_dir, notify::RecursiveMode::NonRecursive)
                .map_err(|source| HostError::Watch {
                    path: cfg.plugin_dir.clone(),
                    source,
                })?;
            Some(w)
        } else {
            None
        };

        let (ready_tx, ready_rx) = bounded::<()>(1);
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("tokenwatch-plugins".into())
            .spawn(move || {
                let mut w = Worker {
                    next_tick: Instant::now() + cfg.tick_interval,
                    cfg,
                    sink,
                    shared: worker_shared,
                    slots: BTreeMap::new(),
                    views: Vec::new(),
                };
                w.rescan();
                let _ = ready_tx.send(());
                w.run(&data_rx, &ctrl_rx);
            })
            .map_err(HostError::Spawn)?;
        // An Err means the worker died during the scan; the host then reports
        // ShutDown on every call instead of hanging.
        let _ = ready_rx.recv();
        Ok(PluginHost {
            shared,
            data_tx,
            ctrl_tx,
            worker: Some(worker),
            watcher,
        })
    }

    /// Queue a committed batch for every running plugin. Never blocks: when
    /// the queue is full the batch is dropped, counted in
    /// `tokenwatch_plugin_host_dropped_events_total` and logged.
    pub fn feed(&self, batch: Arc<[EventRecord]>) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        match self.data_tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.shared.dropped_batches.fetch_add(1, Ordering::Relaxed) + 1;
                self.shared.dropped_events.fetch_add(n, Ordering::Relaxed);
                // Logged at powers of two so a long overload cannot flood the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped_batches = dropped,
                        "plugin queue full: detectors are too slow; batches are skipped"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Queue a committed batch, waiting up to `timeout` for room. For a
    /// feeder that reads from the store at its own pace: it can afford to
    /// wait, so detectors see every event instead of skipping under load.
    /// Returns false when the batch could not be queued in time (or the host
    /// is shut down); the caller keeps its position and offers it again.
    pub fn feed_wait(&self, batch: Arc<[EventRecord]>, timeout: Duration) -> bool {
        if batch.is_empty() {
            return true;
        }
        self.data_tx.send_timeout(batch, timeout).is_ok()
    }

    /// Id of the newest event the detectors have been run over (0 before the
    /// first batch): with the store's newest id, how far detection is behind.
    pub fn processed_id(&self) -> i64 {
        self.shared.processed_id.load(Ordering::Relaxed)
    }

    /// Every plugin file the host knows, sorted by name.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        let mut v: Vec<_> = lock(&self.shared.entries)
            .values()
            .map(|e| e.status())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.file.cmp(&b.file)));
        v
    }

    fn request(&self, make: impl FnOnce(Reply) -> Ctrl) -> Result<(), HostError> {
        let (tx, rx) = bounded(1);
        self.ctrl_tx
            .send(make(tx))
            .map_err(|_| HostError::ShutDown)?;
        rx.recv().map_err(|_| HostError::ShutDown)?
    }

    /// Reload the named plugin from its file with fresh state (also revives a
    /// disabled or failed one). On error the previous instance keeps running.
    pub fn reload(&self, name: &str) -> Result<(), HostError> {
        self.request(|tx| Ctrl::Reload(name.to_owned(), tx))
    }

    /// Unload the named plugin until it is reloaded or its file changes.
    pub fn disable(&self, name: &str) -> Result<(), HostError> {
        self.request(|tx| Ctrl::Disable(name.to_owned(), tx))
    }

    /// Prometheus text-format lines for per-plugin counters.
    pub fn metrics_text(&self) -> String {
        let plugins = self.plugins();
        let mut out = String::new();
        type Getter = fn(&PluginStatus) -> String;
        let families: [(&str, &str, &str, Getter); 5] = [
            (
                "tokenwatch_plugin_up",
                "gauge",
                "1 when the plugin is running.",
                |p| u8::from(p.status == PluginState::Running).to_string(),
            ),
            (
                "tokenwatch_plugin_events_total",
                "counter",
                "Events delivered to the plugin.",
                |p| p.events_seen.to_string(),
            ),
            (
                "tokenwatch_plugin_alerts_total",
                "counter",
                "Alerts raised by the plugin.",
                |p| p.alerts_raised.to_string(),
            ),
            (
                "tokenwatch_plugin_errors_total",
                "counter",
                "Errors and panics returned by the plugin.",
                |p| p.errors.to_string(),
            ),
            (
                "tokenwatch_plugin_time_seconds_total",
                "counter",
                "Time spent inside the plugin.",
                |p| format!("{:.9}", p.time_spent_ns as f64 / 1e9),
            ),
        ];
        for (metric, kind, help, get) in families {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for p in &plugins {
                // `file` keeps series unique when a refused duplicate carries
                // the same plugin name as the running one.
                let file = p
                    .file
                    .file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{metric}{{plugin=\"{}\",file=\"{}\"}} {}",
                    escape_label(&p.name),
                    escape_label(&file),
                    get(p)
                );
            }
        }
        for (metric, help, v) in [
            (
                "tokenwatch_plugin_host_dropped_batches_total",
                "Batches skipped because the plugin queue was full.",
                &self.shared.dropped_batches,
            ),
            (
                "tokenwatch_plugin_host_dropped_events_total",
                "Events skipped because the plugin queue was full.",
                &self.shared.dropped_events,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }

    /// Process what is queued, destroy every instance and stop the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // The watcher goes first so it cannot queue work for a dying worker.
        self.watcher = None;
        let _ = self.ctrl_tx.send(Ctrl::Shutdown);
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the plugin host thread panicked");
            }
        }
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.stop();
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What identifies one version of a plugin file and its config on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    let mtime_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: m.len(),
        mtime_ns,
        inode,
    })
}

type Fingerprint = (Stamp, Option<Stamp>);

fn is_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(std::env::consts::DLL_SUFFIX) && path.is_file()
}

struct Slot {
    entry: Arc<Entry>,
    fingerprint: Option<Fingerprint>,
    instance: Option<Instance>,
    consecutive_errors: u32,
}

struct Worker {
    cfg: HostConfig,
    sink: Arc<dyn HostSink>,
    shared: Arc<Shared>,
    slots: BTreeMap<PathBuf, Slot>,
    /// Reused between batches; holds pointers into the current batch only
    /// while it is being processed.
    views: Vec<EventView>,
    next_tick: Instant,
}

impl Worker {
    fn run(&mut self, data_rx: &Receiver<Arc<[EventRecord]>>, ctrl_rx: &Receiver<Ctrl>) {
        let mut rescan: Option<(Instant, Instant)> = None; // (due, first change)
        loop {
            let now = Instant::now();
            let mut deadline = self.next_tick;
            if let Some((due, _)) = rescan {
                deadline = deadline.min(due);
            }
            let timeout = deadline.saturating_duration_since(now);
            select! {
                recv(ctrl_rx) -> msg => match msg {
                    Ok(Ctrl::FolderChanged) => {
                        let now = Instant::now();
                        let first = rescan.map_or(now, |(_, first)| first);
                        rescan = Some(((now + SETTLE).min(first + SETTLE_MAX), first));
                    }
                    Ok(Ctrl::Reload(name, reply)) => {
                        let _ = reply.send(self.reload(&name));
                    }
                    Ok(Ctrl::Disable(name, reply)) => {
                        let _ = reply.send(self.disable(&name));
                    }
                    Ok(Ctrl::Shutdown) | Err(_) => break,
                },
                recv(data_rx) -> batch => {
                    if let Ok(batch) = batch {
                        self.process(&batch);
                        self.done(&batch);
                    }
                },
                default(timeout) => {}
            }
            let now = Instant::now();
            if rescan.is_some_and(|(due, _)| due <= now) {
                rescan = None;
                self.rescan();
            }
            if self.next_tick <= now {
                self.tick();
                // Skip missed ticks instead of bursting to catch up.
                self.next_tick = now + self.cfg.tick_interval;
            }
        }
        // Committed events already queued still deserve detection.
        while let Ok(batch) = data_rx.try_recv() {
            self.process(&batch);
            self.done(&batch);
        }
        self.slots.clear();
    }

    fn done(&self, batch: &[EventRecord]) {
        if let Some(last) = batch.last() {
            self.shared.processed_id.store(last.id, Ordering::Relaxed);
        }
    }

    fn entry(&mut self, file: &Path) -> Arc<Entry> {
        let mut entries = lock(&self.shared.entries);
        Arc::clone(entries.entry(file.to_owned()).or_insert_with(|| {
            Arc::new(Entry {
                file: file.to_owned(),
                meta: Mutex::new(Meta {
                    name: file
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    version: String::new(),
                    description: String::new(),
                    status: PluginState::Failed("not loaded yet".into()),
                    last_error: None,
                }),
                events: AtomicU64::new(0),
                alerts: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                time_ns: AtomicU64::new(0),
            })
        }))
    }

    fn rescan(&mut self) {
        let mut found: BTreeMap<PathBuf, Fingerprint> = BTreeMap::new();
        match std::fs::read_dir(&self.cfg.plugin_dir) {
            Ok(dir) => {
                for path in dir.flatten().map(|e| e.path()) {
                    if !is_candidate(&path) {
                        continue;
                    }
                    if let Some(s) = stamp(&path) {
                        found.insert(path.clone(), (s, stamp(&path.with_extension("toml"))));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.cfg.plugin_dir.display(), error = %e, "cannot list the plugin folder");
                return;
            }
        }
        // Removals first, so a plugin renamed from a.so to b.so does not
        // collide with itself on the duplicate-name check.
        let gone: Vec<PathBuf> = self
            .slots
            .keys()
            .filter(|p| !found.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            self.remove(&path);
        }
        for (path, fp) in found {
            let changed = self
                .slots
                .get(&path)
                .is_none_or(|s| s.fingerprint != Some(fp));
            if changed {
                if let Err(e) = self.load(&path, Some(fp)) {
                    tracing::debug!(error = %e, "load refused");
                }
            }
        }
    }

    fn remove(&mut self, path: &Path) {
        let Some(slot) = self.slots.remove(path) else {
            return;
        };
        lock(&self.shared.entries).remove(path);
        if let Some(instance) = slot.instance {
            let name = instance.info().name.clone();
            drop(instance);
            tracing::info!(plugin = %name, file = %path.display(), "plugin unloaded: file removed");
            self.sink.lifecycle(Lifecycle::Unloaded {
                name,
                file: path.to_owned(),
            });
        }
    }

    /// Load (or reload) the plugin at `path`. The new instance is fully
    /// created before the old one is dropped; on error the old one stays.
    fn load(&mut self, path: &Path, fp: Option<Fingerprint>) -> Result<(), LoadError> {
        let entry = self.entry(path);
        let attempt = self.try_load(path);
        let slot = self.slots.entry(path.to_owned()).or_insert_with(|| Slot {
            entry: Arc::clone(&entry),
            fingerprint: None,
            instance: None,
            consecutive_errors: 0,
        });
        // A failed attempt also records the fingerprint: the same broken
        // file is not retried (and re-reported) on every rescan.
        slot.fingerprint = fp.or(slot.fingerprint);
        match attempt {
            Ok(instance) => {
                let info = instance.info().clone();
                let old = slot.instance.replace(instance);
                drop(old);
                slot.consecutive_errors = 0;
                {
                    let mut m = lock(&entry.meta);
                    m.name.clone_from(&info.name);
                    m.version.clone_from(&info.version);
                    m.description.clone_from(&info.description);
                    m.status = PluginState::Running;
                    m.last_error = None;
                }
                tracing::info!(plugin = %info.name, version = %info.version, file = %path.display(), "plugin loaded");
                self.sink.lifecycle(Lifecycle::Loaded {
                    name: info.name,
                    version: info.version,
                    file: path.to_owned(),
                });
                Ok(())
            }
            Err((name, e)) => {
                let running = slot.instance.is_some();
                let reason = if running {
                    format!("{e}; the previously loaded version keeps running")
                } else {
                    e.to_string()
                };
                {
                    let mut m = lock(&entry.meta);
                    if !running {
                        m.status = PluginState::Failed(reason.clone());
                        if let Some(n) = &name {
                            m.name.clone_from(n);
                        }
                    }
                    m.last_error = Some(reason.clone());
                }
                tracing::warn!(file = %path.display(), plugin = ?name, reason = %reason, "plugin refused");
                self.sink.lifecycle(Lifecycle::Failed {
                    file: path.to_owned(),
                    name,
                    reason,
                });
                Err(e)
            }
        }
    }

    fn try_load(&self, path: &Path) -> Result<Instance, (Option<String>, LoadError)> {
        let lib = Library::load(path, &self.cfg.private_copy_dir).map_err(|e| (None, e))?;
        let name = lib.info().name.clone();
        let fail = |e| (Some(name.clone()), e);
        if let Some((other, _)) = self.slots.iter().find(|(p, s)| {
            p.as_path() != path && s.instance.as_ref().is_some_and(|i| i.info().name == name)
        }) {
            return Err(fail(LoadError::DuplicateName {
                path: path.to_owned(),
                name: name.clone(),
                existing: other.clone(),
            }));
        }
        let config = config_json(path, self.cfg.plugin_config.get(&name)).map_err(fail)?;
        lib.create(&config).map_err(fail)
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        // A refused duplicate may carry the same name: the running one wins.
        let mut matching = self
            .slots
            .iter()
            .filter(|(_, s)| lock(&s.entry.meta).name == name);
        let first = matching.next()?;
        let running = std::iter::once(first)
            .chain(matching)
            .find(|(_, s)| s.instance.is_some());
        Some(running.unwrap_or(first).0.clone())
    }

    fn reload(&mut self, name: &str) -> Result<(), HostError> {
        let path = self
            .find(name)
            .ok_or_else(|| HostError::UnknownPlugin(name.to_owned()))?;
        let fp = stamp(&path).map(|s| (s, stamp(&path.with_extension("toml"))));
        self.load(&path, fp).map_err(HostError::Load)
    }

    fn disable(&mut self, name: &str) -> Result<(), HostError> {
        let path = self
            .find(name)
            .ok_or_else(|| HostError::UnknownPlugin(name.to_owned()))?;
        let Some(slot) = self.slots.get_mut(&path) else {
            return Err(HostError::UnknownPlugin(name.to_owned()));
        };
        if let Some(instance) = slot.instance.take() {
            drop(instance);
            tracing::info!(plugin = %name, "plugin disabled by operator");
            self.sink.lifecycle(Lifecycle::Unloaded {
                name: name.to_owned(),
                file: path.clone(),
            });
        }
        lock(&slot.entry.meta).status = PluginState::Disabled;
        Ok(())
    }

    fn process(&mut self, batch: &Arc<[EventRecord]>) {
        if !self.slots.values().any(|s| s.instance.is_some()) {
            return;
        }
        let newest = batch.iter().map(|e| e.time_us).max().unwrap_or(0);
        let mut views = std::mem::take(&mut self.views);
        views.clear();
        views.extend(batch.iter().map(event_view));
        let n = batch.len() as u64;
        let shared = SharedViews(&views);
        // Big batches are split across the cores; ticks and small batches are
        // not worth a thread.
        let parallel = batch.len() >= PARALLEL_MIN_BATCH;
        self.each_running(
            newest,
            parallel,
            |inst, c| inst.process(shared.views(), c),
            |e| {
                e.events.fetch_add(n, Ordering::Relaxed);
            },
        );
        // The views point into `batch`; clear them before it can be freed.
        views.clear();
        self.views = views;
    }

    fn tick(&mut self) {
        let now = now_us();
        self.each_running(now, false, |inst, c| inst.tick(now, c), |_| {});
    }

    /// Call every running instance, account for time, alerts and errors,
    /// and disable those that keep failing. With `parallel`, the instances
    /// are split over two threads, heaviest first (by time spent so far), as
    /// the ABI allows distinct states to run concurrently.
    fn each_running(
        &mut self,
        time_us: i64,
        parallel: bool,
        call: impl Fn(&mut Instance, &mut Collector<'_>) -> Result<(), String> + Sync,
        count: impl Fn(&Entry) + Sync,
    ) {
        let limit = self.cfg.max_consecutive_errors.max(1);
        let run = |path: &PathBuf, slot: &mut Slot| -> Option<Ran> {
            let instance = slot.instance.as_mut()?;
            let name = instance.info().name.clone();
            let mut collector = Collector::new(&name, time_us);
            let started = Instant::now();
            let result = call(instance, &mut collector);
            let spent = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            let e = &slot.entry;
            e.time_ns.fetch_add(spent, Ordering::Relaxed);
            count(e);
            e.alerts
                .fetch_add(collector.alerts.len() as u64, Ordering::Relaxed);
            e.errors
                .fetch_add(collector.rejected.len() as u64, Ordering::Relaxed);
            let mut disable = None;
            match &result {
                Ok(()) => slot.consecutive_errors = 0,
                Err(msg) => {
                    slot.consecutive_errors += 1;
                    e.errors.fetch_add(1, Ordering::Relaxed);
                    lock(&e.meta).last_error = Some(msg.clone());
                    if slot.consecutive_errors >= limit {
                        disable = Some(msg.clone());
                    }
                }
            }
            Some(Ran {
                path: path.clone(),
                alerts: std::mem::take(&mut collector.alerts),
                rejected: std::mem::take(&mut collector.rejected),
                error: result.err().map(|m| (m, slot.consecutive_errors)),
                disable,
                name,
            })
        };

        let mut running: Vec<(&PathBuf, &mut Slot)> = self
            .slots
            .iter_mut()
            .filter(|(_, s)| s.instance.is_some())
            .collect();
        let ran: Vec<Ran> = if parallel && running.len() > 1 {
            // Longest-processing-time-first onto the less loaded of two groups.
            running
                .sort_by_key(|(_, s)| std::cmp::Reverse(s.entry.time_ns.load(Ordering::Relaxed)));
            let (mut here, mut there) = (Vec::new(), Vec::new());
            let (mut load_here, mut load_there) = (0u64, 0u64);
            for (path, slot) in running {
                let cost = slot.entry.time_ns.load(Ordering::Relaxed).max(1);
                if load_here <= load_there {
                    load_here += cost;
                    here.push((path, slot));
                } else {
                    load_there += cost;
                    there.push((path, slot));
                }
            }
            std::thread::scope(|scope| {
                let other = scope.spawn(|| {
                    there
                        .into_iter()
                        .filter_map(|(p, s)| run(p, s))
                        .collect::<Vec<_>>()
                });
                let mut ran: Vec<Ran> = here.into_iter().filter_map(|(p, s)| run(p, s)).collect();
                match other.join() {
                    Ok(more) => ran.extend(more),
                    // `run` does not panic (plugins cannot unwind across the ABI);
                    // if it ever did, this batch's results from that half are lost.
                    Err(_) => tracing::error!("a plugin worker thread panicked"),
                }
                ran
            })
        } else {
            running.into_iter().filter_map(|(p, s)| run(p, s)).collect()
        };

        let mut disabled = Vec::new();
        for r in ran {
            if let Some(first) = r.rejected.first() {
                tracing::warn!(plugin = %r.name, first = %first, count = r.rejected.len(), "alerts refused");
            }
            for alert in r.alerts {
                self.sink.alert(alert);
            }
            if let Some((msg, in_a_row)) = &r.error {
                tracing::warn!(plugin = %r.name, error = %msg, in_a_row, "plugin returned an error");
            }
            if let Some(msg) = r.disable {
                disabled.push((r.path, r.name, msg));
            }
        }
        for (path, name, msg) in disabled {
            let Some(slot) = self.slots.get_mut(&path) else {
                continue;
            };
            drop(slot.instance.take());
            let reason = format!("disabled after {limit} errors in a row; last: {msg}");
            lock(&slot.entry.meta).status = PluginState::Failed(reason.clone());
            tracing::warn!(plugin = %name, reason = %reason, "plugin disabled");
            self.sink.lifecycle(Lifecycle::Failed {
                file: path,
                name: Some(name),
                reason,
            });
        }
    }
}

/// What one plugin call produced, carried back from a worker thread.
struct Ran {
    path: PathBuf,
    name: String,
    alerts: Vec<crate::AlertRecord>,
    rejected: Vec<String>,
    error: Option<(String, u32)>,
    disable: Option<String>,
}

/// Batches at least this big are worth splitting across two threads.
const PARALLEL_MIN_BATCH: usize = 256;

/// The event views of one batch, shared read-only by the plugin calls.
struct SharedViews<'a>(&'a [EventView]);

// SAFETY: the views only point into the batch, which outlives every call that
// reads them, and nothing writes through them while the calls run.
unsafe impl Sync for SharedViews<'_> {}

impl SharedViews<'_> {
    // A method, not `.0`, so closures capture the Sync wrapper, not the slice.
    fn views(&self) -> &[EventView] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn only_visible_shared_libraries_are_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let so = std::env::consts::DLL_SUFFIX;
        for name in [
            format!("a{so}"),
            format!(".a{so}"),
            format!("a{so}.tmp"),
            "a.toml".into(),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!("d{so}"))).unwrap();
        let mut found: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_candidate(p))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, [format!("a{so}")]);
    }
}
