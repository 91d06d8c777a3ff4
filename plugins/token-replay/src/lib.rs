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
//! and on `tick`), which also ends its incident. One alert per incident; a
//! token that trips several conditions is still one alert, and its later
//! uses (or later refusals, for the revoked rules) are attached to that
//! alert as evidence, in an update at most every `update_secs`.
//!
//! # Config (JSON), every key optional
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `use_kinds` | `["access.granted"]` | event kinds that count as a use of a token |
//! | `max_ips_per_token` | `2` | distinct client IPs a token may be used from (1..=3) |
//! | `ip_flips` | `2` | returns to an earlier IP that raise the alert; `0` turns this off |
//! | `alert_on_user_agent_change` | `true` | alert when a token's User-Agent changes |
//! | `idle_secs` | `3600` | a token unused this long is forgotten; also the quiet time that ends an incident |
//! | `revoked_reasons` | `["revoked", "refresh_revoked"]` | refusal reasons meaning "this token was revoked" |
//! | `revoked_memory_secs` | `86400` | how long a `token.revoked` jti is remembered |
//! | `severity` | `"high"` | severity of `token-replay` |
//! | `revoked_use_severity` | `"medium"` | severity of `revoked-token-use` |
//! | `revoked_accepted_severity` | `"critical"` | severity of `revoked-token-accepted` |
//! | `update_secs` | `60` | at most one evidence update per incident this often |
//! | `max_tracked_tokens` | `200000` | hard cap on tokens in use tracked |
//! | `max_revoked_tokens` | `100000` | hard cap on revoked tokens remembered (and, separately, on revoked tokens presented) |
//!
//! `ip_flips: 0` turns flip detection off (dual-stack clients alternating
//! between their IPv4 and IPv6 address would otherwise trip it). State per
//! token is fixed-size (no heap) until an alert is raised.

use detector_sdk::kit::{
    parse_severity, secs_to_us, BoundedMap, ConfigError, IncidentAlert, Key, KeyHasher, RecentIds,
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
    update_secs: u64,
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
            update_secs: 60,
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
    alert: IncidentAlert,
}

#[derive(Default)]
struct Revoked {
    at_us: i64,
    alert: IncidentAlert,
}

/// Replayed and revoked access tokens.
pub struct TokenReplay {
    use_kinds: Vec<String>,
    max_ips: usize,
    ip_flips: u32,
    ua_change: bool,
    idle_us: i64,
    update_us: i64,
    revoked_reasons: Vec<String>,
    revoked_memory_us: i64,
    severity: Severity,
    revoked_use_severity: Severity,
    revoked_accepted_severity: Severity,
    hasher: KeyHasher,
    tokens: BoundedMap<TokenState>,
    revoked: BoundedMap<Revoked>,
    rejected: BoundedMap<IncidentAlert>,
}

impl TokenReplay {
    /// Tokens currently tracked (in use, revoked, or refused as revoked).
    pub fn tracked(&self) -> usize {
        self.tokens.len() + self.revoked.len() + self.rejected.len()
    }

    /// The hard caps of the three maps, summed.
    pub fn cap(&self) -> usize {
        self.tokens.cap() + self.revoked.cap() + self.rejected.cap()
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
            rev.alert.close_if_quiet(now, self.idle_us, out)?;
            if now >= rev.at_us {
                if rev.alert.add_evidence(ev.id(), now) {
                    rev.alert.flush_due(now, self.update_us, out)?;
                } else {
                    let summary = format!(
                        "revoked token {jti} was accepted from {}: revocation is not being enforced",
                        ev.client_ip().unwrap_or("an unknown IP")
                    );
                    rev.alert.raise(
                        &Alert {
                            rule: RULE_REVOKED_ACCEPTED,
                            severity: self.revoked_accepted_severity,
                            subject: ev.subject(),
                            client_ip: ev.client_ip(),
                            summary: &summary,
                            group_key: &format!("revoked-accepted:{jti}"),
                            evidence: &[ev.id()],
                        },
                        now,
                        out,
                    )?;
                }
            }
        }
        let ip = ev.client_ip().map(|ip| self.hasher.key(ip));
        let ua = ev.user_agent().map(|ua| self.hasher.key(ua));
        let idle_us = self.idle_us;
        let update_us = self.update_us;
        let state = self.tokens.get_or_insert_with(key, TokenState::default);
        if state.n_ips > 0 && now.saturating_sub(state.last_us) >= idle_us {
            state.alert.close_if_quiet(now, idle_us, out)?;
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
        if state.alert.add_evidence(ev.id(), now) {
            state.alert.flush_due(now, update_us, out)?;
            return Ok(());
        }
        let Some(reason) = reason else { return Ok(()) };
        let summary = format!(
            "token {jti} of {:?} {reason} (now {})",
            ev.subject().unwrap_or("?"),
            ev.client_ip().unwrap_or("an unknown IP"),
        );
        state.alert.raise(
            &Alert {
                rule: RULE_REPLAY,
                severity: self.severity,
                subject: ev.subject(),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("jti:{jti}"),
                evidence: &state.recent.to_vec(),
            },
            now,
            out,
        )?;
        Ok(())
    }

    fn revoked_presented(
        &mut self,
        ev: Event<'_>,
        token: &str,
        out: &mut Alerts<'_>,
    ) -> detector_sdk::Result {
        let now = ev.time_us();
        let alert = self
            .rejected
            .get_or_insert_with(self.hasher.key(token), IncidentAlert::default);
        alert.close_if_quiet(now, self.idle_us, out)?;
        if alert.add_evidence(ev.id(), now) {
            alert.flush_due(now, self.update_us, out)?;
            return Ok(());
        }
        let summary = format!(
            "revoked token {token} of {:?} presented again from {} ({})",
            ev.subject().unwrap_or("?"),
            ev.client_ip().unwrap_or("an unknown IP"),
            ev.reason().unwrap_or("revoked"),
        );
        alert.raise(
            &Alert {
                rule: RULE_REVOKED_USE,
                severity: self.revoked_use_severity,
                subject: ev.subject(),
                client_ip: ev.client_ip(),
                summary: &summary,
                group_key: &format!("revoked:{token}"),
                evidence: &[ev.id()],
            },
            now,
            out,
        )?;
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
            update_us: secs_to_us(NAME, "update_secs", c.update_secs)?,
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
                // A failed revocation (the token was invalid) revoked nothing.
                "token.revoked" if !ev.is_failure() => {
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

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let (idle_us, update_us) = (self.idle_us, self.update_us);
        type R = Result<bool, detector_sdk::EmitError>;
        self.tokens.try_retain(|_, s| -> R {
            s.alert.close_if_quiet(now_us, idle_us, out)?;
            s.alert.flush_due(now_us, update_us, out)?;
            Ok(now_us.saturating_sub(s.last_us) < idle_us || s.alert.is_open())
        })?;
        let memory_us = self.revoked_memory_us;
        self.revoked.try_retain(|_, r| -> R {
            r.alert.close_if_quiet(now_us, idle_us, out)?;
            r.alert.flush_due(now_us, update_us, out)?;
            Ok(now_us.saturating_sub(r.at_us) < memory_us || r.alert.is_open())
        })?;
        self.rejected.try_retain(|_, a| -> R {
            a.close_if_quiet(now_us, idle_us, out)?;
            a.flush_due(now_us, update_us, out)?;
            Ok(a.is_open())
        })?;
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
    use detector_sdk::testing::traffic::{
        self, as_stored, describe, replay, ATTACK_ID_BASE, HOUR, MIN, SEC,
    };
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

    #[test]
    fn benign_days_raise_nothing() {
        for seed in [1, 2, 3] {
            let mut d = TokenReplay::new("{}").unwrap();
            let alerts = replay(&mut d, &traffic::day(seed), 512, SEC, HOUR).unwrap();
            assert!(alerts.is_empty(), "seed {seed}:\n{}", describe(&alerts));
        }
    }

    #[test]
    fn a_stolen_and_a_revoked_token_mixed_into_a_day() {
        let day = traffic::day(9);
        let victim_use = day
            .iter()
            .find(|e| e.kind == "access.granted" && e.username.is_some())
            .unwrap()
            .clone();
        let jti = victim_use.jti.clone().unwrap();
        let thief = "91.240.118.2";
        let mut attack: Vec<EventData> = (0..3)
            .map(|i| {
                let mut e = victim_use.clone();
                e.id = ATTACK_ID_BASE + i;
                e.time_us = victim_use.time_us + (i + 1) * MIN;
                e.client_ip = Some(thief.into());
                e.user_agent = Some("curl/8.5.0".into());
                e
            })
            .collect();
        // A logged-out token that someone keeps presenting.
        let mut revoke = traffic::event(
            ATTACK_ID_BASE + 10,
            victim_use.time_us + HOUR,
            "token.revoked",
            "198.51.100.11",
            "Mozilla/5.0",
        );
        revoke.jti = Some("jti-logged-out".into());
        revoke.subject = Some("usr_aaaaaa".into());
        attack.push(revoke);
        for i in 0..4 {
            let mut e = traffic::event(
                ATTACK_ID_BASE + 11 + i,
                victim_use.time_us + HOUR + (i + 1) * 30 * SEC,
                "access.denied",
                thief,
                "curl/8.5.0",
            );
            e.reason = Some("revoked".into());
            e.jti = Some("jti-logged-out".into());
            e.subject = Some("usr_aaaaaa".into());
            attack.push(e);
        }
        let mut d = TokenReplay::new("{}").unwrap();
        let alerts = replay(&mut d, &traffic::mix(&day, &attack), 512, SEC, 2 * HOUR).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 2, "{}", describe(&alerts));
        let (a, _) = &stored[0];
        assert_eq!(
            (a.rule.as_str(), a.severity, a.group_key.clone()),
            (RULE_REPLAY, Severity::High, format!("jti:{jti}"))
        );
        assert_eq!(a.client_ip.as_deref(), Some(thief));
        for i in 0..3 {
            assert!(
                a.evidence.contains(&(ATTACK_ID_BASE + i)),
                "{:?}",
                a.evidence
            );
        }
        assert!(
            a.evidence.contains(&victim_use.id),
            "the owner's use is evidence too"
        );
        let same_token = |id: &i64| {
            day.iter()
                .chain(&attack)
                .find(|e| e.id == *id)
                .is_some_and(|e| e.jti.as_deref() == Some(jti.as_str()))
        };
        assert!(a.evidence.iter().all(same_token));
        let (b, _) = &stored[1];
        assert_eq!(
            (b.rule.as_str(), b.severity, b.group_key.as_str()),
            (RULE_REVOKED_USE, Severity::Medium, "revoked:jti-logged-out")
        );
        assert_eq!(
            b.evidence,
            (11..15).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_failed_revocation_revokes_nothing() {
        let mut d = TokenReplay::new("{}").unwrap();
        let mut revoke = used(1, 0, "t", "a", "ua");
        revoke.kind = "token.revoked".into();
        revoke.outcome = "failure".into();
        revoke.reason = Some("bad_signature".into());
        let alerts = run_batch(&mut d, &[revoke, used(2, 1, "t", "a", "ua")]).unwrap();
        assert!(alerts.is_empty(), "{}", describe(&alerts));
    }

    #[test]
    fn a_flood_of_a_million_random_tokens_and_ips_stays_at_the_cap() {
        let mut d = TokenReplay::new("{}").unwrap();
        let cap = d.tokens.cap();
        let mut max = 0;
        traffic::flood(
            &mut d,
            1_000_000,
            10_000,
            |i, rng| {
                let jti = rng.hex(16);
                used(
                    i as i64,
                    i as i64 / 1000,
                    &jti,
                    &traffic::random_ip(rng),
                    "ua",
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
