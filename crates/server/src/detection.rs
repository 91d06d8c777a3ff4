//! Runs the detector plugins over the audit stream: committed events go from
//! the store to the plugin host, alerts and plugin lifecycle changes go back
//! into the store. Nothing here is on the request path.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use audit_store::{kinds, AuditReader, AuditStore, AuditWriter, NewAlert, NewEvent, Outcome};
use plugin_host::{AlertRecord, EventRecord, HostConfig, HostSink, Lifecycle, PluginHost};
use serde_json::json;

use crate::config::{ResponsePolicy, Settings};
use crate::state::{Lockout, StateDb};

/// The detectors shipped in `plugins/`, by crate library name. They are built
/// beside the `tokenwatch` binary by `cargo build --workspace`.
pub const BUILTIN_PLUGINS: [&str; 7] = [
    "brute_force",
    "password_spray",
    "token_replay",
    "refresh_theft",
    "forged_token",
    "expired_storm",
    "account_anomaly",
];

/// Events handed to the host per batch when catching up.
const FEED_BATCH: usize = 4096;

/// The running detection pipeline; dropping it stops the feeder, then the host.
pub struct Detection {
    host: Arc<PluginHost>,
    progress: Arc<Progress>,
    suppressed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    feeder: Option<JoinHandle<()>>,
}

impl Detection {
    /// Prepares the plugin folder, loads every plugin in it, and starts
    /// feeding events committed from now on.
    pub fn start(
        settings: &Settings,
        store: &AuditStore,
        state: Arc<StateDb>,
    ) -> Result<Detection> {
        prepare_plugin_dir(&settings.plugin_dir)?;
        let cfg = HostConfig {
            plugin_dir: settings.plugin_dir.clone(),
            private_copy_dir: settings.data_dir.join("plugin-copies"),
            plugin_config: settings.plugin_config.clone(),
            max_consecutive_errors: 5,
            tick_interval: Duration::from_secs(1),
            watch: true,
        };
        // The position is taken before the host starts, so the plugin.* events
        // of its first scan reach the detectors like every later event.
        let reader = store
            .reader()
            .context("opening a reader for the detectors")?;
        let start_after = reader.max_event_id()?;
        let suppressed = Arc::new(AtomicU64::new(0));
        let sink = Arc::new(StoreSink {
            writer: store.writer(),
            state,
            policy: settings.response.clone(),
            suppressed: suppressed.clone(),
        });
        let host = Arc::new(PluginHost::start(cfg, sink).with_context(|| {
            format!(
                "starting the plugin host on {}",
                settings.plugin_dir.display()
            )
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress {
            watch: store.committed_watch(),
            start_after,
            stamps: Mutex::default(),
        });
        let feeder = std::thread::Builder::new()
            .name("tokenwatch-detector-feed".into())
            .spawn({
                let host = host.clone();
                let stop = stop.clone();
                let progress = progress.clone();
                move || feed(reader, &progress, &host, &stop)
            })
            .context("starting the detector feeder thread")?;
        Ok(Detection {
            host,
            progress,
            suppressed,
            stop,
            feeder: Some(feeder),
        })
    }

    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// Prometheus text for the plugins and the exceptions.
    pub fn metrics_text(&self) -> String {
        let mut text = self.host.metrics_text();
        text.push_str(&format!(
            "# HELP tokenwatch_alerts_suppressed_total Alerts not raised because an analyst exception covers them.\n# TYPE tokenwatch_alerts_suppressed_total counter\ntokenwatch_alerts_suppressed_total {}\n",
            self.suppressed.load(Ordering::Relaxed)
        ));
        let processed = self.progress.processed(&self.host);
        let latest = self.progress.watch.latest();
        text.push_str(&format!(
            "# HELP tokenwatch_detection_backlog_events Committed audit events the detectors have not processed yet.\n# TYPE tokenwatch_detection_backlog_events gauge\ntokenwatch_detection_backlog_events {}\n",
            (latest - processed).max(0)
        ));
        text.push_str(&format!(
            "# HELP tokenwatch_detection_lag_seconds How long the oldest committed event the detectors have not processed has been waiting (0 when caught up).\n# TYPE tokenwatch_detection_lag_seconds gauge\ntokenwatch_detection_lag_seconds {:.3}\n",
            self.progress.lag(processed, latest).as_secs_f64()
        ));
        text
    }
}

/// How far detection is behind the record, for `/metrics`.
struct Progress {
    watch: audit_store::CommitWatch,
    /// The newest event when the server started: detection begins after it.
    start_after: i64,
    /// (newest committed id, when the feeder first saw it), oldest first, only
    /// for ids the detectors have not processed: the front dates the backlog.
    stamps: Mutex<VecDeque<(i64, Instant)>>,
}

/// Enough to date a backlog the feeder looks at every 250 ms for minutes; when
/// full, newer ids wait for room, so the front (the age that matters) stays.
const MAX_STAMPS: usize = 4096;

impl Progress {
    fn processed(&self, host: &PluginHost) -> i64 {
        host.processed_id().max(self.start_after)
    }

    /// Called by the feeder whenever it looks at the store.
    fn saw(&self, processed: i64) {
        let latest = self.watch.latest();
        let mut q = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|&(id, _)| id <= processed) {
            q.pop_front();
        }
        let newest = q.back().map_or(processed, |&(id, _)| id);
        if latest > newest && q.len() < MAX_STAMPS {
            q.push_back((latest, Instant::now()));
        }
    }

    fn lag(&self, processed: i64, latest: i64) -> Duration {
        if processed >= latest {
            return Duration::ZERO;
        }
        let q = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        q.iter()
            .find(|&&(id, _)| id > processed)
            .map_or(Duration::ZERO, |&(_, seen)| seen.elapsed())
    }
}

impl Drop for Detection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
    }
}

/// Creates the plugin folder on first start and installs the built-in
/// detectors found beside the binary into it. An existing folder is left as
/// the operator arranged it: a built-in they removed stays removed.
pub fn prepare_plugin_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    crate::datadir::ensure(dir)?;
    let beside_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let mut installed = Vec::new();
    if let Some(from) = beside_binary {
        for name in BUILTIN_PLUGINS {
            let file = builtin_file_name(name);
            let src = from.join(&file);
            if src.is_file() {
                copy_atomically(&src, &dir.join(&file))?;
                installed.push(name);
            }
        }
    }
    if installed.len() < BUILTIN_PLUGINS.len() {
        tracing::warn!(
            found = installed.len(),
            expected = BUILTIN_PLUGINS.len(),
            "some built-in detectors were not found beside the binary; build them with `cargo build --release --workspace`"
        );
    }
    tracing::info!(plugin_dir = %dir.display(), installed = ?installed, "installed the built-in detectors");
    Ok(())
}

pub fn builtin_file_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Copies under a temporary name and renames, so the host watching the folder
/// never sees a half-written library.
fn copy_atomically(src: &Path, dst: &Path) -> Result<()> {
    let tmp: PathBuf = dst.with_extension("partial");
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dst).with_context(|| format!("installing {}", dst.display()))?;
    Ok(())
}

/// Reads committed events in id order and hands them to the host. It waits
/// for room rather than skipping, so every event reaches the detectors.
fn feed(reader: AuditReader, progress: &Progress, host: &PluginHost, stop: &AtomicBool) {
    let mut cursor = progress.start_after;
    while !stop.load(Ordering::Relaxed) {
        progress
            .watch
            .wait_for_commit_after(cursor, Duration::from_millis(250));
        loop {
            progress.saw(progress.processed(host));
            let events = match reader.events_after(cursor, FEED_BATCH) {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(error = %e, "detectors cannot read the audit store; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    break;
                }
            };
            let Some(last) = events.last().map(|e| e.id) else {
                break;
            };
            let batch: Arc<[EventRecord]> = events.into_iter().map(event_record).collect();
            while !host.feed_wait(batch.clone(), Duration::from_millis(250)) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                progress.saw(progress.processed(host));
            }
            cursor = last;
        }
    }
}

pub fn event_record(e: audit_store::StoredEvent) -> EventRecord {
    EventRecord {
        id: e.id,
        time_us: e.time_us,
        kind: e.kind,
        outcome: e.outcome.as_str().to_string(),
        reason: e.reason,
        subject: e.subject,
        username: e.username,
        client_ip: e.client_ip,
        user_agent: e.user_agent,
        method: e.method,
        path: e.path,
        jti: e.jti,
        kid: e.kid,
        alg: e.alg,
        token_fp: e.token_fp,
        source: e.source,
    }
}

pub fn severity(s: plugin_host::Severity) -> audit_store::Severity {
    match s {
        plugin_host::Severity::Low => audit_store::Severity::Low,
        plugin_host::Severity::Medium => audit_store::Severity::Medium,
        plugin_host::Severity::High => audit_store::Severity::High,
        plugin_host::Severity::Critical => audit_store::Severity::Critical,
    }
}

/// The detectors whose alerts lock the targeted account, and those whose
/// alerts throttle the offending client IP.
const LOCKING_DETECTORS: [&str; 1] = ["brute-force"];
const THROTTLING_DETECTORS: [&str; 1] = ["password-spray"];

/// Delivers what the host produces into the audit store, after the
/// analysts' exceptions, and applies the lockout policy.
struct StoreSink {
    writer: AuditWriter,
    state: Arc<StateDb>,
    policy: ResponsePolicy,
    suppressed: Arc<AtomicU64>,
}

impl StoreSink {
    fn excepted(&self, a: &AlertRecord) -> bool {
        match self
            .state
            .exception_covering(&a.plugin, a.subject.as_deref(), a.client_ip.as_deref())
        {
            Ok(Some(e)) => {
                tracing::debug!(detector = %a.plugin, exception = e.id, "alert suppressed by an exception");
                true
            }
            Ok(None) => false,
            // Fail towards alerting: a lost exception is a false alarm, a
            // lost alert may be a missed attack.
            Err(e) => {
                tracing::error!(error = %e, "cannot read exceptions; alerting anyway");
                false
            }
        }
    }

    fn respond(&self, a: &AlertRecord) {
        let target = if self.policy.lock_accounts && LOCKING_DETECTORS.contains(&a.plugin.as_str())
        {
            a.subject.as_deref().map(|s| ("user", s))
        } else if self.policy.throttle_ips && THROTTLING_DETECTORS.contains(&a.plugin.as_str()) {
            a.client_ip.as_deref().map(|ip| ("ip", ip))
        } else {
            None
        };
        let Some((kind, key)) = target else {
            return;
        };
        let reason = format!("{} alert: {}", a.plugin, a.rule);
        match self
            .state
            .apply_lockout(kind, key, &reason, self.policy.lockout)
        {
            Ok(Some(lock)) => {
                tracing::warn!(%kind, %key, until = lock.until, level = lock.level, "lockout applied");
                let ev = lockout_event(&lock, &a.plugin, &a.group_key);
                if let Err(e) = self.writer.submit(ev) {
                    tracing::error!(error = %e, "the lockout event could not be queued");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, %kind, "lockout could not be applied"),
        }
    }
}

/// The audit event of a lockout the server applied.
pub fn lockout_event(lock: &Lockout, detector: &str, group_key: &str) -> NewEvent {
    let mut ev = NewEvent::new(kinds::LOCKOUT_APPLIED, Outcome::Success);
    if lock.kind == "user" {
        ev.username = Some(lock.key.clone());
    } else {
        ev.client_ip = Some(lock.key.clone());
    }
    ev.reason = Some(detector.to_string());
    ev.detail = json!({
        "lock": lock.kind, "key": lock.key, "until": lock.until, "level": lock.level,
        "detector": detector, "group_key": group_key,
    });
    ev
}

impl HostSink for StoreSink {
    fn alert(&self, a: AlertRecord) {
        if self.excepted(&a) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.respond(&a);
        let alert = NewAlert {
            time_us: a.time_us,
            detector: a.plugin,
            rule: a.rule,
            severity: severity(a.severity),
            subject: a.subject,
            client_ip: a.client_ip,
            summary: a.summary,
            group_key: a.group_key,
            evidence: a.evidence,
        };
        // Queued, not awaited: the host thread must keep feeding detectors,
        // and the writer reports its own failures in /healthz.
        if let Err(e) = self.writer.submit_alert(alert) {
            tracing::error!(error = %e, "an alert could not be queued for the audit store");
        }
    }

    fn lifecycle(&self, event: Lifecycle) {
        // The host already logged it; here it becomes an audit event.
        if let Err(e) = self.writer.submit(lifecycle_event(&event)) {
            tracing::error!(error = %e, "a plugin lifecycle event could not be queued");
        }
    }
}

fn lifecycle_event(event: &Lifecycle) -> NewEvent {
    let file_name = |f: &Path| {
        f.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match event {
        Lifecycle::Loaded {
            name,
            version,
            file,
        } => {
            let mut ev = NewEvent::new(kinds::PLUGIN_LOADED, Outcome::Success);
            ev.detail = json!({ "plugin": name, "version": version, "file": file_name(file) });
            ev
        }
        Lifecycle::Failed { file, name, reason } => {
            let mut ev = NewEvent::new(kinds::PLUGIN_FAILED, Outcome::Failure);
            ev.reason = Some("plugin_refused".into());
            ev.detail = json!({ "plugin": name, "file": file_name(file), "error": reason });
            ev
        }
        Lifecycle::Unloaded { name, file } => {
            let mut ev = NewEvent::new(kinds::PLUGIN_UNLOADED, Outcome::Success);
            ev.detail = json!({ "plugin": name, "file": file_name(file) });
            ev
        }
    }
}
