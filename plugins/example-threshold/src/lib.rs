//! `example-threshold`: the template tokenwatch detector. Copy this crate to
//! start your own.
//!
//! It raises one alert when a single client IP produces `threshold` failure
//! events within `window_secs` (password guessing, token probing). Windows
//! are fixed: they start at an IP's first failure and close `window_secs`
//! later; `tick` drops closed windows so memory stays bounded even when an
//! IP goes quiet.
//!
//! Config (JSON from the host; `example-threshold.toml` beside the `.so` or
//! `[plugins.example-threshold]` in tokenwatch.toml), every key optional:
//!
//! ```toml
//! threshold = 5            # failures that trigger the alert
//! window_secs = 60         # window length
//! kinds = ["auth.login.failure", "token.rejected"]  # empty: any failure
//! severity = "high"        # low | medium | high | critical
//! max_tracked_ips = 100000 # memory bound; new IPs beyond it are not tracked
//! ```
//!
//! Everything plugin-specific is in this file; the only dependency that
//! matters is `detector-sdk`. Build: `cargo build --release -p example-threshold`.

use std::collections::HashMap;

use detector_sdk::{Alert, Alerts, Batch, Detector, Severity};
use serde::Deserialize;

/// At most this many event ids are kept as evidence per alert.
const MAX_EVIDENCE: usize = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    threshold: u32,
    window_secs: u64,
    kinds: Vec<String>,
    severity: String,
    max_tracked_ips: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 5,
            window_secs: 60,
            kinds: Vec::new(),
            severity: "high".into(),
            max_tracked_ips: 100_000,
        }
    }
}

struct Window {
    start_us: i64,
    count: u32,
    evidence: Vec<i64>,
    alerted: bool,
}

/// Failures per client IP within a fixed window.
pub struct Threshold {
    threshold: u32,
    window_us: i64,
    kinds: Vec<String>,
    severity: Severity,
    max_tracked_ips: usize,
    windows: HashMap<String, Window>,
}

impl Threshold {
    /// Number of client IPs with an open window.
    pub fn tracked_ips(&self) -> usize {
        self.windows.len()
    }

    fn counts(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }
}

impl Detector for Threshold {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config = serde_json::from_str(config_json)
            .map_err(|e| format!("example-threshold config: {e}"))?;
        if c.threshold == 0 {
            return Err("example-threshold config: threshold must be at least 1".into());
        }
        let window_us = i64::try_from(c.window_secs)
            .ok()
            .and_then(|s| s.checked_mul(1_000_000))
            .filter(|w| *w > 0)
            .ok_or("example-threshold config: window_secs must be between 1 and 9e12")?;
        let severity = match c.severity.as_str() {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            other => {
                return Err(format!(
                    "example-threshold config: severity {other:?} is not one of low, medium, high, critical"
                )
                .into())
            }
        };
        Ok(Threshold {
            threshold: c.threshold,
            window_us,
            kinds: c.kinds,
            severity,
            max_tracked_ips: c.max_tracked_ips,
            windows: HashMap::new(),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            if !ev.is_failure() || !self.counts(ev.kind()) {
                continue;
            }
            let Some(ip) = ev.client_ip() else { continue };
            let now = ev.time_us();
            if !self.windows.contains_key(ip) {
                if self.windows.len() >= self.max_tracked_ips {
                    continue;
                }
                self.windows.insert(
                    ip.to_owned(),
                    Window {
                        start_us: now,
                        count: 0,
                        evidence: Vec::new(),
                        alerted: false,
                    },
                );
            }
            let Some(window) = self.windows.get_mut(ip) else {
                continue;
            };
            if now.saturating_sub(window.start_us) >= self.window_us {
                *window = Window {
                    start_us: now,
                    count: 0,
                    evidence: Vec::new(),
                    alerted: false,
                };
            }
            window.count += 1;
            if window.evidence.len() < MAX_EVIDENCE {
                window.evidence.push(ev.id());
            }
            // One alert per window: repeated alerts for the same burst would
            // only bury the analyst.
            if window.count >= self.threshold && !window.alerted {
                window.alerted = true;
                let summary = format!(
                    "{} failures from {ip} within {}s",
                    window.count,
                    self.window_us / 1_000_000
                );
                out.emit(&Alert {
                    rule: "failures-per-ip",
                    severity: self.severity,
                    subject: ev.subject(),
                    client_ip: Some(ip),
                    summary: &summary,
                    group_key: ip,
                    evidence: &window.evidence,
                })?;
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, _out: &mut Alerts<'_>) -> detector_sdk::Result {
        let window_us = self.window_us;
        self.windows
            .retain(|_, w| now_us.saturating_sub(w.start_us) < window_us);
        Ok(())
    }
}

detector_sdk::export_detector!(
    Threshold,
    "example-threshold",
    env!("CARGO_PKG_VERSION"),
    "too many failures from one client IP within a time window"
);

#[cfg(test)]
mod tests {
    use super::*;
    use detector_sdk::testing::{run_batch, run_tick, EventData};

    fn failure(id: i64, secs: i64, ip: &str) -> EventData {
        EventData {
            id,
            time_us: secs * 1_000_000,
            kind: "auth.login.failure".into(),
            outcome: "failure".into(),
            client_ip: Some(ip.into()),
            source: "test".into(),
            ..EventData::default()
        }
    }

    #[test]
    fn alerts_once_when_the_threshold_is_reached_within_the_window() {
        let mut d = Threshold::new(r#"{"threshold": 3, "window_secs": 10}"#).unwrap();
        let alerts = run_batch(
            &mut d,
            &[failure(1, 0, "a"), failure(2, 1, "b"), failure(3, 2, "a")],
        )
        .unwrap();
        assert!(alerts.is_empty());
        let alerts = run_batch(&mut d, &[failure(4, 3, "a"), failure(5, 4, "a")]).unwrap();
        assert_eq!(alerts.len(), 1, "one alert per window, not one per failure");
        assert_eq!(alerts[0].client_ip.as_deref(), Some("a"));
        assert_eq!(alerts[0].evidence, vec![1, 3, 4]);
        assert_eq!(alerts[0].severity, Severity::High);
        assert_eq!(alerts[0].summary, "3 failures from a within 10s");
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_alert() {
        let mut d = Threshold::new(r#"{"threshold": 2, "window_secs": 10}"#).unwrap();
        let alerts = run_batch(&mut d, &[failure(1, 0, "a"), failure(2, 11, "a")]).unwrap();
        assert!(alerts.is_empty());
        let alerts = run_batch(&mut d, &[failure(3, 12, "a")]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].evidence, vec![2, 3]);
    }

    #[test]
    fn tick_closes_expired_windows() {
        let mut d = Threshold::new(r#"{"threshold": 5, "window_secs": 10}"#).unwrap();
        run_batch(&mut d, &[failure(1, 0, "a"), failure(2, 8, "b")]).unwrap();
        assert_eq!(d.tracked_ips(), 2);
        run_tick(&mut d, 10 * 1_000_000).unwrap();
        assert_eq!(d.tracked_ips(), 1);
        run_tick(&mut d, 18 * 1_000_000).unwrap();
        assert_eq!(d.tracked_ips(), 0);
    }

    #[test]
    fn kinds_and_successes_filter_what_counts() {
        let mut d = Threshold::new(r#"{"threshold": 1, "kinds": ["token.rejected"]}"#).unwrap();
        let mut ok = failure(1, 0, "a");
        ok.outcome = "success".into();
        let mut rejected = failure(2, 0, "a");
        rejected.kind = "token.rejected".into();
        let alerts = run_batch(&mut d, &[failure(0, 0, "a"), ok, rejected]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].evidence, vec![2]);
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            Threshold::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(r#"{"threshold": 0}"#).contains("threshold must be at least 1"));
        assert!(err(r#"{"severity": "urgent"}"#).contains("\"urgent\" is not one of"));
        assert!(err(r#"{"treshold": 3}"#).contains("unknown field `treshold`"));
        assert!(err(r#"{"window_secs": 0}"#).contains("window_secs"));
        assert!(Threshold::new("{}").is_ok());
    }

    #[test]
    fn memory_is_bounded_by_max_tracked_ips() {
        let mut d = Threshold::new(r#"{"threshold": 1, "max_tracked_ips": 2}"#).unwrap();
        let alerts = run_batch(
            &mut d,
            &[failure(1, 0, "a"), failure(2, 0, "b"), failure(3, 0, "c")],
        )
        .unwrap();
        assert_eq!(d.tracked_ips(), 2);
        assert_eq!(alerts.len(), 2);
    }
}
