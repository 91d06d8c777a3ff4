//! The detection process (`tokenwatch detect-worker`, started by `serve`):
//! the only process that maps plugin code. Every plugin runs on a thread of
//! its own, so one that is slow or hangs holds up no other; one reader
//! thread reads the record once and offers each batch to every plugin; a
//! plugin that fell behind (busy, or newly loaded) reads what it missed on
//! its own. A watchdog thread reports calls over the time budget and ends
//! the process, naming the plugin, when one runs past the limit. A fatal
//! signal on a plugin's thread is named on stderr before the process dies.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use audit_store::AuditReader;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use plugin_host::{CallOutcome, Detector, EventRecord};

use super::protocol::{Command, Report, WireAlert, FAULT_PREFIX};

/// Events per read, for the shared reader and for a plugin catching up.
const READ_BATCH: usize = 4096;
/// Batches queued per plugin; when full, the plugin reads the rest itself.
const QUEUE: usize = 16;
/// How often the reader looks for new events when there were none.
const POLL: Duration = Duration::from_millis(20);

const CALL_CREATE: u8 = 1;
const CALL_PROCESS: u8 = 2;
const CALL_TICK: u8 = 3;
const CALL_DESTROY: u8 = 4;

fn call_name(c: u8) -> &'static str {
    match c {
        CALL_CREATE => "create",
        CALL_PROCESS => "process",
        CALL_TICK => "tick",
        CALL_DESTROY => "destroy",
        _ => "idle",
    }
}

thread_local! {
    /// The slot whose plugin this thread is running, for the fault handler.
    static SLOT: std::cell::Cell<u32> = const { std::cell::Cell::new(u32::MAX) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn mono_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1 so that 0 can mean "not in a call".
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// Reports go out one line at a time under one lock, flushed at once, so
/// what the process said before it died is in the pipe.
#[derive(Clone)]
struct Out(Arc<Mutex<std::io::Stdout>>);

impl Out {
    fn send(&self, r: &Report) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        let mut out = lock(&self.0);
        // A closed pipe means the server is gone: nothing left to report to.
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            // SAFETY: _exit ends the process without running plugin code
            // (atexit handlers, destructors) that might hang.
            unsafe { libc::_exit(0) };
        }
    }
}

/// What one plugin thread is doing, read by the watchdog.
#[derive(Default)]
struct CallState {
    started_ns: AtomicU64,
    call: AtomicU8,
    reported_slow: AtomicBool,
}

impl CallState {
    fn enter(&self, call: u8) {
        self.reported_slow.store(false, Ordering::Relaxed);
        self.call.store(call, Ordering::Relaxed);
        self.started_ns.store(mono_ns(), Ordering::Release);
    }
    fn leave(&self) {
        self.started_ns.store(0, Ordering::Release);
    }
}

struct Batch {
    /// The events are those with ids after this one (none missing in between).
    after: i64,
    last: i64,
    events: Vec<EventRecord>,
}

/// A plugin slot's batch queue and call state, as the reader feeds them.
type Subscriber = (u32, Sender<Arc<Batch>>, Arc<CallState>);

/// What every thread shares.
struct Shared {
    out: Out,
    audit_db: PathBuf,
    /// Newest event id the reader has read and offered.
    published: AtomicI64,
    /// A plugin loaded behind the reader asks it to go back (the lowest wins).
    rewind: AtomicI64,
    subscribers: Mutex<Vec<Subscriber>>,
    calls: Mutex<Vec<(u32, Arc<CallState>)>>,
    /// The last cursor each plugin (by name) reported: a replacement starts
    /// there, even before the server has committed it.
    sent: Mutex<HashMap<String, i64>>,
    tick: Duration,
    budget: Duration,
    limit: Duration,
}

struct Slot {
    file: PathBuf,
    name: String,
    stop: Arc<AtomicBool>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// Entry point of `tokenwatch detect-worker`.
pub fn run() -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let first = lines
        .next()
        .context("no init line on stdin")?
        .context("reading stdin")?;
    let Command::Init {
        audit_db,
        private_copy_dir,
        plugin_config,
        tick_ms,
        budget_ms,
        limit_ms,
    } = serde_json::from_str(&first).context("parsing the init line")?
    else {
        bail!("the first command must be init");
    };
    install_fault_handlers();
    std::fs::create_dir_all(&private_copy_dir)
        .with_context(|| format!("creating {}", private_copy_dir.display()))?;
    let reader = AuditReader::open(&audit_db).context("opening the audit record")?;
    let shared = Arc::new(Shared {
        out: Out(Arc::new(Mutex::new(std::io::stdout()))),
        published: AtomicI64::new(reader.max_event_id()?),
        rewind: AtomicI64::new(i64::MAX),
        audit_db,
        subscribers: Mutex::new(Vec::new()),
        calls: Mutex::new(Vec::new()),
        sent: Mutex::new(HashMap::new()),
        tick: Duration::from_millis(tick_ms.max(10)),
        budget: Duration::from_millis(budget_ms.max(1)),
        limit: Duration::from_millis(limit_ms.max(budget_ms).max(1)),
    });
    spawn("tw-detect-read", {
        let s = shared.clone();
        move || read_loop(&s, reader)
    })?;
    spawn("tw-detect-watchdog", {
        let s = shared.clone();
        move || watchdog(&s)
    })?;
    let mut slots: HashMap<u32, Slot> = HashMap::new();
    for line in lines {
        let line = line.context("reading stdin")?;
        match serde_json::from_str::<Command>(&line).context("parsing a command")? {
            Command::Init { .. } => bail!("init sent twice"),
            Command::Load {
                slot,
                file,
                start_after,
            } => load(
                &shared,
                &mut slots,
                slot,
                file,
                start_after,
                &private_copy_dir,
                &plugin_config,
            ),
            Command::Unload { slot } => {
                if let Some(s) = slots.remove(&slot) {
                    stop(&shared, slot, s);
                    shared.out.send(&Report::Unloaded { slot });
                }
            }
        }
    }
    // stdin closed: the server is stopping (or gone). Plugins are not asked
    // to clean up: their state is memory, and a hang here would delay exit.
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("starting thread {name}"))
}

fn load(
    shared: &Arc<Shared>,
    slots: &mut HashMap<u32, Slot>,
    slot: u32,
    file: PathBuf,
    start_after: Option<i64>,
    copies: &Path,
    config: &HashMap<String, serde_json::Value>,
) {
    let call = Arc::new(CallState::default());
    lock(&shared.calls).push((slot, call.clone()));
    call.enter(CALL_CREATE);
    SLOT.with(|s| s.set(slot));
    let opened = Detector::open(&file, copies, config);
    SLOT.with(|s| s.set(u32::MAX));
    call.leave();
    let refuse = |name: Option<String>, reason: String| {
        lock(&shared.calls).retain(|(s, _)| *s != slot);
        shared.out.send(&Report::Refused { slot, name, reason });
    };
    let det = match opened {
        Ok(d) => d,
        Err(e) => {
            // A plugin that got as far as create() has a name to show.
            let name = match &e {
                plugin_host::LoadError::CreateFailed { name, .. } => Some(name.clone()),
                _ => None,
            };
            return refuse(name, e.to_string());
        }
    };
    let info = det.info().clone();
    if let Some((_, other)) = slots
        .iter()
        .find(|(_, s)| s.name == info.name && s.file != file)
    {
        let reason = format!(
            "{}: a plugin named {:?} is already loaded from {}; remove one of the two files",
            file.display(),
            info.name,
            other.file.display()
        );
        drop_detector(&call, slot, det);
        return refuse(Some(info.name), reason);
    }
    let replaced = slots
        .iter()
        .find(|(_, s)| s.file == file)
        .map(|(id, _)| *id);
    if let Some(old) = replaced.and_then(|id| slots.remove(&id)) {
        stop(shared, replaced.unwrap_or(slot), old);
    }
    let stored = AuditReader::open(&shared.audit_db)
        .and_then(|r| r.detector_cursors())
        .map(|all| all.into_iter().find(|(n, _)| *n == info.name).map(|c| c.1));
    let stored = match stored {
        Ok(c) => c,
        Err(e) => {
            drop_detector(&call, slot, det);
            return refuse(
                Some(info.name),
                format!("cannot read the detector cursor: {e}"),
            );
        }
    };
    let sent = lock(&shared.sent).get(&info.name).copied();
    let (after, fresh) = match stored.max(sent) {
        Some(c) => (c, false),
        None => (
            start_after.unwrap_or_else(|| shared.published.load(Ordering::Acquire)),
            true,
        ),
    };
    let (tx, rx) = bounded::<Arc<Batch>>(QUEUE);
    shared.rewind.fetch_min(after, Ordering::AcqRel);
    let call_for_reader = call.clone();
    let (done_tx, done_rx) = bounded::<()>(1);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let thread = spawn(&format!("tw-plugin-{slot}"), {
        let s = shared.clone();
        let stop_flag = stop_flag.clone();
        let name = info.name.clone();
        move || {
            SLOT.with(|c| c.set(slot));
            let mut runner = Runner {
                shared: &s,
                slot,
                name,
                det,
                call,
                cursor: after,
                reader: None,
            };
            runner.run(&rx, &stop_flag);
            runner.call.enter(CALL_DESTROY);
            drop(runner.det);
            runner.call.leave();
            let _ = done_tx.send(());
        }
    });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => return refuse(Some(info.name), e.to_string()),
    };
    lock(&shared.subscribers).push((slot, tx, call_for_reader));
    shared.out.send(&Report::Loaded {
        slot,
        name: info.name.clone(),
        version: info.version,
        description: info.description,
        after,
        fresh,
        replaced,
    });
    slots.insert(
        slot,
        Slot {
            file,
            name: info.name,
            stop: stop_flag,
            done: done_rx,
            thread: Some(thread),
        },
    );
}

fn drop_detector(call: &CallState, slot: u32, det: Detector) {
    SLOT.with(|s| s.set(slot));
    call.enter(CALL_DESTROY);
    drop(det);
    call.leave();
    SLOT.with(|s| s.set(u32::MAX));
}

/// Stops a slot's thread; one stuck in a call past the budget ends the
/// process (the server restarts it without that plugin).
fn stop(shared: &Shared, id: u32, mut slot: Slot) {
    slot.stop.store(true, Ordering::Relaxed);
    lock(&shared.subscribers).retain(|(s, ..)| *s != id);
    if slot.done.recv_timeout(shared.budget).is_err() {
        shared.out.send(&Report::Hung {
            slot: id,
            call: "stop".into(),
            ms: shared.budget.as_millis() as u64,
        });
        // SAFETY: ends the process without running any plugin code.
        unsafe { libc::_exit(75) };
    }
    if let Some(t) = slot.thread.take() {
        let _ = t.join();
    }
    lock(&shared.calls).retain(|(s, _)| *s != id);
}

struct Runner<'a> {
    shared: &'a Shared,
    slot: u32,
    name: String,
    det: Detector,
    call: Arc<CallState>,
    cursor: i64,
    reader: Option<AuditReader>,
}

impl Runner<'_> {
    fn run(&mut self, rx: &Receiver<Arc<Batch>>, stop: &AtomicBool) {
        let mut next_tick = Instant::now() + self.shared.tick;
        while !stop.load(Ordering::Relaxed) {
            let wait = next_tick
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            match rx.recv_timeout(wait) {
                Ok(batch) => {
                    if batch.last > self.cursor {
                        if batch.after > self.cursor {
                            self.catch_up(batch.after, stop);
                        }
                        let from = batch.events.partition_point(|e| e.id <= self.cursor);
                        self.process(&batch.events[from..], batch.last);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let published = self.shared.published.load(Ordering::Acquire);
                    if published > self.cursor {
                        self.catch_up(published, stop);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + self.shared.tick;
                self.tick();
            }
        }
    }

    /// Reads and processes what this plugin missed, up to `target`.
    fn catch_up(&mut self, target: i64, stop: &AtomicBool) {
        while self.cursor < target && !stop.load(Ordering::Relaxed) {
            if self.reader.is_none() {
                match AuditReader::open(&self.shared.audit_db) {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => {
                        eprintln!("plugin {}: cannot open the record: {e}", self.name);
                        std::thread::sleep(Duration::from_secs(1));
                        return;
                    }
                }
            }
            let Some(reader) = &self.reader else { return };
            match reader.events_after(self.cursor, READ_BATCH) {
                Ok(events) if events.is_empty() => return,
                Ok(events) => {
                    let last = events.last().map_or(self.cursor, |e| e.id);
                    let events: Vec<EventRecord> =
                        events.into_iter().map(super::event_record).collect();
                    self.process(&events, last);
                }
                Err(e) => {
                    eprintln!("plugin {}: reading the record failed: {e}", self.name);
                    std::thread::sleep(Duration::from_secs(1));
                    return;
                }
            }
        }
    }

    fn process(&mut self, events: &[EventRecord], last: i64) {
        if events.is_empty() {
            self.cursor = self.cursor.max(last);
            return;
        }
        let started = Instant::now();
        self.call.enter(CALL_PROCESS);
        let outcome = self.det.process(events);
        self.call.leave();
        self.cursor = last;
        self.report(outcome, events.len() as u64, started);
    }

    fn tick(&mut self) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let started = Instant::now();
        self.call.enter(CALL_TICK);
        let outcome = self.det.tick(now as i64);
        self.call.leave();
        if !outcome.alerts.is_empty() || outcome.error.is_some() || !outcome.rejected.is_empty() {
            self.report(outcome, 0, started);
        }
    }

    fn report(&self, o: CallOutcome, events: u64, started: Instant) {
        let alerts = o
            .alerts
            .into_iter()
            .map(|a| WireAlert {
                rule: a.rule,
                severity: a.severity.as_str().into(),
                subject: a.subject,
                client_ip: a.client_ip,
                summary: a.summary,
                group_key: a.group_key,
                evidence: a.evidence,
                time_us: a.time_us,
            })
            .collect();
        self.shared.out.send(&Report::Result {
            slot: self.slot,
            cursor: self.cursor,
            events,
            ns: started.elapsed().as_nanos() as u64,
            alerts,
            rejected: o.rejected,
            error: o.error,
        });
        lock(&self.shared.sent).insert(self.name.clone(), self.cursor);
    }
}

/// Reads the record once for everyone and offers each batch to every
/// plugin, waiting for room in a plugin's queue only while that plugin's
/// current call is within its budget: a stuck plugin holds up the others
/// by at most the budget, and catches up on its own once it is free.
fn read_loop(shared: &Shared, reader: AuditReader) {
    let mut pos = shared.published.load(Ordering::Acquire);
    loop {
        let rewind = shared.rewind.swap(i64::MAX, Ordering::AcqRel);
        if rewind < pos {
            pos = rewind;
        }
        let events = match reader.events_after(pos, READ_BATCH) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("the detection reader cannot read the record: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Some(last) = events.last().map(|e| e.id) else {
            std::thread::sleep(POLL);
            continue;
        };
        let batch = Arc::new(Batch {
            after: pos,
            last,
            events: events.into_iter().map(super::event_record).collect(),
        });
        pos = last;
        shared.published.fetch_max(pos, Ordering::AcqRel);
        let subscribers: Vec<_> = lock(&shared.subscribers).clone();
        for (_, tx, call) in subscribers {
            offer(shared, &tx, &call, &batch);
        }
    }
}

fn offer(shared: &Shared, tx: &Sender<Arc<Batch>>, call: &CallState, batch: &Arc<Batch>) {
    let mut b = batch.clone();
    loop {
        match tx.send_timeout(b, Duration::from_millis(10)) {
            Ok(()) | Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                let started = call.started_ns.load(Ordering::Acquire);
                let stuck = started != 0
                    && Duration::from_nanos(mono_ns().saturating_sub(started)) >= shared.budget;
                if stuck {
                    return;
                }
                b = back;
            }
        }
    }
}

fn watchdog(shared: &Shared) {
    let mut next_beat = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = mono_ns();
        let calls: Vec<(u32, Arc<CallState>)> = lock(&shared.calls).clone();
        for (slot, c) in calls {
            let started = c.started_ns.load(Ordering::Acquire);
            if started == 0 {
                continue;
            }
            let ran = Duration::from_nanos(now.saturating_sub(started));
            let call = call_name(c.call.load(Ordering::Relaxed)).to_owned();
            let ms = ran.as_millis() as u64;
            if ran >= shared.limit {
                shared.out.send(&Report::Hung { slot, call, ms });
                // SAFETY: ends the process at once; the hung thread cannot be
                // stopped any other way, and nothing of the plugin runs again.
                unsafe { libc::_exit(75) };
            }
            if ran >= shared.budget && !c.reported_slow.swap(true, Ordering::Relaxed) {
                shared.out.send(&Report::Slow { slot, call, ms });
            }
        }
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + Duration::from_secs(1);
            shared.out.send(&Report::Beat {
                head: shared.published.load(Ordering::Acquire),
            });
        }
    }
}

/// Names the plugin whose thread took a fatal signal (or called `exit`),
/// in one `write(2)` to stderr, then lets the signal kill the process.
fn install_fault_handlers() {
    extern "C" fn on_fault(sig: libc::c_int) {
        note_fault(sig);
        // SA_RESETHAND restored the default action: returning re-runs the
        // faulting instruction (or abort raises again) and the process dies.
    }
    extern "C" fn on_exit() {
        note_fault(0);
    }
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGABRT,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGSYS,
        libc::SIGTRAP,
    ] {
        // SAFETY: a plain sigaction with a handler that only reads a
        // thread-local and calls write(2), both async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as extern "C" fn(libc::c_int) as usize;
            // SA_ONSTACK: a stack overflow still finds the alternate stack
            // Rust sets up for each thread.
            sa.sa_flags = libc::SA_RESETHAND | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: registers a handler that runs on the thread calling exit().
    unsafe { libc::atexit(on_exit) };
}

fn note_fault(sig: libc::c_int) {
    let slot = SLOT.try_with(|s| s.get()).unwrap_or(u32::MAX);
    if slot == u32::MAX {
        return;
    }
    // Formatted by hand into a stack buffer: no allocation in a signal handler.
    let mut buf = [0u8; 64];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    put(FAULT_PREFIX.as_bytes());
    put(b" ");
    let (digits, len) = decimal(u64::from(slot));
    put(&digits[..len]);
    put(b" ");
    let (digits, len) = decimal(sig.max(0) as u64);
    put(&digits[..len]);
    put(b"\n");
    // SAFETY: write(2) is async-signal-safe; buf holds n initialised bytes.
    unsafe { libc::write(2, buf.as_ptr().cast(), n) };
}

/// `v` in decimal: the digits and how many there are.
fn decimal(mut v: u64) -> ([u8; 20], usize) {
    let mut rev = [0u8; 20];
    let mut len = 0;
    loop {
        rev[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut out = [0u8; 20];
    for i in 0..len {
        out[i] = rev[len - 1 - i];
    }
    (out, len)
}
