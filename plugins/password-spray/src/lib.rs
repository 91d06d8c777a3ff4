//! `password-spray`: one client IP failing logins across many usernames
//! (password spraying, credential stuffing).
//!
//! # Rule
//!
//! Per client IP, collects the distinct usernames (ASCII case-folded) of
//! `auth.login.failure` events whose reason is in `reasons`. When
//! `distinct_users` of them fall within `window_secs`, it raises one alert,
//! rule `password-spray`, at `severity`. If the same IP then logs in
//! successfully as anyone while the incident is open, the alert is
//! escalated to `success_severity`: one of the sprayed accounts may be
//! taken.
//!
//! Counting distinct usernames, not failures, is what separates spraying
//! from a user mistyping a password; and a successful login outside an
//! incident takes that username back out of its IP's count (it was a
//! typo), which is what keeps an office NAT with hundreds of users, each
//! mistyping now and then, from looking like a sprayer.
//!
//! # One alert per incident
//!
//! Further failures from the IP while the incident goes on are attached to
//! the same alert as evidence, in an update sent at most every
//! `update_secs`. The incident ends after `window_secs` without a counted
//! failure from that IP, checked on events and on `tick`; a last update
//! carries what was still queued.
//!
//! # Alert
//!
//! - rule: `password-spray`
//! - severity: `high`; `critical` after a successful login from the IP
//!   during the incident.
//! - group key: `ip:<client ip>` — match exceptions on it or on the alert's
//!   `client_ip` (CIDR exceptions: the server matches `client_ip`).
//! - subject: the latest username tried (or the one that logged in).
//! - evidence: the failures in the window when it was raised (the newest
//!   `2 × distinct_users`, at least 16), every later failure of the
//!   incident (at most 64 ids per update), plus the success.
//!
//! # Config (JSON), every key optional
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `distinct_users` | `10` | distinct usernames failing from one IP that raise the alert (2..=1000) |
//! | `window_secs` | `600` | sliding window; also the quiet time that ends an incident |
//! | `reasons` | `["bad_password", "unknown_user"]` | failure reasons counted |
//! | `severity` | `"high"` | severity of the alert |
//! | `success_severity` | `"critical"` | severity after a success from the IP during the incident |
//! | `update_secs` | `60` | at most one evidence update per incident this often |
//! | `max_tracked_ips` | `100000` | hard cap on client IPs tracked |
//!
//! Only hashes of usernames are kept (never the names), at most
//! `distinct_users` per IP, and at most `max_tracked_ips` IPs (least
//! recently active forgotten first).

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, DistinctSet, EventRing,
    IncidentAlert, KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "password-spray";
/// Rule name on every alert of this detector.
pub const RULE: &str = "password-spray";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    distinct_users: u32,
    window_secs: u64,
    reasons: Vec<String>,
    severity: String,
    success_severity: String,
    update_secs: u64,
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
            update_secs: 60,
            max_tracked_ips: 100_000,
        }
    }
}

#[derive(Default)]
struct IpState {
    users: DistinctSet,
    /// Failures in the window, tagged with the key of their username.
    failures: EventRing,
    alert: IncidentAlert,
}

/// Distinct usernames failing from one client IP within a window.
pub struct PasswordSpray {
    distinct_users: usize,
    ring_cap: usize,
    window_us: i64,
    update_us: i64,
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

    /// The hard cap on client IPs tracked.
    pub fn cap(&self) -> usize {
        self.ips.cap()
    }

    fn failure(
        &mut self,
        ev: Event<'_>,
        ip: &str,
        user: &str,
        out: &mut Alerts<'_>,
    ) -> detector_sdk::Result {
        let now = ev.time_us();
        let (window_us, update_us) = (self.window_us, self.update_us);
        let user_key = self.hasher.key(&user.to_ascii_lowercase());
        let state = self
            .ips
            .get_or_insert_with(self.hasher.key(ip), IpState::default);
        state.alert.close_if_quiet(now, window_us, out)?;
        let since = now.saturating_sub(window_us);
        state.users.prune(since);
        state.failures.prune(since);
        state.users.insert(user_key, now, self.distinct_users);
        state
            .failures
            .push_tagged(now, ev.id(), user_key, self.ring_cap);
        if state.alert.add_evidence(ev.id(), now) {
            state.alert.flush_due(now, update_us, out)?;
        } else if state.users.len() >= self.distinct_users {
            let summary = format!(
                "{ip} failed logins for {} different usernames within {}s",
                state.users.len(),
                window_us / 1_000_000,
            );
            state.alert.raise(
                &Alert {
                    rule: RULE,
                    severity: self.severity,
                    subject: Some(user),
                    client_ip: Some(ip),
                    summary: &summary,
                    group_key: &format!("ip:{ip}"),
                    evidence: &state.failures.ids(),
                },
                now,
                out,
            )?;
        }
        Ok(())
    }

    fn success(&mut self, ev: Event<'_>, ip: &str, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let user = ev.username().or(ev.subject());
        let user_key = user.map(|u| self.hasher.key(&u.to_ascii_lowercase()));
        let Some(state) = self.ips.get_mut(self.hasher.key(ip)) else {
            return Ok(());
        };
        state.alert.close_if_quiet(now, self.window_us, out)?;
        if !state.alert.is_open() {
            // That user's failures from this IP were typos.
            if let Some(k) = user_key {
                state.users.remove(k);
                state.failures.remove_tag(k);
            }
            return Ok(());
        }
        let summary = format!(
            "{ip}, which tried {} different usernames, logged in as {:?}: that account may be compromised",
            state.users.len(),
            user.unwrap_or("?"),
        );
        let raised = state.alert.raise(
            &Alert {
                rule: RULE,
                severity: self.success_severity,
                subject: user,
                client_ip: Some(ip),
                summary: &summary,
                group_key: &format!("ip:{ip}"),
                evidence: &[ev.id()],
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
        let distinct_users = c.distinct_users as usize;
        Ok(PasswordSpray {
            distinct_users,
            ring_cap: (2 * distinct_users).max(16),
            window_us: secs_to_us(NAME, "window_secs", c.window_secs)?,
            update_us: secs_to_us(NAME, "update_secs", c.update_secs)?,
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

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let (window_us, update_us) = (self.window_us, self.update_us);
        let since = now_us.saturating_sub(window_us);
        self.ips.try_retain(|_, s| {
            s.users.prune(since);
            s.failures.prune(since);
            s.alert.close_if_quiet(now_us, window_us, out)?;
            s.alert.flush_due(now_us, update_us, out)?;
            Ok::<_, detector_sdk::EmitError>(!s.failures.is_empty() || s.alert.is_open())
        })?;
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
        assert_eq!(alerts[0].evidence, vec![200, 103, 104, 105]);
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

    #[test]
    fn a_typo_followed_by_a_login_does_not_count() {
        let mut d = PasswordSpray::new(r#"{"distinct_users": 3}"#).unwrap();
        let mut evs = Vec::new();
        for (i, u) in ["ann", "ben", "cat", "dan"].iter().enumerate() {
            let i = i as i64 * 10;
            evs.push(login(i, i, u, "198.51.100.10", false));
            evs.push(login(i + 1, i + 1, u, "198.51.100.10", true));
        }
        assert!(run_batch(&mut d, &evs).unwrap().is_empty());
    }

    #[test]
    fn a_day_of_benign_traffic_raises_nothing() {
        for seed in [1, 2, 3] {
            let mut d = PasswordSpray::new("{}").unwrap();
            let alerts = replay(&mut d, &traffic::day(seed), 512, SEC, HOUR).unwrap();
            assert!(alerts.is_empty(), "seed {seed}:\n{}", describe(&alerts));
        }
    }

    #[test]
    fn a_spray_mixed_into_a_day_is_exactly_one_alert_escalated_by_its_success() {
        let day = traffic::day(5);
        let (_, _, first_seen, _, _) = traffic::first_login(&day);
        let start = first_seen + HOUR;
        let mut users: Vec<String> = day
            .iter()
            .filter_map(|e| e.username.clone())
            .filter(|u| !u.starts_with("svc"))
            .collect();
        users.sort();
        users.dedup();
        let ip = "185.220.101.33";
        let ua = "Mozilla/5.0 (compatible; MSIE 9.0)";
        let mut attack: Vec<EventData> = users
            .iter()
            .take(30)
            .enumerate()
            .map(|(i, u)| {
                let mut e = traffic::event(
                    ATTACK_ID_BASE + i as i64,
                    start + i as i64 * 7 * SEC,
                    "auth.login.failure",
                    ip,
                    ua,
                );
                e.reason = Some("bad_password".into());
                e.username = Some(u.clone());
                e
            })
            .collect();
        let mut won = traffic::event(
            ATTACK_ID_BASE + 30,
            start + 215 * SEC,
            "auth.login.success",
            ip,
            ua,
        );
        won.username = Some(users[30].clone());
        attack.push(won);
        let mut d = PasswordSpray::new("{}").unwrap();
        let alerts = replay(&mut d, &traffic::mix(&day, &attack), 512, SEC, HOUR).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 1, "{}", describe(&alerts));
        let (a, emits) = &stored[0];
        assert_eq!(
            (a.rule.as_str(), a.severity, a.group_key.as_str()),
            (RULE, Severity::Critical, "ip:185.220.101.33")
        );
        assert_eq!(a.client_ip.as_deref(), Some(ip));
        assert_eq!(a.subject.as_deref(), Some(users[30].as_str()));
        let mut ids = a.evidence.clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..31).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>());
        assert_eq!(alerts[0].severity, Severity::High);
        assert_eq!(alerts[0].evidence.len(), 10);
        assert!((2..=6).contains(emits), "{}", describe(&alerts));
    }

    #[test]
    fn a_flood_of_a_million_random_ips_stays_at_the_cap() {
        let mut d = PasswordSpray::new("{}").unwrap();
        let cap = d.cap();
        assert_eq!(cap, 100_000);
        let mut max = 0;
        traffic::flood(
            &mut d,
            1_000_000,
            10_000,
            |i, rng| {
                login(
                    i as i64,
                    i as i64 / 1000,
                    "root",
                    &traffic::random_ip(rng),
                    false,
                )
            },
            |d| {
                assert!(d.tracked() <= cap);
                max = max.max(d.tracked());
            },
        )
        .unwrap();
        assert!(max > cap - cap / 16 - 1, "{max}");
    }
}
