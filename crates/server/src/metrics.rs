//! Prometheus text-format counters for what the server decided.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    events: Mutex<BTreeMap<(String, &'static str, String), u64>>,
}

impl Metrics {
    pub fn count_event(&self, ev: &audit_store::NewEvent) {
        let outcome = match ev.outcome {
            audit_store::Outcome::Success => "success",
            audit_store::Outcome::Failure => "failure",
        };
        let key = (
            ev.kind.clone(),
            outcome,
            ev.reason.clone().unwrap_or_default(),
        );
        *self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    pub fn render(&self, health: &audit_store::Health, extra: &str) -> String {
        let mut out = String::new();
        out.push_str("# HELP tokenwatch_decisions_total Audit events recorded by this server process, by kind, outcome and reason.\n");
        out.push_str("# TYPE tokenwatch_decisions_total counter\n");
        for ((kind, outcome, reason), n) in
            self.events.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            let _ = writeln!(
                out,
                "tokenwatch_decisions_total{{kind=\"{}\",outcome=\"{}\",reason=\"{}\"}} {n}",
                escape(kind),
                outcome,
                escape(reason)
            );
        }
        let _ = writeln!(out, "# HELP tokenwatch_audit_store_writable 1 when the audit store accepts writes.\n# TYPE tokenwatch_audit_store_writable gauge\ntokenwatch_audit_store_writable {}", u8::from(health.writable));
        let _ = writeln!(out, "# HELP tokenwatch_audit_queue_depth Events waiting for the audit writer.\n# TYPE tokenwatch_audit_queue_depth gauge\ntokenwatch_audit_queue_depth {}", health.queue_depth);
        let _ = writeln!(out, "# HELP tokenwatch_audit_events_committed_total Events committed by the audit writer since start.\n# TYPE tokenwatch_audit_events_committed_total counter\ntokenwatch_audit_events_committed_total {}", health.events_committed);
        let _ = writeln!(out, "# HELP tokenwatch_audit_index_lag_events Committed events not yet in the query index (queries stay exact; filtered ones get slower as this grows).\n# TYPE tokenwatch_audit_index_lag_events gauge\ntokenwatch_audit_index_lag_events {}", health.index_lag);
        let _ = writeln!(out, "# HELP tokenwatch_audit_index_healthy 0 while the last update of the query index failed.\n# TYPE tokenwatch_audit_index_healthy gauge\ntokenwatch_audit_index_healthy {}", u8::from(health.index_error.is_none()));
        out.push_str(extra);
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
