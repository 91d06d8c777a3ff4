//! Prometheus text-format metrics: what the server decided, how long requests
//! and audit commits take, and the build. The names are a contract: the
//! dashboard and alert rules in `deploy/` use them (checked by a test).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prom_text::{escape_label, header, Histogram, LATENCY_BOUNDS};

/// Counts by kind, then reason ("" for none), then outcome (failure, success).
type DecisionCounts = BTreeMap<String, BTreeMap<String, [u64; 2]>>;

#[derive(Default)]
pub struct Metrics {
    events: Mutex<DecisionCounts>,
    http: HttpMetrics,
}

/// Which part of the HTTP surface a request was for: the label of the
/// latency histograms, few and fixed so a scanner's random paths cannot add
/// series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteFamily {
    /// `/oauth/*`: token, introspect, revoke (and authorize).
    OAuth,
    /// `/api/*` behind the bearer middleware: verification of access tokens.
    Api,
    /// `POST /api/v1/events`.
    Ingest,
    /// `/admin/*`: the console.
    Console,
    /// `/.well-known/*` (JWKS, discovery), `/healthz`, `/metrics`.
    Meta,
    /// Anything else (unknown paths).
    Other,
}

impl RouteFamily {
    const ALL: [RouteFamily; 6] = [
        RouteFamily::OAuth,
        RouteFamily::Api,
        RouteFamily::Ingest,
        RouteFamily::Console,
        RouteFamily::Meta,
        RouteFamily::Other,
    ];

    pub fn of(path: &str) -> RouteFamily {
        if path.starts_with("/oauth/") {
            RouteFamily::OAuth
        } else if path == "/api/v1/events" {
            RouteFamily::Ingest
        } else if path.starts_with("/api/") {
            RouteFamily::Api
        } else if path == "/admin" || path.starts_with("/admin/") {
            RouteFamily::Console
        } else if path.starts_with("/.well-known/") || path == "/healthz" || path == "/metrics" {
            RouteFamily::Meta
        } else {
            RouteFamily::Other
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            RouteFamily::OAuth => "oauth",
            RouteFamily::Api => "api",
            RouteFamily::Ingest => "ingest",
            RouteFamily::Console => "console",
            RouteFamily::Meta => "meta",
            RouteFamily::Other => "other",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request latencies and answers by family: fixed arrays of atomics, so timing
/// a request costs two clock reads and three relaxed adds.
struct HttpMetrics {
    latency: [Histogram; 6],
    responses: [[AtomicU64; 5]; 6],
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            latency: std::array::from_fn(|_| Histogram::new(LATENCY_BOUNDS)),
            responses: Default::default(),
        }
    }
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

    /// One answered request: how long it took and its status code.
    pub fn observe_request(&self, family: RouteFamily, took: Duration, status: u16) {
        let f = family as usize;
        self.http.latency[f].observe(took);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.http.responses[f][class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, health: &audit_store::Health, extra: &str) -> String {
        let mut out = String::new();
        build_info(&mut out);
        self.render_http(&mut out);
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
                            escape_label(kind),
                            escape_label(reason)
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

    fn render_http(&self, out: &mut String) {
        let name = "tokenwatch_http_request_duration_seconds";
        header(out, name, "histogram", "Time from a request's arrival to its answer, by route family (oauth, api, ingest, console, meta, other).");
        for f in RouteFamily::ALL {
            let labels = format!("family=\"{}\"", f.label());
            self.http.latency[f as usize].render(out, name, &labels);
        }
        let name = "tokenwatch_http_responses_total";
        header(
            out,
            name,
            "counter",
            "Answered requests by route family and status class.",
        );
        for f in RouteFamily::ALL {
            for (i, class) in STATUS_CLASSES.iter().enumerate() {
                let n = self.http.responses[f as usize][i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{family=\"{}\",code=\"{class}\"}} {n}",
                    f.label()
                );
            }
        }
    }
}

/// `tokenwatch_build_info`: always 1; the labels say what is running. The
/// commit and compiler come from the build script, when it could learn them.
fn build_info(out: &mut String) {
    let name = "tokenwatch_build_info";
    header(out, name, "gauge", "Always 1; labels name the running build (version, and when known the git commit and rustc version).");
    let mut labels = format!("version=\"{}\"", escape_label(env!("CARGO_PKG_VERSION")));
    if let Some(c) = option_env!("TOKENWATCH_BUILD_COMMIT").filter(|c| !c.is_empty()) {
        let _ = write!(labels, ",commit=\"{}\"", escape_label(c));
    }
    if let Some(r) = option_env!("TOKENWATCH_BUILD_RUSTC").filter(|r| !r.is_empty()) {
        let _ = write!(labels, ",rustc=\"{}\"", escape_label(r));
    }
    let _ = writeln!(out, "{name}{{{labels}}} 1");
}

/// The audit writer's commit-latency histogram, for `/metrics`.
pub fn commit_latency_text(h: &Histogram) -> String {
    let mut out = String::new();
    let name = "tokenwatch_audit_commit_duration_seconds";
    header(&mut out, name, "histogram", "Time of each group commit by the audit writer (transaction, fsync, file check); requests wait for it.");
    h.render(&mut out, name, "");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_store::{NewEvent, Outcome};

    #[test]
    fn paths_fall_into_a_fixed_set_of_route_families() {
        for (path, family) in [
            ("/oauth/token", RouteFamily::OAuth),
            ("/oauth/authorize", RouteFamily::OAuth),
            ("/api/v1/me", RouteFamily::Api),
            ("/api/v1/events", RouteFamily::Ingest),
            ("/api/v1/events/x", RouteFamily::Api),
            ("/admin", RouteFamily::Console),
            ("/admin/events", RouteFamily::Console),
            ("/administrator", RouteFamily::Other),
            ("/.well-known/jwks.json", RouteFamily::Meta),
            ("/healthz", RouteFamily::Meta),
            ("/metrics", RouteFamily::Meta),
            ("/wp-login.php", RouteFamily::Other),
            ("/", RouteFamily::Other),
        ] {
            assert_eq!(RouteFamily::of(path), family, "{path}");
        }
    }

    #[test]
    fn requests_are_timed_and_counted_by_family_and_status_class() {
        let m = Metrics::default();
        m.observe_request(RouteFamily::Api, Duration::from_micros(300), 200);
        m.observe_request(RouteFamily::Api, Duration::from_millis(30), 401);
        m.observe_request(RouteFamily::Other, Duration::from_millis(1), 404);
        let text = m.render(&Default::default(), "");
        let api = "tokenwatch_http_request_duration_seconds_bucket{family=\"api\",le=";
        assert!(text.contains(&format!("{api}\"0.0005\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{api}\"0.05\"}} 2\n")), "{text}");
        assert!(text.contains("tokenwatch_http_request_duration_seconds_count{family=\"api\"} 2\n"));
        assert!(text.contains("tokenwatch_http_responses_total{family=\"api\",code=\"2xx\"} 1\n"));
        assert!(text.contains("tokenwatch_http_responses_total{family=\"api\",code=\"4xx\"} 1\n"));
        assert!(text.contains("tokenwatch_http_responses_total{family=\"other\",code=\"4xx\"} 1\n"));
        assert!(
            text.contains("tokenwatch_http_request_duration_seconds_count{family=\"console\"} 0\n")
        );
        assert!(text.contains("tokenwatch_build_info{version=\""));
    }

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
