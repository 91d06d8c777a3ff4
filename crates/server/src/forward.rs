//! Forwarding out: alerts (and, when asked, events) sent to syslog collectors
//! as RFC 5424 messages carrying CEF, over TLS (RFC 5425), TCP or UDP.
//!
//! Each forwarder reads from the audit store after a delivery cursor kept in
//! `state.db` and moves the cursor only after a batch was sent, so a collector
//! outage is caught up from the store when the collector returns: nothing is
//! lost (TCP; over UDP a datagram the network drops is gone, as UDP goes).
//! Delivery is at-least-once: a batch interrupted by a failure is sent again.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use audit_store::{Alert, AuditReader, AuditStore, Outcome, Severity, StoredEvent};
use cef_syslog::{Cef, Facility, Protocol, Sender, SyslogFrame, Target, TlsClient};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::state::StateDb;

const VENDOR: &str = "tokenwatch";
const PRODUCT: &str = "tokenwatch";
const BATCH: usize = 500;

/// One `[[forward]]` table of tokenwatch.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFileConfig {
    /// `tls://HOST:PORT` (RFC 5425, usually port 6514), `tcp://HOST:PORT` or `udp://HOST:PORT`.
    pub target: String,
    /// tls:// only: PEM file of the CA(s) the collector's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// tls:// only: a client certificate (PEM) for collectors that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// tls:// only: the private key of `client_cert` (PEM, mode 600).
    pub client_key: Option<PathBuf>,
    /// tls:// only: the name the collector's certificate must carry (default: the target's host).
    pub server_name: Option<String>,
    /// Names the delivery cursor in state.db (default: the target). Renaming
    /// it starts a new cursor.
    pub name: Option<String>,
    /// Forward alerts (default true).
    pub alerts: Option<bool>,
    /// Forward every audit event too (default false).
    pub events: Option<bool>,
    /// Syslog facility number (default 10, authpriv).
    pub facility: Option<u8>,
    /// HOSTNAME field of the syslog header (default: this machine's name).
    pub hostname: Option<String>,
    /// Seconds between retries while the collector is unreachable (default 5).
    pub retry_secs: Option<u64>,
    /// Where a forwarder without a cursor starts: "now" (default) or "beginning".
    pub start: Option<String>,
}

#[derive(Clone)]
pub struct ForwardConfig {
    pub name: String,
    pub target: Target,
    /// Set for a tls:// target: the CA, client certificate and expected server name.
    pub tls: Option<TlsClient>,
    pub alerts: bool,
    pub events: bool,
    pub facility: Facility,
    pub hostname: String,
    pub retry: Duration,
    pub from_beginning: bool,
}

impl std::fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardConfig")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("tls", &self.tls.is_some())
            .field("alerts", &self.alerts)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid {
        key: "forward",
        message,
    }
}

/// The TLS settings of one forwarder, checked now (files readable, the client key
/// private and matching its certificate) so that a mistake stops the start.
fn tls_client(f: &ForwardFileConfig, target: &Target) -> Result<Option<TlsClient>, ConfigError> {
    let tls_only = [
        ("ca_file", f.ca_file.is_some()),
        ("client_cert", f.client_cert.is_some()),
        ("client_key", f.client_key.is_some()),
        ("server_name", f.server_name.is_some()),
    ];
    if target.protocol != Protocol::Tls {
        if let Some((key, _)) = tls_only.iter().find(|(_, set)| *set) {
            return Err(invalid(format!(
                "{:?}: `{key}` applies only to a tls:// target (syslog over TLS, RFC 5425)",
                f.target
            )));
        }
        return Ok(None);
    }
    let Some(ca_file) = &f.ca_file else {
        return Err(invalid(format!(
            "{:?}: a tls:// target needs `ca_file`, the PEM file of the CA that signed the collector's certificate (for a publicly trusted one: /etc/ssl/certs/ca-certificates.crt)",
            f.target
        )));
    };
    let client = match (&f.client_cert, &f.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => {
            return Err(invalid(format!(
                "{:?}: mutual TLS needs both `client_cert` and `client_key`",
                f.target
            )))
        }
    };
    let config = tls_files::client_config(ca_file, client)
        .map_err(|e| invalid(format!("{:?}: {e}", f.target)))?;
    let server_name = f.server_name.as_deref().unwrap_or_else(|| target.host());
    TlsClient::new(config, server_name)
        .map(Some)
        .map_err(|e| invalid(format!("{:?}: {e}", f.target)))
}

pub fn resolve(files: &[ForwardFileConfig]) -> Result<Vec<ForwardConfig>, ConfigError> {
    let mut out: Vec<ForwardConfig> = Vec::new();
    for f in files {
        let target: Target = f.target.parse().map_err(|e| invalid(format!("{e}")))?;
        let tls = tls_client(f, &target)?;
        let name = f.name.clone().unwrap_or_else(|| f.target.clone());
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(format!(
                "two forwarders are named {name:?}; give each a distinct `name`"
            )));
        }
        let facility = f.facility.unwrap_or(10);
        if facility > 23 {
            return Err(invalid(format!(
                "facility {facility} is not a syslog facility (0-23)"
            )));
        }
        let from_beginning = match f.start.as_deref().unwrap_or("now") {
            "now" => false,
            "beginning" => true,
            other => {
                return Err(invalid(format!(
                    "start = {other:?}: expected \"now\" or \"beginning\""
                )))
            }
        };
        out.push(ForwardConfig {
            name,
            target,
            tls,
            alerts: f.alerts.unwrap_or(true),
            events: f.events.unwrap_or(false),
            facility: Facility(facility),
            hostname: f.hostname.clone().unwrap_or_else(hostname),
            retry: Duration::from_secs(f.retry_secs.unwrap_or(5).max(1)),
            from_beginning,
        });
    }
    Ok(out)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "-".into())
}

fn cef_severity(s: Severity) -> u8 {
    match s {
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

fn syslog_severity(s: Severity) -> cef_syslog::Severity {
    match s {
        Severity::Low => cef_syslog::Severity::Notice,
        Severity::Medium => cef_syslog::Severity::Warning,
        Severity::High => cef_syslog::Severity::Error,
        Severity::Critical => cef_syslog::Severity::Critical,
    }
}

fn is_ip(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
        .cloned()
}

/// An alert as one RFC 5424 line with a CEF message.
pub fn alert_message(a: &Alert, cfg: &ForwardConfig) -> String {
    let cef = Cef::new(
        VENDOR,
        PRODUCT,
        env!("CARGO_PKG_VERSION"),
        &format!("{}:{}", a.detector, a.rule),
        &a.summary,
        cef_severity(a.severity),
    )
    .ext("rt", (a.time_us / 1000).to_string())
    .ext("externalId", a.id.to_string())
    .ext("cat", "alert")
    .ext_opt("src", is_ip(&a.client_ip))
    .ext_opt("suser", a.subject.clone())
    .ext("cnt", a.count.to_string())
    .ext("cs1Label", "detector")
    .ext("cs1", a.detector.clone())
    .ext("cs2Label", "groupKey")
    .ext("cs2", a.group_key.clone())
    .ext("cs3Label", "status")
    .ext("cs3", a.status.as_str())
    .ext("msg", a.summary.clone());
    SyslogFrame {
        facility: cfg.facility,
        severity: syslog_severity(a.severity),
        time_us: a.time_us,
        hostname: &cfg.hostname,
        app_name: "tokenwatch",
        msg_id: "alert",
    }
    .render(&cef.to_string())
}

/// An audit event as one RFC 5424 line with a CEF message.
pub fn event_message(e: &StoredEvent, cfg: &ForwardConfig) -> String {
    let failure = e.outcome == Outcome::Failure;
    let cef = Cef::new(
        VENDOR,
        PRODUCT,
        env!("CARGO_PKG_VERSION"),
        &e.kind,
        &e.kind,
        if failure { 5 } else { 1 },
    )
    .ext("rt", (e.time_us / 1000).to_string())
    .ext("externalId", e.id.to_string())
    .ext("cat", "event")
    .ext("outcome", e.outcome.as_str())
    .ext_opt("reason", e.reason.clone())
    .ext_opt("src", is_ip(&e.client_ip))
    .ext_opt("suser", e.username.clone().or_else(|| e.subject.clone()))
    .ext_opt("requestMethod", e.method.clone())
    .ext_opt("request", e.path.clone())
    .ext_opt("requestClientApplication", e.user_agent.clone())
    .ext("cs1Label", "source")
    .ext("cs1", e.source.clone())
    .ext_opt("cs2Label", e.jti.as_ref().map(|_| "jti"))
    .ext_opt("cs2", e.jti.clone())
    .ext_opt("cs3Label", e.token_fp.as_ref().map(|_| "tokenFp"))
    .ext_opt("cs3", e.token_fp.clone());
    SyslogFrame {
        facility: cfg.facility,
        severity: if failure {
            cef_syslog::Severity::Notice
        } else {
            cef_syslog::Severity::Informational
        },
        time_us: e.time_us,
        hostname: &cfg.hostname,
        app_name: "tokenwatch",
        msg_id: "event",
    }
    .render(&cef.to_string())
}

/// What every forwarder has done, for `/metrics`.
#[derive(Default)]
pub struct ForwardStatus {
    forwarders: Mutex<Vec<Arc<ForwarderStats>>>,
}

/// One forwarder's counters. Index 0 is the alert stream, 1 the event stream.
struct ForwarderStats {
    name: String,
    /// False from a failed send until a send succeeds.
    up: AtomicBool,
    failures: AtomicU64,
    sent: [AtomicU64; 2],
    /// Records in the store not yet delivered; -1 for a stream that is not forwarded.
    backlog: [AtomicI64; 2],
}

const STREAM_NAMES: [&str; 2] = ["alerts", "events"];

impl ForwardStatus {
    fn register(&self, name: &str) -> Arc<ForwarderStats> {
        let stats = Arc::new(ForwarderStats {
            name: name.to_owned(),
            up: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            sent: Default::default(),
            backlog: [AtomicI64::new(-1), AtomicI64::new(-1)],
        });
        self.forwarders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stats.clone());
        stats
    }

    /// Prometheus text for every forwarder (nothing when none is configured).
    pub fn metrics_text(&self) -> String {
        let list = self.forwarders.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        if list.is_empty() {
            return out;
        }
        out.push_str("# HELP tokenwatch_forward_up 0 while the last delivery to the collector failed (it is retried from the store).\n# TYPE tokenwatch_forward_up gauge\n");
        for f in list.iter() {
            let _ = writeln!(
                out,
                "tokenwatch_forward_up{{forwarder=\"{}\"}} {}",
                f.name,
                u8::from(f.up.load(Ordering::Relaxed))
            );
        }
        out.push_str("# HELP tokenwatch_forward_failures_total Failed deliveries to the collector.\n# TYPE tokenwatch_forward_failures_total counter\n");
        for f in list.iter() {
            let _ = writeln!(
                out,
                "tokenwatch_forward_failures_total{{forwarder=\"{}\"}} {}",
                f.name,
                f.failures.load(Ordering::Relaxed)
            );
        }
        let per_stream =
            |out: &mut String, series: &str, value: &dyn Fn(&ForwarderStats, usize) -> i64| {
                for f in list.iter() {
                    for (i, stream) in STREAM_NAMES.iter().enumerate() {
                        // A negative backlog marks a stream this forwarder does not send.
                        if f.backlog[i].load(Ordering::Relaxed) >= 0 {
                            let _ = writeln!(
                                out,
                                "{series}{{forwarder=\"{}\",stream=\"{stream}\"}} {}",
                                f.name,
                                value(f, i)
                            );
                        }
                    }
                }
            };
        out.push_str("# HELP tokenwatch_forward_sent_total Messages delivered to the collector.\n# TYPE tokenwatch_forward_sent_total counter\n");
        per_stream(&mut out, "tokenwatch_forward_sent_total", &|f, i| {
            i64::try_from(f.sent[i].load(Ordering::Relaxed)).unwrap_or(i64::MAX)
        });
        out.push_str("# HELP tokenwatch_forward_backlog Records in the audit store not yet delivered.\n# TYPE tokenwatch_forward_backlog gauge\n");
        per_stream(&mut out, "tokenwatch_forward_backlog", &|f, i| {
            f.backlog[i].load(Ordering::Relaxed)
        });
        out
    }
}

/// The running forwarders; dropping this stops them.
pub struct Forwarders {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts one thread per configured forwarder.
pub fn start(
    configs: &[ForwardConfig],
    store: &AuditStore,
    state: Arc<StateDb>,
    status: &ForwardStatus,
) -> Result<Forwarders> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for cfg in configs {
        let reader = store
            .reader()
            .context("opening a reader for the forwarder")?;
        let mut streams = Vec::new();
        if cfg.alerts {
            streams.push(Stream::init(StreamKind::Alerts, cfg, &reader, &state)?);
        }
        if cfg.events {
            streams.push(Stream::init(StreamKind::Events, cfg, &reader, &state)?);
        }
        let cfg = cfg.clone();
        let state = state.clone();
        let stop = stop.clone();
        let stats = status.register(&cfg.name);
        let t = std::thread::Builder::new()
            .name(format!("tokenwatch-forward-{}", cfg.name))
            .spawn(move || run(cfg, reader, state, streams, &stats, &stop))
            .context("starting a forwarder thread")?;
        threads.push(t);
    }
    Ok(Forwarders { stop, threads })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StreamKind {
    Alerts,
    Events,
}

struct Stream {
    kind: StreamKind,
    cursor_name: String,
    cursor: i64,
}

impl Stream {
    fn index(&self) -> usize {
        match self.kind {
            StreamKind::Alerts => 0,
            StreamKind::Events => 1,
        }
    }

    /// Records after the cursor, for the backlog gauge.
    fn backlog(&self, r: &AuditReader) -> Result<i64> {
        let newest = match self.kind {
            StreamKind::Alerts => r.max_alert_id()?,
            StreamKind::Events => r.max_event_id()?,
        };
        Ok((newest - self.cursor).max(0))
    }

    fn init(kind: StreamKind, cfg: &ForwardConfig, r: &AuditReader, s: &StateDb) -> Result<Stream> {
        let cursor_name = format!(
            "{}:{}",
            cfg.name,
            if kind == StreamKind::Alerts {
                "alerts"
            } else {
                "events"
            }
        );
        let cursor = match s.forward_cursor(&cursor_name)? {
            Some(c) => c,
            None => {
                // A new forwarder starts now (or at the beginning); the cursor is
                // saved at once, so an outage right away is caught up after a restart.
                let start = if cfg.from_beginning {
                    0
                } else if kind == StreamKind::Alerts {
                    r.max_alert_id()?
                } else {
                    r.max_event_id()?
                };
                s.set_forward_cursor(&cursor_name, start)?;
                start
            }
        };
        Ok(Stream {
            kind,
            cursor_name,
            cursor,
        })
    }

    /// The next messages after the cursor and the id of the last one.
    fn next_batch(
        &self,
        r: &AuditReader,
        cfg: &ForwardConfig,
    ) -> Result<Option<(Vec<String>, i64)>> {
        let (msgs, last) = match self.kind {
            StreamKind::Alerts => {
                let alerts = r.alerts_after(self.cursor, BATCH)?;
                let last = alerts.last().map(|a| a.id);
                (alerts.iter().map(|a| alert_message(a, cfg)).collect(), last)
            }
            StreamKind::Events => {
                let events = r.events_after(self.cursor, BATCH)?;
                let last = events.last().map(|e| e.id);
                (events.iter().map(|e| event_message(e, cfg)).collect(), last)
            }
        };
        Ok(last.map(|l| (msgs, l)))
    }
}

fn run(
    cfg: ForwardConfig,
    reader: AuditReader,
    state: Arc<StateDb>,
    mut streams: Vec<Stream>,
    stats: &ForwarderStats,
    stop: &AtomicBool,
) {
    let timeout = Duration::from_secs(5);
    let mut sender = match &cfg.tls {
        Some(tls) => Sender::with_tls(cfg.target.clone(), timeout, tls.clone()),
        None => Sender::new(cfg.target.clone(), timeout),
    };
    let mut failing_since: Option<Instant> = None;
    let sleep = |d: Duration| {
        let until = Instant::now() + d;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut sent_any = false;
        let mut failed = false;
        for s in &mut streams {
            let batch = match s.next_batch(&reader, &cfg) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(forwarder = %cfg.name, error = %format!("{e:#}"), "reading the audit store for forwarding failed");
                    failed = true;
                    break;
                }
            };
            let Some((msgs, last)) = batch else { continue };
            match sender.send_all(&msgs) {
                Ok(()) => {
                    stats.sent[s.index()].fetch_add(msgs.len() as u64, Ordering::Relaxed);
                    stats.up.store(true, Ordering::Relaxed);
                    if let Err(e) = state.set_forward_cursor(&s.cursor_name, last) {
                        tracing::warn!(forwarder = %cfg.name, error = %e, "saving the forward cursor failed; the batch may be sent again");
                    }
                    s.cursor = last;
                    sent_any = true;
                    if let Some(t) = failing_since.take() {
                        tracing::info!(forwarder = %cfg.name, down_secs = t.elapsed().as_secs(), "syslog collector reachable again; caught up from the store");
                    }
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    stats.up.store(false, Ordering::Relaxed);
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(forwarder = %cfg.name, error = %e, retry_secs = cfg.retry.as_secs(), "forwarding to the syslog collector failed; will retry from the store");
                    }
                    failed = true;
                    break;
                }
            }
        }
        for s in &streams {
            if let Ok(b) = s.backlog(&reader) {
                stats.backlog[s.index()].store(b, Ordering::Relaxed);
            }
        }
        if failed {
            sleep(cfg.retry);
        } else if !sent_any {
            sleep(Duration::from_millis(250));
        }
    }
}
