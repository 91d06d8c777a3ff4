//! Where detection results land: the analysts' exceptions, the lockout
//! policy, and the store, where a plugin's alerts and its cursor commit in
//! one transaction.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use audit_store::{kinds, AuditWriter, DetectionCommit, NewAlert, NewEvent, Outcome, StoreError};
use serde_json::json;

use super::protocol::WireAlert;
use crate::config::ResponsePolicy;
use crate::state::{Lockout, StateDb};

/// The detectors whose alerts lock the targeted account, and those whose
/// alerts throttle the offending client IP.
const LOCKING_DETECTORS: [&str; 1] = ["brute-force"];
const THROTTLING_DETECTORS: [&str; 1] = ["password-spray"];

pub(crate) struct StoreSink {
    pub writer: AuditWriter,
    pub state: Arc<StateDb>,
    pub policy: ResponsePolicy,
    pub suppressed: Arc<AtomicU64>,
}

/// A plugin lifecycle change, recorded as a `plugin.*` event.
pub(crate) enum Lifecycle<'a> {
    Loaded {
        name: &'a str,
        version: &'a str,
    },
    Failed {
        name: Option<&'a str>,
        reason: &'a str,
        quarantined: bool,
    },
    Unloaded {
        name: &'a str,
        why: &'a str,
    },
    OverBudget {
        name: &'a str,
        call: &'a str,
        ms: u64,
        budget_ms: u64,
    },
}

impl StoreSink {
    fn excepted(&self, plugin: &str, a: &WireAlert) -> bool {
        match self
            .state
            .exception_covering(plugin, a.subject.as_deref(), a.client_ip.as_deref())
        {
            Ok(Some(e)) => {
                tracing::debug!(detector = %plugin, exception = e.id, "alert suppressed by an exception");
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

    fn respond(&self, plugin: &str, a: &WireAlert) {
        let target = if self.policy.lock_accounts && LOCKING_DETECTORS.contains(&plugin) {
            a.subject.as_deref().map(|s| ("user", s))
        } else if self.policy.throttle_ips && THROTTLING_DETECTORS.contains(&plugin) {
            a.client_ip.as_deref().map(|ip| ("ip", ip))
        } else {
            None
        };
        let Some((kind, key)) = target else {
            return;
        };
        let reason = format!("{plugin} alert: {}", a.rule);
        match self
            .state
            .apply_lockout(kind, key, &reason, self.policy.lockout)
        {
            Ok(Some(lock)) => {
                tracing::warn!(%kind, %key, until = lock.until, level = lock.level, "lockout applied");
                let ev = lockout_event(&lock, plugin, &a.group_key);
                if let Err(e) = self.writer.submit(ev) {
                    tracing::error!(error = %e, "the lockout event could not be queued");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, %kind, "lockout could not be applied"),
        }
    }

    /// Stores `plugin`'s alerts and its new cursor together and waits for the
    /// commit: the detection process is told nothing, it simply resumes from
    /// the stored cursor after any crash.
    pub fn commit(
        &self,
        plugin: &str,
        cursor: i64,
        alerts: Vec<WireAlert>,
    ) -> Result<(), StoreError> {
        let mut kept = Vec::with_capacity(alerts.len());
        for a in alerts {
            if self.excepted(plugin, &a) {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.respond(plugin, &a);
            kept.push(NewAlert {
                time_us: a.time_us,
                detector: plugin.to_owned(),
                rule: a.rule,
                severity: a.severity.parse().unwrap_or(audit_store::Severity::Medium),
                subject: a.subject,
                client_ip: a.client_ip,
                summary: a.summary,
                group_key: a.group_key,
                evidence: a.evidence,
            });
        }
        self.writer
            .submit_detection(DetectionCommit {
                detector: plugin.to_owned(),
                last_event_id: cursor,
                alerts: kept,
            })?
            .wait()
    }

    pub fn lifecycle(&self, file: &Path, event: Lifecycle<'_>) {
        let file = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ev = match event {
            Lifecycle::Loaded { name, version } => {
                let mut ev = NewEvent::new(kinds::PLUGIN_LOADED, Outcome::Success);
                ev.detail = json!({ "plugin": name, "version": version, "file": file });
                ev
            }
            Lifecycle::Failed {
                name,
                reason,
                quarantined,
            } => {
                let mut ev = NewEvent::new(kinds::PLUGIN_FAILED, Outcome::Failure);
                ev.reason = Some(
                    if quarantined {
                        "plugin_quarantined"
                    } else {
                        "plugin_refused"
                    }
                    .into(),
                );
                ev.detail = json!({ "plugin": name, "file": file, "error": reason, "quarantined": quarantined });
                ev
            }
            Lifecycle::Unloaded { name, why } => {
                let mut ev = NewEvent::new(kinds::PLUGIN_UNLOADED, Outcome::Success);
                ev.detail = json!({ "plugin": name, "file": file, "why": why });
                ev
            }
            Lifecycle::OverBudget {
                name,
                call,
                ms,
                budget_ms,
            } => {
                let mut ev = NewEvent::new(kinds::PLUGIN_OVER_BUDGET, Outcome::Failure);
                ev.reason = Some("over_budget".into());
                ev.detail = json!({ "plugin": name, "file": file, "call": call, "ms": ms, "budget_ms": budget_ms });
                ev
            }
        };
        // Queued, not awaited: the supervisor keeps serving the detection
        // process, and the writer reports its own failures in /healthz.
        if let Err(e) = self.writer.submit(ev) {
            tracing::error!(error = %e, "a plugin lifecycle event could not be queued");
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
