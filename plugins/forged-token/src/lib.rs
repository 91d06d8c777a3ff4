//! `forged-token`: forged, downgraded or garbage tokens from one source.
//!
//! # Rule
//!
//! Looks at `token.rejected` and `access.denied` events per client IP:
//! - a reason in `immediate_reasons` (default `alg_not_allowed`: `alg:
//!   none`, HS256 signed with the public key, and other algorithm
//!   confusion) raises an alert at `severity` on the first event — no
//!   client library produces that by accident;
//! - `threshold` events with a reason in `reasons` within `window_secs`
//!   raise an alert: at `severity` when the window holds a
//!   `bad_signature` or an immediate reason (someone is forging
//!   signatures), else at `low_signal_severity` (only malformed tokens or
//!   unknown key ids: a probe, or a badly broken client).
//!
//! One alert per incident: later counted events from the IP are attached
//! to it as evidence (an update at most every `update_secs`), and a
//! forged-signature event escalates a low-signal incident. The incident
//! ends after `window_secs` without a counted event (on events and on
//! `tick`).
//!
//! # Alert
//!
//! - rule: `forged-token`
//! - severity: `high`, or `medium` for a burst of only malformed tokens /
//!   unknown key ids.
//! - group key: `ip:<client ip>` — match IP/CIDR exceptions on the alert's
//!   `client_ip`.
//! - evidence: the counted events in the window when raised (at most
//!   `max(threshold, 16)`), then every later one (at most 64 per update).
//!
//! # Config (JSON), every key optional
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `threshold` | `5` | counted refusals within the window that raise the alert (≥ 1) |
//! | `window_secs` | `300` | sliding window; also the quiet time that ends an incident |
//! | `reasons` | `["bad_signature", "alg_not_allowed", "unknown_kid", "malformed", "unsupported_crit", "bad_typ", "jwe_not_supported"]` | refusal reasons counted |
//! | `immediate_reasons` | `["alg_not_allowed"]` | reasons that alert on the first event |
//! | `severity` | `"high"` | severity when a forged signature or an immediate reason is in the window |
//! | `low_signal_severity` | `"medium"` | severity otherwise |
//! | `update_secs` | `60` | at most one evidence update per incident this often |
//! | `max_tracked_ips` | `100000` | hard cap on client IPs tracked |
//!
//! The server refuses a token whose header `alg` differs from the
//! algorithm of the key its `kid` names as `alg_not_allowed`, so `alg:
//! none` and RS256→HS256 confusion arrive as that reason.

use detector_sdk::kit::{
    at_least, parse_severity, secs_to_us, BoundedMap, ConfigError, EventRing, IncidentAlert,
    KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Event, Severity};
use serde::Deserialize;

const NAME: &str = "forged-token";
/// Rule name on every alert of this detector.
pub const RULE: &str = "forged-token";
const MIN_RING: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    threshold: u32,
    window_secs: u64,
    reasons: Vec<String>,
    immediate_reasons: Vec<String>,
    severity: String,
    low_signal_severity: String,
    update_secs: u64,
    max_tracked_ips: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 5,
            window_secs: 300,
            reasons: [
                "bad_signature",
                "alg_not_allowed",
                "unknown_kid",
                "malformed",
                "unsupported_crit",
                "bad_typ",
                "jwe_not_supported",
            ]
            .map(String::from)
            .to_vec(),
            immediate_reasons: vec!["alg_not_allowed".into()],
            severity: "high".into(),
            low_signal_severity: "medium".into(),
            update_secs: 60,
            max_tracked_ips: 100_000,
        }
    }
}

struct IpState {
    events: EventRing,
    /// Time of the newest forged-signature event, if any.
    strong_us: Option<i64>,
    alert: IncidentAlert,
}

/// Forged and downgraded tokens per client IP.
pub struct ForgedToken {
    threshold: usize,
    window_us: i64,
    update_us: i64,
    reasons: Vec<String>,
    immediate: Vec<String>,
    severity: Severity,
    low_signal_severity: Severity,
    ring_cap: usize,
    hasher: KeyHasher,
    ips: BoundedMap<IpState>,
}

impl ForgedToken {
    /// Client IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.ips.len()
    }

    /// The hard cap on client IPs tracked.
    pub fn cap(&self) -> usize {
        self.ips.cap()
    }

    fn rejected(
        &mut self,
        ev: Event<'_>,
        ip: &str,
        reason: &str,
        out: &mut Alerts<'_>,
    ) -> detector_sdk::Result {
        let now = ev.time_us();
        let window_us = self.window_us;
        let immediate = self.immediate.iter().any(|r| r == reason);
        let strong = immediate || reason == "bad_signature";
        let state = self
            .ips
            .get_or_insert_with(self.hasher.key(ip), || IpState {
                events: EventRing::new(),
                strong_us: None,
                alert: IncidentAlert::default(),
            });
        state.alert.close_if_quiet(now, window_us, out)?;
        state.events.prune(now.saturating_sub(window_us));
        state.events.push(now, ev.id(), self.ring_cap);
        if strong {
            state.strong_us = Some(now);
        }
        let strong_in_window = state
            .strong_us
            .is_some_and(|t| now.saturating_sub(t) < window_us);
        let severity = if strong_in_window {
            self.severity
        } else {
            self.low_signal_severity
        };
        let open = state.alert.is_open();
        if open {
            state.alert.add_evidence(ev.id(), now);
        }
        if !(immediate || state.events.len() >= self.threshold)
            || state.alert.raised().is_some_and(|s| s >= severity)
        {
            state.alert.flush_due(now, self.update_us, out)?;
            return Ok(());
        }
        let alg = ev.alg().map(|a| format!(", alg {a:?}")).unwrap_or_default();
        let summary = if immediate && state.events.len() < self.threshold {
            format!("{ip} presented a token refused as {reason}{alg}: an algorithm downgrade or confusion attempt")
        } else {
            format!(
                "{ip} presented {} invalid tokens within {}s (latest: {reason}{alg})",
                state.events.len(),
                window_us / 1_000_000
            )
        };
        let evidence = if open {
            vec![ev.id()]
        } else {
            state.events.ids()
        };
        state.alert.raise(
            &Alert {
                rule: RULE,
                severity,
                subject: ev.subject(),
                client_ip: Some(ip),
                summary: &summary,
                group_key: &format!("ip:{ip}"),
                evidence: &evidence,
            },
            now,
            out,
        )?;
        Ok(())
    }
}

impl Detector for ForgedToken {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        at_least(NAME, "threshold", c.threshold.into(), 1)?;
        at_least(NAME, "max_tracked_ips", c.max_tracked_ips as u64, 1)?;
        if c.reasons.is_empty() && c.immediate_reasons.is_empty() {
            return Err(ConfigError::new(
                NAME,
                "reasons and immediate_reasons are both empty, so nothing would be counted",
            )
            .into());
        }
        let threshold = c.threshold as usize;
        let mut reasons = c.reasons;
        // An immediate reason is also counted towards the burst.
        for r in &c.immediate_reasons {
            if !reasons.contains(r) {
                reasons.push(r.clone());
            }
        }
        Ok(ForgedToken {
            threshold,
            window_us: secs_to_us(NAME, "window_secs", c.window_secs)?,
            update_us: secs_to_us(NAME, "update_secs", c.update_secs)?,
            reasons,
            immediate: c.immediate_reasons,
            severity: parse_severity(NAME, "severity", &c.severity)?,
            low_signal_severity: parse_severity(
                NAME,
                "low_signal_severity",
                &c.low_signal_severity,
            )?,
            ring_cap: threshold.max(MIN_RING),
            hasher: KeyHasher::new(),
            ips: BoundedMap::new(c.max_tracked_ips),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            if !matches!(ev.kind(), "token.rejected" | "access.denied") {
                continue;
            }
            let (Some(ip), Some(reason)) = (ev.client_ip(), ev.reason()) else {
                continue;
            };
            if self.reasons.iter().any(|r| r == reason) {
                self.rejected(ev, ip, reason, out)?;
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let (window_us, update_us) = (self.window_us, self.update_us);
        self.ips.try_retain(|_, s| {
            s.events.prune(now_us.saturating_sub(window_us));
            s.alert.close_if_quiet(now_us, window_us, out)?;
            s.alert.flush_due(now_us, update_us, out)?;
            Ok::<_, detector_sdk::EmitError>(!s.events.is_empty() || s.alert.is_open())
        })?;
        Ok(())
    }
}

detector_sdk::export_detector!(
    ForgedToken,
    "forged-token",
    env!("CARGO_PKG_VERSION"),
    "forged, downgraded (alg none / confusion) or malformed tokens from one source"
);

#[cfg(test)]
mod tests {
    use super::*;
    use detector_sdk::testing::traffic::{
        self, as_stored, describe, replay, ATTACK_ID_BASE, HOUR, MIN, SEC,
    };
    use detector_sdk::testing::{run_batch, run_tick, EventData};

    fn rejected(id: i64, secs: i64, ip: &str, reason: &str) -> EventData {
        EventData {
            id,
            time_us: secs * 1_000_000,
            kind: "access.denied".into(),
            outcome: "failure".into(),
            reason: Some(reason.into()),
            client_ip: Some(ip.into()),
            source: "test".into(),
            ..EventData::default()
        }
    }

    #[test]
    fn alg_none_alerts_at_once_and_the_burst_does_not_alert_again() {
        let mut d = ForgedToken::new("{}").unwrap();
        let mut none = rejected(1, 0, "6.6.6.6", "alg_not_allowed");
        none.alg = Some("none".into());
        let alerts = run_batch(&mut d, &[none]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::High);
        assert!(
            alerts[0].summary.contains("alg \"none\""),
            "{}",
            alerts[0].summary
        );
        let burst: Vec<_> = (2..10)
            .map(|i| rejected(i, i, "6.6.6.6", "bad_signature"))
            .collect();
        assert!(run_batch(&mut d, &burst).unwrap().is_empty());
    }

    #[test]
    fn malformed_bursts_are_medium_and_escalate_on_a_forged_signature() {
        let mut d = ForgedToken::new("{}").unwrap();
        let burst: Vec<_> = (0..6)
            .map(|i| rejected(i, i, "7.7.7.7", "malformed"))
            .collect();
        let alerts = run_batch(&mut d, &burst).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::Medium);
        assert_eq!(alerts[0].evidence, vec![0, 1, 2, 3, 4]);
        let alerts = run_batch(&mut d, &[rejected(9, 9, "7.7.7.7", "bad_signature")]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::High);
        assert_eq!(
            alerts[0].evidence,
            vec![9, 5],
            "the escalation and the queued event"
        );
        assert_eq!(alerts[0].group_key, "ip:7.7.7.7");
    }

    #[test]
    fn spread_out_failures_do_not_alert_and_tick_frees_state() {
        let mut d = ForgedToken::new("{}").unwrap();
        let slow: Vec<_> = (0..10)
            .map(|i| rejected(i, i * 100, "8.8.8.8", "malformed"))
            .collect();
        assert!(run_batch(&mut d, &slow).unwrap().is_empty());
        run_tick(&mut d, 2000 * 1_000_000).unwrap();
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            ForgedToken::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err(r#"{"threshold": 0}"#),
            "forged-token config: threshold must be at least 1, got 0"
        );
        assert!(err(r#"{"reasons": [], "immediate_reasons": []}"#).contains("both empty"));
        assert!(err(r#"{"low_signal_severity": "meh"}"#).contains("low_signal_severity \"meh\""));
    }

    #[test]
    fn a_day_of_benign_traffic_raises_nothing() {
        for seed in [1, 2, 3] {
            let mut d = ForgedToken::new("{}").unwrap();
            let alerts = replay(&mut d, &traffic::day(seed), 512, SEC, HOUR).unwrap();
            assert!(alerts.is_empty(), "seed {seed}:\n{}", describe(&alerts));
        }
    }

    #[test]
    fn forging_attempts_mixed_into_a_day_are_one_alert_per_source() {
        let day = traffic::day(7);
        let t0 = traffic::START_US + 11 * HOUR;
        let mut attack = Vec::new();
        // Attacker 1: alg none, then HS256-with-the-public-key, then bad signatures.
        let mut id = ATTACK_ID_BASE;
        for (i, (reason, alg)) in [
            ("alg_not_allowed", "none"),
            ("alg_not_allowed", "HS256"),
            ("bad_signature", "EdDSA"),
            ("bad_signature", "EdDSA"),
            ("bad_signature", "EdDSA"),
        ]
        .iter()
        .enumerate()
        {
            let mut e = rejected(id, 0, "5.188.10.9", reason);
            e.time_us = t0 + i as i64 * 20 * SEC;
            e.alg = Some((*alg).into());
            attack.push(e);
            id += 1;
        }
        // Attacker 2: a burst of garbage and unknown key ids (a probe).
        for i in 0..8 {
            let mut e = rejected(
                id,
                0,
                "5.188.10.77",
                if i % 2 == 0 {
                    "malformed"
                } else {
                    "unknown_kid"
                },
            );
            e.time_us = t0 + 30 * MIN + i * 10 * SEC;
            attack.push(e);
            id += 1;
        }
        let mut d = ForgedToken::new("{}").unwrap();
        let alerts = replay(&mut d, &traffic::mix(&day, &attack), 512, SEC, HOUR).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 2, "{}", describe(&alerts));
        let (a, _) = &stored[0];
        assert_eq!(
            (a.rule.as_str(), a.severity, a.group_key.as_str()),
            (RULE, Severity::High, "ip:5.188.10.9")
        );
        assert_eq!(
            alerts[0].evidence,
            vec![ATTACK_ID_BASE],
            "alg none alerts at once"
        );
        assert_eq!(
            a.evidence,
            (0..5).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>()
        );
        let (b, _) = &stored[1];
        assert_eq!(
            (b.rule.as_str(), b.severity, b.group_key.as_str()),
            (RULE, Severity::Medium, "ip:5.188.10.77")
        );
        assert_eq!(
            b.evidence,
            (5..13).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_flood_of_a_million_random_ips_stays_at_the_cap() {
        let mut d = ForgedToken::new("{}").unwrap();
        let cap = d.cap();
        let mut max = 0;
        traffic::flood(
            &mut d,
            1_000_000,
            10_000,
            |i, rng| {
                rejected(
                    i as i64,
                    i as i64 / 1000,
                    &traffic::random_ip(rng),
                    "malformed",
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
