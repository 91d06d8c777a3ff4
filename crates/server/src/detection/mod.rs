//! Detection runs apart from the token server: `serve` starts one detection
//! process (`tokenwatch detect-worker`, the same binary) that loads the
//! plugins, reads committed events from the record and reports alerts, and
//! supervises it (`supervisor.rs`). The server itself never maps plugin code,
//! so a plugin that crashes or hangs takes down detection at most, never
//! token issuance; alerts catch up from the stored per-plugin cursors when
//! detection is back. Nothing here is on the request path.
//!
//! The surface for the rest of the server is [`Detection`] (start, list,
//! reload, disable, metrics, health), [`prepare_plugin_dir`] and the helpers
//! the CLI shares.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use audit_store::AuditStore;
use crossbeam_channel::{bounded, unbounded, Sender};
use plugin_host::EventRecord;

use crate::config::Settings;
use crate::state::StateDb;

mod protocol;
mod quarantine;
mod sink;
mod status;
mod supervisor;
mod worker;

pub use quarantine::reason_for as quarantine_reason;
pub use sink::lockout_event;
pub use status::{PluginView, Status};
pub use worker::run as run_worker;

use supervisor::{Ctl, ProcessHealth, Supervisor};

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

/// The running detection process and its supervisor; dropping it stops both.
pub struct Detection {
    ctl: Sender<Ctl>,
    table: Arc<status::Table>,
    health: Arc<ProcessHealth>,
    suppressed: Arc<AtomicU64>,
    watch: audit_store::CommitWatch,
    thread: Option<JoinHandle<()>>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl Detection {
    /// Prepares the plugin folder and starts the detection process, which
    /// loads every plugin in it and resumes each from its stored cursor.
    pub fn start(
        settings: &Settings,
        store: &AuditStore,
        state: Arc<StateDb>,
    ) -> Result<Detection> {
        prepare_plugin_dir(&settings.plugin_dir)?;
        let exe = std::env::current_exe().context("locating the tokenwatch binary")?;
        let suppressed = Arc::new(AtomicU64::new(0));
        let sink = sink::StoreSink {
            writer: store.writer(),
            state: state.clone(),
            policy: settings.response.clone(),
            suppressed: suppressed.clone(),
        };
        let table = Arc::new(status::Table::default());
        let health = Arc::new(ProcessHealth::default());
        let (ctl, ctl_rx) = unbounded();
        let watcher = supervisor::watch(&settings.plugin_dir, ctl.clone()).with_context(|| {
            format!(
                "watching the plugin folder {}",
                settings.plugin_dir.display()
            )
        })?;
        let sup = Supervisor::new(
            supervisor::Config {
                exe,
                plugin_dir: settings.plugin_dir.clone(),
                private_copy_dir: settings.data_dir.join("plugin-copies"),
                audit_db: store.config().db_path.clone(),
                plugin_config: settings.plugin_config.clone(),
                limits: settings.detection.clone(),
                start_after: store.committed_watch().latest(),
            },
            sink,
            state,
            table.clone(),
            health.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("tokenwatch-detection".into())
            .spawn(move || sup.run(&ctl_rx))
            .context("starting the detection supervisor")?;
        Ok(Detection {
            ctl,
            table,
            health,
            suppressed,
            watch: store.committed_watch(),
            thread: Some(thread),
            watcher: Some(watcher),
        })
    }

    /// Every plugin file, sorted by name.
    pub fn plugins(&self) -> Vec<PluginView> {
        self.table.all()
    }

    fn request(&self, make: impl FnOnce(Sender<Result<(), String>>) -> Ctl) -> Result<(), String> {
        let (tx, rx) = bounded(1);
        self.ctl
            .send(make(tx))
            .map_err(|_| "detection has stopped".to_owned())?;
        rx.recv().map_err(|_| "detection has stopped".to_owned())?
    }

    /// Loads the named plugin again with fresh state; also lifts a quarantine.
    pub fn reload(&self, name: &str) -> Result<(), String> {
        self.request(|tx| Ctl::Reload(name.to_owned(), tx))
    }

    /// Unloads the named plugin until it is reloaded or its file changes.
    pub fn disable(&self, name: &str) -> Result<(), String> {
        self.request(|tx| Ctl::Disable(name.to_owned(), tx))
    }

    /// Committed events the furthest-behind running plugin has not analysed.
    pub fn lag(&self) -> i64 {
        let head = self.watch.latest();
        self.table
            .all()
            .iter()
            .filter(|p| p.status == Status::Running)
            .map(|p| (head - p.cursor).max(0))
            .max()
            .unwrap_or(0)
    }

    /// For `/healthz`: is the detection process up, and how far behind.
    pub fn health_json(&self) -> serde_json::Value {
        let plugins = self.table.all();
        let count = |l: &str| plugins.iter().filter(|p| p.status.label() == l).count();
        serde_json::json!({
            "up": self.health.up.load(Ordering::Relaxed),
            "pid": self.health.pid.load(Ordering::Relaxed),
            "restarts": self.health.restarts.load(Ordering::Relaxed),
            "last_exit": self.health.last_exit.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "lag_events": self.lag(),
            "plugins_running": count("running"),
            "plugins_failed": count("failed"),
            "plugins_quarantined": count("quarantined"),
        })
    }

    /// Prometheus text for detection, the plugins and the exceptions.
    pub fn metrics_text(&self) -> String {
        let mut text = status::metrics_text(&self.table.all(), self.watch.latest());
        text.push_str(&format!(
            "# HELP tokenwatch_detection_up 1 while the detection process runs.
# TYPE tokenwatch_detection_up gauge
tokenwatch_detection_up {}
             # HELP tokenwatch_detection_restarts_total Times the detection process was restarted.
# TYPE tokenwatch_detection_restarts_total counter
tokenwatch_detection_restarts_total {}
             # HELP tokenwatch_detection_lag_events Committed events the furthest-behind running plugin has not analysed.
# TYPE tokenwatch_detection_lag_events gauge
tokenwatch_detection_lag_events {}
",
            u8::from(self.health.up.load(Ordering::Relaxed)),
            self.health.restarts.load(Ordering::Relaxed),
            self.lag(),
        ));
        text.push_str(&format!(
            "# HELP tokenwatch_alerts_suppressed_total Alerts not raised because an analyst exception covers them.
# TYPE tokenwatch_alerts_suppressed_total counter
tokenwatch_alerts_suppressed_total {}
",
            self.suppressed.load(Ordering::Relaxed)
        ));
        text
    }
}

impl Drop for Detection {
    fn drop(&mut self) {
        self.watcher = None;
        let _ = self.ctl.send(Ctl::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

/// Loads `file` in a separate process (`detect-worker --check`) and says
/// what it is, or why it is refused: a file that crashes or hangs while
/// loading takes down only that process. For `tokenwatch plugins check|list`.
pub fn check_isolated(file: &Path) -> std::result::Result<plugin_host::PluginInfo, String> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(|e| format!("locating tokenwatch: {e}"))?;
    let mut child = Command::new(exe)
        .arg("detect-worker")
        .arg("--check")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the check process: {e}"))?;
    // A plugin that hangs in create() must not hang the command.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{}: loading it did not finish within 10 s (the plugin hangs in its initialisers or create())",
                    file.display()
                ));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut out);
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Answer {
        Ok {
            name: String,
            version: String,
            description: String,
            abi_major: u32,
            abi_minor: u32,
        },
        Refused(String),
    }
    match serde_json::from_str::<Answer>(out.trim()) {
        Ok(Answer::Ok {
            name,
            version,
            description,
            abi_major,
            abi_minor,
        }) => Ok(plugin_host::PluginInfo {
            name,
            version,
            description,
            abi_major,
            abi_minor,
            file: file.to_owned(),
        }),
        Ok(Answer::Refused(reason)) => Err(reason),
        Err(_) => {
            use std::os::unix::process::ExitStatusExt;
            Err(match status.signal() {
                Some(sig) => format!(
                    "{}: loading it crashed the checking process (signal {sig}); it was never loaded into tokenwatch",
                    file.display()
                ),
                None => format!(
                    "{}: loading it ended the checking process ({status})",
                    file.display()
                ),
            })
        }
    }
}

/// `detect-worker --check FILE`: the child side of [`check_isolated`].
pub fn check_worker(file: &Path) -> Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch folder")?;
    let answer = match plugin_host::Detector::open(file, scratch.path(), &Default::default()) {
        Ok(d) => {
            let i = d.info();
            serde_json::json!({ "ok": {
                "name": i.name, "version": i.version, "description": i.description,
                "abi_major": i.abi_major, "abi_minor": i.abi_minor,
            }})
        }
        Err(e) => serde_json::json!({ "refused": e.to_string() }),
    };
    println!("{answer}");
    Ok(())
}
