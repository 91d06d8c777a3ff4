//! The server's side of detection: starts the detection process, tells it
//! which plugin files to load, stores what it reports, and restarts it when
//! it dies, with back-off. A plugin that crashed the process (named by the
//! fault note) is retried a bounded number of times, then quarantined; one
//! that hung, or keeps returning errors, is quarantined at once. Nothing
//! here maps plugin code: files are only listed and hashed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver, Sender};

use super::protocol::{parse_fault, Command, Report};
use super::quarantine;
use super::sink::{Lifecycle, StoreSink};
use super::status::{Status, Table};
use crate::config::DetectionSettings;
use crate::state::StateDb;

/// A folder must be quiet this long before it is rescanned, so a file still
/// being written is not loaded half-way.
const SETTLE: Duration = Duration::from_millis(150);
/// The process is presumed stuck when it sends no heartbeat for this long.
const BEAT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Config {
    pub exe: PathBuf,
    pub plugin_dir: PathBuf,
    pub private_copy_dir: PathBuf,
    pub audit_db: PathBuf,
    pub plugin_config: HashMap<String, serde_json::Value>,
    pub limits: DetectionSettings,
    /// The newest committed event when `serve` started.
    pub start_after: i64,
}

pub(crate) enum Ctl {
    FolderChanged,
    Reload(String, Sender<Result<(), String>>),
    Disable(String, Sender<Result<(), String>>),
    Shutdown,
}

/// What a child's pipes deliver, tagged with the child's generation so a
/// late line from a dead child is never taken for the new one's.
enum Ev {
    Report(u64, Report),
    Fault(u64, u32, i32),
    Eof(u64),
}

/// Health of the detection process, shared with `/healthz` and `/metrics`.
#[derive(Default)]
pub(crate) struct ProcessHealth {
    pub up: std::sync::atomic::AtomicBool,
    pub pid: AtomicU64,
    pub restarts: AtomicU64,
    pub head: AtomicI64,
    pub last_exit: Mutex<Option<String>>,
}

struct FileState {
    sha256: Option<String>,
    toml: Option<String>,
    /// Slot currently running this file, and one being loaded.
    slot: Option<u32>,
    pending: Option<u32>,
    crashes: VecDeque<Instant>,
    errors: VecDeque<Instant>,
}

struct RunningChild {
    generation: u64,
    child: Child,
    stdin: ChildStdin,
    started: Instant,
    last_beat: Instant,
    hung: Option<(u32, String, u64)>,
    fault: Option<(u32, i32)>,
    /// slot -> file
    slots: HashMap<u32, PathBuf>,
}

pub(crate) struct Supervisor {
    cfg: Config,
    sink: StoreSink,
    state: Arc<StateDb>,
    table: Arc<Table>,
    health: Arc<ProcessHealth>,
    files: BTreeMap<PathBuf, FileState>,
    child: Option<RunningChild>,
    generation: u64,
    /// Files in the plugin folder when `serve` started and not loaded yet.
    initial: std::collections::HashSet<PathBuf>,
    next_slot: u32,
    ev_tx: Sender<Ev>,
    ev_rx: Receiver<Ev>,
    respawn_at: Instant,
    quick_exits: u32,
    dirty_since: Option<Instant>,
}

impl Supervisor {
    pub fn new(
        cfg: Config,
        sink: StoreSink,
        state: Arc<StateDb>,
        table: Arc<Table>,
        health: Arc<ProcessHealth>,
    ) -> Supervisor {
        let (ev_tx, ev_rx) = unbounded();
        let initial = std::fs::read_dir(&cfg.plugin_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        Supervisor {
            cfg,
            sink,
            state,
            table,
            health,
            files: BTreeMap::new(),
            child: None,
            generation: 0,
            initial,
            next_slot: 0,
            ev_tx,
            ev_rx,
            respawn_at: Instant::now(),
            quick_exits: 0,
            dirty_since: Some(Instant::now()),
        }
    }

    pub fn run(mut self, ctl: &Receiver<Ctl>) {
        loop {
            if self.child.is_none() && Instant::now() >= self.respawn_at {
                self.spawn();
            }
            if self.dirty_since.is_some_and(|t| t.elapsed() >= SETTLE) {
                self.dirty_since = None;
                self.rescan();
            }
            let ev_rx = self.ev_rx.clone();
            select! {
                recv(ev_rx) -> ev => if let Ok(ev) = ev { self.on_event(ev) },
                recv(ctl) -> c => match c {
                    Ok(Ctl::FolderChanged) => {
                        self.dirty_since.get_or_insert_with(Instant::now);
                    }
                    Ok(Ctl::Reload(name, reply)) => {
                        let _ = reply.send(self.reload(&name));
                    }
                    Ok(Ctl::Disable(name, reply)) => {
                        let _ = reply.send(self.disable(&name));
                    }
                    Ok(Ctl::Shutdown) | Err(_) => return self.shutdown(),
                },
                default(Duration::from_millis(100)) => self.check_beat(),
            }
        }
    }

    fn shutdown(mut self) {
        if let Some(mut c) = self.child.take() {
            // Closing stdin asks the process to exit; a stuck one is killed.
            drop(c.stdin);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.child.kill();
            let _ = c.child.wait();
            // Results already in the pipe are stored, so nothing analysed is lost.
            while let Ok(ev) = self.ev_rx.recv_timeout(Duration::from_millis(200)) {
                if let Ev::Report(_, r @ Report::Result { .. }) = ev {
                    self.on_report(r);
                }
            }
        }
        self.health.up.store(false, Ordering::Relaxed);
    }

    fn spawn(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        let mut cmd = Process::new(&self.cfg.exe);
        cmd.arg("detect-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only prctl(2), async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    // Dies with the server, even on SIGKILL: no orphan keeps
                    // running plugins against a record nobody serves.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, exe = %self.cfg.exe.display(), "cannot start the detection process");
                self.backoff("cannot start");
                return;
            }
        };
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            self.backoff("no pipes");
            return;
        };
        let tx = self.ev_tx.clone();
        let out = std::thread::Builder::new()
            .name("tw-detect-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Report>(&line) {
                        Ok(r) => {
                            if tx.send(Ev::Report(generation, r)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable line from the detection process")
                        }
                    }
                }
                let _ = tx.send(Ev::Eof(generation));
            });
        let tx = self.ev_tx.clone();
        let err = std::thread::Builder::new()
            .name("tw-detect-err".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some((slot, sig)) = parse_fault(&line) {
                        let _ = tx.send(Ev::Fault(generation, slot, sig));
                    } else if !line.trim().is_empty() {
                        tracing::warn!(target: "tokenwatch::detection", "{line}");
                    }
                }
            });
        if out.is_err() || err.is_err() {
            let _ = child.kill();
            self.backoff("no reader threads");
            return;
        }
        self.health
            .pid
            .store(u64::from(child.id()), Ordering::Relaxed);
        self.health.up.store(true, Ordering::Relaxed);
        tracing::info!(pid = child.id(), "detection process started");
        let mut running = RunningChild {
            generation,
            child,
            stdin,
            started: Instant::now(),
            last_beat: Instant::now(),
            hung: None,
            fault: None,
            slots: HashMap::new(),
        };
        let l = &self.cfg.limits;
        let init = Command::Init {
            audit_db: self.cfg.audit_db.clone(),
            private_copy_dir: self.cfg.private_copy_dir.clone(),
            plugin_config: self.cfg.plugin_config.clone(),
            tick_ms: l.tick_ms,
            budget_ms: l.call_budget_ms,
            limit_ms: l.call_limit_ms,
        };
        if send(&mut running.stdin, &init).is_err() {
            let _ = running.child.kill();
        }
        self.child = Some(running);
        for f in self.files.values_mut() {
            f.slot = None;
            f.pending = None;
        }
        let eligible: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| self.eligible(p))
            .cloned()
            .collect();
        for path in eligible {
            self.load(&path);
        }
    }

    fn eligible(&self, path: &Path) -> bool {
        !matches!(
            self.table.status_of(path),
            Some(Status::Quarantined(_) | Status::Disabled | Status::Failed(_))
        )
    }

    fn backoff(&mut self, why: &str) {
        self.quick_exits = self.quick_exits.saturating_add(1);
        let ms = 250u64 << self.quick_exits.min(7);
        self.respawn_at = Instant::now() + Duration::from_millis(ms.min(30_000));
        tracing::warn!(
            why,
            retry_in_ms = ms.min(30_000),
            "detection process will be restarted"
        );
    }

    fn load(&mut self, path: &Path) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let slot = self.next_slot;
        self.next_slot += 1;
        child.slots.insert(slot, path.to_owned());
        if let Some(f) = self.files.get_mut(path) {
            f.pending = Some(slot);
        }
        let cmd = Command::Load {
            slot,
            file: path.to_owned(),
            // A file that was in the folder when `serve` started, loaded for the
            // first time: it analyses from the server's start, so events committed
            // while detection was starting are not skipped.
            start_after: self.initial.remove(path).then_some(self.cfg.start_after),
        };
        if send(&mut child.stdin, &cmd).is_err() {
            let _ = child.child.kill();
        }
    }

    fn unload(&mut self, path: &Path) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let Some(f) = self.files.get_mut(path) else {
            return;
        };
        for slot in [f.slot.take(), f.pending.take()].into_iter().flatten() {
            if send(&mut child.stdin, &Command::Unload { slot }).is_err() {
                let _ = child.child.kill();
            }
        }
    }

    fn rescan(&mut self) {
        let mut found: BTreeMap<PathBuf, (Option<String>, Option<String>)> = BTreeMap::new();
        match std::fs::read_dir(&self.cfg.plugin_dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let p = e.path();
                    if is_candidate(&p) {
                        let toml = quarantine::content_hash(&p.with_extension("toml"));
                        found.insert(p.clone(), (quarantine::content_hash(&p), toml));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.cfg.plugin_dir.display(), error = %e, "cannot list the plugin folder");
                return;
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !found.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            self.unload(&path);
            self.files.remove(&path);
            if let Some(v) = self.table.remove(&path) {
                if v.status == Status::Running {
                    tracing::info!(plugin = %v.name, file = %path.display(), "plugin unloaded: file removed");
                    self.sink.lifecycle(
                        &path,
                        Lifecycle::Unloaded {
                            name: &v.name,
                            why: "file removed",
                        },
                    );
                }
            }
        }
        for (path, (sha, toml)) in found {
            let known = self.files.get(&path);
            if known.is_some_and(|f| f.sha256 == sha && f.toml == toml) {
                continue;
            }
            let is_new = known.is_none();
            let f = self.files.entry(path.clone()).or_insert_with(|| FileState {
                sha256: None,
                toml: None,
                slot: None,
                pending: None,
                crashes: VecDeque::new(),
                errors: VecDeque::new(),
            });
            f.sha256.clone_from(&sha);
            f.toml = toml;
            f.crashes.clear();
            f.errors.clear();
            self.table.ensure(&path);
            // A quarantine holds for the content that earned it; a new file
            // (a fixed build) is loaded again.
            match quarantine::get(&self.state, &path) {
                Ok(Some(q)) if Some(&q.sha256) == sha.as_ref() => {
                    self.table.update(&path, |v| {
                        if let Some(n) = &q.plugin {
                            v.name.clone_from(n);
                        }
                        v.status = Status::Quarantined(q.reason.clone());
                    });
                    if is_new {
                        tracing::warn!(file = %path.display(), reason = %q.reason, "plugin stays quarantined");
                    }
                    continue;
                }
                Ok(Some(_)) => {
                    let _ = quarantine::clear(&self.state, &path);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot read the plugin quarantine"),
            }
            self.table.update(&path, |v| {
                if !matches!(v.status, Status::Running) {
                    v.status = Status::Loading;
                }
            });
            self.load(&path);
        }
    }

    fn on_event(&mut self, ev: Ev) {
        let current = self.child.as_ref().map(|c| c.generation);
        match ev {
            Ev::Report(generation, r) if Some(generation) == current => self.on_report(r),
            Ev::Fault(generation, slot, sig) if Some(generation) == current => {
                if let Some(c) = self.child.as_mut() {
                    c.fault.get_or_insert((slot, sig));
                }
            }
            Ev::Eof(generation) if Some(generation) == current => self.on_exit(),
            _ => {}
        }
    }

    fn path_of(&self, slot: u32) -> Option<PathBuf> {
        self.child.as_ref()?.slots.get(&slot).cloned()
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::Beat { head } => {
                if let Some(c) = self.child.as_mut() {
                    c.last_beat = Instant::now();
                }
                self.health.head.store(head, Ordering::Relaxed);
            }
            Report::Loaded {
                slot,
                name,
                version,
                description,
                after,
                fresh,
                replaced,
            } => self.on_loaded(slot, name, version, description, after, fresh, replaced),
            Report::Refused { slot, name, reason } => self.on_refused(slot, name, reason),
            Report::Result {
                slot,
                cursor,
                events,
                ns,
                alerts,
                rejected,
                error,
            } => {
                let Some(path) = self.path_of(slot) else {
                    return;
                };
                let name = self.table.name_of(&path).unwrap_or_default();
                let n_alerts = alerts.len() as u64;
                if let Err(e) = self.sink.commit(&name, cursor, alerts) {
                    // Not stored, so not analysed: restart from the stored cursors.
                    tracing::error!(error = %e, plugin = %name, "detection results could not be stored; restarting detection");
                    if let Some(c) = self.child.as_mut() {
                        let _ = c.child.kill();
                    }
                    return;
                }
                if let Some(first) = rejected.first() {
                    tracing::warn!(plugin = %name, first = %first, count = rejected.len(), "alerts refused");
                }
                self.table.update(&path, |v| {
                    v.events_seen += events;
                    v.alerts_raised += n_alerts;
                    v.errors += rejected.len() as u64;
                    v.time_spent_ns += ns;
                    v.cursor = cursor;
                });
                if let Some(msg) = error {
                    self.on_plugin_error(&path, slot, &name, msg);
                }
            }
            Report::Slow { slot, call, ms } => {
                let Some(path) = self.path_of(slot) else {
                    return;
                };
                let name = self.table.name_of(&path).unwrap_or_default();
                let budget_ms = self.cfg.limits.call_budget_ms;
                tracing::warn!(plugin = %name, %call, ms, budget_ms, "plugin call over its time budget");
                self.table.update(&path, |v| {
                    v.over_budget += 1;
                    v.last_error = Some(format!("{call}() ran over its {budget_ms} ms budget"));
                });
                self.sink.lifecycle(
                    &path,
                    Lifecycle::OverBudget {
                        name: &name,
                        call: &call,
                        ms,
                        budget_ms,
                    },
                );
            }
            Report::Hung { slot, call, ms } => {
                if let Some(c) = self.child.as_mut() {
                    c.hung = Some((slot, call, ms));
                }
            }
            Report::Unloaded { slot } => {
                if let Some(c) = self.child.as_mut() {
                    c.slots.remove(&slot);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_loaded(
        &mut self,
        slot: u32,
        name: String,
        version: String,
        description: String,
        after: i64,
        fresh: bool,
        replaced: Option<u32>,
    ) {
        let Some(path) = self.path_of(slot) else {
            return;
        };
        if let Some(old) = replaced {
            if let Some(c) = self.child.as_mut() {
                c.slots.remove(&old);
            }
        }
        if fresh {
            // A new plugin starts at the newest event; stored now, so a crash
            // before its first result does not move its start.
            if let Err(e) = self.sink.commit(&name, after, Vec::new()) {
                tracing::error!(error = %e, "cannot store a detector's first cursor");
            }
        }
        if let Some(f) = self.files.get_mut(&path) {
            f.slot = Some(slot);
            if f.pending == Some(slot) {
                f.pending = None;
            }
        }
        tracing::info!(plugin = %name, version = %version, file = %path.display(), after, "plugin loaded");
        self.sink.lifecycle(
            &path,
            Lifecycle::Loaded {
                name: &name,
                version: &version,
            },
        );
        self.table.update(&path, |v| {
            v.name = name;
            v.version = version;
            v.description = description;
            v.status = Status::Running;
            v.cursor = after;
            v.last_error = None;
        });
    }

    fn on_refused(&mut self, slot: u32, name: Option<String>, reason: String) {
        let Some(path) = self.path_of(slot) else {
            return;
        };
        if let Some(c) = self.child.as_mut() {
            c.slots.remove(&slot);
        }
        let running = self.files.get(&path).is_some_and(|f| f.slot.is_some());
        if let Some(f) = self.files.get_mut(&path) {
            if f.pending == Some(slot) {
                f.pending = None;
            }
        }
        let reason = if running {
            format!("{reason}; the previously loaded version keeps running")
        } else {
            reason
        };
        tracing::warn!(file = %path.display(), plugin = ?name, reason = %reason, "plugin refused");
        self.sink.lifecycle(
            &path,
            Lifecycle::Failed {
                name: name.as_deref(),
                reason: &reason,
                quarantined: false,
            },
        );
        self.table.update(&path, |v| {
            if !running {
                v.status = Status::Failed(reason.clone());
                if let Some(n) = &name {
                    v.name.clone_from(n);
                }
            }
            v.last_error = Some(reason);
        });
    }

    /// Errors are counted over a sliding window, so sparse errors add up too.
    fn on_plugin_error(&mut self, path: &Path, slot: u32, name: &str, msg: String) {
        let window = Duration::from_secs(self.cfg.limits.error_window_secs.max(1));
        let max = self.cfg.limits.max_errors.max(1) as usize;
        tracing::warn!(plugin = %name, error = %msg, "plugin returned an error");
        self.table.update(path, |v| {
            v.errors += 1;
            v.last_error = Some(msg.clone());
        });
        let Some(f) = self.files.get_mut(path) else {
            return;
        };
        let now = Instant::now();
        f.errors.push_back(now);
        while f
            .errors
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            f.errors.pop_front();
        }
        if f.errors.len() >= max {
            let reason = format!(
                "disabled after {} errors within {} s; last: {msg}",
                f.errors.len(),
                window.as_secs()
            );
            if let Some(c) = self.child.as_mut() {
                let _ = send(&mut c.stdin, &Command::Unload { slot });
            }
            f.slot = None;
            self.quarantine(path, Some(name), reason);
        }
    }

    fn quarantine(&mut self, path: &Path, name: Option<&str>, reason: String) {
        let sha = self.files.get(path).and_then(|f| f.sha256.clone());
        if let Some(sha) = &sha {
            if let Err(e) = quarantine::put(&self.state, path, sha, name, &reason) {
                tracing::error!(error = %e, "cannot record the plugin quarantine");
            }
        }
        tracing::error!(file = %path.display(), plugin = ?name, reason = %reason, "plugin quarantined");
        self.sink.lifecycle(
            path,
            Lifecycle::Failed {
                name,
                reason: &reason,
                quarantined: true,
            },
        );
        self.table
            .update(path, |v| v.status = Status::Quarantined(reason.clone()));
    }

    fn on_exit(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // The fault note comes on stderr; give its reader a moment to deliver it.
        let status = c.child.wait().ok();
        let deadline = Instant::now() + Duration::from_millis(300);
        while c.fault.is_none() && c.hung.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ev_rx.recv_timeout(left) {
                Ok(Ev::Fault(generation, slot, sig)) if generation == c.generation => {
                    c.fault = Some((slot, sig))
                }
                Ok(Ev::Report(generation, Report::Hung { slot, call, ms }))
                    if generation == c.generation =>
                {
                    c.hung = Some((slot, call, ms));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.health.up.store(false, Ordering::Relaxed);
        self.health.restarts.fetch_add(1, Ordering::Relaxed);
        let how = status.map_or_else(|| "unknown status".to_owned(), describe_exit);
        *self
            .health
            .last_exit
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(how.clone());
        if c.started.elapsed() > Duration::from_secs(60) {
            self.quick_exits = 0;
        }
        let culprit = c
            .hung
            .as_ref()
            .map(|(slot, call, ms)| {
                (
                    *slot,
                    format!(
                        "{call}() ran past the {} ms limit ({ms} ms); stopped",
                        self.cfg.limits.call_limit_ms
                    ),
                    true,
                )
            })
            .or_else(|| {
                c.fault.map(|(slot, sig)| {
                    let what = if sig == 0 {
                        "called exit()".to_owned()
                    } else {
                        format!("crashed the detection process ({})", signal_name(sig))
                    };
                    (slot, what, false)
                })
            });
        for f in self.files.values_mut() {
            f.slot = None;
            f.pending = None;
        }
        let Some((slot, what, hung)) = culprit else {
            tracing::error!(exit = %how, "the detection process exited without naming a plugin");
            self.table.mark_restarting();
            self.backoff("detection process exited");
            return;
        };
        let Some(path) = c.slots.get(&slot).cloned() else {
            self.table.mark_restarting();
            self.backoff("detection process exited");
            return;
        };
        if !self.files.contains_key(&path) {
            // Its file was removed while it hung: the restart was the point.
            tracing::info!(file = %path.display(), "detection restarted to drop a removed plugin that was stuck");
            self.table.mark_restarting();
            self.respawn_at = Instant::now();
            return;
        }
        let name = self.table.name_of(&path);
        let max = self.cfg.limits.max_crashes.max(1) as usize;
        let window = Duration::from_secs(self.cfg.limits.crash_window_secs.max(1));
        let now = Instant::now();
        let crashes = self.files.get_mut(&path).map_or(1, |f| {
            f.crashes.push_back(now);
            while f
                .crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                f.crashes.pop_front();
            }
            f.crashes.len()
        });
        self.table.update(&path, |v| {
            v.crashes += 1;
            v.last_error = Some(what.clone());
        });
        if hung || crashes >= max {
            let reason = if hung {
                format!("quarantined: {what}")
            } else {
                format!(
                    "quarantined after {crashes} crashes within {} s: {what}",
                    window.as_secs()
                )
            };
            self.quarantine(&path, name.as_deref(), reason);
        } else {
            let reason = format!("{what}; retry {crashes} of {max}");
            tracing::error!(file = %path.display(), plugin = ?name, reason = %reason, "plugin crashed");
            self.sink.lifecycle(
                &path,
                Lifecycle::Failed {
                    name: name.as_deref(),
                    reason: &reason,
                    quarantined: false,
                },
            );
        }
        self.table.mark_restarting();
        // The others lost nothing but their in-memory windows: they resume
        // from their stored cursors as soon as the process is back.
        self.respawn_at = Instant::now() + Duration::from_millis(100);
    }

    fn check_beat(&mut self) {
        let stuck = self
            .child
            .as_ref()
            .is_some_and(|c| c.last_beat.elapsed() > BEAT_TIMEOUT);
        if stuck {
            tracing::error!("the detection process stopped answering; killing it");
            if let Some(c) = self.child.as_mut() {
                let _ = c.child.kill();
            }
        }
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        self.table
            .all()
            .into_iter()
            .find(|v| v.name == name)
            .map(|v| v.file)
            .or_else(|| {
                self.files
                    .keys()
                    .find(|p| quarantine::file_key(p) == name)
                    .cloned()
            })
    }

    fn reload(&mut self, name: &str) -> Result<(), String> {
        let path = self
            .find(name)
            .ok_or_else(|| format!("no plugin named {name:?}"))?;
        if let Err(e) = quarantine::clear(&self.state, &path) {
            return Err(format!("cannot clear the quarantine: {e}"));
        }
        if let Some(f) = self.files.get_mut(&path) {
            f.crashes.clear();
            f.errors.clear();
        }
        self.table.update(&path, |v| {
            if !matches!(v.status, Status::Running) {
                v.status = Status::Loading;
            }
        });
        tracing::info!(plugin = %name, "plugin re-enabled by an admin");
        self.load(&path);
        Ok(())
    }

    fn disable(&mut self, name: &str) -> Result<(), String> {
        let path = self
            .find(name)
            .ok_or_else(|| format!("no plugin named {name:?}"))?;
        self.unload(&path);
        let was_running = self.table.status_of(&path) == Some(Status::Running);
        self.table.update(&path, |v| v.status = Status::Disabled);
        if was_running {
            tracing::info!(plugin = %name, "plugin disabled by operator");
            self.sink.lifecycle(
                &path,
                Lifecycle::Unloaded {
                    name,
                    why: "disabled by an operator",
                },
            );
        }
        Ok(())
    }
}

fn send(stdin: &mut ChildStdin, cmd: &Command) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(cmd).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stdin.write_all(&line)?;
    stdin.flush()
}

/// Visible `*.so` regular files (not dotfiles, not temporaries).
pub(crate) fn is_candidate(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(std::env::consts::DLL_SUFFIX) && p.is_file()
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGKILL => "SIGKILL",
        _ => return format!("signal {sig}"),
    };
    format!("{name}, signal {sig}")
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by {}", signal_name(sig)),
        _ => "unknown".into(),
    }
}

/// Starts a folder watcher that pokes the supervisor on every change.
pub(crate) fn watch(dir: &Path, tx: Sender<Ctl>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode, EventKind};
        let relevant = match res {
            Ok(ev) => match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(Ctl::FolderChanged);
        }
    })?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}
