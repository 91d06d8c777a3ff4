//! `refresh-theft`: a refresh token was used twice, so two parties hold it.
//!
//! # Rule
//!
//! Every `refresh.reuse_detected` event is a theft signal (RFC 9700
//! §4.14.2): refresh tokens rotate on use, so an already-used one coming
//! back means a copy exists. The server has already revoked the token's
//! family when it records the event; this detector makes it an alert.
//!
//! One alert per subject per incident, rule `refresh-token-reuse`, at
//! `severity` (critical by default). Further reuse events for the same
//! subject keep the incident open and are attached to the same alert as
//! evidence (an update at most every `update_secs`); the incident ends
//! after `incident_quiet_secs` without one (on events and on `tick`).
//!
//! # Alert
//!
//! - rule: `refresh-token-reuse`
//! - group key: `subject:<subject>` (or `fp:<token_fp>` when the event has
//!   no subject) — match user exceptions on the alert's `subject`.
//! - client_ip: the IP that presented the reused token.
//! - evidence: the reuse events of the incident.
//!
//! # Config (JSON), every key optional
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `severity` | `"critical"` | severity of the alert |
//! | `incident_quiet_secs` | `3600` | quiet time that ends an incident |
//! | `update_secs` | `60` | at most one evidence update per incident this often |
//! | `max_tracked_subjects` | `100000` | hard cap on subjects with an open incident |

use detector_sdk::kit::{
    parse_severity, secs_to_us, BoundedMap, ConfigError, IncidentAlert, KeyHasher,
};
use detector_sdk::{Alert, Alerts, Batch, Detector, Severity};
use serde::Deserialize;

const NAME: &str = "refresh-theft";
/// Rule name on every alert of this detector.
pub const RULE: &str = "refresh-token-reuse";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    severity: String,
    incident_quiet_secs: u64,
    update_secs: u64,
    max_tracked_subjects: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            severity: "critical".into(),
            incident_quiet_secs: 3600,
            update_secs: 60,
            max_tracked_subjects: 100_000,
        }
    }
}

/// Refresh-token reuse, one alert per subject and incident.
pub struct RefreshTheft {
    severity: Severity,
    quiet_us: i64,
    update_us: i64,
    hasher: KeyHasher,
    incidents: BoundedMap<IncidentAlert>,
}

impl RefreshTheft {
    /// Subjects with an open incident.
    pub fn tracked(&self) -> usize {
        self.incidents.len()
    }

    /// The hard cap on subjects tracked.
    pub fn cap(&self) -> usize {
        self.incidents.cap()
    }
}

impl Detector for RefreshTheft {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        let c: Config =
            serde_json::from_str(config_json).map_err(|e| ConfigError::new(NAME, e.to_string()))?;
        if c.max_tracked_subjects == 0 {
            return Err(
                ConfigError::new(NAME, "max_tracked_subjects must be at least 1, got 0").into(),
            );
        }
        Ok(RefreshTheft {
            severity: parse_severity(NAME, "severity", &c.severity)?,
            quiet_us: secs_to_us(NAME, "incident_quiet_secs", c.incident_quiet_secs)?,
            update_us: secs_to_us(NAME, "update_secs", c.update_secs)?,
            hasher: KeyHasher::new(),
            incidents: BoundedMap::new(c.max_tracked_subjects),
        })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            if ev.kind() != "refresh.reuse_detected" {
                continue;
            }
            let now = ev.time_us();
            let group_key = match (ev.subject(), ev.token_fp()) {
                (Some(s), _) => format!("subject:{s}"),
                (None, Some(fp)) => format!("fp:{fp}"),
                (None, None) => "subject:unknown".to_owned(),
            };
            let incident = self
                .incidents
                .get_or_insert_with(self.hasher.key(&group_key), IncidentAlert::default);
            incident.close_if_quiet(now, self.quiet_us, out)?;
            if incident.add_evidence(ev.id(), now) {
                incident.flush_due(now, self.update_us, out)?;
                continue;
            }
            let summary = format!(
                "a used refresh token of {:?} was presented again from {}: the token was copied; its family has been revoked",
                ev.subject().unwrap_or("an unknown subject"),
                ev.client_ip().unwrap_or("an unknown IP"),
            );
            incident.raise(
                &Alert {
                    rule: RULE,
                    severity: self.severity,
                    subject: ev.subject(),
                    client_ip: ev.client_ip(),
                    summary: &summary,
                    group_key: &group_key,
                    evidence: &[ev.id()],
                },
                now,
                out,
            )?;
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        let (quiet_us, update_us) = (self.quiet_us, self.update_us);
        self.incidents.try_retain(|_, i| {
            i.close_if_quiet(now_us, quiet_us, out)?;
            i.flush_due(now_us, update_us, out)?;
            Ok::<_, detector_sdk::EmitError>(i.is_open())
        })?;
        Ok(())
    }
}

detector_sdk::export_detector!(
    RefreshTheft,
    "refresh-theft",
    env!("CARGO_PKG_VERSION"),
    "refresh-token reuse: a rotated refresh token presented again (theft)"
);

#[cfg(test)]
mod tests {
    use super::*;
    use detector_sdk::testing::traffic::{
        self, as_stored, describe, replay, ATTACK_ID_BASE, HOUR, SEC,
    };
    use detector_sdk::testing::{run_batch, run_tick, EventData};

    fn reuse(id: i64, secs: i64, subject: &str) -> EventData {
        EventData {
            id,
            time_us: secs * 1_000_000,
            kind: "refresh.reuse_detected".into(),
            outcome: "failure".into(),
            reason: Some("refresh_reused".into()),
            subject: Some(subject.into()),
            client_ip: Some("198.51.100.7".into()),
            token_fp: Some("ab12".into()),
            source: "test".into(),
            ..EventData::default()
        }
    }

    #[test]
    fn every_reuse_incident_is_one_critical_alert() {
        let mut d = RefreshTheft::new("{}").unwrap();
        let alerts = run_batch(
            &mut d,
            &[reuse(1, 0, "bob"), reuse(2, 5, "bob"), reuse(3, 6, "eve")],
        )
        .unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].severity, Severity::Critical);
        assert_eq!(alerts[0].group_key, "subject:bob");
        assert_eq!(alerts[0].evidence, vec![1]);
        assert_eq!(alerts[1].group_key, "subject:eve");
        let ended = run_tick(&mut d, 3700 * 1_000_000).unwrap();
        assert_eq!(ended.len(), 1, "the last update carries bob's second reuse");
        assert_eq!(ended[0].evidence, vec![2]);
        assert_eq!(d.tracked(), 0);
        assert_eq!(
            run_batch(&mut d, &[reuse(4, 3800, "bob")]).unwrap().len(),
            1
        );
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = |c: &str| {
            RefreshTheft::new(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(r#"{"severity": "extreme"}"#).contains("severity \"extreme\" is not one of"));
        assert!(err(r#"{"max_tracked_subjects": 0}"#).contains("at least 1"));
    }

    #[test]
    fn a_day_of_benign_traffic_raises_nothing() {
        for seed in [1, 2, 3] {
            let mut d = RefreshTheft::new("{}").unwrap();
            let alerts = replay(&mut d, &traffic::day(seed), 512, SEC, HOUR).unwrap();
            assert!(alerts.is_empty(), "seed {seed}:\n{}", describe(&alerts));
        }
    }

    #[test]
    fn a_stolen_refresh_token_mixed_into_a_day_is_one_critical_alert() {
        let day = traffic::day(6);
        let (_, subject, t, _, _) = traffic::first_login(&day);
        // The thief refreshes first; the victim's client then presents the
        // rotated-away token (reuse), and the thief tries again later.
        let attack: Vec<EventData> = (0..3)
            .map(|i| {
                let mut e = traffic::event(
                    ATTACK_ID_BASE + i,
                    t + 20 * traffic::MIN + i * 5 * traffic::MIN,
                    "refresh.reuse_detected",
                    if i == 1 {
                        "91.240.118.2"
                    } else {
                        "198.51.100.10"
                    },
                    "AcmeApp/3.4.1",
                );
                e.outcome = "failure".into();
                e.reason = Some("refresh_reused".into());
                e.subject = Some(subject.clone());
                e.token_fp = Some(format!("fp{i}"));
                e
            })
            .collect();
        let mut d = RefreshTheft::new("{}").unwrap();
        let alerts = replay(&mut d, &traffic::mix(&day, &attack), 512, SEC, 2 * HOUR).unwrap();
        let stored = as_stored(&alerts);
        assert_eq!(stored.len(), 1, "{}", describe(&alerts));
        let (a, _) = &stored[0];
        assert_eq!(
            (a.rule.as_str(), a.severity, a.group_key.clone()),
            (RULE, Severity::Critical, format!("subject:{subject}"))
        );
        assert_eq!(
            a.evidence,
            (0..3).map(|i| ATTACK_ID_BASE + i).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_flood_of_a_million_random_subjects_stays_at_the_cap() {
        let mut d = RefreshTheft::new("{}").unwrap();
        let cap = d.cap();
        let mut max = 0;
        traffic::flood(
            &mut d,
            1_000_000,
            10_000,
            |i, rng| {
                let mut e = reuse(i as i64, i as i64 / 1000, "");
                e.subject = Some(rng.hex(12));
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
