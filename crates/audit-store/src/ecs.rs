//! Optional ECS JSON security log: one line per committed event, and one
//! `event.kind: alert` line per alert raised or updated, rolled daily, for
//! shipping with Filebeat unchanged (`deploy/filebeat/`, index template in
//! `deploy/elasticsearch/`). Contains exactly the audit fields (which by
//! contract never hold raw tokens or secrets).
//!
//! Field names and types follow ECS [`ECS_VERSION`]; what ECS has no field for
//! is under `tokenwatch.*`. `tests/ecs.rs` checks every line against the
//! vendored ECS definitions, so a field added here must exist there.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};
use tracing_appender::rolling::{RollingFileAppender, Rotation};

use crate::export::try_rfc3339_us;
use crate::{NewAlert, NewEvent, Severity, StoreError};

/// The ECS release the lines follow (`ecs.version`).
pub const ECS_VERSION: &str = "8.17.0";

const DATASET: &str = "tokenwatch.audit";

pub(crate) struct SecurityLog {
    out: RollingFileAppender,
    buf: Vec<u8>,
}

/// `event.category` and `event.type` of each audit kind: values ECS allows, and
/// each type one the category expects.
fn categorization(kind: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        "auth.login.success" | "auth.login.failure" | "admin.login" => {
            (&["authentication"], &["start"])
        }
        "token.verified" | "token.rejected" => (&["authentication"], &["info"]),
        "authorize.approved" => (&["authentication"], &["start"]),
        "authorize.refused" | "authorize.denied" | "code.rejected" | "code.reused" => {
            (&["authentication"], &["info"])
        }
        "token.issued" => (&["session"], &["start"]),
        "token.refreshed" | "token.refresh_grace" | "refresh.reuse_detected" => {
            (&["session"], &["info"])
        }
        "token.revoked" => (&["session"], &["end"]),
        "access.granted" => (&["api"], &["access", "allowed"]),
        "access.denied" => (&["api"], &["access", "denied"]),
        "ingest.batch" => (&["api"], &["access"]),
        "admin.action" => (&["iam"], &["admin", "change"]),
        "lockout.applied" | "lockout.lifted" => (&["iam"], &["user", "change"]),
        "admin.export" => (&["database"], &["access"]),
        "audit.integrity_failed" => (&["database"], &["error"]),
        "audit.loss_accepted" | "audit.pruned" => (&["database"], &["change"]),
        "plugin.loaded" => (&["configuration"], &["creation"]),
        "plugin.unloaded" => (&["configuration"], &["deletion"]),
        "plugin.failed" => (&["configuration"], &["info"]),
        "exception.expired" | "tls.reload" => (&["configuration"], &["change"]),
        _ => (&["api"], &["info"]),
    }
}

/// `@timestamp`: a time outside years 0000-9999 (only a bad ingested event could
/// carry one) would make Elasticsearch refuse the whole line, so it is stamped
/// with the time of writing instead; the stored time stays in the audit record.
fn timestamp(time_us: i64) -> String {
    try_rfc3339_us(time_us).unwrap_or_else(|| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        try_rfc3339_us(now as i64).unwrap_or_default()
    })
}

/// `source.ip` is mapped as `ip`: anything else there would make Elasticsearch
/// refuse the line, so a value that is not an address goes to `source.address`.
fn source(client_ip: &str) -> Value {
    if client_ip.parse::<std::net::IpAddr>().is_ok() {
        json!({ "ip": client_ip })
    } else {
        json!({ "address": client_ip })
    }
}

/// The one-line summary Kibana's Discover shows (`message`).
fn message(ev: &NewEvent) -> String {
    let mut m = format!("{} {}", ev.kind, ev.outcome.as_str());
    if let Some(r) = &ev.reason {
        m.push_str(&format!(" ({r})"));
    }
    if let Some(u) = ev.username.as_ref().or(ev.subject.as_ref()) {
        m.push_str(&format!(" user={u}"));
    }
    if let Some(ip) = &ev.client_ip {
        m.push_str(&format!(" from {ip}"));
    }
    m
}

/// ECS `event.severity` (1 low .. 4 critical) and the risk score Elastic's own
/// detection rules give the same severity (`event.risk_score`).
fn severity_scores(s: Severity) -> (u8, f64) {
    match s {
        Severity::Low => (1, 21.0),
        Severity::Medium => (2, 47.0),
        Severity::High => (3, 73.0),
        Severity::Critical => (4, 99.0),
    }
}

impl SecurityLog {
    pub fn open(dir: &Path) -> Result<SecurityLog, StoreError> {
        let out = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix("security")
            .filename_suffix("log")
            .build(dir)
            .map_err(|e| {
                StoreError::io(
                    "cannot open security log in",
                    dir,
                    std::io::Error::other(e.to_string()),
                )
            })?;
        Ok(SecurityLog {
            out,
            buf: Vec::new(),
        })
    }

    pub fn add(&mut self, id: i64, ev: &NewEvent, hash: &[u8]) {
        let (category, kind_type) = categorization(&ev.kind);
        let mut event = Map::new();
        event.insert("kind".into(), json!("event"));
        event.insert("category".into(), json!(category));
        event.insert("type".into(), json!(kind_type));
        event.insert("action".into(), json!(ev.kind));
        event.insert("outcome".into(), json!(ev.outcome.as_str()));
        event.insert("sequence".into(), json!(id));
        event.insert("provider".into(), json!(ev.source));
        event.insert("dataset".into(), json!(DATASET));
        if let Some(r) = &ev.reason {
            event.insert("reason".into(), json!(r));
        }
        let mut o = Map::new();
        o.insert("@timestamp".into(), json!(timestamp(ev.time_us)));
        o.insert("message".into(), json!(message(ev)));
        o.insert("ecs".into(), json!({ "version": ECS_VERSION }));
        o.insert("event".into(), Value::Object(event));
        let mut user = Map::new();
        if let Some(v) = &ev.username {
            user.insert("name".into(), json!(v));
        }
        if let Some(v) = &ev.subject {
            user.insert("id".into(), json!(v));
        }
        if !user.is_empty() {
            o.insert("user".into(), Value::Object(user));
        }
        if let Some(v) = &ev.client_ip {
            o.insert("source".into(), source(v));
        }
        if let Some(v) = &ev.user_agent {
            o.insert("user_agent".into(), json!({ "original": v }));
        }
        if let Some(v) = &ev.method {
            o.insert("http".into(), json!({ "request": { "method": v } }));
        }
        if let Some(v) = &ev.path {
            o.insert("url".into(), json!({ "path": v }));
        }
        let mut tw = Map::new();
        for (k, v) in [
            ("jti", &ev.jti),
            ("kid", &ev.kid),
            ("alg", &ev.alg),
            ("token_fp", &ev.token_fp),
        ] {
            if let Some(v) = v {
                tw.insert(k.into(), json!(v));
            }
        }
        tw.insert("hash".into(), json!(hex::encode(hash)));
        if !ev.detail.is_null() {
            tw.insert("detail".into(), ev.detail.clone());
        }
        o.insert("tokenwatch".into(), Value::Object(tw));
        self.push(&Value::Object(o));
    }

    /// An alert as raised (or updated with new evidence) by a detector.
    pub fn add_alert(&mut self, id: i64, a: &NewAlert) {
        let (severity, risk) = severity_scores(a.severity);
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let mut o = Map::new();
        o.insert("@timestamp".into(), json!(timestamp(now as i64)));
        o.insert("message".into(), json!(a.summary));
        o.insert("ecs".into(), json!({ "version": ECS_VERSION }));
        o.insert(
            "event".into(),
            json!({
                "kind": "alert",
                "category": ["intrusion_detection"],
                "type": ["info"],
                "action": "alert.raised",
                "id": id.to_string(),
                "severity": severity,
                "risk_score": risk,
                "start": timestamp(if a.time_us == 0 { now as i64 } else { a.time_us }),
                "provider": "tokenwatch",
                "dataset": DATASET,
            }),
        );
        o.insert(
            "rule".into(),
            json!({
                "id": format!("{}/{}", a.detector, a.rule),
                "name": a.rule,
                "ruleset": a.detector,
            }),
        );
        if let Some(v) = &a.subject {
            o.insert("user".into(), json!({ "name": v }));
        }
        if let Some(v) = &a.client_ip {
            o.insert("source".into(), source(v));
        }
        o.insert(
            "tokenwatch".into(),
            json!({ "alert": {
                "id": id,
                "severity": a.severity.as_str(),
                "group_key": a.group_key,
                "evidence": a.evidence,
            }}),
        );
        self.push(&Value::Object(o));
    }

    fn push(&mut self, line: &Value) {
        // Serializing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, line);
        self.buf.push(b'\n');
    }

    /// One write per committed batch.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.out.write_all(&self.buf).and_then(|_| self.out.flush());
        self.buf.clear();
        r
    }
}
