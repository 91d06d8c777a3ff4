//! What the console, `/metrics` and `/healthz` show about each plugin file:
//! written by the supervisor, read by request handlers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Whether a plugin is doing its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Sent to the detection process, not confirmed yet.
    Loading,
    /// Loaded and analysing events.
    Running,
    /// The detection process is being restarted; it resumes from its cursor.
    Restarting,
    /// The file was refused (not a plugin, wrong ABI, bad config...).
    Failed(String),
    /// It crashed or hung the detection process, or kept failing: not
    /// loaded again until the file changes or an admin re-enables it.
    Quarantined(String),
    /// Unloaded by an operator.
    Disabled,
}

impl Status {
    pub fn label(&self) -> &'static str {
        match self {
            Status::Loading => "loading",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Failed(_) => "failed",
            Status::Quarantined(_) => "quarantined",
            Status::Disabled => "disabled",
        }
    }
}

/// One plugin file as detection sees it.
#[derive(Clone, Debug)]
pub struct PluginView {
    /// Plugin name, or the file name before it had one.
    pub name: String,
    pub version: String,
    pub description: String,
    pub file: PathBuf,
    pub status: Status,
    pub events_seen: u64,
    pub alerts_raised: u64,
    pub errors: u64,
    pub time_spent_ns: u64,
    /// Calls that ran over the time budget.
    pub over_budget: u64,
    /// Times it took the detection process down.
    pub crashes: u64,
    /// The newest event id it has analysed (stored with its alerts).
    pub cursor: i64,
    pub last_error: Option<String>,
}

impl PluginView {
    /// The reason shown beside the status: why it failed, else the last error.
    pub fn reason(&self) -> String {
        match &self.status {
            Status::Failed(r) | Status::Quarantined(r) => r.clone(),
            _ => self.last_error.clone().unwrap_or_default(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Table(Mutex<BTreeMap<PathBuf, PluginView>>);

impl Table {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<PathBuf, PluginView>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ensure(&self, path: &Path) {
        self.lock()
            .entry(path.to_owned())
            .or_insert_with(|| PluginView {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                version: String::new(),
                description: String::new(),
                file: path.to_owned(),
                status: Status::Loading,
                events_seen: 0,
                alerts_raised: 0,
                errors: 0,
                time_spent_ns: 0,
                over_budget: 0,
                crashes: 0,
                cursor: 0,
                last_error: None,
            });
    }

    pub fn update(&self, path: &Path, f: impl FnOnce(&mut PluginView)) {
        if let Some(v) = self.lock().get_mut(path) {
            f(v);
        }
    }

    pub fn remove(&self, path: &Path) -> Option<PluginView> {
        self.lock().remove(path)
    }

    pub fn status_of(&self, path: &Path) -> Option<Status> {
        self.lock().get(path).map(|v| v.status.clone())
    }

    pub fn name_of(&self, path: &Path) -> Option<String> {
        self.lock().get(path).map(|v| v.name.clone())
    }

    pub fn mark_restarting(&self) {
        for v in self.lock().values_mut() {
            if matches!(v.status, Status::Running | Status::Loading) {
                v.status = Status::Restarting;
            }
        }
    }

    /// Every plugin file, sorted by name.
    pub fn all(&self) -> Vec<PluginView> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.file.cmp(&b.file)));
        v
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text for every plugin; `head` is the newest committed event id.
pub(crate) fn metrics_text(plugins: &[PluginView], head: i64) -> String {
    let mut out = String::new();
    type Getter = fn(&PluginView, i64) -> String;
    let families: [(&str, &str, &str, Getter); 9] = [
        (
            "tokenwatch_plugin_up",
            "gauge",
            "1 when the plugin is running.",
            |p, _| u8::from(p.status == Status::Running).to_string(),
        ),
        (
            "tokenwatch_plugin_quarantined",
            "gauge",
            "1 when the plugin is quarantined.",
            |p, _| u8::from(matches!(p.status, Status::Quarantined(_))).to_string(),
        ),
        (
            "tokenwatch_plugin_events_total",
            "counter",
            "Events delivered to the plugin.",
            |p, _| p.events_seen.to_string(),
        ),
        (
            "tokenwatch_plugin_alerts_total",
            "counter",
            "Alerts raised by the plugin.",
            |p, _| p.alerts_raised.to_string(),
        ),
        (
            "tokenwatch_plugin_errors_total",
            "counter",
            "Errors returned by the plugin.",
            |p, _| p.errors.to_string(),
        ),
        (
            "tokenwatch_plugin_time_seconds_total",
            "counter",
            "Time spent inside the plugin.",
            |p, _| format!("{:.9}", p.time_spent_ns as f64 / 1e9),
        ),
        (
            "tokenwatch_plugin_over_budget_total",
            "counter",
            "Calls that ran over the time budget.",
            |p, _| p.over_budget.to_string(),
        ),
        (
            "tokenwatch_plugin_crashes_total",
            "counter",
            "Times the plugin took the detection process down.",
            |p, _| p.crashes.to_string(),
        ),
        (
            "tokenwatch_plugin_lag_events",
            "gauge",
            "Committed events the plugin has not analysed yet.",
            |p, head| (head - p.cursor).max(0).to_string(),
        ),
    ];
    for (metric, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for p in plugins {
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
                get(p, head)
            );
        }
    }
    out
}
