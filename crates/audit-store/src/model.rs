//! Plain data types shared by the writer, the readers and the callers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::StoreError;

/// Whether the decision an event records went the caller's way.
#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Debug, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
    pub(crate) fn from_db(s: &str) -> Outcome {
        // Anything that is not exactly "success" is reported as a failure: a tampered
        // row must never read as a success it was not.
        if s == "success" {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

impl FromStr for Outcome {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(Outcome::Success),
            "failure" => Ok(Outcome::Failure),
            other => Err(StoreError::InvalidArgument(format!(
                "outcome must be \"success\" or \"failure\", got {other:?}"
            ))),
        }
    }
}

/// The audit event kinds. Dotted names, never renamed once shipped (see design.md).
pub mod kinds {
    pub const AUTH_LOGIN_SUCCESS: &str = "auth.login.success";
    pub const AUTH_LOGIN_FAILURE: &str = "auth.login.failure";
    pub const TOKEN_ISSUED: &str = "token.issued";
    pub const TOKEN_REFRESHED: &str = "token.refreshed";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const TOKEN_VERIFIED: &str = "token.verified";
    pub const TOKEN_REJECTED: &str = "token.rejected";
    pub const REFRESH_REUSE_DETECTED: &str = "refresh.reuse_detected";
    pub const ACCESS_GRANTED: &str = "access.granted";
    pub const ACCESS_DENIED: &str = "access.denied";
    pub const ADMIN_LOGIN: &str = "admin.login";
    pub const ADMIN_ACTION: &str = "admin.action";
    pub const ADMIN_EXPORT: &str = "admin.export";
    pub const PLUGIN_LOADED: &str = "plugin.loaded";
    pub const PLUGIN_FAILED: &str = "plugin.failed";
    pub const PLUGIN_UNLOADED: &str = "plugin.unloaded";
    /// A call into a detector plugin ran past its time budget (`detection.call_budget_ms`).
    pub const PLUGIN_OVER_BUDGET: &str = "plugin.over_budget";
    /// An account locked or a client IP throttled at the token endpoint, in response to an alert.
    pub const LOCKOUT_APPLIED: &str = "lockout.applied";
    /// A lockout lifted early by an operator.
    pub const LOCKOUT_LIFTED: &str = "lockout.lifted";
    /// An analyst's exception reached its expiry and stopped applying (recorded once,
    /// by the server's periodic sweep).
    pub const EXCEPTION_EXPIRED: &str = "exception.expired";
    /// One request to the ingest API (`POST /api/v1/events`), with its counts;
    /// the events it carried are recorded each under their own kind.
    pub const INGEST_BATCH: &str = "ingest.batch";
    /// An operator recorded that audit history was lost (`tokenwatch audit accept-loss`):
    /// the record did not extend its newest signed checkpoint. Names the missing range.
    pub const AUDIT_LOSS_ACCEPTED: &str = "audit.loss_accepted";
    /// The running store's chain or page check found damage; `detail` names the
    /// check, the first bad row and the problem. Recorded only by the store itself.
    pub const AUDIT_INTEGRITY_FAILED: &str = "audit.integrity_failed";
    /// Retention deleted the oldest events; `detail` has the id range, how many, the
    /// event times they spanned and the cutoff. Recorded only by the store itself.
    pub const AUDIT_PRUNED: &str = "audit.pruned";
    /// A just-exchanged refresh token presented again within the configured grace
    /// (`refresh_reuse_grace_secs`): answered with the same new refresh token, not
    /// taken for theft. Outside the grace the same repeat is `refresh.reuse_detected`.
    pub const TOKEN_REFRESH_GRACE: &str = "token.refresh_grace";
    /// The HTTPS listener's certificate or key changed on disk: success when the new
    /// pair is served from then on, failure (reason `key_mismatch`, `key_permissions`,
    /// `no_certificate`, …) when it was refused and the previous pair kept.
    pub const TLS_RELOAD: &str = "tls.reload";
    /// An authorization request (`/oauth/authorize`) refused before any login: unknown
    /// client, unregistered redirect URI, missing or `plain` PKCE challenge, ...
    pub const AUTHORIZE_REFUSED: &str = "authorize.refused";
    /// A user logged in on the authorization page and approved the client: an
    /// authorization code was issued (identified by its fingerprint).
    pub const AUTHORIZE_APPROVED: &str = "authorize.approved";
    /// A user declined the client on the authorization page.
    pub const AUTHORIZE_DENIED: &str = "authorize.denied";
    /// An authorization code refused at the token endpoint: unknown, expired, another
    /// client's, another redirect URI's, or a PKCE verifier that does not match.
    pub const CODE_REJECTED: &str = "code.rejected";
    /// An authorization code presented a second time: the tokens issued for it are
    /// revoked (RFC 6749 §4.1.2).
    pub const CODE_REUSED: &str = "code.reused";

    /// Every kind above, in documentation order.
    pub const ALL: &[&str] = &[
        AUTH_LOGIN_SUCCESS,
        AUTH_LOGIN_FAILURE,
        TOKEN_ISSUED,
        TOKEN_REFRESHED,
        TOKEN_REVOKED,
        TOKEN_VERIFIED,
        TOKEN_REJECTED,
        REFRESH_REUSE_DETECTED,
        ACCESS_GRANTED,
        ACCESS_DENIED,
        ADMIN_LOGIN,
        ADMIN_ACTION,
        ADMIN_EXPORT,
        PLUGIN_LOADED,
        PLUGIN_FAILED,
        PLUGIN_UNLOADED,
        PLUGIN_OVER_BUDGET,
        LOCKOUT_APPLIED,
        LOCKOUT_LIFTED,
        EXCEPTION_EXPIRED,
        INGEST_BATCH,
        AUDIT_LOSS_ACCEPTED,
        AUDIT_INTEGRITY_FAILED,
        AUDIT_PRUNED,
        TOKEN_REFRESH_GRACE,
        TLS_RELOAD,
        AUTHORIZE_REFUSED,
        AUTHORIZE_APPROVED,
        AUTHORIZE_DENIED,
        CODE_REJECTED,
        CODE_REUSED,
    ];
}

/// One decision to record. Never put a raw token, refresh token, password, secret or
/// private key in any field: identify tokens by `jti` and `token_fp`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NewEvent {
    /// UTC unix microseconds; 0 means "now" (stamped by the store at submission).
    pub time_us: i64,
    pub kind: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub subject: Option<String>,
    pub username: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub jti: Option<String>,
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub token_fp: Option<String>,
    /// Who produced the event: "tokenwatch" for the server's own decisions.
    pub source: String,
    pub detail: serde_json::Value,
}

macro_rules! with_opt {
    ($($fn:ident => $field:ident),* $(,)?) => {
        $(
            #[must_use]
            pub fn $fn(mut self, v: impl Into<String>) -> Self {
                self.$field = Some(v.into());
                self
            }
        )*
    };
}

impl NewEvent {
    /// An event of `kind` stamped "now", source "tokenwatch", no detail.
    pub fn new(kind: &str, outcome: Outcome) -> Self {
        NewEvent {
            kind: kind.to_owned(),
            outcome,
            source: "tokenwatch".to_owned(),
            detail: serde_json::Value::Null,
            ..Default::default()
        }
    }

    with_opt! {
        with_reason => reason, with_subject => subject, with_username => username,
        with_client_ip => client_ip, with_user_agent => user_agent, with_method => method,
        with_path => path, with_jti => jti, with_kid => kid, with_alg => alg,
        with_token_fp => token_fp,
    }

    #[must_use]
    pub fn with_time_us(mut self, t: i64) -> Self {
        self.time_us = t;
        self
    }
    #[must_use]
    pub fn with_source(mut self, s: impl Into<String>) -> Self {
        self.source = s.into();
        self
    }
    #[must_use]
    pub fn with_detail(mut self, d: serde_json::Value) -> Self {
        self.detail = d;
        self
    }
}

/// An event as stored, with its id and chain hash (hex).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub time_us: i64,
    pub kind: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub subject: Option<String>,
    pub username: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub jti: Option<String>,
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub token_fp: Option<String>,
    pub source: String,
    pub detail: serde_json::Value,
    pub hash: String,
}

/// Alert severity, ordered from least to most severe.
#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            other => Err(StoreError::InvalidArgument(format!(
                "severity must be low, medium, high or critical, got {other:?}"
            ))),
        }
    }
}

/// Where an analyst has put an alert.
#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Open,
    Acknowledged,
    Closed,
    Suppressed,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Acknowledged => "acknowledged",
            AlertStatus::Closed => "closed",
            AlertStatus::Suppressed => "suppressed",
        }
    }
}

impl FromStr for AlertStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(AlertStatus::Open),
            "acknowledged" => Ok(AlertStatus::Acknowledged),
            "closed" => Ok(AlertStatus::Closed),
            "suppressed" => Ok(AlertStatus::Suppressed),
            other => Err(StoreError::InvalidArgument(format!(
                "alert status must be open, acknowledged, closed or suppressed, got {other:?}"
            ))),
        }
    }
}

/// An alert raised by a detector. Inserting one whose `(detector, group_key)` already has
/// an *open* alert updates that alert instead (one alert per incident).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NewAlert {
    /// UTC unix microseconds; 0 means now.
    pub time_us: i64,
    pub detector: String,
    pub rule: String,
    pub severity: Severity,
    pub subject: Option<String>,
    pub client_ip: Option<String>,
    pub summary: String,
    /// What makes two alerts "the same incident" for this detector, e.g. "ip:10.0.0.7".
    pub group_key: String,
    /// Ids of the events that support the alert.
    pub evidence: Vec<i64>,
}

/// What a detector concluded from the events up to `last_event_id`: its alerts
/// (each merged into the open alert of its incident, as `insert_alert` does) and its
/// cursor, committed together so a crash never stores the alerts without the cursor
/// (alerts twice after a restart) or the cursor without the alerts (alerts lost).
#[derive(Clone, Debug)]
pub struct DetectionCommit {
    pub detector: String,
    pub last_event_id: i64,
    pub alerts: Vec<NewAlert>,
}

/// At most this many evidence ids are kept per alert; later ones only bump `count`.
pub const MAX_EVIDENCE: usize = 1000;

/// A stored alert.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alert {
    pub id: i64,
    /// When the alert was first raised.
    pub time_us: i64,
    /// When it last received evidence or changed status.
    pub updated_at_us: i64,
    pub detector: String,
    pub rule: String,
    pub severity: Severity,
    pub subject: Option<String>,
    pub client_ip: Option<String>,
    pub summary: String,
    pub group_key: String,
    pub evidence: Vec<i64>,
    /// How many times the detector reported this incident.
    pub count: u64,
    pub status: AlertStatus,
    pub status_by: Option<String>,
    pub status_at_us: Option<i64>,
    pub status_note: Option<String>,
}

/// Event filter used by queries and exports. Every field is optional; set fields are ANDed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EventFilter {
    /// Inclusive lower bound, UTC unix microseconds.
    pub from_us: Option<i64>,
    /// Exclusive upper bound, UTC unix microseconds.
    pub to_us: Option<i64>,
    pub kind: Option<String>,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    /// Matches events whose subject OR username equals this value.
    pub subject_or_username: Option<String>,
    pub client_ip: Option<String>,
    pub jti: Option<String>,
    pub source: Option<String>,
}

/// Alert filter for listing and export.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AlertFilter {
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub detector: Option<String>,
    /// Minimum severity.
    pub min_severity: Option<Severity>,
    pub status: Option<AlertStatus>,
    pub subject: Option<String>,
    pub client_ip: Option<String>,
}

/// Keyset position in the newest-first event listing: the last row of the previous page.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    pub time_us: i64,
    pub id: i64,
}

impl fmt::Display for Cursor {
    /// `"<time_us>.<id>"`, safe in a query string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.time_us, self.id)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StoreError::InvalidArgument(format!("malformed page cursor {s:?}"));
        let (t, i) = s.split_once('.').ok_or_else(bad)?;
        Ok(Cursor {
            time_us: t.parse().map_err(|_| bad())?,
            id: i.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of results and where the next one starts (`None`: this was the last page).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Page<T, C = Cursor> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// Half-open UTC time range `[from_us, to_us)` in unix microseconds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimeRange {
    pub from_us: i64,
    pub to_us: i64,
}

impl TimeRange {
    pub fn new(from_us: i64, to_us: i64) -> Self {
        TimeRange { from_us, to_us }
    }
}

/// Chart bucket width. Buckets are aligned to the UTC epoch (days start at 00:00 UTC).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    pub fn micros(self) -> i64 {
        match self {
            Bucket::Minute => 60_000_000,
            Bucket::Hour => 3_600_000_000,
            Bucket::Day => 86_400_000_000,
        }
    }
}

pub(crate) fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
