//! `expired-storm`: a client repeatedly presenting expired tokens.
//!
//! # Rules
//!
//! Looks at `token.rejected` and `access.denied` events whose reason is in
//! `reasons` (`expired`: an access token; `refresh_expired`: a refresh
//! token at `/oauth/token`).
//!
//! **`expired-token-repeat`** (severity `repeat_severity`, default
//! `medium`; group key `token:<token_fp, else jti>`): the same token
//! refused as expired `same_token_threshold` times within `window_secs`. A
//! healthy client that wakes up with a stale token gets one refusal,
//! refreshes and moves on; one that keeps presenting it is broken, or it is
//! not the owner trying a token it found.
//!
//! **`expired-token-many`** (severity `many_severity`, default `high`;
//! group key `ip:<client ip>`): `distinct_tokens_threshold` different
//! expired tokens from one client IP within `window_secs` that were not
//! *redeemed*: someone working through a collection of old tokens (from
//! logs, a breach, a proxy cache). A token is redeemed, and stops counting,
//! when the same IP then refreshes (`token.refreshed`) or logs in
//! (`auth.login.success`) as the token's subject — what every legitimate
//! client does right after its token expired; for a refresh token (whose
//! refusal names no subject) any login from the IP redeems one. This keeps
//! an office NAT whose users all come back in the morning with yesterday's
//! tokens quiet.
//!
//! # One alert per incident
//!
//! Later counted events of the token / IP are attached to the open alert
//! as evidence (an update at most every `update_secs`); incidents end after
//! `window_secs` without a counted event, on events and on `tick`.
//!
//! # Config (JSON), every key optional
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `same_token_threshold` | `10` | refusals of one token within the window (≥ 2) |
//! | `distinct_tokens_threshold` | `10` | unredeemed expired tokens from one IP within the window (2..=1000) |
//! | `window_secs` | `600` | sliding window; also the quiet time that ends an incident |
//! | `reasons` | `["expired", "refresh_expired"]` | refusal reasons counted |
//! | `repeat_severity` | `"medium"` | severity of `expired-token-repeat` |
//! | `many_severity` | `"high"` | severity of `expired-token-many` |
//! | `update_secs` | `60` | at most one evidence update per incident this often |
//! | `max_tracked` | `100000` | hard cap, applied separately to tokens and to IPs |

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, EventRing, IncidentAlert, Key,
    KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "expired-storm";
/// Rule: one expired token presented again and again.
pub const RULE_REPEAT: &str = "expired-token-repeat";
/// Rule: many different expired tokens from one IP.
pub const RULE_MANY: &str = "expired-token-many";
const MIN_RING: usize = 16;
/// Subject key of a refusal that names no subject.
const NO_SUBJECT: Key = Key(0);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    same_token_threshold: u32,
    distinct_tokens_threshold: u32,
    window_secs: u64,
    reasons: Vec<String>,
    repeat_severity: String,
    many_severity: String,
    update_secs: u64,
    max_tracked: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            same_token_threshold: 10,
            distinct_tokens_threshold: 10,
            window_secs: 600,
            reasons: vec!["expired".into(), "refresh_expired".into()],
            repeat_severity: "medium".into(),
            many_severity: "high".into(),
            update_secs: 60,
            max_tracked: 100_000,
        }
    }
}

#[derive(Default)]
struct TokenState {
    events: EventRing,
    alert: IncidentAlert,
}

/// One expired token seen from an IP and not redeemed yet.
#[derive(Clone, Copy)]
struct Unredeemed {
    token: Key,
    subject: Key,
    time_us: i64,
}

#[derive(Default)]
struct IpState {
    /// At most `distinct_tokens` entries, one per token.
    tokens: Vec<Unredeemed>,
    /// Counted events, tagged with their token's key.
    events: EventRing,
    alert: IncidentAlert,
}

impl IpState {
    fn prune(&mut self, since: i64) {
        self.tokens.retain(|u| u.time_us >= since);
        self.events.prune(since);
    }

    fn note(&mut self, u: Unredeemed, cap: usize) {
        if let Some(have) = self.tokens.iter_mut().find(|x| x.token == u.token) {
            have.time_us = u.time_us;
            return;
        }
        if self.tokens.len() >= cap {
            self.tokens.remove(0);
        }
        self.tokens.push(u);
    }

    fn redeem(&mut self, subject: Option<Key>, login: bool) {
        let found = match subject {
            Some(s) if self.tokens.iter().any(|u| u.subject == s) => Some(s),
            _ if login => Some(NO_SUBJECT),
            _ => None,
        };
        let Some(s) = found else { return };
        let mut gone = Vec::new();
        if s == NO_SUBJECT {
            if let Some(i) = self.tokens.iter().position(|u| u.subject == NO_SUBJECT) {
                gone.push(self.tokens.remove(i).token);
            }
        } else {
            self.tokens.retain(|u| {
                let keep = u.subject != s;
                if !keep {
                    gone.push(u.token);
                }
                keep
            });
        }
        for t in gone {
            self.events.remove_tag(t);
        }
    }
}

/// Expired tokens presented repeatedly, per token and per IP.
pub struct ExpiredStorm {
    same_token: usize,
    distinct_tokens: usize,
    window_us: i64,
    update_us: i64,
    reasons: Vec<String>,
    repeat_severity: Severity,
    many_severity: Severity,
    ring_cap: usize,
    hasher: KeyHasher,
    tokens: BoundedMap<TokenState>,
    ips: BoundedMap<IpState>,
}

impl ExpiredStorm {
    /// Tokens and IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.tokens.len() + self.ips.len()
    }

    /// The hard caps: tokens plus IPs.
    pub fn cap(&self) -> usize {
        self.tokens.cap() + self.ips.cap()
    }

    fn subject_key(&self, subject: &str) -> Key {
        match self.hasher.key(subject) {
            NO_SUBJECT => Key(1),
            k => k,
        }
    }

    fn expired(&mut self, ev: Event<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let since = now.saturating_sub(self.window_us);
        let (window_us, update_us) = (self.window_us, self.update_us);
        let window_secs = window_us / 1_000_000;
        let ip = ev.client_ip();
        let Some(token) = ev.token_fp().or(ev.jti()) else {
            return Ok(());
        };
        let key = self.hasher.key(token);
        let s = self.tokens.get_or_insert_with(key, TokenState::default);
        s.alert.close_if_quiet(now, window_us, out)?;
        s.events.prune(since);
        s.events.push(now, ev.id(), self.same_token);
        if s.alert.add_evidence(ev.id(), now) {
            s.alert.flush_due(now, update_us, out)?;
        } else if s.events.len() >= self.same_token {
            let summary = format!(
                "expired token {token} of {:?} presented {} times within {window_secs}s (latest from {})",
                ev.subject().unwrap_or("?"),
                s.events.len(),
                ip.unwrap_or("an unknown IP"),
            );
            s.alert.raise(
                &Alert {
                    rule: RULE_REPEAT,
                    severity: self.repeat_severity,
                    subject: ev.subject(),
                    client_ip: ip,
                    summary: &summary,
                    group_key: &format!("token:{token}"),
                    evidence: &s.events.ids(),
                },
                now,
                out,
            )?;
        }
        let Some(ip) = ip else { return Ok(()) };
        let subject = ev.subject().map_or(NO_SUBJECT, |s| self.subject_key(s));
        let s = self
            .ips
            .get_or_insert_with(self.hasher.key(ip), IpState::default);
        s.alert.close_if_quiet(now, window_us, out)?;
        s.prune(since);
        s.note(
            Unredeemed {
                token: key,
                subject,
                time_us: now,
            },
            self.distinct_tokens,
        );
        s.events.push_tagged(now, ev.id(), key, self.ring_cap);
        if s.alert.add_evidence(ev.id(), now) {
            s.alert.flush_due(now, update_us, out)?;
        } else if s.tokens.len() >= self.distinct_tokens {
            let summary = format!(
                "{ip} presented {} different expired tokens within {window_secs}s and refreshed none of them",
                s.tokens.len()
            );
            s.alert.raise(
                &Alert {
                    rule: RULE_MANY,
                    severity: self.many_severity,
                    subject: ev.subject(),
                    client_ip: Some(ip),
                    summary: &summary,
                    group_key: &format!("ip:{ip}"),
                    evidence: &s.events.ids(),
                },
                now,
                out,
            )?;
        }
        Ok(())
    }

    fn redeemed(&mut self, ev: Event<'_>, login: bool) {
        let Some(ip) = ev.client_ip() else { return };
        let subject = ev.subject().map(|s| self.subject_key(s));
        if let Some(s) = self.ips.get_mut(self.hasher.key(ip)) {
            if !s.alert.is_open() {
                s.redeem(subject, login);
            }
        }
    }
}

impl Detector for ExpiredStorm {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        at_least(
            NAME,
            "same_token_threshold",
            c.same_token_threshold.into(),
            2,
        )?;
        if c.same_token_threshold > 10_000 {
            return Err(ConfigError::new(
                NAME,
                format!(
                    "same_token_threshold must be at most 10000, got {}",
                    c.same_token_threshold
                ),
            )
            .into());
        }
        at_least(
            NAME,
            "distinct_tokens_threshold",
            c.distinct_tokens_threshold.into(),
            2,
        )?;
        if c.distinct_tokens_threshold > 1000 {
            return Err(ConfigError::new(
                NAME,
                format!(
                    "distinct_tokens_threshold must be at most 1000 (state per IP grows with it), got {}",
                    c.distinct_tokens_threshold
                ),
            )
            .into());
        }
        at_least(NAME, "max_tracked", c.max_tracked as u64, 1)?;
        if c.reasons.is_empty() {
            return Err(ConfigError::new(
                NAME,
                "reasons is empty; the usual value is [\"expired\", \"refresh_expired\"]",
            )
            .into());
        }
        let distinct_tokens = c.distinct_tokens_threshold as usize;
        Ok(ExpiredStorm {
            same_token: c.same_token_threshold as usize,
            distinct_tokens,
            window_us: secs_to_us(NAME, "window_secs", c.window_secs)?,
            update_us: secs_to_us(NAME, "update_secs", c.update_secs)?,
            reasons: c.reasons,
            repeat_severity: parse_severity(NAME, "repeat_severity", &c.repeat_severity)?,
            many_severity: parse_severity(NAME, "many_severity", &c.many_severity)?,
            ring_cap: distinct_tokens.max(MIN_RING),
            hasher: KeyHasher::new(),
            tokens: BoundedMap::new(c.max_tracked),
            ips: BoundedMap::new(c.max_tracked),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            match ev.kind() {
                "token.rejected" | "access.denied"
                    if ev
                        .reason()
                        .is_some_and(|r| self.reasons.iter().any(|x| x == r)) =>
                {
                    self.expired(ev, out)?;
                }
                "token.refreshed" => self.redeemed(ev, false),
                "auth.login.success" => self.redeemed(ev, true),
                _ => {}
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let (window_us, update_us) = (self.window_us, self.update_us);
        let since = now_us.saturating_sub(window_us);
        self.tokens.try_retain(|_, s| {
            s.events.prune(since);
            s.alert.close_if_quiet(now_us, window_us, out)?;
            s.alert.flush_due(now_us, update_us, out)?;
            Ok::<_, detector_sdk::EmitError>(!s.events.is_empty() || s.alert.is_open())
        })?;
        self.ips.try_retain(|_, s| {
            s.prune(since);
            s.alert.close_if_quiet(now_us, window_us, out)?;
            s.alert.flush_due(now_us, update_us, out)?;
            Ok::<_, detector_sdk::EmitError>(!s.events.is_empty() || s.alert.is_open())
        })?;
        Ok(())
    }
}

detector_sdk::export_detector!(
    ExpiredStorm,
    "expired-storm",
    env!("CARGO_PKG_VERSION"),
    "a client repeatedly presenting expired tokens (broken client or stolen old tokens)"
);

#[cfg(test)]
mod tests {
    use super::*;
    use detector_sdk::testing::traffic::{
        self, as_stored, describe, replay, Traffic, ATTACK_ID_BASE, HOUR, SEC,
    };
    use detector_sdk::testing::{run_batch, run_tick, EventData};

    fn expired(id: i64, secs: i64, ip: &str, fp: &str) -> EventData {
        EventData {
            id,
            time_us: secs * 1_000_000,
            kind: "access.denied".into(),
            outcome: "failure".into(),
            reason: Some("expired".into()),
            client_ip: Some(ip.into()),
            token_fp: Some(fp.into()),
            subject: Some("carol".into()),
            source: "test".into(),
            ..EventData::default()
        }
    }

    #[test]
    fn one_token_over_and_over_is_a_repeat_alert() {
        let mut d = ExpiredStorm::new(r#"{"same_token_threshold": 3}"#).unwrap();
        let evs: Vec<_> = (0..5).map(|i| expired(i, i, "1.1.1.1", "fp1")).collect();
        let alerts = run_batch(&mut d, &evs).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].rule.as_str(), alerts[0].group_key.as_str()),
            (RULE_REPEAT, "token:fp1")
        );
        assert_eq!(alerts[0].evidence, vec![0, 1, 2]);
    }

    #[test]
    fn many_tokens_from_one_ip_is_a_many_alert() {
        let mut d = ExpiredStorm::new(r#"{"distinct_tokens_threshold": 3}"#).unwrap();
        let evs: Vec<_> = (0..4)
            .map(|i| expired(i, i, "2.2.2.2", &format!("fp{i}")))
            .collect();
        let alerts = run_batch(&mut d, &evs).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].rule.as_str(), alerts[0].severity),
            (RULE_MANY, Severity::High)
        );
        run_tick(&mut d, 700 * 1_000_000).unwrap();
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            ExpiredStorm::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err(r#"{"same_token_threshold": 1}"#),
            "expired-storm config: same_token_threshold must be at least 2, got 1"
        );
        assert!(err(r#"{"reasons": []}"#).contains("reasons is empty"));
        assert!(err(r#"{"window": 5}"#).contains("unknown field `window`"));
    }

    #[test]
    fn tokens_refreshed_right_after_do_not_count_towards_many() {
        let mut d = ExpiredStorm::new(r#"{"distinct_tokens_threshold": 3}"#).unwrap();
        let mut evs = Vec::new();
        for i in 0..6 {
            let mut e = expired(i * 2, i * 10, "198.51.100.10", &format!("fp{i}"));
            e.subject = Some(format!("user{i}"));
            let mut r = e.clone();
            r.id += 1;
            r.time_us += SEC;
            r.kind = "token.refreshed".into();
            r.outcome = "success".into();
            r.reason = None;
            evs.push(e);
            evs.push(r);
        }
        assert!(run_batch(&mut d, &evs).unwrap().is_empty());
    }

    #[test]
    fn benign_days_raise_nothing() {
        for seed in [1, 2] {
            let mut d = ExpiredStorm::new("{}").unwrap();
            let alerts = replay(&mut d, &traffic::day(seed), 512, SEC, HOUR).unwrap();
            assert!(alerts.is_empty(), "seed {seed}:\n{}", describe(&alerts));
        }
        // Several days: mornings full of yesterday's tokens, refresh tokens
        // that expire after a week.
        let days = Traffic {
            days: 9,
            ..Traffic::default()
        }
        .generate();
        let mut d = ExpiredStorm::new("{}").unwrap();
        let alerts = replay(&mut d, &days, 512, SEC, HOUR).unwrap();
        assert!(alerts.is_empty(), "{}", describe(&alerts));
    }

    #[test]
    fn a_stuck_client_and_a_token_collection_mixed_into_a_day() {
        let day = traffic::day(8);
        let t0 = traffic::START_US + 14 * HOUR;
        let mut attack = Vec::new();
        // A broken client: one expired token every 20 s for 10 minutes.
        for i in 0..30 {
            let mut e = expired(ATTACK_ID_BASE + i, 0, "81.2.69.160", "fp-stale");
            e.time_us = t0 + i * 20 * SEC;
            attack.push(e);
        }
        // Someone trying 25 old tokens of different users, none refreshed.
        for i in 0..25 {
            let mut e = expired(
                ATTACK_ID_BASE + 100 + i,
                0,
                "103.251.167.20",
                &format!("old{i}"),
            );
            e.time_us = t0 + 2 * HOUR + i * 3 * SEC;
            e.subject = Some(format!("usr_{i:06x}"));
            attack.push(e);
        }
        let mut d = ExpiredStorm::new("{}").unwrap();
        let alerts = replay(&mut d, &traffic::mix(&day, &attack), 512, SEC, HOUR).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 2, "{}", describe(&alerts));
        let (a, _) = &stored[0];
        assert_eq!(
            (a.rule.as_str(), a.severity, a.group_key.as_str()),
            (RULE_REPEAT, Severity::Medium, "token:fp-stale")
        );
        assert_eq!(
            a.evidence,
            (0..30).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>()
        );
        let (b, _) = &stored[1];
        assert_eq!(
            (b.rule.as_str(), b.severity, b.group_key.as_str()),
            (RULE_MANY, Severity::High, "ip:103.251.167.20")
        );
        assert_eq!(
            b.evidence,
            (100..125).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>()
        );
        // The stuck client's 30 events are one IP with one token: no "many".
        assert!(stored.iter().all(|(a, _)| a.group_key != "ip:81.2.69.160"));
    }

    #[test]
    fn a_flood_of_a_million_random_ips_and_tokens_stays_at_the_cap() {
        let mut d = ExpiredStorm::new("{}").unwrap();
        let cap = d.cap();
        let mut max = 0;
        traffic::flood(
            &mut d,
            1_000_000,
            10_000,
            |i, rng| {
                let fp = rng.hex(16);
                expired(i as i64, i as i64 / 1000, &traffic::random_ip(rng), &fp)
            },
            |d| {
                assert!(d.tracked() <= cap);
                max = max.max(d.tracked());
            },
        )
        .unwrap();
        assert!(max > cap - cap / 16 - 2, "{max}");
    }
}
