//! `account-anomaly`: a user's login or token use that does not look like
//! that user: a new network, a new client, an unusual hour.
//!
//! # Rule
//!
//! For every successful event of `kinds` (login success and token use) a
//! profile per user (username, else subject) learns:
//! - the **networks** the user comes from: the client IP masked to
//!   `ipv4_prefix` / `ipv6_prefix` bits (a /16 by default, so a new DHCP
//!   lease is not a new network); the newest `max_networks` are kept;
//! - the **user agents**, with digits removed so that a browser update is
//!   not a new client; the newest `max_user_agents` are kept;
//! - the **hours** (UTC) the user is active, as a 24-bin histogram.
//!
//! Once a profile has `warmup_events` events over `warmup_days` distinct
//! days, each event is scored with one point per signal: new network, new
//! user agent, unusual hour (the hour and its two neighbours hold less
//! than `rare_hour_share` of the user's activity, or fewer than 3 events). At `min_signals`
//! points it raises an alert, rule `account-anomaly`, at `severity`; with
//! all three at `all_signals_severity`.
//!
//! One signal alone is ordinary life (a trip, a new laptop, a late
//! evening), which is why `min_signals` defaults to 2; set it to 1 for the
//! strict reading "anything never seen before". The profile keeps
//! learning from every event, alerting or not. One alert per user per
//! incident: later anomalous events of the user, and further events from
//! the IP and User-Agent that raised it, are attached to it as evidence (an
//! update at most every `update_secs`); the incident ends after
//! `incident_quiet_secs` without one (on events and on `tick`).
//!
//! # Alert
//!
//! - rule: `account-anomaly`
//! - severity: `medium` with two signals, `high` with all three.
//! - group key: `user:<username or subject>` — match user exceptions on it
//!   or on the alert's `subject`.
//! - client_ip: the IP of the anomalous event. evidence: that event, then
//!   the incident's later events.
//!
//! # Config (JSON), every key optional
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `kinds` | `["auth.login.success", "access.granted"]` | successful events profiled |
//! | `warmup_events` | `30` | events a profile needs before it alerts |
//! | `warmup_days` | `5` | distinct days a profile needs before it alerts |
//! | `min_signals` | `2` | signals (new network, new agent, unusual hour) that raise an alert (1..=3) |
//! | `ipv4_prefix` / `ipv6_prefix` | `16` / `48` | bits of the IP that make a "network" |
//! | `max_networks` / `max_user_agents` | `16` / `8` | remembered per user (newest kept, ≤ 256) |
//! | `rare_hour_share` | `0.02` | share of activity below which an hour (± 1) is unusual |
//! | `severity` | `"medium"` | severity with fewer than three signals |
//! | `all_signals_severity` | `"high"` | severity with all three |
//! | `incident_quiet_secs` | `3600` | quiet time that ends an incident |
//! | `update_secs` | `60` | at most one evidence update per incident this often |
//! | `max_tracked_users` | `100000` | hard cap on user profiles (least recently active forgotten) |

use std::net::IpAddr;

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, IncidentAlert, Key, KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "account-anomaly";
/// Rule name on every alert of this detector.
pub const RULE: &str = "account-anomaly";
const HOUR_US: i64 = 3_600 * 1_000_000;
const DAY_US: i64 = 24 * HOUR_US;
/// An hour seen fewer times than this (with its neighbours) is rare however
/// small `rare_hour_share` is: one 3 a.m. login does not make 3 a.m. normal.
const RARE_HOUR_MIN: f64 = 3.0;
/// Histogram counts are halved past this total, so old habits fade.
const HOURS_DECAY_AT: u32 = 20_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    kinds: Vec<String>,
    warmup_events: u32,
    warmup_days: u32,
    min_signals: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    max_networks: usize,
    max_user_agents: usize,
    rare_hour_share: f64,
    severity: String,
    all_signals_severity: String,
    incident_quiet_secs: u64,
    update_secs: u64,
    max_tracked_users: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kinds: vec!["auth.login.success".into(), "access.granted".into()],
            warmup_events: 30,
            warmup_days: 5,
            min_signals: 2,
            ipv4_prefix: 16,
            ipv6_prefix: 48,
            max_networks: 16,
            max_user_agents: 8,
            rare_hour_share: 0.02,
            severity: "medium".into(),
            all_signals_severity: "high".into(),
            incident_quiet_secs: 3600,
            update_secs: 60,
            max_tracked_users: 100_000,
        }
    }
}

#[derive(Default)]
struct Profile {
    hours: [u32; 24],
    total: u32,
    days: u32,
    last_day: i64,
    networks: Vec<Key>,
    agents: Vec<Key>,
    /// The previous event's raw IP and User-Agent keys: most events repeat
    /// them, and then neither the network nor the agent can be new.
    last_ip: Option<Key>,
    last_ua: Option<Key>,
    /// Raw IP and User-Agent keys of the event that raised the open alert.
    incident_from: Option<(Option<Key>, Option<Key>)>,
    alert: IncidentAlert,
}

impl Profile {
    fn warmed(&self, events: u32, days: u32) -> bool {
        self.total >= events && self.days >= days
    }

    fn rare_hour(&self, hour: usize, share: f64) -> bool {
        let near = self.hours[(hour + 23) % 24] + self.hours[hour] + self.hours[(hour + 1) % 24];
        f64::from(near) < (share * f64::from(self.total)).max(RARE_HOUR_MIN)
    }

    fn learn_hour(&mut self, hour: usize, day: i64) {
        self.hours[hour] += 1;
        self.total += 1;
        if self.total >= HOURS_DECAY_AT {
            for h in &mut self.hours {
                *h /= 2;
            }
            self.total = self.hours.iter().sum();
        }
        if day != self.last_day || self.days == 0 {
            self.last_day = day;
            self.days = self.days.saturating_add(1);
        }
    }
}

/// Remember `key` as most recent; true if it was not known.
fn learn(list: &mut Vec<Key>, key: Key, cap: usize) -> bool {
    if let Some(i) = list.iter().position(|k| *k == key) {
        // Move to the back so the least recently seen is dropped first.
        let k = list.remove(i);
        list.push(k);
        return false;
    }
    if list.len() >= cap {
        list.remove(0);
    }
    list.push(key);
    true
}

/// Per-user profiles of networks, user agents and active hours.
pub struct AccountAnomaly {
    kinds: Vec<String>,
    warmup_events: u32,
    warmup_days: u32,
    min_signals: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    max_networks: usize,
    max_user_agents: usize,
    rare_hour_share: f64,
    severity: Severity,
    all_signals_severity: Severity,
    quiet_us: i64,
    update_us: i64,
    hasher: KeyHasher,
    users: BoundedMap<Profile>,
}

impl AccountAnomaly {
    /// Users currently profiled.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }

    /// The hard cap on user profiles.
    pub fn cap(&self) -> usize {
        self.users.cap()
    }

    /// The masked network of `ip` and its text (e.g. `203.0.0.0/16`).
    fn network(&self, ip: &str) -> Option<(Key, IpAddr, u8)> {
        let addr: IpAddr = ip.parse().ok()?;
        let (masked, bits) = match addr {
            IpAddr::V4(v4) => {
                let bits = self.ipv4_prefix;
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                (IpAddr::from((u32::from(v4) & mask).to_be_bytes()), bits)
            }
            IpAddr::V6(v6) => {
                let bits = self.ipv6_prefix;
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                (IpAddr::from((u128::from(v6) & mask).to_be_bytes()), bits)
            }
        };
        let key = match masked {
            IpAddr::V4(a) => self.hasher.key_bytes(&a.octets()),
            IpAddr::V6(a) => self.hasher.key_bytes(&a.octets()),
        };
        Some((key, masked, bits))
    }

    fn agent_key(&self, ua: &str) -> Key {
        self.hasher.key_with(|h| {
            for b in ua.bytes().filter(|b| !b.is_ascii_digit()) {
                h.write_u8(b);
            }
        })
    }

    fn observe(&mut self, ev: Event<'_>, user: &str, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let hour = (now.rem_euclid(DAY_US) / HOUR_US) as usize;
        let day = now.div_euclid(DAY_US);
        let ip = ev.client_ip();
        let ua = ev.user_agent();
        let ip_key = ip.map(|s| self.hasher.key(s));
        let ua_key = ua.map(|s| self.hasher.key(s));
        let user_key = self.hasher.key(user);
        let (warmup_events, warmup_days, share) =
            (self.warmup_events, self.warmup_days, self.rare_hour_share);

        let Some(p) = self.users.get_mut(user_key) else {
            let network = ip.and_then(|ip| self.network(ip)).map(|n| n.0);
            let agent = ua.map(|ua| self.agent_key(ua));
            let p = self.users.get_or_insert_with(user_key, Profile::default);
            p.learn_hour(hour, day);
            p.networks.extend(network);
            p.agents.extend(agent);
            p.last_ip = ip_key;
            p.last_ua = ua_key;
            return Ok(());
        };
        let same_ip = ip_key.is_some() && p.last_ip == ip_key;
        let same_ua = ua_key.is_some() && p.last_ua == ua_key;
        let warmed = p.warmed(warmup_events, warmup_days);
        let odd_hour = warmed && p.rare_hour(hour, share);
        p.alert.close_if_quiet(now, self.quiet_us, out)?;
        if !p.alert.is_open() {
            p.incident_from = None;
        } else if p.incident_from == Some((ip_key, ua_key)) {
            // More from the party that raised the alert.
            p.alert.add_evidence(ev.id(), now);
            p.alert.flush_due(now, self.update_us, out)?;
        }
        if same_ip && same_ua {
            // Fast path: neither the network nor the agent can be new.
            p.learn_hour(hour, day);
            if odd_hour && self.min_signals <= 1 {
                return self.raise(ev, user, user_key, &["unusual hour"], out);
            }
            return Ok(());
        }
        let network = if same_ip {
            None
        } else {
            ip.and_then(|ip| self.network(ip))
        };
        let agent = if same_ua {
            None
        } else {
            ua.map(|ua| self.agent_key(ua))
        };
        let (max_networks, max_agents) = (self.max_networks, self.max_user_agents);
        let Some(p) = self.users.get_mut(user_key) else {
            return Ok(());
        };
        let new_network = network.is_some_and(|(k, _, _)| learn(&mut p.networks, k, max_networks));
        let new_agent = agent.is_some_and(|k| learn(&mut p.agents, k, max_agents));
        p.learn_hour(hour, day);
        p.last_ip = ip_key;
        p.last_ua = ua_key;
        if !warmed {
            return Ok(());
        }
        let net_text = network.map(|(_, addr, bits)| format!("new network {addr}/{bits}"));
        let mut signals: Vec<String> = Vec::with_capacity(3);
        if new_network {
            signals.extend(net_text);
        }
        if new_agent {
            signals.push(format!("new user agent {:?}", ua.unwrap_or("")));
        }
        if odd_hour {
            signals.push(format!("unusual hour {hour:02}:00 UTC"));
        }
        if signals.len() as u32 >= self.min_signals {
            let signals: Vec<&str> = signals.iter().map(String::as_str).collect();
            return self.raise(ev, user, user_key, &signals, out);
        }
        Ok(())
    }

    fn raise(
        &mut self,
        ev: Event<'_>,
        user: &str,
        user_key: Key,
        signals: &[&str],
        out: &mut Alerts<'_>,
    ) -> detector_sdk::Result {
        let now = ev.time_us();
        let severity = if signals.len() >= 3 {
            self.all_signals_severity
        } else {
            self.severity
        };
        let ip_ua = (
            ev.client_ip().map(|s| self.hasher.key(s)),
            ev.user_agent().map(|s| self.hasher.key(s)),
        );
        let Some(p) = self.users.get_mut(user_key) else {
            return Ok(());
        };
        if p.alert.raised().is_some_and(|s| s >= severity) {
            if p.incident_from != Some(ip_ua) {
                p.alert.add_evidence(ev.id(), now);
            }
            p.alert.flush_due(now, self.update_us, out)?;
            return Ok(());
        }
        let action = if ev.kind() == "auth.login.success" {
            "logged in"
        } else {
            "used a token"
        };
        let summary = format!(
            "{user:?} {action} from {} with {}",
            ev.client_ip().unwrap_or("an unknown IP"),
            signals.join(", ")
        );
        p.alert.raise(
            &Alert {
                rule: RULE,
                severity,
                subject: Some(user),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("user:{user}"),
                evidence: &[ev.id()],
            },
            now,
            out,
        )?;
        p.incident_from = Some(ip_ua);
        Ok(())
    }
}

impl Detector for AccountAnomaly {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        if !(1..=3).contains(&c.min_signals) {
            return Err(ConfigError::new(
                NAME,
                format!("min_signals must be 1, 2 or 3, got {}", c.min_signals),
            )
            .into());
        }
        if !(1..=32).contains(&c.ipv4_prefix) || !(1..=128).contains(&c.ipv6_prefix) {
            return Err(ConfigError::new(
                NAME,
                format!(
                    "ipv4_prefix must be 1..=32 and ipv6_prefix 1..=128, got {} and {}",
                    c.ipv4_prefix, c.ipv6_prefix
                ),
            )
            .into());
        }
        if !(0.0..1.0).contains(&c.rare_hour_share) {
            return Err(ConfigError::new(
                NAME,
                format!(
                    "rare_hour_share must be a fraction in [0, 1), got {}",
                    c.rare_hour_share
                ),
            )
            .into());
        }
        at_least(NAME, "warmup_events", c.warmup_events.into(), 1)?;
        at_least(NAME, "max_networks", c.max_networks as u64, 1)?;
        at_least(NAME, "max_user_agents", c.max_user_agents as u64, 1)?;
        at_least(NAME, "max_tracked_users", c.max_tracked_users as u64, 1)?;
        if c.max_networks > 256 || c.max_user_agents > 256 {
            return Err(ConfigError::new(NAME, "max_networks and max_user_agents must be at most 256 (state per user grows with them)").into());
        }
        if c.kinds.is_empty() {
            return Err(ConfigError::new(
                NAME,
                "kinds is empty; the usual value is [\"auth.login.success\", \"access.granted\"]",
            )
            .into());
        }
        Ok(AccountAnomaly {
            kinds: c.kinds,
            warmup_events: c.warmup_events,
            warmup_days: c.warmup_days,
            min_signals: c.min_signals,
            ipv4_prefix: c.ipv4_prefix,
            ipv6_prefix: c.ipv6_prefix,
            max_networks: c.max_networks,
            max_user_agents: c.max_user_agents,
            rare_hour_share: c.rare_hour_share,
            severity: parse_severity(NAME, "severity", &c.severity)?,
            all_signals_severity: parse_severity(
                NAME,
                "all_signals_severity",
                &c.all_signals_severity,
            )?,
            quiet_us: secs_to_us(NAME, "incident_quiet_secs", c.incident_quiet_secs)?,
            update_us: secs_to_us(NAME, "update_secs", c.update_secs)?,
            hasher: KeyHasher::new(),
            users: BoundedMap::new(c.max_tracked_users),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            if ev.is_failure() || !self.kinds.iter().any(|k| k == ev.kind()) {
                continue;
            }
            if let Some(user) = ev.username().or(ev.subject()) {
                self.observe(ev, user, out)?;
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        // Profiles are the learned history and stay (bounded by the cap);
        // only incidents close and send their updates here.
        let (quiet_us, update_us) = (self.quiet_us, self.update_us);
        self.users.try_retain(|_, p| {
            if p.alert.close_if_quiet(now_us, quiet_us, out)? {
                p.incident_from = None;
            }
            p.alert.flush_due(now_us, update_us, out)?;
            Ok::<_, detector_sdk::EmitError>(true)
        })?;
        Ok(())
    }
}

detector_sdk::export_detector!(
    AccountAnomaly,
    "account-anomaly",
    env!("CARGO_PKG_VERSION"),
    "logins and token use from a new network or user agent, or at unusual hours, per user"
);

#[cfg(test)]
mod tests {
    use super::*;
    use detector_sdk::testing::traffic::{
        self, as_stored, describe, replay, Traffic, ATTACK_ID_BASE, HOUR, MIN, SEC,
    };
    use detector_sdk::testing::{run_batch, EventData};

    fn login(id: i64, day: i64, hour: i64, ip: &str, ua: &str) -> EventData {
        EventData {
            id,
            time_us: day * DAY_US + hour * HOUR_US,
            kind: "auth.login.success".into(),
            outcome: "success".into(),
            username: Some("dana".into()),
            client_ip: Some(ip.into()),
            user_agent: Some(ua.into()),
            source: "test".into(),
            ..EventData::default()
        }
    }

    fn warmed() -> AccountAnomaly {
        let mut d = AccountAnomaly::new(r#"{"warmup_events": 10, "warmup_days": 3}"#).unwrap();
        let history: Vec<_> = (0..5)
            .flat_map(|day| {
                (9..13).map(move |h| login(day * 100 + h, day, h, "192.0.2.10", "Firefox/120.0"))
            })
            .collect();
        assert!(run_batch(&mut d, &history).unwrap().is_empty());
        d
    }

    #[test]
    fn one_signal_is_learned_two_alert_three_are_high() {
        let mut d = warmed();
        let travel = login(1, 6, 10, "203.0.113.5", "Firefox/121.0");
        assert!(
            run_batch(&mut d, &[travel]).unwrap().is_empty(),
            "new network only, browser update"
        );
        let alerts = run_batch(&mut d, &[login(2, 6, 3, "198.51.100.1", "Firefox/121.0")]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::Medium);
        assert_eq!(alerts[0].group_key, "user:dana");
        assert!(
            alerts[0].summary.contains("new network 198.51.0.0/16"),
            "{}",
            alerts[0].summary
        );
        assert!(
            alerts[0].summary.contains("unusual hour 03:00 UTC"),
            "{}",
            alerts[0].summary
        );
        let alerts = run_batch(&mut d, &[login(3, 6, 3, "100.64.0.1", "curl/8.0")]).unwrap();
        assert_eq!(alerts.len(), 1, "escalation to all three signals");
        assert_eq!(alerts[0].severity, Severity::High);
    }

    #[test]
    fn nothing_alerts_during_warm_up() {
        let mut d = AccountAnomaly::new("{}").unwrap();
        let evs = [
            login(1, 0, 10, "192.0.2.1", "a"),
            login(2, 0, 3, "198.51.100.1", "b"),
        ];
        assert!(run_batch(&mut d, &evs).unwrap().is_empty());
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            AccountAnomaly::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err(r#"{"min_signals": 0}"#),
            "account-anomaly config: min_signals must be 1, 2 or 3, got 0"
        );
        assert!(err(r#"{"ipv4_prefix": 33}"#).contains("ipv4_prefix must be 1..=32"));
        assert!(err(r#"{"rare_hour_share": 1.5}"#).contains("rare_hour_share"));
    }

    fn two_weeks() -> Vec<EventData> {
        Traffic {
            days: 14,
            ..Traffic::default()
        }
        .generate()
    }

    #[test]
    fn two_weeks_of_benign_traffic_raise_nothing() {
        let mut d = AccountAnomaly::new("{}").unwrap();
        let alerts = replay(&mut d, &two_weeks(), 512, 10 * SEC, HOUR).unwrap();
        assert!(alerts.is_empty(), "{}", describe(&alerts));
    }

    #[test]
    fn a_taken_over_account_mixed_into_two_weeks_is_one_alert() {
        let days = two_weeks();
        // The victim: a user seen on day one; the takeover on day 11 at an
        // hour the victim never works, from a new network and client.
        let (victim, subject, _, _, _) = traffic::first_login(&days);
        let hours: Vec<i64> = days
            .iter()
            .filter(|e| e.username.as_deref() == Some(victim.as_str()))
            .map(|e| e.time_us.rem_euclid(DAY_US) / HOUR_US)
            .collect();
        let quiet_hour = (0..24)
            .find(|h| (-1..=1).all(|d| !hours.contains(&((h + d + 24) % 24))))
            .expect("a user does not work around the clock");
        let t = traffic::START_US + 10 * DAY_US + quiet_hour * HOUR_US + 5 * MIN;
        let ip = "5.45.207.9";
        let ua = "python-requests/2.31.0";
        let mut login = traffic::event(ATTACK_ID_BASE, t, "auth.login.success", ip, ua);
        login.username = Some(victim.clone());
        login.subject = Some(subject.clone());
        let mut attack = vec![login];
        for i in 1..6 {
            let mut e = traffic::event(
                ATTACK_ID_BASE + i,
                t + i * 30 * SEC,
                "access.granted",
                ip,
                ua,
            );
            e.username = Some(victim.clone());
            e.subject = Some(subject.clone());
            e.jti = Some("stolen-session".into());
            attack.push(e);
        }
        let mut d = AccountAnomaly::new("{}").unwrap();
        let alerts = replay(&mut d, &traffic::mix(&days, &attack), 512, 10 * SEC, HOUR).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 1, "{}", describe(&alerts));
        let (a, _) = &stored[0];
        assert_eq!(
            (a.rule.as_str(), a.severity, a.group_key.clone()),
            (RULE, Severity::High, format!("user:{victim}"))
        );
        assert_eq!(a.client_ip.as_deref(), Some(ip));
        assert_eq!(
            a.evidence,
            (0..6).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_flood_of_a_million_random_users_stays_at_the_cap() {
        let mut d = AccountAnomaly::new("{}").unwrap();
        let cap = d.cap();
        let mut max = 0;
        traffic::flood(
            &mut d,
            1_000_000,
            10_000,
            |i, rng| {
                let mut e = login(i as i64, 0, 10, &traffic::random_ip(rng), "ua");
                e.username = Some(rng.hex(12));
                e
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
