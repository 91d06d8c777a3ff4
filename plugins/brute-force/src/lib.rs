//! `brute-force`: many failed logins for one username, from any IPs, within
//! a sliding window.
//!
//! # Rule
//!
//! Counts `auth.login.failure` events whose reason is in `reasons` per
//! username (ASCII case-folded, so `Alice` and `alice` are one account).
//! When `threshold` of them fall within `window_secs`, it raises one alert,
//! rule `brute-force`, at `severity`. If the same username then logs in
//! successfully while the incident is open, the alert is escalated to
//! `success_severity`: the guessing may have worked.
//!
//! A successful login outside an incident forgets that user's failures
//! *from the same IP*: the user knew the password, so those were typos.
//! Failures from other IPs still count (a login by the real user must not
//! reset an attacker's count).
//!
//! # One alert per incident
//!
//! While the incident goes on, each further failure is attached to the
//! same alert (same group key) as evidence, in an update sent at most every
//! `update_secs` (and with the escalation, if any). The incident ends after
//! `window_secs` without a counted failure, checked on events and on `tick`
//! (so it ends even when traffic stops); a last update carries what was
//! still queued. A later burst opens a new incident.
//!
//! # Alert
//!
//! - rule: `brute-force`
//! - severity: `high` (`severity`); `critical` (`success_severity`) after a
//!   successful login during the incident.
//! - group key: `user:<username, lowercased>` — match exceptions on it, or
//!   on the alert's `subject` (the username as tried).
//! - client_ip: the IP of the failure (or success) that raised the alert.
//! - evidence: the `threshold` failures that crossed it, then every later
//!   failure of the incident (at most 64 ids per update), plus the success.
//!
//! # Config (JSON), every key optional
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `threshold` | `10` | failures within the window that raise the alert (≥ 2) |
//! | `window_secs` | `300` | sliding window; also the quiet time that ends an incident |
//! | `reasons` | `["bad_password", "unknown_user", "account_disabled"]` | failure reasons counted |
//! | `severity` | `"high"` | severity of the alert |
//! | `success_severity` | `"critical"` | severity after a success during the incident |
//! | `update_secs` | `60` | at most one evidence update per incident this often |
//! | `max_tracked_users` | `100000` | hard cap on usernames tracked |
//!
//! `max_tracked_users` is a hard cap: beyond it the least recently active
//! usernames are forgotten, so a flood of random usernames costs bounded
//! memory (about 150 bytes per tracked username, plus up to `threshold`
//! failures of 24 bytes each).

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, EventRing, IncidentAlert,
    KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "brute-force";
/// Rule name on every alert of this detector.
pub const RULE: &str = "brute-force";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    threshold: u32,
    window_secs: u64,
    reasons: Vec<String>,
    severity: String,
    success_severity: String,
    update_secs: u64,
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
            update_secs: 60,
            max_tracked_users: 100_000,
        }
    }
}

#[derive(Default)]
struct UserState {
    /// Failures within the window, tagged with the key of their client IP.
    failures: EventRing,
    alert: IncidentAlert,
}

/// Failed logins per username within a sliding window.
pub struct BruteForce {
    threshold: usize,
    window_us: i64,
    update_us: i64,
    reasons: Vec<String>,
    severity: Severity,
    success_severity: Severity,
    hasher: KeyHasher,
    users: BoundedMap<UserState>,
}

impl BruteForce {
    /// Usernames currently tracked.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }

    /// The hard cap on usernames tracked.
    pub fn cap(&self) -> usize {
        self.users.cap()
    }

    fn failure(&mut self, ev: Event<'_>, user: &str, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let folded = user.to_ascii_lowercase();
        let (window_us, update_us) = (self.window_us, self.update_us);
        let ip_key = self.hasher.key(ev.client_ip().unwrap_or(""));
        let state = self
            .users
            .get_or_insert_with(self.hasher.key(&folded), UserState::default);
        state.alert.close_if_quiet(now, window_us, out)?;
        state.failures.prune(now.saturating_sub(window_us));
        state
            .failures
            .push_tagged(now, ev.id(), ip_key, self.threshold);
        if state.alert.add_evidence(ev.id(), now) {
            state.alert.flush_due(now, update_us, out)?;
        } else if state.failures.len() >= self.threshold {
            let summary = format!(
                "{} failed logins for user {user:?} within {}s (latest from {})",
                state.failures.len(),
                window_us / 1_000_000,
                ev.client_ip().unwrap_or("an unknown IP"),
            );
            state.alert.raise(
                &Alert {
                    rule: RULE,
                    severity: self.severity,
                    subject: Some(user),
                    client_ip: ev.client_ip(),
                    summary: &summary,
                    group_key: &format!("user:{folded}"),
                    evidence: &state.failures.ids(),
                },
                now,
                out,
            )?;
        }
        Ok(())
    }

    fn success(&mut self, ev: Event<'_>, user: &str, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let folded = user.to_ascii_lowercase();
        let ip_key = self.hasher.key(ev.client_ip().unwrap_or(""));
        let Some(state) = self.users.get_mut(self.hasher.key(&folded)) else {
            return Ok(());
        };
        state.alert.close_if_quiet(now, self.window_us, out)?;
        if !state.alert.is_open() {
            state.failures.remove_tag(ip_key);
            return Ok(());
        }
        let summary = format!(
            "user {user:?} logged in from {} during a burst of failed logins: the guessing may have succeeded",
            ev.client_ip().unwrap_or("an unknown IP"),
        );
        let mut evidence = state.failures.ids();
        evidence.push(ev.id());
        let raised = state.alert.raise(
            &Alert {
                rule: RULE,
                severity: self.success_severity,
                subject: Some(user),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("user:{folded}"),
                evidence: &evidence,
            },
            now,
            out,
        )?;
        if !raised {
            state.alert.add_evidence(ev.id(), now);
        }
        Ok(())
    }
}

impl Detector for BruteForce {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        at_least(NAME, "threshold", c.threshold.into(), 2)?;
        if c.threshold > 10_000 {
            return Err(ConfigError::new(
                NAME,
                format!("threshold must be at most 10000, got {}", c.threshold),
            )
            .into());
        }
        at_least(NAME, "max_tracked_users", c.max_tracked_users as u64, 1)?;
        if c.reasons.is_empty() {
            return Err(ConfigError::new(
                NAME,
                "reasons is empty, so nothing would be counted; list at least one reason code such as \"bad_password\"",
            )
            .into());
        }
        Ok(BruteForce {
            threshold: c.threshold as usize,
            window_us: secs_to_us(NAME, "window_secs", c.window_secs)?,
            update_us: secs_to_us(NAME, "update_secs", c.update_secs)?,
            reasons: c.reasons,
            severity: parse_severity(NAME, "severity", &c.severity)?,
            success_severity: parse_severity(NAME, "success_severity", &c.success_severity)?,
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

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let (window_us, update_us) = (self.window_us, self.update_us);
        self.users.try_retain(|_, s| {
            s.failures.prune(now_us.saturating_sub(window_us));
            s.alert.close_if_quiet(now_us, window_us, out)?;
            s.alert.flush_due(now_us, update_us, out)?;
            Ok::<_, detector_sdk::EmitError>(!s.failures.is_empty() || s.alert.is_open())
        })?;
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
    use detector_sdk::testing::traffic::{
        self, as_stored, describe, replay, ATTACK_ID_BASE, HOUR, SEC,
    };
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
        assert_eq!(alerts[0].group_key, "user:amy");
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
    fn failures_during_the_incident_update_the_alert_and_tick_ends_it() {
        let mut d = BruteForce::new(r#"{"threshold": 3, "update_secs": 30}"#).unwrap();
        let evs: Vec<_> = (0..20)
            .map(|i| login(i, i * 5, "eve", "10.0.0.7", false))
            .collect();
        let alerts = replay(&mut d, &evs, 4, 1_000_000, 3600 * 1_000_000).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 1, "{}", describe(&alerts));
        assert_eq!(stored[0].0.evidence, (0..20).collect::<Vec<_>>());
        assert!(alerts.len() > 2, "updates were sent: {}", describe(&alerts));
        assert!(
            alerts.len() < 10,
            "but not one per event: {}",
            describe(&alerts)
        );
        assert!(alerts.last().unwrap().summary.contains("ended"));
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn a_day_of_benign_traffic_raises_nothing() {
        for seed in [1, 2, 3] {
            let mut d = BruteForce::new("{}").unwrap();
            let alerts = replay(&mut d, &traffic::day(seed), 512, SEC, HOUR).unwrap();
            assert!(alerts.is_empty(), "seed {seed}:\n{}", describe(&alerts));
        }
    }

    #[test]
    fn a_password_guessing_attack_mixed_into_a_day_is_exactly_one_alert() {
        let day = traffic::day(4);
        let (victim, _, first_seen, _, _) = traffic::first_login(&day);
        let start = first_seen - 2 * HOUR;
        let ips = ["45.155.205.17", "45.155.205.18", "45.155.205.19"];
        let mut attack: Vec<EventData> = (0..40)
            .map(|i| {
                let mut e = traffic::event(
                    ATTACK_ID_BASE + i,
                    start + i * 3 * SEC,
                    "auth.login.failure",
                    ips[i as usize % 3],
                    "python-requests/2.28.1",
                );
                e.reason = Some("bad_password".into());
                e.username = Some(victim.clone());
                e
            })
            .collect();
        let mut success = traffic::event(
            ATTACK_ID_BASE + 40,
            start + 121 * SEC,
            "auth.login.success",
            ips[0],
            "python-requests/2.28.1",
        );
        success.username = Some(victim.clone());
        success.subject = Some("usr_x".into());
        attack.push(success);
        let mut d = BruteForce::new("{}").unwrap();
        let alerts = replay(&mut d, &traffic::mix(&day, &attack), 512, SEC, HOUR).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 1, "{}", describe(&alerts));
        let (a, emits) = &stored[0];
        assert_eq!(a.rule, RULE);
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.group_key, format!("user:{}", victim.to_ascii_lowercase()));
        assert_eq!(a.subject.as_deref(), Some(victim.as_str()));
        let mut ids = a.evidence.clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..41).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>());
        // Raised at the 10th failure (high), escalated by the success, and a
        // handful of evidence updates: not one emit per event.
        assert_eq!(alerts[0].severity, Severity::High);
        assert_eq!(alerts[0].evidence.len(), 10);
        assert!((2..=6).contains(emits), "{}", describe(&alerts));
    }

    #[test]
    fn a_flood_of_a_million_random_usernames_stays_at_the_cap() {
        let mut d = BruteForce::new("{}").unwrap();
        let cap = d.cap();
        assert_eq!(cap, 100_000);
        let mut max = 0;
        traffic::flood(
            &mut d,
            1_000_000,
            10_000,
            |i, rng| {
                let mut e = login(
                    i as i64,
                    i as i64 / 1000,
                    "",
                    &traffic::random_ip(rng),
                    false,
                );
                e.username = Some(format!("u{}", rng.hex(12)));
                e
            },
            |d| {
                assert!(d.tracked() <= cap);
                max = max.max(d.tracked());
            },
        )
        .unwrap();
        assert!(max > cap - cap / 16 - 1, "{max}");
        assert!(d.tracked() > cap - cap / 16 - 1);
    }
}
