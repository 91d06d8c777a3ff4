//! Settings: command-line flags win over `TOKENWATCH_*` variables (clap reads
//! both), which win over `tokenwatch.toml`, which wins over the defaults here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The contents of `tokenwatch.toml`; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// PEM certificate chain for HTTPS on `listen` (with `tls_key`); reloaded when it changes.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`; must not be accessible to group or others.
    pub tls_key: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub signing_alg: Option<String>,
    pub access_ttl_secs: Option<u64>,
    pub refresh_ttl_secs: Option<u64>,
    /// Seconds after a refresh-token exchange within which the same token may be
    /// presented again (two tabs, a retry) and gets the same new refresh token
    /// instead of revoking the family. 0 (default) is off; at most 60.
    pub refresh_reuse_grace_secs: Option<u64>,
    pub leeway_secs: Option<u64>,
    pub max_token_bytes: Option<usize>,
    pub log_level: Option<String>,
    /// `"text"` (default) or `"json"`: one JSON object per log line.
    pub log_format: Option<crate::logging::LogFormat>,
    #[serde(default)]
    pub audit: AuditFileConfig,
    #[serde(default)]
    pub response: ResponseFileConfig,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is
    /// believed. Empty by default: the peer address is the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// Per-plugin configuration, passed to the plugin's create() as JSON.
    #[serde(default)]
    pub plugins: toml::Table,
    /// `[ingest]`: limits of `POST /api/v1/events`.
    #[serde(default)]
    pub ingest: crate::ingest_api::IngestFileConfig,
    /// `[detection]`: time budgets and failure limits of the detection process.
    #[serde(default)]
    pub detection: DetectionSettings,
    /// `[[forward]]`: syslog/CEF collectors that receive alerts (and optionally events).
    #[serde(default)]
    pub forward: Vec<crate::forward::ForwardFileConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFileConfig {
    /// `full` (default), `normal` or `extra`: SQLite's `synchronous` pragma.
    pub synchronous: Option<String>,
    /// Days to keep events (at least 1), or `"forever"`. Unset: forever.
    pub retention_days: Option<RetentionDays>,
    pub checkpoint_interval_secs: Option<u64>,
    /// Seconds between the running store's chain and page checks (default 300).
    pub integrity_check_interval_secs: Option<u64>,
    /// Write one ECS JSON line per audit event under `<data_dir>/security-log/`.
    pub security_log: Option<bool>,
    /// The chain HMAC key and checkpoint signing key (default `<data_dir>/keys/audit`).
    /// Put it on another volume or a secret mount, so that whoever takes the data
    /// directory does not take the means to rewrite it.
    pub key_dir: Option<PathBuf>,
    /// Signed checkpoints (default `<data_dir>/checkpoints`).
    pub checkpoint_dir: Option<PathBuf>,
    /// Further folders that receive a signed-note copy of every checkpoint.
    pub checkpoint_mirrors: Option<Vec<PathBuf>>,
}

/// `retention_days = 30` or `retention_days = "forever"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RetentionDays {
    Days(u64),
    Word(String),
}

impl RetentionDays {
    /// `None`: keep forever.
    fn resolve(&self) -> Result<Option<Duration>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "audit.retention_days",
            message,
        };
        match self {
            RetentionDays::Days(0) => Err(invalid(
                "0 would delete every event; it must be at least 1. To keep events forever, set retention_days = \"forever\" (or leave it out)".into(),
            )),
            RetentionDays::Days(d) => d
                .checked_mul(86_400)
                .map(|s| Some(Duration::from_secs(s)))
                .ok_or_else(|| invalid(format!("{d} days is too long; use \"forever\""))),
            RetentionDays::Word(w) if w == "forever" => Ok(None),
            RetentionDays::Word(w) => Err(invalid(format!(
                "{w:?}: expected a number of days (at least 1) or \"forever\""
            ))),
        }
    }
}

/// `[response]`: what alerts do at the token endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFileConfig {
    /// Lock the targeted account on a brute-force alert (default true).
    pub lock_accounts: Option<bool>,
    /// Throttle the offending client IP on a password-spraying alert (default true).
    pub throttle_ips: Option<bool>,
    /// First lockout length; each further one in a row doubles it (default 60).
    pub lockout_base_secs: Option<u64>,
    /// Longest lockout (default 3600).
    pub lockout_max_secs: Option<u64>,
}

impl FileConfig {
    /// Reads `path`, or `./tokenwatch.toml` when no path was given and it exists.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("tokenwatch.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The longest refresh-reuse grace: long enough for a retry or a second tab, short
/// enough that a stolen token replayed later still revokes the family.
pub const MAX_REFRESH_REUSE_GRACE_SECS: u64 = 60;

fn refresh_reuse_grace(secs: Option<u64>) -> Result<Duration, ConfigError> {
    match secs.unwrap_or(0) {
        s if s <= MAX_REFRESH_REUSE_GRACE_SECS => Ok(Duration::from_secs(s)),
        s => Err(ConfigError::Invalid {
            key: "refresh_reuse_grace_secs",
            message: format!(
                "{s} s is too long: at most {MAX_REFRESH_REUSE_GRACE_SECS} s \
                 (a longer window would let a replayed stolen refresh token pass as a retry); \
                 use 0 to turn the grace off"
            ),
        }),
    }
}

/// The resolved settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// HTTPS on `listen` when set.
    pub tls: Option<TlsFiles>,
    pub data_dir: PathBuf,
    pub plugin_dir: PathBuf,
    /// The `iss` of every token and the base of every URL in the discovery
    /// document: an absolute http(s) URL without query or fragment (RFC 8414).
    pub issuer: String,
    /// True when no issuer was configured and it was derived from `listen`: `serve`
    /// derives it again from the address actually bound (port 0 picks one).
    pub issuer_from_listen: bool,
    pub audience: String,
    pub signing_alg: token_core::Alg,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub leeway: Duration,
    pub max_token_bytes: usize,
    pub log_level: String,
    pub log_format: crate::logging::LogFormat,
    pub audit_synchronous: audit_store::Synchronous,
    pub audit_retention: Option<Duration>,
    pub checkpoint_interval: Duration,
    pub integrity_check_interval: Duration,
    pub security_log: bool,
    pub audit_key_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub checkpoint_mirrors: Vec<PathBuf>,
    pub plugin_config: std::collections::HashMap<String, serde_json::Value>,
    pub response: ResponsePolicy,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub ingest: crate::ingest_api::IngestLimits,
    pub forward: Vec<crate::forward::ForwardConfig>,
    pub detection: DetectionSettings,
}

/// `[detection]`: how the detection process treats plugins. Every key is
/// optional; the defaults suit the built-in detectors (each call takes
/// milliseconds).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSettings {
    /// A call into a plugin longer than this is reported (metric, console,
    /// a `plugin.over_budget` event). Other plugins are never held up by it.
    pub call_budget_ms: u64,
    /// A call still running after this long is stopped: the detection process
    /// is restarted without that plugin, which is quarantined.
    pub call_limit_ms: u64,
    /// Crashes of the detection process a plugin may cause within
    /// `crash_window_secs` before it is quarantined.
    pub max_crashes: u32,
    pub crash_window_secs: u64,
    /// Errors a plugin may return within `error_window_secs` before it is
    /// quarantined (a sliding window: sparse errors add up too).
    pub max_errors: u32,
    pub error_window_secs: u64,
    /// How often `tick` is called on every plugin.
    pub tick_ms: u64,
}

impl Default for DetectionSettings {
    fn default() -> Self {
        DetectionSettings {
            call_budget_ms: 1000,
            call_limit_ms: 5000,
            max_crashes: 3,
            crash_window_secs: 600,
            max_errors: 5,
            error_window_secs: 60,
            tick_ms: 1000,
        }
    }
}

impl DetectionSettings {
    fn check(self) -> Result<Self, ConfigError> {
        let bad = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        };
        if self.call_budget_ms == 0 {
            return bad("detection.call_budget_ms", "must be at least 1");
        }
        if self.call_limit_ms < self.call_budget_ms {
            return bad(
                "detection.call_limit_ms",
                "must be at least detection.call_budget_ms",
            );
        }
        if self.max_crashes == 0 || self.max_errors == 0 {
            return bad(
                "detection.max_crashes",
                "max_crashes and max_errors must be at least 1",
            );
        }
        if self.crash_window_secs == 0 || self.error_window_secs == 0 || self.tick_ms == 0 {
            return bad(
                "detection.error_window_secs",
                "the windows and tick_ms must be at least 1",
            );
        }
        Ok(self)
    }
}

/// The listener's certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, ConfigError> {
    let one_without_other = |given: &str, missing: &'static str| {
        ConfigError::Invalid {
        key: missing,
        message: format!(
            "{given} is set but {missing} is not: HTTPS needs both, the certificate chain and its private key as PEM files (--tls-cert and --tls-key, TOKENWATCH_TLS_CERT and TOKENWATCH_TLS_KEY, or tls_cert and tls_key in tokenwatch.toml)"
        ),
    }
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(one_without_other("tls_cert", "tls_key")),
        (None, Some(_)) => Err(one_without_other("tls_key", "tls_cert")),
    }
}

/// What the server does when a detector raises an alert.
#[derive(Debug, Clone)]
pub struct ResponsePolicy {
    pub lock_accounts: bool,
    pub throttle_ips: bool,
    pub lockout: crate::response::LockoutPolicy,
}

/// What the command line (or its environment variables) set explicitly.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    pub audit_key_dir: Option<PathBuf>,
    pub checkpoint_dir: Option<PathBuf>,
    /// Replaces the file's list when given.
    pub checkpoint_mirrors: Option<Vec<PathBuf>>,
    pub log_format: Option<crate::logging::LogFormat>,
    pub issuer: Option<String>,
}

/// Checks an issuer identifier (RFC 8414 §2): an absolute http or https URL with a
/// host and no query, fragment or user info, written in its one canonical spelling
/// (lowercase scheme and host, no default port), so that two spellings of one
/// issuer cannot pass for two issuers. A trailing `/` is kept as written: tokens
/// carry the issuer verbatim.
pub fn validate_issuer(text: &str) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "issuer",
        message,
    };
    let url = url::Url::parse(text).map_err(|e| {
        invalid(format!(
            "{text:?} is not an absolute URL ({e}); use e.g. \"https://auth.example.com\""
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("{text:?} must be an http or https URL")));
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(format!(
            "{text:?} must name a host and carry no user name or password"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() || text.contains(['?', '#']) {
        return Err(invalid(format!(
            "{text:?} must have no query or fragment (RFC 8414)"
        )));
    }
    let canonical = url.as_str();
    if text != canonical && format!("{text}/") != canonical {
        return Err(invalid(format!(
            "{text:?} is not in canonical form; write it as {:?}",
            canonical
                .strip_suffix('/')
                .filter(|_| url.path() == "/")
                .unwrap_or(canonical)
        )));
    }
    Ok(text.to_string())
}

/// The issuer of a server that was given none: its own address, as a client on
/// this machine reaches it (an unspecified address such as 0.0.0.0 becomes loopback).
pub fn issuer_for_listen(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    match (ip, addr.port()) {
        (ip, 80) if ip.is_ipv4() => format!("http://{ip}"),
        (ip, 80) => format!("http://[{ip}]"),
        (ip, port) => format!("http://{}", SocketAddr::new(ip, port)),
    }
}

impl Settings {
    pub fn resolve(file: FileConfig, cli: &Overrides) -> Result<Settings, ConfigError> {
        let listen_text = cli
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            message: format!("{listen_text:?} is not an address:port ({e})"),
        })?;
        let tls = tls_files(
            cli.tls_cert.clone().or(file.tls_cert),
            cli.tls_key.clone().or(file.tls_key),
        )?;
        let data_dir = cli
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let plugin_dir = cli
            .plugin_dir
            .clone()
            .or(file.plugin_dir)
            .unwrap_or_else(|| data_dir.join("plugins"));
        let audit_key_dir = cli
            .audit_key_dir
            .clone()
            .or(file.audit.key_dir)
            .unwrap_or_else(|| data_dir.join("keys").join("audit"));
        let checkpoint_dir = cli
            .checkpoint_dir
            .clone()
            .or(file.audit.checkpoint_dir)
            .unwrap_or_else(|| data_dir.join("checkpoints"));
        let checkpoint_mirrors = cli
            .checkpoint_mirrors
            .clone()
            .or(file.audit.checkpoint_mirrors)
            .unwrap_or_default();
        if let Some(m) = checkpoint_mirrors.iter().find(|m| **m == checkpoint_dir) {
            return Err(ConfigError::Invalid {
                key: "audit.checkpoint_mirrors",
                message: format!("{} is the checkpoint folder itself; a mirror must be another folder (another disk or share)", m.display()),
            });
        }
        let signing_alg = file
            .signing_alg
            .as_deref()
            .unwrap_or("ES256")
            .parse()
            .map_err(|_| ConfigError::Invalid {
                key: "signing_alg",
                message: "expected one of HS256, HS384, HS512, RS256, ES256, EdDSA".into(),
            })?;
        let audit_synchronous = match file.audit.synchronous.as_deref().unwrap_or("full") {
            "full" => audit_store::Synchronous::Full,
            "normal" => audit_store::Synchronous::Normal,
            "extra" => audit_store::Synchronous::Extra,
            other => {
                return Err(ConfigError::Invalid {
                    key: "audit.synchronous",
                    message: format!("{other:?}: expected full, normal or extra"),
                })
            }
        };
        let plugin_config = file
            .plugins
            .into_iter()
            .map(|(name, value)| {
                let json = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
                (name, json)
            })
            .collect();
        let trusted_proxies = file
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| ConfigError::Invalid {
                        key: "trusted_proxies",
                        message: format!("{p:?} is not an IP address or CIDR range"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let base = file.response.lockout_base_secs.unwrap_or(60).max(1);
        let response = ResponsePolicy {
            lock_accounts: file.response.lock_accounts.unwrap_or(true),
            throttle_ips: file.response.throttle_ips.unwrap_or(true),
            lockout: crate::response::LockoutPolicy {
                base_secs: i64::try_from(base).unwrap_or(i64::MAX),
                max_secs: i64::try_from(file.response.lockout_max_secs.unwrap_or(3600).max(base))
                    .unwrap_or(i64::MAX),
            },
        };
        let audit_retention = match &file.audit.retention_days {
            Some(r) => r.resolve()?,
            None => None,
        };
        let integrity_check_interval = match file.audit.integrity_check_interval_secs {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    key: "audit.integrity_check_interval_secs",
                    message: "must be at least 1 (seconds)".into(),
                })
            }
            s => Duration::from_secs(s.unwrap_or(300)),
        };
        let refresh_reuse_grace = refresh_reuse_grace(file.refresh_reuse_grace_secs)?;
        let (issuer, issuer_from_listen) = match cli.issuer.clone().or(file.issuer) {
            Some(text) => (validate_issuer(&text)?, false),
            None => (issuer_for_listen(listen), true),
        };
        let ingest = file.ingest.resolve();
        let forward = crate::forward::resolve(&file.forward)?;
        let detection = file.detection.check()?;
        Ok(Settings {
            detection,
            ingest,
            forward,
            response,
            trusted_proxies,
            listen,
            tls,
            plugin_dir,
            issuer,
            issuer_from_listen,
            audience: file.audience.unwrap_or_else(|| "tokenwatch-api".into()),
            signing_alg,
            access_ttl: Duration::from_secs(file.access_ttl_secs.unwrap_or(15 * 60)),
            refresh_ttl: Duration::from_secs(file.refresh_ttl_secs.unwrap_or(30 * 24 * 3600)),
            refresh_reuse_grace,
            leeway: Duration::from_secs(file.leeway_secs.unwrap_or(5)),
            max_token_bytes: file.max_token_bytes.unwrap_or(8 * 1024),
            log_level: file.log_level.unwrap_or_else(|| "info".into()),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            audit_synchronous,
            audit_retention,
            integrity_check_interval,
            checkpoint_interval: Duration::from_secs(
                file.audit.checkpoint_interval_secs.unwrap_or(60),
            ),
            security_log: file.audit.security_log.unwrap_or(false),
            audit_key_dir,
            checkpoint_dir,
            checkpoint_mirrors,
            plugin_config,
            data_dir,
        })
    }

    pub fn token_config(&self) -> token_core::TokenConfig {
        token_core::TokenConfig {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            access_ttl: self.access_ttl,
            refresh_ttl: self.refresh_ttl,
            leeway: self.leeway,
            max_token_bytes: self.max_token_bytes,
            refresh_reuse_grace: self.refresh_reuse_grace,
        }
    }

    pub fn store_config(&self) -> audit_store::StoreConfig {
        let mut cfg = audit_store::StoreConfig::in_data_dir(&self.data_dir);
        cfg.key_dir = self.audit_key_dir.clone();
        cfg.checkpoint_dir = self.checkpoint_dir.clone();
        cfg.checkpoint_mirrors = self.checkpoint_mirrors.clone();
        cfg.synchronous = self.audit_synchronous;
        cfg.retention = self.audit_retention;
        cfg.checkpoint_interval = self.checkpoint_interval;
        cfg.integrity_interval = Some(self.integrity_check_interval);
        if self.security_log {
            cfg.security_log_dir = Some(self.data_dir.join("security-log"));
        }
        cfg
    }

    pub fn jwt_key_dir(&self) -> PathBuf {
        self.data_dir.join("keys").join("jwt")
    }

    pub fn state_db_path(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(toml_text: &str) -> Result<Option<Duration>, ConfigError> {
        let file: FileConfig = toml::from_str(toml_text).unwrap();
        Settings::resolve(file, &Overrides::default()).map(|s| s.audit_retention)
    }

    #[test]
    fn retention_days_zero_is_refused_and_forever_must_be_said() {
        let err = retention("[audit]\nretention_days = 0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("audit.retention_days") && err.contains("\"forever\""),
            "{err}"
        );
        assert_eq!(
            retention("[audit]\nretention_days = \"forever\"").unwrap(),
            None
        );
        assert_eq!(retention("").unwrap(), None);
        assert_eq!(
            retention("[audit]\nretention_days = 2").unwrap(),
            Some(Duration::from_secs(2 * 86_400))
        );
        let err = retention("[audit]\nretention_days = \"never\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"never\""), "{err}");
    }

    fn grace(secs: Option<u64>) -> Result<Duration, ConfigError> {
        let file = FileConfig {
            refresh_reuse_grace_secs: secs,
            ..FileConfig::default()
        };
        Settings::resolve(file, &Overrides::default()).map(|s| s.refresh_reuse_grace)
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key() {
        let resolve = |file: &str, cert: Option<&str>, key: Option<&str>| {
            let overrides = Overrides {
                tls_cert: cert.map(PathBuf::from),
                tls_key: key.map(PathBuf::from),
                ..Overrides::default()
            };
            Settings::resolve(toml::from_str(file).unwrap(), &overrides).map(|s| s.tls)
        };
        assert_eq!(resolve("", None, None).unwrap(), None);
        let both = resolve("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"", None, None).unwrap();
        assert_eq!(
            both,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        // A flag wins over the file, key by key.
        let mixed = resolve(
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"",
            None,
            Some("flag.key"),
        );
        assert_eq!(mixed.unwrap().unwrap().key, PathBuf::from("flag.key"));
        let err = resolve("", Some("c.pem"), None).unwrap_err().to_string();
        assert!(
            err.contains("tls_key") && err.contains("--tls-key"),
            "{err}"
        );
        let err = resolve("tls_key = \"k.pem\"", None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_cert is not"), "{err}");
    }

    #[test]
    fn refresh_reuse_grace_is_off_by_default_and_bounded() {
        assert_eq!(grace(None).expect("default"), Duration::ZERO);
        assert_eq!(grace(Some(60)).expect("max"), Duration::from_secs(60));
        let err = grace(Some(61)).expect_err("too long").to_string();
        assert!(
            err.contains("refresh_reuse_grace_secs") && err.contains("at most 60"),
            "{err}"
        );
    }

    #[test]
    fn log_format_comes_from_the_file_unless_the_command_line_says_otherwise() {
        use crate::logging::LogFormat;
        let resolve = |text: &str, cli: Option<LogFormat>| {
            let file: FileConfig = toml::from_str(text).unwrap();
            let o = Overrides {
                log_format: cli,
                ..Overrides::default()
            };
            Settings::resolve(file, &o).unwrap().log_format
        };
        assert_eq!(resolve("", None), LogFormat::Text);
        assert_eq!(resolve("log_format = \"json\"", None), LogFormat::Json);
        assert_eq!(
            resolve("log_format = \"json\"", Some(LogFormat::Text)),
            LogFormat::Text
        );
        let err = toml::from_str::<FileConfig>("log_format = \"xml\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml") && err.contains("json"), "{err}");
    }

    #[test]
    fn issuer_is_a_canonical_url_or_derived_from_listen() {
        for ok in [
            "https://auth.example.com",
            "https://auth.example.com/",
            "https://auth.example.com/tenant-a",
            "http://127.0.0.1:8080",
            "http://[::1]:9000",
        ] {
            assert_eq!(validate_issuer(ok).expect(ok), ok);
        }
        for (bad, says) in [
            ("tokenwatch", "not an absolute URL"),
            ("ftp://auth.example.com", "http or https"),
            ("https://auth.example.com?x=1", "no query or fragment"),
            ("https://auth.example.com#f", "no query or fragment"),
            ("https://auth.example.com?", "no query or fragment"),
            ("https://user:pw@auth.example.com", "user name"),
            ("https://AUTH.example.com", "\"https://auth.example.com\""),
            (
                "https://auth.example.com:443",
                "\"https://auth.example.com\"",
            ),
            ("urn:tokenwatch", "http or https"),
        ] {
            let err = validate_issuer(bad).expect_err(bad).to_string();
            assert!(err.contains("issuer") && err.contains(says), "{bad}: {err}");
        }
        let derived = Settings::resolve(FileConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(derived.issuer, "http://127.0.0.1:8080");
        assert!(derived.issuer_from_listen);
        assert_eq!(
            issuer_for_listen("0.0.0.0:80".parse().unwrap()),
            "http://127.0.0.1"
        );
        assert_eq!(
            issuer_for_listen("[::]:8443".parse().unwrap()),
            "http://[::1]:8443"
        );
        let cli = Overrides {
            issuer: Some("https://id.example.org".into()),
            ..Overrides::default()
        };
        let file = FileConfig {
            issuer: Some("https://ignored.example.org".into()),
            ..FileConfig::default()
        };
        let s = Settings::resolve(file, &cli).unwrap();
        assert_eq!(s.issuer, "https://id.example.org");
        assert!(!s.issuer_from_listen);
    }
}
