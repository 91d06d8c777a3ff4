//! `expired-storm`: a client repeatedly presenting expired tokens.
//!
//! # Rules
//!
//! Looks at `token.rejected` and `access.denied` events whose reason is in
//! `reasons` (`expired`, `refresh_expired`).
//!
//! **`expired-token-repeat`** (severity `repeat_severity`, group key
//! `token:<token_fp, else jti>`): the same token refused as expired
//! `same_token_threshold` times within `window_secs`. A healthy client
//! that wakes up with a stale token gets one refusal, refreshes and moves
//! on; one that keeps presenting it is broken, or it is not the owner
//! trying a token it found.
//!
//! **`expired-token-many`** (severity `many_severity`, group key
//! `ip:<client ip>`): `distinct_tokens_threshold` different expired tokens
//! from one client IP within `window_secs`: someone working through a
//! collection of old tokens (from logs, a breach, a proxy cache).
//!
//! One alert per incident; incidents end after `window_secs` without a
//! counted event (on events and on `tick`).
//!
//! # Config (JSON), every key optional
//!
//! ```json
//! { "same_token_threshold": 10, "distinct_tokens_threshold": 10,
//!   "window_secs": 600, "reasons": ["expired", "refresh_expired"],
//!   "repeat_severity": "medium", "many_severity": "high",
//!   "max_tracked": 100000 }
//! ```
//!
//! `max_tracked` caps tokens and IPs separately.

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, DistinctSet, EventRing,
    Incident, KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "expired-storm";
/// Rule: one expired token presented again and again.
pub const RULE_REPEAT: &str = "expired-token-repeat";
/// Rule: many different expired tokens from one IP.
pub const RULE_MANY: &str = "expired-token-many";
const MAX_EVIDENCE: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    same_token_threshold: u32,
    distinct_tokens_threshold: u32,
    window_secs: u64,
    reasons: Vec<String>,
    repeat_severity: String,
    many_severity: String,
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
            max_tracked: 100_000,
        }
    }
}

#[derive(Default)]
struct Counted {
    events: EventRing,
    tokens: DistinctSet,
    incident: Incident,
}

/// Expired tokens presented repeatedly, per token and per IP.
pub struct ExpiredStorm {
    same_token: usize,
    distinct_tokens: usize,
    window_us: i64,
    reasons: Vec<String>,
    repeat_severity: Severity,
    many_severity: Severity,
    ring_cap: usize,
    hasher: KeyHasher,
    tokens: BoundedMap<Counted>,
    ips: BoundedMap<Counted>,
}

impl ExpiredStorm {
    /// Tokens and IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.tokens.len() + self.ips.len()
    }

    fn expired(&mut self, ev: Event<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let now = ev.time_us();
        let since = now.saturating_sub(self.window_us);
        let window_us = self.window_us;
        let window_secs = window_us / 1_000_000;
        let ip = ev.client_ip();
        let token = ev.token_fp().or(ev.jti());
        let token_key = token.map(|t| self.hasher.key(t));
        if let (Some(token), Some(key)) = (token, token_key) {
            let s = self.tokens.get_or_insert_with(key, Counted::default);
            s.incident.close_if_quiet(now, window_us);
            s.events.prune(since);
            s.events.push(now, ev.id(), self.ring_cap);
            s.incident.touch(now);
            if s.events.len() >= self.same_token && s.incident.escalate(self.repeat_severity, now) {
                let summary = format!(
                    "expired token {token} of {:?} presented {} times within {window_secs}s (latest from {})",
                    ev.subject().unwrap_or("?"),
                    s.events.len(),
                    ip.unwrap_or("an unknown IP"),
                );
                out.emit(&Alert {
                    rule: RULE_REPEAT,
                    severity: self.repeat_severity,
                    subject: ev.subject(),
                    client_ip: ip,
                    summary: &summary,
                    group_key: &format!("token:{token}"),
                    evidence: &s.events.ids(),
                })?;
            }
        }
        if let (Some(ip), Some(key)) = (ip, token_key) {
            let s = self
                .ips
                .get_or_insert_with(self.hasher.key(ip), Counted::default);
            s.incident.close_if_quiet(now, window_us);
            s.events.prune(since);
            s.tokens.prune(since);
            s.events.push(now, ev.id(), self.ring_cap);
            s.tokens.insert(key, now, self.distinct_tokens);
            s.incident.touch(now);
            if s.tokens.len() >= self.distinct_tokens
                && s.incident.escalate(self.many_severity, now)
            {
                let summary = format!(
                    "{ip} presented {} different expired tokens within {window_secs}s",
                    s.tokens.len()
                );
                out.emit(&Alert {
                    rule: RULE_MANY,
                    severity: self.many_severity,
                    subject: ev.subject(),
                    client_ip: Some(ip),
                    summary: &summary,
                    group_key: &format!("ip:{ip}"),
                    evidence: &s.events.ids(),
                })?;
            }
        }
        Ok(())
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
        let same_token = c.same_token_threshold as usize;
        Ok(ExpiredStorm {
            same_token,
            distinct_tokens: c.distinct_tokens_threshold as usize,
            window_us: secs_to_us(NAME, "window_secs", c.window_secs)?,
            reasons: c.reasons,
            repeat_severity: parse_severity(NAME, "repeat_severity", &c.repeat_severity)?,
            many_severity: parse_severity(NAME, "many_severity", &c.many_severity)?,
            ring_cap: same_token.max(MAX_EVIDENCE),
            hasher: KeyHasher::new(),
            tokens: BoundedMap::new(c.max_tracked),
            ips: BoundedMap::new(c.max_tracked),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            if !matches!(ev.kind(), "token.rejected" | "access.denied") {
                continue;
            }
            if ev
                .reason()
                .is_some_and(|r| self.reasons.iter().any(|x| x == r))
            {
                self.expired(ev, out)?;
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, _out: &mut Alerts<'_>) -> detector_sdk::Result {
        let window_us = self.window_us;
        let since = now_us.saturating_sub(window_us);
        let keep = |_, s: &mut Counted| {
            s.events.prune(since);
            s.tokens.prune(since);
            s.incident.close_if_quiet(now_us, window_us);
            !s.events.is_empty() || s.incident.is_open()
        };
        self.tokens.retain(keep);
        self.ips.retain(keep);
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
}
