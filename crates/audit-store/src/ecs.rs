//! Optional ECS-style JSON security log: one line per committed event, rolled daily,
//! for shipping with Filebeat unchanged. Contains exactly the audit fields (which by
//! contract never hold raw tokens or secrets).

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};
use tracing_appender::rolling::{RollingFileAppender, Rotation};

use crate::export::rfc3339_us;
use crate::{NewEvent, StoreError};

pub(crate) struct SecurityLog {
    out: RollingFileAppender,
    buf: Vec<u8>,
}

fn category(kind: &str) -> &'static str {
    match kind.split('.').next() {
        Some("auth" | "token" | "refresh" | "access" | "authorize" | "code") => "authentication",
        Some("admin") => "iam",
        Some("plugin") => "configuration",
        _ => "host",
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
        let mut event = Map::new();
        event.insert("kind".into(), json!("event"));
        event.insert("category".into(), json!([category(&ev.kind)]));
        event.insert("action".into(), json!(ev.kind));
        event.insert("outcome".into(), json!(ev.outcome.as_str()));
        event.insert("sequence".into(), json!(id));
        event.insert("provider".into(), json!(ev.source));
        event.insert("dataset".into(), json!("tokenwatch.audit"));
        if let Some(r) = &ev.reason {
            event.insert("reason".into(), json!(r));
        }
        let mut o = Map::new();
        o.insert("@timestamp".into(), json!(rfc3339_us(ev.time_us)));
        o.insert("ecs".into(), json!({"version": "8.11.0"}));
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
            o.insert("source".into(), json!({"ip": v}));
        }
        if let Some(v) = &ev.user_agent {
            o.insert("user_agent".into(), json!({"original": v}));
        }
        if let Some(v) = &ev.method {
            o.insert("http".into(), json!({"request": {"method": v}}));
        }
        if let Some(v) = &ev.path {
            o.insert("url".into(), json!({"path": v}));
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
        // Serializing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, &Value::Object(o));
        self.buf.push(b'\n');
    }

    /// One write per committed batch.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let r = self.out.write_all(&self.buf).and_then(|_| self.out.flush());
        self.buf.clear();
        r
    }
}
