//! The tokenwatch plugin host: finds, loads, checks, hot-reloads and feeds
//! detector plugins (shared libraries built against `detector-api`).
//!
//! - [`PluginHost::start`] scans the plugin folder, loads every `*.so`
//!   (dotfiles and other names are ignored) and, with `watch`, follows the
//!   folder: a new file loads, a replaced file (atomic rename or rewrite)
//!   reloads with fresh state, a removed file unloads. A changed
//!   `<stem>.toml` beside a plugin reloads it with the new config.
//! - Each load works on a **private copy** of the file, so replacing or
//!   deleting the original never touches mapped code.
//! - A file is refused, with a [`Lifecycle::Failed`] event and a
//!   `tracing::warn!`, when it is not a shared library, lacks the entry
//!   symbol, has another ABI major / a too old minor / a too small descriptor,
//!   repeats a name already loaded, or its `create()` rejects its config. A
//!   refused replacement leaves the previous instance running.
//! - [`PluginHost::feed`] queues a committed batch for the worker thread,
//!   which hands it to every running detector; alerts and lifecycle events go
//!   to the [`HostSink`]. A detector that fails `max_consecutive_errors`
//!   times in a row is unloaded and shown as failed.
//! - [`check_file`] and [`backtest`] load a file outside any host, for
//!   `tokenwatch plugins check|backtest`.
//!
//! Trust model: a plugin runs inside the server process with its privileges.
//! The checks here catch mistakes (wrong file, stale build, bad config,
//! panics), not malice; the plugin folder must be writable only by the
//! operator.
//!
//! ```no_run
//! use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};
//! use plugin_host::{AlertRecord, HostConfig, HostSink, Lifecycle, PluginHost};
//!
//! struct Log;
//! impl HostSink for Log {
//!     fn alert(&self, a: AlertRecord) { println!("{} {}: {}", a.plugin, a.rule, a.summary) }
//!     fn lifecycle(&self, e: Lifecycle) { println!("{e:?}") }
//! }
//!
//! let host = PluginHost::start(
//!     HostConfig {
//!         plugin_dir: PathBuf::from("plugins"),
//!         private_copy_dir: PathBuf::from("data/plugin-copies"),
//!         plugin_config: HashMap::new(),
//!         max_consecutive_errors: 5,
//!         tick_interval: Duration::from_secs(1),
//!         watch: true,
//!     },
//!     Arc::new(Log),
//! )?;
//! host.feed(Arc::from(Vec::new()));
//! println!("{}", host.metrics_text());
//! host.shutdown();
//! # Ok::<(), plugin_host::HostError>(())
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod elf;
mod host;
mod loader;

pub use host::{PluginHost, PluginState, PluginStatus};

/// One committed audit event, owned. The host builds ABI views over it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventRecord {
    /// Audit row id.
    pub id: i64,
    /// Microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    /// Dotted kind, e.g. `auth.login.failure`.
    pub kind: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Reason code.
    pub reason: Option<String>,
    /// Token subject.
    pub subject: Option<String>,
    /// Login name.
    pub username: Option<String>,
    /// Client IP.
    pub client_ip: Option<String>,
    /// HTTP User-Agent.
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// HTTP path.
    pub path: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// Key id.
    pub kid: Option<String>,
    /// Algorithm.
    pub alg: Option<String>,
    /// Token fingerprint.
    pub token_fp: Option<String>,
    /// Event source.
    pub source: String,
}

/// How bad an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Probably an attack attempt.
    Medium,
    /// An attack in progress.
    High,
    /// A likely compromise.
    Critical,
}

impl Severity {
    /// `low`, `medium`, `high` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// From the ABI's `SEVERITY_*` value.
    pub fn from_raw(raw: u32) -> Option<Severity> {
        match raw {
            detector_api::SEVERITY_LOW => Some(Severity::Low),
            detector_api::SEVERITY_MEDIUM => Some(Severity::Medium),
            detector_api::SEVERITY_HIGH => Some(Severity::High),
            detector_api::SEVERITY_CRITICAL => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// An alert raised by a plugin, copied out of plugin memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRecord {
    /// Name of the plugin that raised it.
    pub plugin: String,
    /// Rule within the plugin.
    pub rule: String,
    /// Severity.
    pub severity: Severity,
    /// Subject the alert is about.
    pub subject: Option<String>,
    /// Client IP the alert is about.
    pub client_ip: Option<String>,
    /// One line for the analyst.
    pub summary: String,
    /// Grouping key for repeated alerts.
    pub group_key: String,
    /// Supporting audit event ids.
    pub evidence: Vec<i64>,
    /// Detector time of the alert: the newest event time of the batch being
    /// processed, or the tick's `now`. In a backtest this is historical time.
    pub time_us: i64,
}

/// A change in the set of loaded plugins; the server records each as an
/// audit event (`plugin.loaded`, `plugin.failed`, `plugin.unloaded`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// A plugin was loaded (or reloaded) and is running.
    Loaded {
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
        /// The file in the plugin folder.
        file: PathBuf,
    },
    /// A file was refused, a replacement was refused (the previous instance
    /// keeps running; the reason says so), or a running plugin was disabled
    /// after repeated errors.
    Failed {
        /// The file in the plugin folder.
        file: PathBuf,
        /// Plugin name, when it got far enough to have one.
        name: Option<String>,
        /// Why, for the log and the UI.
        reason: String,
    },
    /// A plugin was unloaded (file removed, or disabled by an operator).
    Unloaded {
        /// Plugin name.
        name: String,
        /// The file in the plugin folder.
        file: PathBuf,
    },
}

/// Where the host delivers alerts and lifecycle events. Called from the
/// host's worker thread: keep it quick (e.g. send to the store's queue).
pub trait HostSink: Send + Sync + 'static {
    /// A plugin raised an alert.
    fn alert(&self, alert: AlertRecord);
    /// A plugin was loaded, refused, disabled or unloaded.
    fn lifecycle(&self, event: Lifecycle);
}

/// How the host runs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Folder scanned (and watched) for `*.so` plugins.
    pub plugin_dir: PathBuf,
    /// Folder where private copies are made before loading; created if missing.
    pub private_copy_dir: PathBuf,
    /// Per-plugin JSON config by plugin name (e.g. `[plugins.NAME]` of
    /// tokenwatch.toml). A `<file stem>.toml` beside the plugin wins.
    pub plugin_config: HashMap<String, serde_json::Value>,
    /// Errors (or panics) in a row after which a plugin is disabled. 0 acts as 1.
    pub max_consecutive_errors: u32,
    /// How often `tick` is called on every plugin.
    pub tick_interval: Duration,
    /// Follow the folder for added, replaced and removed files.
    pub watch: bool,
}

/// What a plugin file is, once it passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Unique plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// What it detects.
    pub description: String,
    /// ABI major the plugin was built with.
    pub abi_major: u32,
    /// ABI minor the plugin was built with.
    pub abi_minor: u32,
    /// The file it was loaded from.
    pub file: PathBuf,
}

/// Why a plugin file was refused. Every message names the file or plugin
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Reading or copying the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a shared library at all.
    #[error("{}: not a shared library ({detail}); build the plugin as a cdylib / with `cc -shared`", path.display())]
    NotSharedLibrary {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file's ELF headers do not describe a loadable library for this
    /// machine (truncated, corrupt, another architecture): never mapped.
    #[error("{}: refused before loading: {detail}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The dynamic loader refused the library.
    #[error("{}: the dynamic loader refused it: {detail}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// The library does not export the entry symbol.
    #[error("{}: no `{symbol}` symbol; a Rust plugin needs `detector_sdk::export_detector!`, a C plugin must define it", path.display())]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
    },
    /// Built against another major ABI version.
    #[error("{}: built for detector ABI {found}.x, this host speaks {expected}.x; rebuild it against the current detector-api", path.display())]
    AbiMajorMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's major.
        found: u32,
        /// The host's major.
        expected: u32,
    },
    /// Built against a minor version this host no longer accepts.
    #[error("{}: built for detector ABI minor {found}, this host needs at least {min}; rebuild it", path.display())]
    AbiMinorTooOld {
        /// The file.
        path: PathBuf,
        /// The plugin's minor.
        found: u32,
        /// The oldest accepted minor.
        min: u32,
    },
    /// The descriptor is smaller than the v1 layout.
    #[error("{}: descriptor struct_size {found} is smaller than the v1 layout ({min} bytes); rebuild it against the current header", path.display())]
    DescriptorTooSmall {
        /// The file.
        path: PathBuf,
        /// Declared size.
        found: usize,
        /// Minimum size.
        min: usize,
    },
    /// The descriptor's content is unusable.
    #[error("{}: invalid descriptor: {reason}", path.display())]
    InvalidDescriptor {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another file already provides a plugin with this name.
    #[error("{}: a plugin named {name:?} is already loaded from {}; remove one of the two files", path.display(), existing.display())]
    DuplicateName {
        /// The refused file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The file that has it.
        existing: PathBuf,
    },
    /// The config file beside the plugin cannot be read.
    #[error("{}: bad plugin config: {detail}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// Parse or read error.
        detail: String,
    },
    /// The plugin's create() refused its config.
    #[error("plugin {name:?} refused its config: {message}")]
    CreateFailed {
        /// Plugin name.
        name: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin failed while running (backtest).
    #[error("plugin {name:?} failed: {message}")]
    Runtime {
        /// Plugin name.
        name: String,
        /// The plugin's last_error.
        message: String,
    },
}

/// Errors of the running host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The plugin folder is unusable.
    #[error("plugin folder {}: {source}", path.display())]
    PluginDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The private copy folder cannot be created.
    #[error("private copy folder {}: {source}", path.display())]
    PrivateCopyDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The folder cannot be watched.
    #[error("cannot watch plugin folder {}: {source}", path.display())]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The watcher error.
        source: notify::Error,
    },
    /// The worker thread could not be started.
    #[error("cannot start the plugin host thread: {0}")]
    Spawn(std::io::Error),
    /// No plugin by that name.
    #[error("no plugin named {0:?}; `tokenwatch plugins list` shows the loaded ones")]
    UnknownPlugin(String),
    /// A (re)load was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The host has stopped.
    #[error("the plugin host has shut down")]
    ShutDown,
}

/// The config of the plugin at `file`: `<stem>.toml` beside it, else
/// `configured` (from tokenwatch.toml), else `{}`.
/// The JSON config a plugin file gets: its `<stem>.toml` beside it when
/// present, else `configured` (e.g. `[plugins.NAME]` of tokenwatch.toml), else `{}`.
pub fn config_json(
    file: &Path,
    configured: Option<&serde_json::Value>,
) -> Result<String, LoadError> {
    let toml_path = file.with_extension("toml");
    match std::fs::read_to_string(&toml_path) {
        Ok(text) => {
            let value: toml::Value = toml::from_str(&text).map_err(|e| LoadError::Config {
                path: toml_path.clone(),
                detail: e.to_string(),
            })?;
            serde_json::to_string(&value).map_err(|e| LoadError::Config {
                path: toml_path,
                detail: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(configured.map_or_else(|| "{}".to_owned(), serde_json::Value::to_string))
        }
        Err(e) => Err(LoadError::Config {
            path: toml_path,
            detail: e.to_string(),
        }),
    }
}

fn scratch_dir() -> Result<tempfile::TempDir, LoadError> {
    tempfile::Builder::new()
        .prefix("tokenwatch-plugin-")
        .tempdir()
        .map_err(|source| LoadError::Io {
            path: std::env::temp_dir(),
            source,
        })
}

/// What one call into a plugin produced.
#[derive(Debug, Default)]
pub struct CallOutcome {
    /// Alerts accepted from the plugin.
    pub alerts: Vec<AlertRecord>,
    /// Why alerts were refused (bad severity, text too long, ...).
    pub rejected: Vec<String>,
    /// The plugin's error, when the call returned `STATUS_ERROR`.
    pub error: Option<String>,
}

/// One plugin loaded on its own, for a detection process that runs every
/// plugin on a thread of its own (so one that hangs delays no other).
/// Loaded like [`PluginHost`] loads: ELF checks on a private copy, ABI
/// checks, config from `<stem>.toml` or `configured[name]`, `create()`.
pub struct Detector {
    instance: loader::Instance,
}

impl Detector {
    /// Load and create the plugin at `path`.
    pub fn open(
        path: &Path,
        private_copy_dir: &Path,
        configured: &HashMap<String, serde_json::Value>,
    ) -> Result<Detector, LoadError> {
        let lib = loader::Library::load(path, private_copy_dir)?;
        let config = config_json(path, configured.get(&lib.info().name))?;
        Ok(Detector {
            instance: lib.create(&config)?,
        })
    }

    /// Name, version and ABI of the plugin.
    pub fn info(&self) -> &PluginInfo {
        self.instance.info()
    }

    /// Hand one batch of committed events to the plugin.
    pub fn process(&mut self, batch: &[EventRecord]) -> CallOutcome {
        let newest = batch.iter().map(|e| e.time_us).max().unwrap_or(0);
        let views: Vec<_> = batch.iter().map(loader::event_view).collect();
        let name = self.instance.info().name.clone();
        let mut c = loader::Collector::new(&name, newest);
        let r = self.instance.process(&views, &mut c);
        CallOutcome {
            alerts: std::mem::take(&mut c.alerts),
            rejected: std::mem::take(&mut c.rejected),
            error: r.err(),
        }
    }

    /// Tell the plugin that time has passed.
    pub fn tick(&mut self, now_us: i64) -> CallOutcome {
        let name = self.instance.info().name.clone();
        let mut c = loader::Collector::new(&name, now_us);
        let r = self.instance.tick(now_us, &mut c);
        CallOutcome {
            alerts: std::mem::take(&mut c.alerts),
            rejected: std::mem::take(&mut c.rejected),
            error: r.err(),
        }
    }
}

/// Load `path` outside any host and say what it is, or why it is refused.
/// Runs create() with the `<stem>.toml` beside it (or `{}`) and destroys the
/// instance again. For `tokenwatch plugins check FILE`.
pub fn check_file(path: &Path) -> Result<PluginInfo, LoadError> {
    let scratch = scratch_dir()?;
    let lib = loader::Library::load(path, scratch.path())?;
    let config = config_json(path, None)?;
    let instance = lib.create(&config)?;
    Ok(instance.info().clone())
}

/// Run the plugin at `path` with `config` over historical batches and return
/// the alerts it would have raised; nothing is stored. After each batch the
/// plugin is ticked with that batch's newest event time, so windows close in
/// historical time. For `tokenwatch plugins backtest FILE --from --to`.
pub fn backtest(
    path: &Path,
    config: &serde_json::Value,
    events: impl Iterator<Item = Vec<EventRecord>>,
) -> Result<Vec<AlertRecord>, LoadError> {
    let scratch = scratch_dir()?;
    let lib = loader::Library::load(path, scratch.path())?;
    let mut instance = lib.create(&config.to_string())?;
    let name = instance.info().name.clone();
    let mut alerts = Vec::new();
    let mut views = Vec::new();
    for batch in events {
        let Some(newest) = batch.iter().map(|e| e.time_us).max() else {
            continue;
        };
        views.clear();
        views.extend(batch.iter().map(loader::event_view));
        let mut collector = loader::Collector::new(&name, newest);
        let processed = instance.process(&views, &mut collector);
        let processed = processed.and_then(|()| instance.tick(newest, &mut collector));
        alerts.append(&mut collector.alerts);
        if let Err(message) = processed {
            return Err(LoadError::Runtime { name, message });
        }
    }
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_comes_from_the_toml_beside_the_plugin_then_the_host_config() {
        let dir = tempfile::tempdir().unwrap();
        let so = dir.path().join("libx.so");
        let host_cfg = serde_json::json!({"threshold": 9});
        assert_eq!(config_json(&so, None).unwrap(), "{}");
        assert_eq!(
            config_json(&so, Some(&host_cfg)).unwrap(),
            r#"{"threshold":9}"#
        );
        std::fs::write(
            dir.path().join("libx.toml"),
            "threshold = 3\nkinds = [\"a\"]\n",
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&config_json(&so, Some(&host_cfg)).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"threshold": 3, "kinds": ["a"]}));
        std::fs::write(dir.path().join("libx.toml"), "threshold = ").unwrap();
        let err = config_json(&so, None).unwrap_err();
        assert!(
            err.to_string().contains("libx.toml: bad plugin config"),
            "{err}"
        );
    }

    #[test]
    fn severity_round_trips_through_the_abi_values() {
        for (raw, s, text) in [
            (1, Severity::Low, "low"),
            (2, Severity::Medium, "medium"),
            (3, Severity::High, "high"),
            (4, Severity::Critical, "critical"),
        ] {
            assert_eq!(Severity::from_raw(raw), Some(s));
            assert_eq!(s.as_str(), text);
        }
        assert_eq!(Severity::from_raw(0), None);
        assert_eq!(Severity::from_raw(5), None);
    }
}
