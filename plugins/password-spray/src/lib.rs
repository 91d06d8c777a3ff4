//! `password-spray`: one client IP failing logins across many usernames
//! (password spraying, credential stuffing).
//!
//! # Rule
//!
//! Per client IP, collects the distinct usernames (ASCII case-folded) of
//! `auth.login.failure` events whose reason is in `reasons`. When
//! `distinct_users` of them fall within `window_secs`, it raises one alert,
//! rule `password-spray`, at `severity`. If the same IP then logs in
//! successfully as anyone while the incident is open, the alert is raised
//! again at `success_severity`: one of the sprayed accounts may be taken.
//!
//! Counting distinct usernames, not failures, is what separates spraying
//! from a user mistyping a password and from an office NAT with many
//! users: a handful of people behind one IP rarely all fail within minutes.
//!
//! The incident ends after `window_secs` without a counted failure from
//! that IP (checked on events and on `tick`).
//!
//! # Alert
//!
//! - rule: `password-spray`
//! - group key: `ip:<client ip>` — match exceptions on it or on the alert's
//!   `client_ip` (CIDR exceptions: the server matches `client_ip`).
//! - subject: the latest username tried (or the one that logged in).
//! - evidence: the newest 64 counted failures, plus the success.
//!
//! # Config (JSON), every key optional
//!
//! ```json
//! { "distinct_users": 10, "window_secs": 600,
//!   "reasons": ["bad_password", "unknown_user"],
//!   "severity": "high", "success_severity": "critical",
//!   "max_tracked_ips": 100000 }
//! ```
//!
//! Only hashes of usernames are kept (never the names), at most
//! `distinct_users` per IP, and at most `max_tracked_ips` IPs (least
//! recently active forgotten first).

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, DistinctSet, EventRing,
    Incident, KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "password-spray";
/// Rule name on every alert of this detector.
pub const RULE: &str = "password-spray";
const MAX_EVIDENCE: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    distinct_users: u32,
    window_secs: u64,
    reasons: Vec<String>,
    severity: String,
    success_severity: String,
    max_tracked_ips: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            distinct_users: 10,
            window_secs: 600,
            reasons: vec!["bad_password".into(), "unknown_user".into()],
            severity: "high".into(),
            success_severity: "critical".into(),
            max_tracked_ips: 100_000,
        }
    }
}

#[derive(Default)]
struct IpState {
    users: DistinctSet,
    failures: EventRing,
    incident: Incident,
}

/// Distinct usernames failing from one client IP within a window.
pub struct PasswordSpray {
    distinct_users: usize,
    window_us: i64,
    reasons: Vec<String>,
    severity: Severity,
    success_severity: Severity,
    hasher: KeyHasher,
    ips: BoundedMap<IpState>,
}

impl PasswordSpray {
    /// Client IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.ips.len()
    }

    fn failure(
        &mut self,
        ev: Event<'_>,
        ip: &str,
        user: &str,
        out: &mut Alerts<'_>,
    ) -> detector_sdk::Result {
        let now = ev.time_us();
        let window_us = self.window_us;
        let user_key = self.hasher.key(&user.to_ascii_lowercase());
        let state = self
            .ips
            .get_or_insert_with(self.hasher.key(ip), IpState::default);
        state.incident.close_if_quiet(now, window_us);
        let since = now.saturating_sub(window_us);
        state.users.prune(since);
        state.failures.prune(since);
        state.users.insert(user_key, now, self.distinct_users);
        state.failures.push(now, ev.id(), MAX_EVIDENCE);
        state.incident.touch(now);
        if state.users.len() >= self.distinct_users && state.incident.escalate(self.severity, now) {
            let summary = format!(
                "{ip} failed logins for {} different usernames within {}s ({} attempts kept as evidence)",
                state.users.len(),
                window_us / 1_000_000,
                state.failures.len(),
            );
            out.emit(&Alert {
                rule: RULE,
                severity: self.severity,
                subject: Some(user),
                client_ip: Some(ip),
                summary: &summary,
                group_key: &format!("ip:{ip}"),
                evidence: &state.failures.ids(),
            })?;
        }
        Ok(())
    }

    fn success(&mut self, ev: Event<'_>, ip: &str, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let Some(state) = self.ips.get_mut(self.hasher.key(ip)) else {
            return Ok(());
        };
        state.incident.close_if_quiet(now, self.window_us);
        if state.incident.is_open() && state.incident.escalate(self.success_severity, now) {
            let user = ev.username().or(ev.subject());
            let summary = format!(
                "{ip}, which sprayed {} usernames, logged in as {:?}: that account may be compromised",
                state.users.len(),
                user.unwrap_or("?"),
            );
            let mut evidence = state.failures.ids();
            evidence.push(ev.id());
            out.emit(&Alert {
                rule: RULE,
                severity: self.success_severity,
                subject: user,
                client_ip: Some(ip),
                summary: &summary,
                group_key: &format!("ip:{ip}"),
                evidence: &evidence,
            })?;
        }
        Ok(())
    }
}

impl Detector for PasswordSpray {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        at_least(NAME, "distinct_users", c.distinct_users.into(), 2)?;
        if c.distinct_users > 1000 {
            return Err(ConfigError::new(
                NAME,
                format!(
                    "distinct_users must be at most 1000 (state per IP grows with it), got {}",
                    c.distinct_users
                ),
            )
            .into());
        }
        at_least(NAME, "max_tracked_ips", c.max_tracked_ips as u64, 1)?;
        if c.reasons.is_empty() {
            return Err(ConfigError::new(
                NAME,
                "reasons is empty, so nothing would be counted; list at least one reason code such as \"bad_password\"",
            )
            .into());
        }
        Ok(PasswordSpray {
            distinct_users: c.distinct_users as usize,
            window_us: secs_to_us(NAME, "window_secs", c.window_secs)?,
            reasons: c.reasons,
            severity: parse_severity(NAME, "severity", &c.severity)?,
            success_severity: parse_severity(NAME, "success_severity", &c.success_severity)?,
            hasher: KeyHasher::new(),
            ips: BoundedMap::new(c.max_tracked_ips),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            match ev.kind() {
                "auth.login.failure" => {
                    let (Some(ip), Some(user), Some(reason)) =
                        (ev.client_ip(), ev.username(), ev.reason())
                    else {
                        continue;
                    };
                    if self.reasons.iter().any(|r| r == reason) {
                        self.failure(ev, ip, user, out)?;
                    }
                }
                "auth.login.success" => {
                    if let Some(ip) = ev.client_ip() {
                        self.success(ev, ip, out)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, _out: &mut Alerts<'_>) -> detector_sdk::Result {
        let window_us = self.window_us;
        let since = now_us.saturating_sub(window_us);
        self.ips.retain(|_, s| {
            s.users.prune(since);
            s.failures.prune(since);
            s.incident.close_if_quiet(now_us, window_us);
            !s.failures.is_empty() || s.incident.is_open()
        });
        Ok(())
    }
}

detector_sdk::export_detector!(
    PasswordSpray,
    "password-spray",
    env!("CARGO_PKG_VERSION"),
    "one client IP failing logins across many usernames (spraying, credential stuffing)"
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
    fn many_users_from_one_ip_alert_once_and_repeats_of_one_user_do_not() {
        let mut d = PasswordSpray::new(r#"{"distinct_users": 3}"#).unwrap();
        let same: Vec<_> = (0..10)
            .map(|i| login(i, i, "bob", "10.0.0.1", false))
            .collect();
        assert!(run_batch(&mut d, &same).unwrap().is_empty());
        let spray: Vec<_> = (0..6)
            .map(|i| login(100 + i, 20 + i, &format!("user{i}"), "10.0.0.9", false))
            .collect();
        let alerts = run_batch(&mut d, &spray).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].group_key, "ip:10.0.0.9");
        assert_eq!(alerts[0].evidence, vec![100, 101, 102]);
        let alerts = run_batch(&mut d, &[login(200, 40, "user4", "10.0.0.9", true)]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::Critical);
        assert_eq!(alerts[0].subject.as_deref(), Some("user4"));
    }

    #[test]
    fn tick_frees_idle_ips() {
        let mut d = PasswordSpray::new("{}").unwrap();
        run_batch(&mut d, &[login(1, 0, "a", "1.1.1.1", false)]).unwrap();
        assert_eq!(d.tracked(), 1);
        run_tick(&mut d, 601 * 1_000_000).unwrap();
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            PasswordSpray::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err(r#"{"distinct_users": 1}"#),
            "password-spray config: distinct_users must be at least 2, got 1"
        );
        assert!(err(r#"{"distinct_users": 5000}"#).contains("at most 1000"));
        assert!(err(r#"{"reasons": []}"#).contains("reasons is empty"));
        assert!(err(r#"{"max_tracked_ips": "many"}"#).contains("invalid type"));
    }
}
