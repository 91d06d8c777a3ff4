//! Prometheus text-format counters for what the server decided.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Counts by kind, then reason ("" for none), then outcome (failure, success).
type DecisionCounts = BTreeMap<String, BTreeMap<String, [u64; 2]>>;

#[derive(Default)]
pub struct Metrics {
    events: Mutex<DecisionCounts>,
}

/// The outcome slots of [`DecisionCounts`], in the order they are listed.
const OUTCOMES: [&str; 2] = ["failure", "success"];

/// Distinct reasons counted per kind. Ingest sources choose their events' reasons,
/// so without a bound every new reason would be a new map entry and a new line of
/// `/metrics`, for the life of the process; further ones are counted as `other`.
const MAX_REASONS_PER_KIND: usize = 64;
const OTHER_REASON: &str = "other";

impl Metrics {
    /// Called for every protected request: a kind and reason already counted cost a
    /// lookup, no allocation.
    pub fn count_event(&self, ev: &audit_store::NewEvent) {
        let slot = usize::from(ev.outcome == audit_store::Outcome::Success);
        let reason = ev.reason.as_deref().unwrap_or_default();
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let by_reason = match events.get_mut(ev.kind.as_str()) {
            Some(m) => m,
            None => events.entry(ev.kind.clone()).or_default(),
        };
        let reason = if by_reason.len() >= MAX_REASONS_PER_KIND && !by_reason.contains_key(reason) {
            OTHER_REASON
        } else {
            reason
        };
        let counts = match by_reason.get_mut(reason) {
            Some(c) => c,
            None => by_reason.entry(reason.to_owned()).or_default(),
        };
        counts[slot] += 1;
    }

    pub fn render(&self, health: &audit_store::Health, extra: &str) -> String {
        let mut out = String::new();
        out.push_str("# HELP tokenwatch_decisions_total Audit events recorded by this server process, by kind, outcome and reason.\n");
        out.push_str("# TYPE tokenwatch_decisions_total counter\n");
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, by_reason) in events.iter() {
            for (slot, outcome) in OUTCOMES.iter().enumerate() {
                for (reason, counts) in by_reason {
                    let n = counts[slot];
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "tokenwatch_decisions_total{{kind=\"{}\",outcome=\"{outcome}\",reason=\"{}\"}} {n}",
                            escape(kind),
                            escape(reason)
                        );
                    }
                }
            }
        }
        drop(events);
        let _ = writeln!(out, "# HELP tokenwatch_audit_store_writable 1 when the audit store accepts writes.\n# TYPE tokenwatch_audit_store_writable gauge\ntokenwatch_audit_store_writable {}", u8::from(health.writable));
        let _ = writeln!(out, "# HELP tokenwatch_audit_queue_depth Events waiting for the audit writer.\n# TYPE tokenwatch_audit_queue_depth gauge\ntokenwatch_audit_queue_depth {}", health.queue_depth);
        let _ = writeln!(out, "# HELP tokenwatch_audit_events_committed_total Events committed by the audit writer since start.\n# TYPE tokenwatch_audit_events_committed_total counter\ntokenwatch_audit_events_committed_total {}", health.events_committed);
        let _ = writeln!(out, "# HELP tokenwatch_audit_commits_total Transactions (group commits) by the audit writer since start.\n# TYPE tokenwatch_audit_commits_total counter\ntokenwatch_audit_commits_total {}", health.commits);
        let _ = writeln!(out, "# HELP tokenwatch_audit_index_lag_events Committed events not yet in the query index (queries stay exact; filtered ones get slower as this grows).\n# TYPE tokenwatch_audit_index_lag_events gauge\ntokenwatch_audit_index_lag_events {}", health.index_lag);
        let _ = writeln!(out, "# HELP tokenwatch_audit_index_healthy 0 while the last update of the query index failed.\n# TYPE tokenwatch_audit_index_healthy gauge\ntokenwatch_audit_index_healthy {}", u8::from(health.index_error.is_none()));
        let i = &health.integrity;
        let _ = writeln!(out, "# HELP tokenwatch_audit_integrity_failures_total Integrity problems (chain or page check) found by the running audit store since start.\n# TYPE tokenwatch_audit_integrity_failures_total counter\ntokenwatch_audit_integrity_failures_total {}", i.failures);
        let _ = writeln!(out, "# HELP tokenwatch_audit_integrity_ok 0 once an integrity check of the audit record has failed (until restart).\n# TYPE tokenwatch_audit_integrity_ok gauge\ntokenwatch_audit_integrity_ok {}", u8::from(i.status != "failing"));
        let _ = writeln!(out, "# HELP tokenwatch_audit_integrity_verified_id Audit rows up to this id verified against the chain by the running store.\n# TYPE tokenwatch_audit_integrity_verified_id gauge\ntokenwatch_audit_integrity_verified_id {}", i.verified_id);
        out.push_str(extra);
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_store::{NewEvent, Outcome};

    #[test]
    fn reasons_chosen_by_ingest_sources_cannot_grow_the_counters_without_bound() {
        let m = Metrics::default();
        for i in 0..10_000 {
            m.count_event(
                &NewEvent::new("token.rejected", Outcome::Failure).with_reason(format!("r{i}")),
            );
        }
        let text = m.render(&Default::default(), "");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tokenwatch_decisions_total{"))
            .collect();
        // Kinds are a closed list (ingest accepts only documented kinds); kind keys
        // cannot grow. Kind keys are not counted here.
        assert_eq!(lines.len(), MAX_REASONS_PER_KIND + 1);
        let other = lines
            .iter()
            .find(|l| l.contains("reason=\"other\""))
            .unwrap();
        assert!(
            other.ends_with(&format!(" {}", 10_000 - MAX_REASONS_PER_KIND)),
            "{other}"
        );
    }
}
