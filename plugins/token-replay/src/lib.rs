//! `token-replay`: one access token (`jti`) used by more than one party, or
//! used after it was revoked.
//!
//! # Rules
//!
//! **`token-replay`** (severity `severity`, group key `jti:<jti>`): among
//! successful uses of one `jti` (events of `use_kinds`, by default
//! `access.granted`), any of
//! - more than `max_ips_per_token` distinct client IPs;
//! - the token going back and forth between IPs `ip_flips` times (A, B, A,
//!   B): two parties using it at once. A phone moving from Wi-Fi to mobile
//!   data goes A…A B…B, which is not a flip;
//! - a different User-Agent than the token's first use (a client does not
//!   change its User-Agent mid-token; a thief's tooling does).
//!
//! **`revoked-token-use`** (severity `revoked_use_severity`, group key
//! `revoked:<jti, else token_fp>`): a `token.rejected` / `access.denied`
//! whose reason is in `revoked_reasons` (`revoked`: the token or its refresh
//! family was revoked; `refresh_revoked`: a refresh token of a revoked
//! family). Someone still holds and tries a token that was taken away.
//!
//! **`revoked-token-accepted`** (severity `revoked_accepted_severity`,
//! group key `revoked-accepted:<jti>`): a use of `use_kinds` for a `jti`
//! after a `token.revoked` event for it: revocation did not take effect.
//!
//! Only `access.granted` counts as a use by default: `token.verified` from
//! introspection carries the resource server's IP, not the user's, and
//! would look like a second party.
//!
//! A token's state is forgotten after `idle_secs` without use (on events
//! and on `tick`), which also ends its incident. One alert per incident;
//! a token that trips several conditions is still one alert.
//!
//! # Config (JSON), every key optional
//!
//! ```json
//! { "use_kinds": ["access.granted"], "max_ips_per_token": 2, "ip_flips": 2,
//!   "alert_on_user_agent_change": true, "idle_secs": 3600,
//!   "revoked_reasons": ["revoked", "refresh_revoked"],
//!   "revoked_memory_secs": 86400,
//!   "severity": "high", "revoked_use_severity": "medium",
//!   "revoked_accepted_severity": "critical",
//!   "max_tracked_tokens": 200000, "max_revoked_tokens": 100000 }
//! ```
//!
//! `ip_flips: 0` turns flip detection off (dual-stack clients alternating
//! between their IPv4 and IPv6 address would otherwise trip it).

use detector_sdk::kit::{
    parse_severity, secs_to_us, BoundedMap, ConfigError, Incident, Key, KeyHasher, RecentIds,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "token-replay";
/// Rule: one token used by more than one party.
pub const RULE_REPLAY: &str = "token-replay";
/// Rule: a revoked token presented again.
pub const RULE_REVOKED_USE: &str = "revoked-token-use";
/// Rule: a revoked token accepted.
pub const RULE_REVOKED_ACCEPTED: &str = "revoked-token-accepted";
const MAX_IPS: usize = 3;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    use_kinds: Vec<String>,
    max_ips_per_token: u32,
    ip_flips: u32,
    alert_on_user_agent_change: bool,
    idle_secs: u64,
    revoked_reasons: Vec<String>,
    revoked_memory_secs: u64,
    severity: String,
    revoked_use_severity: String,
    revoked_accepted_severity: String,
    max_tracked_tokens: usize,
    max_revoked_tokens: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            use_kinds: vec!["access.granted".into()],
            max_ips_per_token: 2,
            ip_flips: 2,
            alert_on_user_agent_change: true,
            idle_secs: 3600,
            revoked_reasons: vec!["revoked".into(), "refresh_revoked".into()],
            revoked_memory_secs: 86_400,
            severity: "high".into(),
            revoked_use_severity: "medium".into(),
            revoked_accepted_severity: "critical".into(),
            max_tracked_tokens: 200_000,
            max_revoked_tokens: 100_000,
        }
    }
}

/// Everything kept per token: fixed size, no heap.
#[derive(Default)]
struct TokenState {
    ips: [Key; MAX_IPS + 1],
    n_ips: u8,
    last_ip: Key,
    flips: u32,
    user_agent: Option<Key>,
    ua_changed: bool,
    last_us: i64,
    recent: RecentIds<8>,
    incident: Incident,
}

#[derive(Default)]
struct Revoked {
    at_us: i64,
    incident: Incident,
}

/// Replayed and revoked access tokens.
pub struct TokenReplay {
    use_kinds: Vec<String>,
    max_ips: usize,
    ip_flips: u32,
    ua_change: bool,
    idle_us: i64,
    revoked_reasons: Vec<String>,
    revoked_memory_us: i64,
    severity: Severity,
    revoked_use_severity: Severity,
    revoked_accepted_severity: Severity,
    hasher: KeyHasher,
    tokens: BoundedMap<TokenState>,
    revoked: BoundedMap<Revoked>,
    rejected: BoundedMap<Incident>,
}

impl TokenReplay {
    /// Tokens currently tracked (in use, revoked, or refused as revoked).
    pub fn tracked(&self) -> usize {
        self.tokens.len() + self.revoked.len() + self.rejected.len()
    }

    fn is_use(&self, kind: &str) -> bool {
        self.use_kinds.iter().any(|k| k == kind)
    }

    fn token_use(
        &mut self,
        ev: Event<'_>,
        jti: &str,
        out: &mut Alerts<'_>,
    ) -> detector_sdk::Result {
        let now = ev.time_us();
        let key = self.hasher.key(jti);
        if let Some(rev) = self.revoked.get_mut(key) {
            rev.incident.close_if_quiet(now, self.idle_us);
            if now >= rev.at_us && rev.incident.escalate(self.revoked_accepted_severity, now) {
                let summary = format!(
                    "revoked token {jti} was accepted from {}: revocation is not being enforced",
                    ev.client_ip().unwrap_or("an unknown IP")
                );
                out.emit(&Alert {
                    rule: RULE_REVOKED_ACCEPTED,
                    severity: self.revoked_accepted_severity,
                    subject: ev.subject(),
                    client_ip: ev.client_ip(),
                    summary: &summary,
                    group_key: &format!("revoked-accepted:{jti}"),
                    evidence: &[ev.id()],
                })?;
            }
        }
        let ip = ev.client_ip().map(|ip| self.hasher.key(ip));
        let ua = ev.user_agent().map(|ua| self.hasher.key(ua));
        let idle_us = self.idle_us;
        let state = self.tokens.get_or_insert_with(key, TokenState::default);
        if state.n_ips > 0 && now.saturating_sub(state.last_us) >= idle_us {
            *state = TokenState::default();
        }
        state.last_us = state.last_us.max(now);
        state.recent.push(ev.id());
        let mut reason = None;
        if let Some(ip) = ip {
            let known = state.ips[..usize::from(state.n_ips)].contains(&ip);
            if !known {
                if usize::from(state.n_ips) <= self.max_ips {
                    state.ips[usize::from(state.n_ips)] = ip;
                    state.n_ips += 1;
                }
                if usize::from(state.n_ips) > self.max_ips {
                    reason = Some(format!("used from more than {} client IPs", self.max_ips));
                }
            } else if state.n_ips > 1 && state.last_ip != ip {
                state.flips += 1;
                if self.ip_flips > 0 && state.flips >= self.ip_flips {
                    reason =
                        Some("alternating between client IPs, as if two parties hold it".into());
                }
            }
            state.last_ip = ip;
        }
        if let Some(ua) = ua {
            match state.user_agent {
                None => state.user_agent = Some(ua),
                Some(first) if first != ua && self.ua_change => {
                    state.ua_changed = true;
                    reason =
                        Some("presented with a different User-Agent than at its first use".into());
                }
                Some(_) => {}
            }
        }
        if state.incident.is_open() {
            state.incident.touch(now);
        }
        let Some(reason) = reason else { return Ok(()) };
        if state.incident.escalate(self.severity, now) {
            let summary = format!(
                "token {jti} of {:?} {reason} (now {})",
                ev.subject().unwrap_or("?"),
                ev.client_ip().unwrap_or("an unknown IP"),
            );
            out.emit(&Alert {
                rule: RULE_REPLAY,
                severity: self.severity,
                subject: ev.subject(),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("jti:{jti}"),
                evidence: &state.recent.to_vec(),
            })?;
        }
        Ok(())
    }

    fn revoked_presented(
        &mut self,
        ev: Event<'_>,
        token: &str,
        out: &mut Alerts<'_>,
    ) -> detector_sdk::Result {
        let now = ev.time_us();
        let incident = self
            .rejected
            .get_or_insert_with(self.hasher.key(token), Incident::default);
        incident.close_if_quiet(now, self.idle_us);
        incident.touch(now);
        if incident.escalate(self.revoked_use_severity, now) {
            let summary = format!(
                "revoked token {token} of {:?} presented again from {} ({})",
                ev.subject().unwrap_or("?"),
                ev.client_ip().unwrap_or("an unknown IP"),
                ev.reason().unwrap_or("revoked"),
            );
            out.emit(&Alert {
                rule: RULE_REVOKED_USE,
                severity: self.revoked_use_severity,
                subject: ev.subject(),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("revoked:{token}"),
                evidence: &[ev.id()],
            })?;
        }
        Ok(())
    }
}

impl Detector for TokenReplay {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        if !(1..=MAX_IPS as u32).contains(&c.max_ips_per_token) {
            return Err(ConfigError::new(
                NAME,
                format!(
                    "max_ips_per_token must be between 1 and {MAX_IPS}, got {}",
                    c.max_ips_per_token
                ),
            )
            .into());
        }
        if c.use_kinds.is_empty() {
            return Err(ConfigError::new(
                NAME,
                "use_kinds is empty, so no token use would be seen; the usual value is [\"access.granted\"]",
            )
            .into());
        }
        if c.max_tracked_tokens == 0 || c.max_revoked_tokens == 0 {
            return Err(ConfigError::new(
                NAME,
                "max_tracked_tokens and max_revoked_tokens must be at least 1",
            )
            .into());
        }
        Ok(TokenReplay {
            use_kinds: c.use_kinds,
            max_ips: c.max_ips_per_token as usize,
            ip_flips: c.ip_flips,
            ua_change: c.alert_on_user_agent_change,
            idle_us: secs_to_us(NAME, "idle_secs", c.idle_secs)?,
            revoked_reasons: c.revoked_reasons,
            revoked_memory_us: secs_to_us(NAME, "revoked_memory_secs", c.revoked_memory_secs)?,
            severity: parse_severity(NAME, "severity", &c.severity)?,
            revoked_use_severity: parse_severity(
                NAME,
                "revoked_use_severity",
                &c.revoked_use_severity,
            )?,
            revoked_accepted_severity: parse_severity(
                NAME,
                "revoked_accepted_severity",
                &c.revoked_accepted_severity,
            )?,
            hasher: KeyHasher::new(),
            tokens: BoundedMap::new(c.max_tracked_tokens),
            revoked: BoundedMap::new(c.max_revoked_tokens),
            rejected: BoundedMap::new(c.max_revoked_tokens),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            let kind = ev.kind();
            if self.is_use(kind) {
                if ev.is_failure() {
                    continue;
                }
                if let Some(jti) = ev.jti() {
                    self.token_use(ev, jti, out)?;
                }
                continue;
            }
            match kind {
                "token.revoked" => {
                    if let Some(jti) = ev.jti() {
                        let now = ev.time_us();
                        let key = self.hasher.key(jti);
                        let rev = self.revoked.get_or_insert_with(key, Revoked::default);
                        rev.at_us = now;
                        // The token is over; its replay state is not needed.
                        self.tokens.remove(key);
                    }
                }
                "token.rejected" | "access.denied" => {
                    let Some(reason) = ev.reason() else { continue };
                    if !self.revoked_reasons.iter().any(|r| r == reason) {
                        continue;
                    }
                    if let Some(token) = ev.jti().or(ev.token_fp()) {
                        self.revoked_presented(ev, token, out)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, _out: &mut Alerts<'_>) -> detector_sdk::Result {
        let idle_us = self.idle_us;
        self.tokens
            .retain(|_, s| now_us.saturating_sub(s.last_us) < idle_us);
        let memory_us = self.revoked_memory_us;
        self.revoked.retain(|_, r| {
            r.incident.close_if_quiet(now_us, idle_us);
            now_us.saturating_sub(r.at_us) < memory_us || r.incident.is_open()
        });
        self.rejected.retain(|_, i| {
            i.close_if_quiet(now_us, idle_us);
            i.is_open()
        });
        Ok(())
    }
}

detector_sdk::export_detector!(
    TokenReplay,
    "token-replay",
    env!("CARGO_PKG_VERSION"),
    "one access token used from several IPs or user agents, or after revocation"
);

#[cfg(test)]
mod tests {
    use super::*;
    use detector_sdk::testing::{run_batch, run_tick, EventData};

    fn used(id: i64, secs: i64, jti: &str, ip: &str, ua: &str) -> EventData {
        EventData {
            id,
            time_us: secs * 1_000_000,
            kind: "access.granted".into(),
            outcome: "success".into(),
            subject: Some("alice".into()),
            jti: Some(jti.into()),
            client_ip: Some(ip.into()),
            user_agent: Some(ua.into()),
            source: "test".into(),
            ..EventData::default()
        }
    }

    #[test]
    fn a_network_switch_is_fine_but_alternating_ips_are_replay() {
        let mut d = TokenReplay::new("{}").unwrap();
        let switch = [
            used(1, 0, "t1", "a", "ua"),
            used(2, 1, "t1", "a", "ua"),
            used(3, 2, "t1", "b", "ua"),
        ];
        assert!(run_batch(&mut d, &switch).unwrap().is_empty());
        let alerts = run_batch(
            &mut d,
            &[used(4, 3, "t1", "a", "ua"), used(5, 4, "t1", "b", "ua")],
        )
        .unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule, RULE_REPLAY);
        assert_eq!(alerts[0].group_key, "jti:t1");
        assert_eq!(alerts[0].evidence, vec![1, 2, 3, 4, 5]);
        let more = run_batch(&mut d, &[used(6, 5, "t1", "c", "other")]).unwrap();
        assert!(more.is_empty(), "one alert per incident");
    }

    #[test]
    fn a_third_ip_or_a_new_user_agent_is_replay() {
        let mut d = TokenReplay::new("{}").unwrap();
        let three = [
            used(1, 0, "t", "a", "ua"),
            used(2, 1, "t", "b", "ua"),
            used(3, 2, "t", "c", "ua"),
        ];
        assert_eq!(run_batch(&mut d, &three).unwrap().len(), 1);
        let ua = [used(4, 0, "u", "a", "ua"), used(5, 1, "u", "a", "curl/8")];
        let alerts = run_batch(&mut d, &ua).unwrap();
        assert_eq!(alerts.len(), 1);
        assert!(
            alerts[0].summary.contains("User-Agent"),
            "{}",
            alerts[0].summary
        );
    }

    #[test]
    fn revoked_tokens_presented_or_accepted() {
        let mut d = TokenReplay::new("{}").unwrap();
        let revoke = EventData {
            id: 1,
            time_us: 10,
            kind: "token.revoked".into(),
            outcome: "success".into(),
            jti: Some("t".into()),
            source: "test".into(),
            ..EventData::default()
        };
        let mut denied = used(2, 1, "t", "a", "ua");
        denied.kind = "access.denied".into();
        denied.outcome = "failure".into();
        denied.reason = Some("revoked".into());
        let alerts = run_batch(&mut d, &[revoke, denied.clone(), denied]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].rule.as_str(), alerts[0].severity),
            (RULE_REVOKED_USE, Severity::Medium)
        );
        let alerts = run_batch(&mut d, &[used(3, 2, "t", "a", "ua")]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].rule.as_str(), alerts[0].severity),
            (RULE_REVOKED_ACCEPTED, Severity::Critical)
        );
    }

    #[test]
    fn idle_tokens_are_forgotten_on_tick() {
        let mut d = TokenReplay::new(r#"{"idle_secs": 60}"#).unwrap();
        run_batch(&mut d, &[used(1, 0, "t", "a", "ua")]).unwrap();
        assert_eq!(d.tracked(), 1);
        run_tick(&mut d, 61 * 1_000_000).unwrap();
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            TokenReplay::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err(r#"{"max_ips_per_token": 9}"#),
            "token-replay config: max_ips_per_token must be between 1 and 3, got 9"
        );
        assert!(err(r#"{"use_kinds": []}"#).contains("use_kinds is empty"));
        assert!(err(r#"{"idle_secs": 0}"#).contains("idle_secs"));
    }
}
