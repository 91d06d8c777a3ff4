//! `brute-force`: many failed logins for one username, from any IPs, within
//! a sliding window.
//!
//! # Rule
//!
//! Counts `auth.login.failure` events whose reason is in `reasons` per
//! username (ASCII case-folded, so `Alice` and `alice` are one account).
//! When `threshold` of them fall within `window_secs`, it raises one alert,
//! rule `brute-force`, at `severity`. If the same username then logs in
//! successfully while the incident is open, the alert is raised again,
//! escalated to `success_severity`: the guessing may have worked.
//!
//! A successful login outside an incident clears that user's count: the
//! user knew the password, so the earlier failures were typos.
//!
//! The incident ends after `window_secs` without a counted failure (on an
//! event or on `tick`); a later burst opens a new one.
//!
//! # Alert
//!
//! - rule: `brute-force`
//! - group key: `user:<username, lowercased>` — match exceptions on it, or
//!   on the alert's `subject` (the username as tried).
//! - client_ip: the IP of the failure (or success) that raised the alert.
//! - evidence: the ids of the counted failures (the newest 64), plus the
//!   success.
//!
//! # Config (JSON), every key optional
//!
//! ```json
//! { "threshold": 10, "window_secs": 300,
//!   "reasons": ["bad_password", "unknown_user", "account_disabled"],
//!   "severity": "high", "success_severity": "critical",
//!   "max_tracked_users": 100000 }
//! ```
//!
//! `max_tracked_users` is a hard cap: beyond it the least recently active
//! usernames are forgotten, so a flood of random usernames costs bounded
//! memory.

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, EventRing, Incident, KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "brute-force";
/// Rule name on every alert of this detector.
pub const RULE: &str = "brute-force";
const MAX_EVIDENCE: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    threshold: u32,
    window_secs: u64,
    reasons: Vec<String>,
    severity: String,
    success_severity: String,
    max_tracked_users: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 10,
            window_secs: 300,
            reasons: vec![
                "bad_password".into(),
                "unknown_user".into(),
                "account_disabled".into(),
            ],
            severity: "high".into(),
            success_severity: "critical".into(),
            max_tracked_users: 100_000,
        }
    }
}

#[derive(Default)]
struct UserState {
    failures: EventRing,
    incident: Incident,
}

/// Failed logins per username within a sliding window.
pub struct BruteForce {
    threshold: usize,
    window_us: i64,
    reasons: Vec<String>,
    severity: Severity,
    success_severity: Severity,
    ring_cap: usize,
    hasher: KeyHasher,
    users: BoundedMap<UserState>,
}

impl BruteForce {
    /// Usernames currently tracked.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }

    fn failure(&mut self, ev: Event<'_>, user: &str, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let folded = user.to_ascii_lowercase();
        let window_us = self.window_us;
        let state = self
            .users
            .get_or_insert_with(self.hasher.key(&folded), UserState::default);
        state.incident.close_if_quiet(now, window_us);
        state.failures.prune(now.saturating_sub(window_us));
        state.failures.push(now, ev.id(), self.ring_cap);
        state.incident.touch(now);
        if state.failures.len() >= self.threshold && state.incident.escalate(self.severity, now) {
            let summary = format!(
                "{} failed logins for user {user:?} within {}s (latest from {})",
                state.failures.len(),
                window_us / 1_000_000,
                ev.client_ip().unwrap_or("an unknown IP"),
            );
            let evidence = state.failures.ids();
            out.emit(&Alert {
                rule: RULE,
                severity: self.severity,
                subject: Some(user),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("user:{folded}"),
                evidence: &evidence,
            })?;
        }
        Ok(())
    }

    fn success(&mut self, ev: Event<'_>, user: &str, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let folded = user.to_ascii_lowercase();
        let Some(state) = self.users.get_mut(self.hasher.key(&folded)) else {
            return Ok(());
        };
        state.incident.close_if_quiet(now, self.window_us);
        if !state.incident.is_open() {
            state.failures = EventRing::new();
            return Ok(());
        }
        if state.incident.escalate(self.success_severity, now) {
            let summary = format!(
                "user {user:?} logged in from {} after {} failed logins: the guessing may have succeeded",
                ev.client_ip().unwrap_or("an unknown IP"),
                state.failures.len(),
            );
            let mut evidence = state.failures.ids();
            evidence.push(ev.id());
            out.emit(&Alert {
                rule: RULE,
                severity: self.success_severity,
                subject: Some(user),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("user:{folded}"),
                evidence: &evidence,
            })?;
        }
        Ok(())
    }
}

impl Detector for BruteForce {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        at_least(NAME, "threshold", c.threshold.into(), 2)?;
        at_least(NAME, "max_tracked_users", c.max_tracked_users as u64, 1)?;
        if c.reasons.is_empty() {
            return Err(ConfigError::new(
                NAME,
                "reasons is empty, so nothing would be counted; list at least one reason code such as \"bad_password\"",
            )
            .into());
        }
        let threshold = c.threshold as usize;
        Ok(BruteForce {
            threshold,
            window_us: secs_to_us(NAME, "window_secs", c.window_secs)?,
            reasons: c.reasons,
            severity: parse_severity(NAME, "severity", &c.severity)?,
            success_severity: parse_severity(NAME, "success_severity", &c.success_severity)?,
            ring_cap: threshold.max(MAX_EVIDENCE),
            hasher: KeyHasher::new(),
            users: BoundedMap::new(c.max_tracked_users),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            match ev.kind() {
                "auth.login.failure" => {
                    let (Some(user), Some(reason)) = (ev.username(), ev.reason()) else {
                        continue;
                    };
                    if self.reasons.iter().any(|r| r == reason) {
                        self.failure(ev, user, out)?;
                    }
                }
                "auth.login.success" => {
                    if let Some(user) = ev.username() {
                        self.success(ev, user, out)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, _out: &mut Alerts<'_>) -> detector_sdk::Result {
        let window_us = self.window_us;
        self.users.retain(|_, s| {
            s.failures.prune(now_us.saturating_sub(window_us));
            s.incident.close_if_quiet(now_us, window_us);
            !s.failures.is_empty() || s.incident.is_open()
        });
        Ok(())
    }
}

detector_sdk::export_detector!(
    BruteForce,
    "brute-force",
    env!("CARGO_PKG_VERSION"),
    "many failed logins for one username (from any IPs) within a window"
);

#[cfg(test)]
mod tests {
    use super::*;
    use detector_sdk::testing::{run_batch, run_tick, EventData};

    fn login(id: i64, secs: i64, user: &str, ip: &str, ok: bool) -> EventData {
        EventData {
            id,
            time_us: secs * 1_000_000,
            kind: if ok {
                "auth.login.success"
            } else {
                "auth.login.failure"
            }
            .into(),
            outcome: if ok { "success" } else { "failure" }.into(),
            reason: (!ok).then(|| "bad_password".into()),
            username: Some(user.into()),
            client_ip: Some(ip.into()),
            source: "test".into(),
            ..EventData::default()
        }
    }

    #[test]
    fn failures_from_many_ips_count_for_one_user_and_alert_once() {
        let mut d = BruteForce::new(r#"{"threshold": 3, "window_secs": 60}"#).unwrap();
        let evs: Vec<_> = (0..6)
            .map(|i| {
                login(
                    i,
                    i,
                    if i % 2 == 0 { "Bob" } else { "bob" },
                    &format!("10.0.0.{i}"),
                    false,
                )
            })
            .collect();
        let alerts = run_batch(&mut d, &evs).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].group_key, "user:bob");
        assert_eq!(alerts[0].evidence, vec![0, 1, 2]);
        assert_eq!(alerts[0].client_ip.as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn a_success_during_the_incident_escalates_and_outside_resets() {
        let mut d = BruteForce::new(r#"{"threshold": 3, "window_secs": 60}"#).unwrap();
        let mut evs: Vec<_> = (0..2)
            .map(|i| login(i, i, "amy", "10.0.0.1", false))
            .collect();
        evs.push(login(2, 3, "amy", "10.0.0.1", true));
        evs.push(login(3, 4, "amy", "10.0.0.1", false));
        assert!(
            run_batch(&mut d, &evs).unwrap().is_empty(),
            "count reset by the success"
        );
        let evs: Vec<_> = (4..6)
            .map(|i| login(i, i, "amy", "10.9.9.9", false))
            .collect();
        let alerts = run_batch(&mut d, &evs).unwrap();
        assert_eq!(alerts.len(), 1);
        let alerts = run_batch(&mut d, &[login(9, 10, "amy", "10.9.9.9", true)]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::Critical);
        assert_eq!(alerts[0].evidence, vec![3, 4, 5, 9]);
    }

    #[test]
    fn tick_ends_the_incident_and_frees_the_state() {
        let mut d = BruteForce::new(r#"{"threshold": 2, "window_secs": 10}"#).unwrap();
        let evs: Vec<_> = (0..2).map(|i| login(i, i, "x", "1.1.1.1", false)).collect();
        assert_eq!(run_batch(&mut d, &evs).unwrap().len(), 1);
        assert_eq!(d.tracked(), 1);
        run_tick(&mut d, 12 * 1_000_000).unwrap();
        assert_eq!(d.tracked(), 0);
        let evs: Vec<_> = (2..4)
            .map(|i| login(i, 20 + i, "x", "1.1.1.1", false))
            .collect();
        assert_eq!(
            run_batch(&mut d, &evs).unwrap().len(),
            1,
            "a new incident alerts again"
        );
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            BruteForce::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err(r#"{"threshold": 1}"#),
            "brute-force config: threshold must be at least 2, got 1"
        );
        assert!(err(r#"{"reasons": []}"#).contains("reasons is empty"));
        assert!(err(r#"{"severity": "loud"}"#).contains("severity \"loud\" is not one of"));
        assert!(err(r#"{"treshold": 3}"#).contains("unknown field `treshold`"));
        assert!(err(r#"{"window_secs": 0}"#).contains("window_secs must be between"));
        assert!(BruteForce::new("{}").is_ok());
    }

    #[test]
    fn memory_is_capped_under_a_flood_of_usernames() {
        let mut d = BruteForce::new(r#"{"max_tracked_users": 100}"#).unwrap();
        let evs: Vec<_> = (0..5000)
            .map(|i| login(i, i, &format!("u{i}"), "1.2.3.4", false))
            .collect();
        run_batch(&mut d, &evs).unwrap();
        // Eviction frees a sixteenth at a time, so the map sits just under the cap.
        assert!((90..=100).contains(&d.tracked()), "{}", d.tracked());
    }
}
